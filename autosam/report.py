"""Pictures of segmentations: one overlay PNG per case, and an HTML report of a whole prediction folder.

- :func:`write_overlay` writes one PNG of a case: its representative slices (the slice where the labels are
  largest, the slice of the worst error and the middle of the foreground) with the contours of the reference,
  coarse and refined masks in distinct colours and a legend. Used by ``--overlays DIR``.
- :func:`build_report` writes a self-contained HTML page (images embedded as PNG data URIs, written atomically):
  a legend, summary plots per label, a sortable per-case table of Dice, NSD and HD95 (worst case first) and a
  gallery of every case, worst first. Without a reference it shows the overlays and, given the coarse folder,
  the share of voxels that SAM changed per case.

Plotting needs matplotlib (``pip install 'autosam[report]'``); it is imported inside the functions, through the
Agg canvas only (pyplot and the global backend are left alone), so importing this module does not need it.
"""
from __future__ import annotations

import base64
import html
import io as _bytes_io
import math
import os
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np

from . import io
from .errors import AutosamError
from .evaluation import case_metrics, finite_mean, summarise
from .progress import progress
from .slicing import choose_axis, in_plane_spacing

#: how to get the plotting extra, in the one-line error of every function that draws
INSTALL_HINT = "matplotlib is needed for pictures; install it with: pip install 'autosam[report]'"

#: contour colour of each source (Okabe-Ito colours, told apart with the common colour-vision deficiencies)
COLOURS = {"reference": "#F0E442", "coarse": "#D55E00", "prediction": "#56B4E9"}
#: line style of the n-th label (cycled): one colour per source, one line style per label
LINESTYLES = ("solid", "dashed", "dotted", "dashdot")
_SVG_DASH = {"solid": "", "dashed": "6,3", "dotted": "1.5,2.5", "dashdot": "6,2.5,1.5,2.5"}
_AXES = "zyx"


def require_matplotlib() -> None:
    """Raise :class:`AutosamError` with the one-line install hint if matplotlib cannot be imported."""
    try:
        import matplotlib  # noqa: F401
        from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: F401
    except ImportError:
        raise AutosamError(INSTALL_HINT) from None


def _figure(width: float, height: float):
    """A matplotlib Figure on its own Agg canvas (no pyplot, no global backend change)."""
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _png_bytes(fig) -> bytes:
    buf = _bytes_io.BytesIO()
    fig.savefig(buf, format="png", facecolor=fig.get_facecolor())
    return buf.getvalue()


# --- labels and slices ---------------------------------------------------------------------------------------

def _label_names(labels: Mapping[str, int] | Sequence[int]) -> dict[int, str]:
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
    from .sam.transforms import normalize_case

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
    names = _label_names(labels)
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
    fig = _figure(panel_w * len(picks), panel_h + top + head + foot)
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
        return _png_bytes(fig), picks
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


# --- the report ----------------------------------------------------------------------------------------------

@dataclass
class CaseReport:
    """What the report shows of one case."""

    case_id: str
    png: bytes
    slices: list[tuple[str, int]]
    metrics: Optional[dict[int, dict]] = None  # per label: Dice, NSD, HD95 ... of the prediction (with --gt)
    coarse_metrics: Optional[dict[int, dict]] = None  # the same of the coarse map (with --gt and --coarse)
    changed: Optional[dict] = None  # with --coarse: share of voxels SAM changed, per label and "all"
    empty: list[str] = field(default_factory=list)  # "reference" / "prediction" when that map has no foreground
    depth: int = 1  # number of slices along the axis shown

    @property
    def mean_dice(self) -> float:
        """Mean Dice over labels (labels empty in both maps skipped); NaN if no label has a score."""
        return finite_mean([m["Dice"] for m in self.metrics.values()]) if self.metrics else math.nan

    @property
    def mean_coarse_dice(self) -> float:
        return finite_mean([m["Dice"] for m in self.coarse_metrics.values()]) if self.coarse_metrics else math.nan


@dataclass
class Report:
    """A built report: the cases in the page's order (worst first) and the label names."""

    path: Path
    cases: list[CaseReport]
    labels: dict[int, str]
    has_reference: bool
    has_coarse: bool

    @property
    def worst(self) -> Optional[CaseReport]:
        return self.cases[0] if self.cases else None


def changed_share(segmentation: np.ndarray, coarse: np.ndarray, labels: Sequence[int]) -> dict:
    """Share of voxels whose label SAM changed: per label, of the voxels that label holds in either map
    (``1 - IoU``); under ``"all"``, of the voxels in the foreground of either map. 0 where both maps are empty."""
    out: dict = {}
    for value in labels:
        a, b = segmentation == value, coarse == value
        union = int((a | b).sum())
        out[int(value)] = float((a ^ b).sum() / union) if union else 0.0
    fg = np.isin(segmentation, labels) | np.isin(coarse, labels)
    out["all"] = float(((segmentation != coarse) & fg).sum() / fg.sum()) if fg.any() else 0.0
    return out


def sort_worst_first(cases: list[CaseReport]) -> list[CaseReport]:
    """With scores: lowest mean Dice first (then lowest mean NSD; cases without any score last). Without scores
    but with a coarse map: most changed first. Otherwise by case id."""
    def key(c: CaseReport):
        if c.metrics is not None:
            dice = c.mean_dice
            nsd = finite_mean([m["NSD"] for m in c.metrics.values()])
            return (math.isnan(dice), 0.0 if math.isnan(dice) else dice, 0.0 if math.isnan(nsd) else nsd, c.case_id)
        if c.changed is not None:
            return (False, -c.changed["all"], 0.0, c.case_id)
        return (False, 0.0, 0.0, c.case_id)

    return sorted(cases, key=key)


def _find_dataset_json(given, pred: Path, gt: Optional[Path], coarse: Optional[Path], images: Optional[Path]
                       ) -> Path:
    """:func:`autosam.io.find_dataset_json`, with the coarse folder's when the prediction folder has none."""
    predictions = pred
    if given is None and not (pred / "dataset.json").is_file() and coarse is not None \
            and (coarse / "dataset.json").is_file():
        predictions = coarse
    return io.find_dataset_json(given, predictions=predictions, images=images, labels=gt)


def _images_beside(gt: Path, cases: list[str], info: io.DatasetInfo) -> Optional[Path]:
    """``imagesXx`` beside a ``labelsXx`` reference folder when it holds every case (else None)."""
    if not gt.name.startswith("labels"):
        return None
    folder = gt.parent / ("images" + gt.name[len("labels"):])
    if not folder.is_dir():
        return None
    try:
        found = io.list_cases(folder, info.file_ending, info.num_channels)
    except AutosamError:
        return None
    return folder if all(c in found for c in cases) else None


@dataclass
class _Inputs:
    """The folders a report reads and each case's files in them (reference, coarse and image files: empty
    mappings where that folder is not given)."""

    pred: Path
    gt: Optional[Path]
    coarse: Optional[Path]
    images: Optional[Path]
    info: io.DatasetInfo
    rw: type
    cases: list[str]
    ref_files: dict[str, Path]
    coarse_files: dict[str, Path]
    image_files: dict[str, list[Path]]


def _check_arguments(pred: Path, output: Path, tolerance_mm: float) -> None:
    """Raise :class:`AutosamError` for a missing prediction folder, a report name not ending in .html or a
    negative tolerance."""
    if not pred.is_dir():
        raise AutosamError(f"prediction folder not found: {pred}")
    if output.suffix.lower() not in (".html", ".htm"):
        raise AutosamError(f"{output}: the report file must end with .html")
    if tolerance_mm < 0:
        raise AutosamError(f"tolerance must be >= 0 mm, got {tolerance_mm}")


def _prediction_cases(pred: Path, file_ending: str) -> list[str]:
    """The sorted case ids of the ``<case><file_ending>`` files in ``pred`` (at least one)."""
    cases = sorted(f.name[: -len(file_ending)] for f in pred.iterdir()
                   if f.is_file() and f.name.endswith(file_ending) and not f.name.startswith("."))
    if not cases:
        raise AutosamError(f"no {file_ending} predictions in {pred}")
    return cases


def _image_files(images: Path, cases: list[str], info: io.DatasetInfo) -> dict[str, list[Path]]:
    """Each case's channel files in ``images``; a case without them is an error."""
    found = io.list_cases(images, info.file_ending, info.num_channels)
    missing = [c for c in cases if c not in found]
    if missing:
        raise AutosamError(f"prediction {missing[0]}{info.file_ending} has no image in {images}")
    return {c: found[c] for c in cases}


def _gather_inputs(pred: Path, gt: Optional[Path], coarse: Optional[Path], images: Optional[Path], dataset_json,
                   log) -> _Inputs:
    """Find the dataset.json, the cases and their files; the images default to ``imagesXx`` beside the reference."""
    info = io.load_dataset_json(_find_dataset_json(dataset_json, pred, gt, coarse, images))
    rw = io.reader_writer(info.file_ending)
    cases = _prediction_cases(pred, info.file_ending)
    ref_files = io.label_files(gt, cases, info.file_ending, "reference") if gt is not None else {}
    coarse_files = io.label_files(coarse, cases, info.file_ending, "coarse segmentation") if coarse else {}
    if images is None and gt is not None:
        images = _images_beside(gt, cases, info)
        if images is not None:
            log(f"images: {images} (beside the reference; pass -i to choose)")
    image_files = _image_files(images, cases, info) if images is not None else {}
    return _Inputs(pred, gt, coarse, images, info, rw, cases, ref_files, coarse_files, image_files)


def _read_matching(path: Path, what: str, shape: tuple[int, ...], props: dict, rw: type) -> np.ndarray:
    """A label map that must have the prediction's shape and geometry."""
    m, p = io.read_label(path, rw)
    if m.shape != shape:
        raise AutosamError(f"{path}: shape {m.shape} differs from the prediction's {shape}")
    io.check_same_geometry(props, p, f"{path} ({what})")
    return m


def _read_image(inputs: _Inputs, case: str, shape: tuple[int, ...]) -> Optional[np.ndarray]:
    """The case's ``(C, Z, Y, X)`` image (None without an image folder); it must have the prediction's shape."""
    if inputs.images is None:
        return None
    c = io.read_case(case, inputs.image_files[case], inputs.rw)
    if c.image.shape[1:] != shape:
        raise AutosamError(f"{inputs.image_files[case][0]}: image shape {c.image.shape[1:]} differs from the "
                           f"prediction's {shape}")
    return c.image


def _case_report(inputs: _Inputs, case: str, tolerance_mm: float, axis: Optional[int]) -> CaseReport:
    """Read one case, score it (with a reference), measure what SAM changed (with a coarse map) and draw it."""
    info, labels = inputs.info, inputs.info.foreground
    seg, props = io.read_label(inputs.pred / f"{case}{info.file_ending}", inputs.rw)
    spacing = [float(s) for s in props["spacing"]]
    ref = (_read_matching(inputs.ref_files[case], "reference", seg.shape, props, inputs.rw)
           if inputs.gt is not None else None)
    crs = (_read_matching(inputs.coarse_files[case], "coarse segmentation", seg.shape, props, inputs.rw)
           if inputs.coarse is not None else None)
    image = _read_image(inputs, case, seg.shape)
    metrics = coarse_metrics = changed = None
    if ref is not None:
        metrics = case_metrics(ref, seg, spacing, labels, tolerance_mm, info.ignore_label)
        if crs is not None:
            coarse_metrics = case_metrics(ref, crs, spacing, labels, tolerance_mm, info.ignore_label)
    if crs is not None:
        changed = changed_share(seg, crs, labels)
    png, picks = render_case(image, seg, info.labels, coarse=crs, reference=ref, spacing=spacing, axis=axis,
                             channel_names=info.channel_names, ignore_label=info.ignore_label)
    empty = [what for what, m in (("reference", ref), ("prediction", seg), ("coarse", crs))
             if m is not None and not np.isin(m, labels).any()]
    depth = 1 if seg.shape[0] == 1 else seg.shape[choose_axis(spacing, seg.shape, axis)]
    return CaseReport(case, png, picks, metrics, coarse_metrics, changed, empty, depth)


def build_report(
    pred_dir: str | os.PathLike,
    output: str | os.PathLike,
    *,
    gt_dir: Optional[str | os.PathLike] = None,
    coarse_dir: Optional[str | os.PathLike] = None,
    images_dir: Optional[str | os.PathLike] = None,
    dataset_json: Optional[str | os.PathLike] = None,
    tolerance_mm: float = 1.0,
    axis: Optional[int] = None,
    title: Optional[str] = None,
    log=print,
) -> Report:
    """Write the HTML report of the predictions ``<case><file_ending>`` in ``pred_dir`` to ``output`` (atomically).

    ``gt_dir`` adds Dice, NSD and HD95 per case and label (cases ordered worst first), ``coarse_dir`` the coarse
    contours, the coarse scores and the share of voxels SAM changed, ``images_dir`` the images under the contours
    (default: ``imagesXx`` beside a ``labelsXx`` reference folder when there is one, else a black background).
    """
    require_matplotlib()
    pred = Path(pred_dir)
    gt = Path(gt_dir) if gt_dir is not None else None
    coarse = Path(coarse_dir) if coarse_dir is not None else None
    images = Path(images_dir) if images_dir is not None else None
    output = Path(output)
    _check_arguments(pred, output, tolerance_mm)
    inputs = _gather_inputs(pred, gt, coarse, images, dataset_json, log)
    cases = [_case_report(inputs, case, tolerance_mm, axis) for case in progress(inputs.cases, "report")]
    report = Report(output, sort_worst_first(cases), _label_names(inputs.info.labels), gt is not None,
                    coarse is not None)
    page = render_html(report, summary_plots(report), title=title, tolerance_mm=tolerance_mm,
                       sources={"prediction": pred, "reference": gt, "coarse": coarse, "images": inputs.images},
                       has_images=inputs.images is not None)
    output.parent.mkdir(parents=True, exist_ok=True)
    with io.atomic_output(output) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return report


# --- summary plots -------------------------------------------------------------------------------------------

def _plot_methods(report: Report, value: int) -> tuple[list[tuple[str, list[float], str]], str, Optional[tuple]]:
    """What the first panel of a label shows: ``(name, value per case, colour)`` per method, the y label and
    the y limits (None: automatic)."""
    if report.has_reference:
        methods = [("refined" if report.has_coarse else "prediction", [c.metrics[value]["Dice"] for c in
                                                                      report.cases], COLOURS["prediction"])]
        if report.has_coarse:
            methods.insert(0, ("coarse", [c.coarse_metrics[value]["Dice"] for c in report.cases],
                               COLOURS["coarse"]))
        return methods, "Dice", (-0.03, 1.03)
    changed = [("SAM changed", [c.changed[value] for c in report.cases], COLOURS["prediction"])]
    return changed, "share of voxels changed", None


def _box_panel(ax, methods: list[tuple[str, list[float], str]], rng: np.random.Generator) -> None:
    """A box plot per method with the cases as jittered points (NaN left out), or a note if nothing is scored."""
    data = [np.array([v for v in vals if not math.isnan(v)], float) for _, vals, _ in methods]
    positions = list(range(1, len(methods) + 1))
    if any(len(d) for d in data):
        box = ax.boxplot([d if len(d) else [np.nan] for d in data], positions=positions, widths=0.5,
                         showfliers=False, patch_artist=True, medianprops={"color": "black"})
        for patch, (_, _, colour) in zip(box["boxes"], methods):
            patch.set_facecolor(colour)
            patch.set_alpha(0.45)
        for p, d in zip(positions, data):
            ax.scatter(p + rng.uniform(-0.12, 0.12, len(d)), d, s=12, color="black", zorder=3, alpha=0.8)
    else:
        ax.text(0.5, 0.5, "no scores (label absent)", ha="center", va="center", transform=ax.transAxes)
    ax.set_xticks(positions)
    ax.set_xticklabels([m for m, _, _ in methods])
    ax.set_xlim(0.4, len(methods) + 0.6)


def _coarse_vs_refined_panel(ax, report: Report, value: int, name: str) -> None:
    """Refined against coarse Dice per case (green above the diagonal, orange below; the three lowest named)."""
    pairs = [(c.coarse_metrics[value]["Dice"], c.metrics[value]["Dice"], c.case_id) for c in report.cases]
    pairs = [p for p in pairs if not (math.isnan(p[0]) or math.isnan(p[1]))]
    ax.plot([0, 1], [0, 1], color="#999999", lw=1, ls="--", zorder=1)
    if pairs:
        x, y = np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])
        colours = np.where(y > x + 1e-9, "#009E73", np.where(y < x - 1e-9, "#D55E00", "#555555"))
        ax.scatter(x, y, s=18, c=colours, zorder=3)
        for xi, yi, case in sorted(pairs, key=lambda p: p[1])[:3]:
            ax.annotate(case, (xi, yi), fontsize=6.5, xytext=(3, -8), textcoords="offset points")
    ax.set_xlim(-0.03, 1.03)
    ax.set_ylim(-0.03, 1.03)
    ax.set_aspect("equal")
    ax.set_xlabel("coarse Dice")
    ax.set_ylabel("refined Dice")
    ax.set_title(f"{name}: per case (above the line = better)", fontsize=10)
    ax.grid(alpha=0.3)


def summary_plots(report: Report) -> dict[int, bytes]:
    """One PNG per label: Dice per method (box plot with the cases as points) and, with a coarse map, coarse
    against refined Dice per case; without a reference, the share of voxels SAM changed (with a coarse map).
    Empty when there is nothing to plot."""
    if not report.cases or (not report.has_reference and not report.has_coarse):
        return {}
    out = {}
    rng = np.random.default_rng(0)
    panels = 2 if report.has_reference and report.has_coarse else 1
    for value, name in report.labels.items():
        fig = _figure(3.6 * panels, 3.2)
        methods, ylabel, ylim = _plot_methods(report, value)
        ax = fig.add_subplot(1, panels, 1)
        _box_panel(ax, methods, rng)
        if ylim:
            ax.set_ylim(*ylim)
        ax.set_ylabel(ylabel)
        ax.set_title(f"{name}: {ylabel} per case", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
        if panels == 2:
            _coarse_vs_refined_panel(fig.add_subplot(1, 2, 2), report, value, name)
        fig.tight_layout()
        out[value] = _png_bytes(fig)
        fig.clear()
    return out


# --- HTML ----------------------------------------------------------------------------------------------------

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;margin:0;color:#1d2330;
background:#f4f5f7}
header{background:#1d2330;color:#fff;padding:18px 28px}
header h1{margin:0 0 6px 0;font-size:24px}
header .meta{margin:2px 0;font-size:13px;color:#c9cfdb}
header code{color:#fff}
main{padding:8px 28px 40px 28px}
section{background:#fff;border-radius:8px;box-shadow:0 1px 3px rgba(0,0,0,.12);padding:12px 18px;margin:16px 0}
h2{font-size:19px;margin:4px 0 10px 0}
.legend{display:flex;flex-wrap:wrap;gap:18px;align-items:center;font-size:14px}
.legend span{display:inline-flex;align-items:center;gap:6px}
.legend svg{background:#333;border-radius:3px}
.plots{display:flex;flex-wrap:wrap;gap:12px}
.plots figure{margin:0}
.plots figcaption{font-size:13px;color:#555}
table{border-collapse:collapse;font-size:13px;font-variant-numeric:tabular-nums}
th,td{border:1px solid #d9dce3;padding:3px 8px;text-align:right}
th{background:#e9ecf2;position:sticky;top:0}
th[data-col]{cursor:pointer;user-select:none}
th[data-col]:hover{background:#d7dcea}
th[data-dir=asc]::after{content:" \\25B2"}
th[data-dir=desc]::after{content:" \\25BC"}
td.case,th.case{text-align:left}
td.case a{color:#1d4ed8;text-decoration:none}
.note{font-size:13px;color:#555}
.gallery .case{border-top:1px solid #e3e6ec;padding:10px 0}
.gallery h3{font-size:15px;margin:4px 0}
.gallery .scores{font-size:13px;color:#333;margin:2px 0 6px 0}
.gallery img{max-width:100%;border:1px solid #d9dce3;background:#fff}
.badge{display:inline-block;font-size:11px;padding:1px 6px;border-radius:8px;background:#fde2e1;color:#9b1c1c;
margin-left:6px}
"""

_JS = """
document.querySelectorAll('table.sortable').forEach(function (table) {
  var body = table.tBodies[0];
  table.querySelectorAll('th[data-col]').forEach(function (th) {
    th.addEventListener('click', function () {
      var col = +th.dataset.col, asc = th.dataset.dir !== 'asc';
      table.querySelectorAll('th[data-col]').forEach(function (h) { h.removeAttribute('data-dir'); });
      th.dataset.dir = asc ? 'asc' : 'desc';
      var key = function (row) {
        var cell = row.cells[col];
        return cell.dataset.v !== undefined ? parseFloat(cell.dataset.v) : cell.textContent.trim().toLowerCase();
      };
      var rows = Array.prototype.slice.call(body.rows);
      rows.sort(function (a, b) {
        var x = key(a), y = key(b);
        if (typeof x === 'number' && isNaN(x)) return (typeof y === 'number' && isNaN(y)) ? 0 : 1;
        if (typeof y === 'number' && isNaN(y)) return -1;
        var c = x < y ? -1 : (x > y ? 1 : 0);
        return asc ? c : -c;
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
});
"""


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _fmt(value: Optional[float], digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if math.isinf(value):
        return "∞"
    return f"{value:.{digits}f}"


def _v(value: Optional[float]) -> str:
    if value is None or math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return repr(float(value))


def _dice_style(value: float) -> str:
    if value is None or math.isnan(value):
        return ""
    hue = 120 * max(0.0, min(1.0, value))
    return f' style="background:hsl({hue:.0f},70%,86%)"'


def _legend_html(report: Report) -> str:
    def line(colour: str, dash: str = "") -> str:
        d = f' stroke-dasharray="{dash}"' if dash else ""
        return (f'<svg width="34" height="12" aria-hidden="true"><line x1="3" y1="6" x2="31" y2="6" '
                f'stroke="{colour}" stroke-width="2.5"{d}/></svg>')

    items = []
    if report.has_reference:
        items.append(f"<span>{line(COLOURS['reference'])} reference</span>")
    if report.has_coarse:
        items.append(f"<span>{line(COLOURS['coarse'])} coarse</span>")
    items.append(f"<span>{line(COLOURS['prediction'])} {'refined' if report.has_coarse else 'prediction'}</span>")
    if len(report.labels) > 1:
        for j, name in enumerate(report.labels.values()):
            style = LINESTYLES[j % len(LINESTYLES)]
            items.append(f"<span>{line('#dddddd', _SVG_DASH[style])} {html.escape(name)}</span>")
    return '<div class="legend">' + "".join(items) + "</div>"


def _table_html(report: Report) -> str:
    """The per-case table: a header row of label groups, a row of metric names (click to sort), a row per case."""
    labels = report.labels
    e = html.escape
    top = ['<th rowspan="2" data-col="0">rank</th>', '<th rowspan="2" class="case" data-col="1">case</th>']
    sub = []
    col = 2
    if report.has_reference:
        top.append(f'<th rowspan="2" data-col="{col}">mean Dice</th>')
        col += 1
        per_label = ["Dice", "NSD", "HD95 (mm)"] + (["coarse Dice"] if report.has_coarse else [])
    else:
        per_label = ["changed"] if report.has_coarse else []
    if report.has_coarse and per_label:
        top.append(f'<th rowspan="2" data-col="{col}">changed (all)</th>')
        col += 1
    for name in labels.values():
        if per_label:
            top.append(f'<th colspan="{len(per_label)}">{e(name)}</th>')
            for metric in per_label:
                sub.append(f'<th data-col="{col}">{e(metric)}</th>')
                col += 1
    head = "<thead><tr>" + "".join(top) + "</tr>" + ("<tr>" + "".join(sub) + "</tr>" if sub else "") + "</thead>"
    rows = []
    for rank, c in enumerate(report.cases, 1):
        cells = [f'<td data-v="{rank}">{rank}</td>',
                 f'<td class="case"><a href="#case-{e(c.case_id)}">{e(c.case_id)}</a>'
                 + "".join(f' <span class="badge">empty {w}</span>' for w in c.empty) + "</td>"]
        if report.has_reference:
            cells.append(f'<td data-v="{_v(c.mean_dice)}"{_dice_style(c.mean_dice)}>{_fmt(c.mean_dice)}</td>')
        if report.has_coarse and per_label:
            share = c.changed["all"]
            cells.append(f'<td data-v="{_v(share)}">{100 * share:.1f}%</td>')
        for value in labels:
            if report.has_reference:
                m = c.metrics[value]
                cells.append(f'<td data-v="{_v(m["Dice"])}"{_dice_style(m["Dice"])}>{_fmt(m["Dice"])}</td>')
                cells.append(f'<td data-v="{_v(m["NSD"])}">{_fmt(m["NSD"])}</td>')
                cells.append(f'<td data-v="{_v(m["HD95"])}">{_fmt(m["HD95"], 2)}</td>')
                if report.has_coarse:
                    d = c.coarse_metrics[value]["Dice"]
                    cells.append(f'<td data-v="{_v(d)}"{_dice_style(d)}>{_fmt(d)}</td>')
            elif report.has_coarse:
                share = c.changed[value]
                cells.append(f'<td data-v="{_v(share)}">{100 * share:.1f}%</td>')
        rows.append(f'<tr id="row-{e(c.case_id)}">' + "".join(cells) + "</tr>")
    return f'<table class="sortable" id="cases-table">{head}<tbody>' + "".join(rows) + "</tbody></table>"


def _means_html(report: Report) -> str:
    """Mean scores per label (nnU-Net's rules: NaN and inf left out of the means)."""
    e = html.escape
    labels = list(report.labels)
    summary = summarise([{"metrics": c.metrics} for c in report.cases], labels)
    coarse = (summarise([{"metrics": c.coarse_metrics} for c in report.cases], labels)
              if report.has_coarse else None)
    head = ["label", "mean Dice"] + (["coarse mean Dice"] if coarse else []) + ["mean NSD", "mean HD95 (mm)",
                                                                              "cases with HD95 = ∞"]
    rows = []
    for value, name in report.labels.items():
        m = summary["mean"][value]
        cells = [f'<td class="case">{e(name)}</td>', f"<td{_dice_style(m['Dice'])}>{_fmt(m['Dice'])}</td>"]
        if coarse:
            d = coarse["mean"][value]["Dice"]
            cells.append(f"<td{_dice_style(d)}>{_fmt(d)}</td>")
        cells += [f"<td>{_fmt(m['NSD'])}</td>", f"<td>{_fmt(m['HD95'], 2)}</td>", f"<td>{m['HD95_n_inf']}</td>"]
        rows.append("<tr>" + "".join(cells) + "</tr>")
    first = ' class="case"'
    return ("<table><thead><tr>" + "".join(f'<th{first if i == 0 else ""}>{e(h)}</th>'
                                           for i, h in enumerate(head))
            + "</tr></thead><tbody>" + "".join(rows) + "</tbody></table>")


def _case_scores(report: Report, c: CaseReport) -> str:
    parts = []
    for value, name in report.labels.items():
        bits = []
        if c.metrics is not None:
            m = c.metrics[value]
            bits.append(f"Dice {_fmt(m['Dice'])}, NSD {_fmt(m['NSD'])}, HD95 {_fmt(m['HD95'], 2)}")
            if c.coarse_metrics is not None:
                bits.append(f"coarse Dice {_fmt(c.coarse_metrics[value]['Dice'])}")
        if c.changed is not None:
            bits.append(f"changed {100 * c.changed[value]:.1f}%")
        if bits:
            parts.append(f"<b>{html.escape(name)}</b>: " + "; ".join(bits))
    if c.changed is not None:
        parts.append(f"<b>all labels</b>: changed {100 * c.changed['all']:.1f}%")
    if c.depth > 1:  # a single-slice (2D) case has nothing to name
        shown = ", ".join(f"{role} {i}" for role, i in c.slices)
        parts.append(f"slices: {html.escape(shown)}")
    return " &middot; ".join(parts)


def render_html(report: Report, plots: dict[int, bytes], *, title: Optional[str] = None,
                sources: Optional[dict] = None, tolerance_mm: float = 1.0, has_images: bool = True) -> str:
    """The report page as one HTML string (images as data URIs)."""
    e = html.escape
    title = title or f"autosam report: {Path(sources['prediction']).name if sources else report.path.stem}"
    meta = []
    for what, folder in (sources or {}).items():
        if folder is not None:
            meta.append(f"{what}: <code>{e(str(folder))}</code>")
    facts = [f"{len(report.cases)} case{'s' if len(report.cases) != 1 else ''}",
             "labels: " + ", ".join(f"{e(n)} ({v})" for v, n in report.labels.items())]
    if report.has_reference:
        facts.append(f"NSD tolerance {tolerance_mm:g} mm")
    facts.append(f"written {datetime.now().strftime('%Y-%m-%d %H:%M')}")
    parts = [
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">', f"<title>{e(title)}</title>",
        f"<style>{_CSS}</style>", "</head>", "<body>", "<header>", f"<h1>{e(title)}</h1>",
        '<p class="meta">' + " &middot; ".join(meta) + "</p>", '<p class="meta">' + " &middot; ".join(facts) + "</p>",
        "</header>", "<main>",
        '<section id="legend"><h2>Legend</h2>', _legend_html(report),
        '<p class="note">Contours: one colour per source, one line style per label. '
        + ("" if has_images else "No images were given (-i): contours are drawn on black. ")
        + "Each case shows the slice where the labels are largest"
        + (", the slice of the worst error" if report.has_reference else
           (", the slice SAM changed most" if report.has_coarse else ""))
        + " and the middle of the foreground.</p></section>",
    ]
    if report.has_reference or report.has_coarse:
        parts.append('<section id="summary"><h2>Summary</h2>')
        if report.has_reference:
            parts.append(_means_html(report))
        if plots:
            parts.append('<div class="plots">')
            for value, png in plots.items():
                name = e(report.labels[value])
                parts.append(f'<figure><img src="{_data_uri(png)}" alt="summary plot of {name}"></figure>')
            parts.append("</div>")
        parts.append("</section>")
        order = ("lowest mean Dice first" if report.has_reference else "most changed first")
        parts += ['<section id="cases"><h2>Cases</h2>',
                  f'<p class="note">Worst first ({order}); click a column header to sort, a case to see it. '
                  + ("Dice and NSD: higher is better; HD95: lower is better (∞: one of the masks is empty; "
                     "–: the label is absent from both). " if report.has_reference else "")
                  + ("Changed: share of the voxels in either map whose label SAM changed. " if report.has_coarse
                     else "") + "</p>", _table_html(report), "</section>"]
    parts.append('<section id="gallery" class="gallery"><h2>Gallery</h2>')
    for rank, c in enumerate(report.cases, 1):
        headline = f"#{rank} {e(c.case_id)}"
        if c.metrics is not None:
            headline += f" &middot; mean Dice {_fmt(c.mean_dice)}"
        elif c.changed is not None:
            headline += f" &middot; changed {100 * c.changed['all']:.1f}%"
        badges = "".join(f'<span class="badge">empty {w}</span>' for w in c.empty)
        parts += [f'<div class="case" id="case-{e(c.case_id)}">', f"<h3>{headline}{badges}</h3>",
                  f'<p class="scores">{_case_scores(report, c)}</p>',
                  f'<img src="{_data_uri(c.png)}" alt="slices of {e(c.case_id)}">', "</div>"]
    parts += ["</section>", "</main>", f"<script>{_JS}</script>", "</body>", "</html>"]
    return "\n".join(parts) + "\n"
