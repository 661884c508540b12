"""One case's picture: its representative slices with the contours of the reference, coarse and refined masks.

- :func:`representative_slices` picks the slices worth showing: where the labels are largest, the slice of the
  worst error (or where SAM changed most) and the middle of the foreground.
- :func:`render_case` draws them, one panel each, with a contour colour per source, a line style per label and a
  legend; :func:`write_overlay` writes that PNG atomically (``--overlays DIR``).
- :func:`require_matplotlib`, the Agg figure and PNG helpers the summary plots share.

Plotting needs matplotlib (``pip install 'autosam[report]'``); it is imported inside the functions, through the
Agg canvas only (pyplot and the global backend are left alone), so importing this module does not need it.
"""
from __future__ import annotations

import importlib
import io as _bytes_io
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np

from .. import io
from ..errors import AutosamError
from ..slicing import choose_axis, in_plane_spacing

#: how to get the plotting extra, in the one-line error of every function that draws
INSTALL_HINT = "matplotlib is needed for pictures; install it with: pip install 'autosam[report]'"

#: contour colour of each source (Okabe-Ito colours, told apart with the common colour-vision deficiencies)
COLOURS = {"reference": "#F0E442", "coarse": "#D55E00", "prediction": "#56B4E9"}
#: line style of the n-th label (cycled): one colour per source, one line style per label
LINESTYLES = ("solid", "dashed", "dotted", "dashdot")
_AXES = "zyx"


def require_matplotlib() -> None:
    """Raise :class:`AutosamError` with the one-line install hint if matplotlib's Agg canvas cannot be imported."""
    try:
        importlib.import_module("matplotlib.backends.backend_agg")
    except ImportError:
        raise AutosamError(INSTALL_HINT) from None


def new_figure(width: float, height: float):
    """A matplotlib Figure on its own Agg canvas (no pyplot, no global backend change)."""
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def png_bytes(fig) -> bytes:
    """The figure as PNG bytes, on its own face colour."""
    buf = _bytes_io.BytesIO()
    fig.savefig(buf, format="png", facecolor=fig.get_facecolor())
    return buf.getvalue()


# --- labels and slices ---------------------------------------------------------------------------------------


def label_names(labels: Mapping[str, int] | Sequence[int]) -> dict[int, str]:
    """Foreground label value -> name, from a dataset.json ``labels`` mapping or a list of values."""
    if isinstance(labels, Mapping):
        return {int(v): str(k) for k, v in sorted(labels.items(), key=lambda kv: kv[1])
                if int(v) != 0 and k != "ignore"}
    return {int(v): f"label {int(v)}" for v in sorted(set(int(v) for v in labels)) if int(v) != 0}


def _per_slice(mask: np.ndarray, axis: int) -> np.ndarray:
    return mask.sum(axis=tuple(a for a in range(mask.ndim) if a != axis))


def _foreground(mask: Optional[np.ndarray], labels: Sequence[int], shape: Sequence[int]) -> np.ndarray:
    """Voxels of ``mask`` holding one of ``labels`` (none when there is no mask)."""
    if mask is None:
        return np.zeros(shape, bool)
    return np.isin(mask, labels)


def _add_pick(picks: list[tuple[str, int]], depth: int, role: str, index: int, merge: bool = False) -> None:
    """Append ``(role, index)`` to ``picks`` if the slice exists and is not picked yet; with ``merge``, a slice
    already picked gets ``role`` added to its name instead."""
    for k, (r, i) in enumerate(picks):
        if i == index:
            if merge:
                picks[k] = (f"{r} · {role}", i)
            return
    if 0 <= index < depth:
        picks.append((role, int(index)))


def _disagreement_per_slice(segmentation: np.ndarray, other: np.ndarray, axis: int, labels: Sequence[int],
                            ignore: Optional[np.ndarray] = None) -> np.ndarray:
    """Voxels per slice where ``segmentation`` and ``other`` disagree on a foreground label (``ignore`` left out)."""
    wrong = (segmentation != other) & (_foreground(segmentation, labels, segmentation.shape)
                                       | _foreground(other, labels, segmentation.shape))
    if ignore is not None:
        wrong &= ~ignore
    return _per_slice(wrong, axis)


def _add_middle(picks: list[tuple[str, int]], depth: int, present: np.ndarray) -> None:
    """Add the middle of the foreground extent (``present``: foreground voxels per slice; the whole volume if
    there are none), then slices around it until there are two picks."""
    found = np.flatnonzero(present)
    lo, hi = (int(found[0]), int(found[-1])) if found.size else (0, depth - 1)
    middle = (lo + hi) // 2
    _add_pick(picks, depth, "middle", middle)
    for step in range(1, depth):
        if len(picks) >= 2:
            break
        _add_pick(picks, depth, "nearby", middle + step)
        if len(picks) < 2:
            _add_pick(picks, depth, "nearby", middle - step)


def representative_slices(
    segmentation: np.ndarray,
    axis: int,
    labels: Sequence[int],
    *,
    reference: Optional[np.ndarray] = None,
    coarse: Optional[np.ndarray] = None,
    ignore_label: Optional[int] = None,
) -> list[tuple[str, int]]:
    """Two or three ``(role, index)`` slices along ``axis`` of ``(Z, Y, X)`` maps, without repeats:

    - ``"largest label"``: most foreground voxels of the reference (of the segmentation and coarse map where the
      reference is empty or not given);
    - ``"worst error"``: most voxels where segmentation and reference disagree on a foreground label (without a
      reference, ``"most changed"``: where segmentation and coarse map differ);
    - ``"middle"``: the middle of the foreground extent (of the volume if there is no foreground), and further
      slices around it until there are two (one for a single-slice case).
    """
    labels = list(labels)
    depth = segmentation.shape[axis]
    ref_fg = _foreground(reference, labels, segmentation.shape)
    other_fg = _foreground(segmentation, labels, segmentation.shape) | _foreground(coarse, labels, segmentation.shape)
    area = _per_slice(ref_fg if ref_fg.any() else other_fg, axis)
    picks: list[tuple[str, int]] = []
    if area.max() > 0:
        _add_pick(picks, depth, "largest label", int(np.argmax(area)))
    other = reference if reference is not None else coarse
    if other is not None:
        ignore = reference == ignore_label if reference is not None and ignore_label is not None else None
        errors = _disagreement_per_slice(segmentation, other, axis, labels, ignore)
        if errors.max() > 0:
            role = "worst error" if reference is not None else "most changed"
            _add_pick(picks, depth, role, int(np.argmax(errors)), merge=True)
    _add_middle(picks, depth, _per_slice(ref_fg | other_fg, axis))
    return picks[:3]


def _slice(volume: np.ndarray, axis: int, index: int) -> np.ndarray:
    return np.take(volume, index, axis=axis)


def _display_slices(image: Optional[np.ndarray], shape: Sequence[int], axis: int, indices: Sequence[int],
                    channel_names: Optional[Sequence[str]]) -> list[np.ndarray]:
    """The chosen slices of a ``(C, Z, Y, X)`` case in ``[0, 1]``: ``(h, w)`` grey, or ``(h, w, 3)`` for three
    channels. The intensity window comes from the chosen slices together (nnU-Net channel names: CT gets its
    fixed window, anything else percentiles); no image gives black slices."""
    if image is None:
        return [np.zeros(_slice(np.zeros(shape, np.uint8), axis, i).shape, np.float32) for i in indices]
    from ..sam.transforms import normalize_case

    image = np.asarray(image)
    names = list(channel_names) if channel_names is not None else ["image"] * image.shape[0]
    chosen = np.stack([np.take(image, i, axis=axis + 1) for i in indices], axis=1)  # (C, n, h, w)
    shown = normalize_case(chosen, names)
    out = []
    for k in range(len(indices)):
        if shown.shape[0] == 3:
            out.append(np.moveaxis(shown[:, k], 0, -1))
        else:
            out.append(shown[0, k])
    return out


def _contour(ax, mask: np.ndarray, colour: str, linestyle: str, upsample: int) -> None:
    """Outline of a 2D boolean mask, following the pixel edges (the mask is upsampled before contouring)."""
    if not mask.any():
        return
    h, w = mask.shape
    k = upsample
    m = np.pad(np.kron(mask.astype(np.float32), np.ones((k, k), np.float32)), 1)  # closed outlines at the border
    xs = (np.arange(-1, w * k + 1) + 0.5) / k - 0.5
    ys = (np.arange(-1, h * k + 1) + 0.5) / k - 0.5
    ax.contour(xs, ys, m, levels=[0.5], colors=[colour], linestyles=[linestyle], linewidths=1.4)


def _check_shapes(image: Optional[np.ndarray], segmentation: np.ndarray, coarse: Optional[np.ndarray],
                  reference: Optional[np.ndarray]) -> None:
    """Raise :class:`AutosamError` unless the label maps are ``(Z, Y, X)`` of one shape and the image
    ``(C, Z, Y, X)`` of that shape."""
    if segmentation.ndim != 3:
        raise AutosamError(f"expected a (Z, Y, X) label map, got shape {segmentation.shape}")
    for what, m in (("coarse", coarse), ("reference", reference)):
        if m is not None and np.shape(m) != segmentation.shape:
            raise AutosamError(f"{what} shape {np.shape(m)} differs from the segmentation's {segmentation.shape}")
    if image is not None and tuple(np.shape(image)[1:]) != segmentation.shape:
        raise AutosamError(f"image shape {np.shape(image)[1:]} differs from the segmentation's {segmentation.shape}")


def _draw_slice(ax, img: np.ndarray, sources: list[tuple[str, np.ndarray]], values: list[int], axis: int,
                index: int, aspect: float, upsample: int) -> None:
    """One panel: the slice's picture and, per source and label, the contours, without ticks."""
    h, w = img.shape[:2]
    ax.imshow(img, cmap="gray", vmin=0, vmax=1, aspect=aspect, origin="upper" if axis == 0 else "lower")
    for source, m in sources:
        sl = _slice(m, axis, index)
        for j, value in enumerate(values):
            _contour(ax, sl == value, COLOURS[source], LINESTYLES[j % len(LINESTYLES)], upsample)
    ax.set_xlim(-0.5, w - 0.5)
    ax.set_ylim((h - 0.5, -0.5) if axis == 0 else (-0.5, h - 0.5))
    ax.set_xticks([])
    ax.set_yticks([])


def _slice_title(role: str, index: int, axis: int, depth: int) -> str:
    """A panel's title: the slice's role, axis and index (just ``image`` for a single-slice case)."""
    if depth <= 1:
        return "image"
    return f"{role}  {_AXES[axis]} = {index} (0–{depth - 1})"


def _draw_legend(fig, sources: list[tuple[str, np.ndarray]], names: dict[int, str], refined_name: str) -> None:
    """The figure's legend below the panels: one colour per source, one line style per label (if several)."""
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=COLOURS[s], lw=2, label=refined_name if s == "prediction" else s)
               for s, _ in sources]
    if len(names) > 1:
        handles += [Line2D([], [], color="#555555", lw=1.4, linestyle=LINESTYLES[j % len(LINESTYLES)],
                           label=names[v]) for j, v in enumerate(names)]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), fontsize=8, frameon=False,
               bbox_to_anchor=(0.5, 0.0), handlelength=2.6)


def render_case(
    image: Optional[np.ndarray],
    segmentation: np.ndarray,
    labels: Mapping[str, int] | Sequence[int],
    *,
    coarse: Optional[np.ndarray] = None,
    reference: Optional[np.ndarray] = None,
    spacing: Optional[Sequence[float]] = None,
    axis: Optional[int] = None,
    channel_names: Optional[Sequence[str]] = None,
    ignore_label: Optional[int] = None,
    title: Optional[str] = None,
    legend: bool = True,
) -> tuple[bytes, list[tuple[str, int]]]:
    """PNG bytes of a case's representative slices with contours, and the ``(role, index)`` slices shown."""
    segmentation = np.asarray(segmentation)
    _check_shapes(image, segmentation, coarse, reference)
    spacing = tuple(float(s) for s in spacing) if spacing is not None else (1.0, 1.0, 1.0)
    axis = 0 if segmentation.shape[0] == 1 else choose_axis(spacing, segmentation.shape, axis)  # 2D: one slice
    names = label_names(labels)
    values = list(names)
    picks = representative_slices(segmentation, axis, values, reference=reference, coarse=coarse,
                                  ignore_label=ignore_label)
    shown = _display_slices(image, segmentation.shape, axis, [i for _, i in picks], channel_names)
    row_spacing, col_spacing = in_plane_spacing(spacing, axis)
    aspect = row_spacing / col_spacing if segmentation.shape[0] > 1 else 1.0
    h, w = shown[0].shape[:2]
    upsample = int(max(1, min(6, 240 // max(h, w, 1))))
    panel_w = 3.3 if len(picks) > 1 else 4.6
    panel_h = float(np.clip(panel_w * h * aspect / w, 1.8, 5.0))
    sources = [("reference", reference), ("coarse", coarse), ("prediction", segmentation)]
    sources = [(s, m) for s, m in sources if m is not None]
    top = 0.35 if title else 0.05
    head = 0.3  # panel titles
    foot = 0.55 if legend else 0.05
    fig = new_figure(panel_w * len(picks), panel_h + top + head + foot)
    height = fig.get_figheight()
    fig.patch.set_facecolor("white")
    for k, ((role, index), img) in enumerate(zip(picks, shown)):
        ax = fig.add_axes((k / len(picks) + 0.005, foot / height, 1 / len(picks) - 0.01, panel_h / height))
        _draw_slice(ax, img, sources, values, axis, index, aspect, upsample)
        ax.set_title(_slice_title(role, index, axis, segmentation.shape[axis]), fontsize=9)
    if title:
        fig.text(0.5, 1 - 0.2 / height, title, ha="center", va="center", fontsize=11, weight="bold")
    if legend:
        _draw_legend(fig, sources, names, "refined" if coarse is not None else "prediction")
    try:
        return png_bytes(fig), picks
    finally:
        fig.clear()


def write_overlay(path, image, segmentation, labels, *, coarse=None, reference=None, spacing=None,
                  axis=None) -> None:
    """Write one PNG (atomically) of a case: its representative slices with the contours of ``segmentation`` and,
    when given, of ``coarse`` and ``reference``, in distinct colours with a legend.

    ``image`` is the case's ``(C, Z, Y, X)`` array as nnU-Net reads it (None: black background); the label maps
    are ``(Z, Y, X)``; ``labels`` is dataset.json's ``labels`` mapping or a list of foreground values; ``spacing``
    the ``(Z, Y, X)`` spacing (for the slice axis and the aspect ratio); ``axis`` the slice axis (default as
    :func:`autosam.slicing.choose_axis`)."""
    path = Path(path)
    png, _ = render_case(image, segmentation, labels, coarse=coarse, reference=reference, spacing=spacing,
                         axis=axis, title=path.name[: -len(".png")] if path.name.endswith(".png") else path.stem)
    path.parent.mkdir(parents=True, exist_ok=True)
    with io.atomic_output(path) as tmp:
        tmp.write_bytes(png)
