"""Label or probability maps -> SAM prompts, per class, per slice, per connected component.

A prompt strategy is registered by name in :data:`prompt_strategies`; it turns one connected component of one
class on one slice into a :class:`~autosam.sam.SamPrompt` (``slice_index`` filled in later). Its ingredients:

- a box around the component, widened by a margin (pixels, or mm using the slice's in-plane spacing);
- positive points at interior maxima of the component's distance transform (the most "inside" pixels);
- negative points in a ring just outside the class mask (at 1-2x a distance that scales with the component);
- SAM's low-resolution mask prompt: the coarse probabilities of the class as logits, limited to the box.

Strategies: ``box``, ``box+points``, ``box+mask``, ``box+points+mask``, ``points``.
LiteMedSAM was trained with boxes only; see the README for the measured comparison behind the default.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional, Sequence

import numpy as np
from scipy import ndimage

from .errors import AutosamError
from .labels import labels_from_probabilities
from .sam import SamPrompt

#: 8-connectivity in 2D.
_FULL = np.ones((3, 3), dtype=bool)


@dataclass
class ClassPrompt:
    """A SAM prompt and the label value it is meant to segment."""

    label: int
    prompt: SamPrompt


#: the units a box margin takes
MARGIN_UNITS = ("mm", "px", "box")


@dataclass(frozen=True)
class Margin:
    """A box margin: ``value`` in ``unit`` (``mm``, the default everywhere, ``px`` or ``box``: a fraction of the
    component's box side)."""

    value: float = 0.0
    unit: str = "mm"

    def __str__(self) -> str:
        return f"{self.value:g}{self.unit}"

    def px(self, spacing: Sequence[float], box_hw: Sequence[float] = (1.0, 1.0)) -> tuple[float, float]:
        """The margin in pixels along (y, x) for an in-plane ``spacing`` (y, x) and a box of ``box_hw`` pixels."""
        if self.unit == "px":
            return float(self.value), float(self.value)
        if self.unit == "mm":
            return self.value / float(spacing[0]), self.value / float(spacing[1])
        if self.unit == "box":
            return self.value * float(box_hw[0]), self.value * float(box_hw[1])
        raise AutosamError(f"margin unit must be 'mm', 'px' or 'box', got {self.unit!r}")


@dataclass
class PromptOptions:
    """Knobs shared by all strategies.

    ``margin`` widens each box on every side, in ``margin_unit`` (``"px"``, ``"mm"`` or ``"box"``: a fraction of
    the component's box side); ``min_size`` (pixels)
    drops smaller components; ``positive_points``/``negative_points`` points per component; ``mask_logit`` bounds the
    logits of the mask prompt (a probability of 1 becomes ``+mask_logit``).
    """

    margin: float = 0.0
    margin_unit: str = "mm"  # Margin's default unit
    min_size: int = 1
    positive_points: int = 1
    negative_points: int = 1
    mask_logit: float = 8.0

    def margin_px(self, spacing: Sequence[float], box_hw: Sequence[float] = (1.0, 1.0)) -> tuple[float, float]:
        """The margin in pixels along (y, x) for an in-plane ``spacing`` (y, x) and a box of ``box_hw`` pixels."""
        return Margin(self.margin, self.margin_unit).px(spacing, box_hw)


#: A rectangle of a slice: ``(rows, columns)`` slices.
Window = tuple[slice, slice]


def components(mask: np.ndarray, min_size: int = 1) -> list[np.ndarray]:
    """Connected components (8-connected in 2D) of a binary mask with at least ``min_size`` pixels."""
    return [_full(crop, window, mask.shape) for window, crop in _components(mask, min_size)]


def _components(mask: np.ndarray, min_size: int = 1) -> Iterator[tuple[Window, np.ndarray]]:
    """Each component's bounding window and its binary crop there: the slice is labelled once, never compared
    with each label as a whole."""
    lab, n = ndimage.label(mask, structure=_FULL)
    if n == 0:
        return
    sizes = np.bincount(lab.ravel())[1:]
    for i, window in enumerate(ndimage.find_objects(lab)):
        if window is not None and sizes[i] >= min_size:
            yield window, lab[window] == i + 1


def _full(crop: np.ndarray, window: Window, shape: tuple[int, ...]) -> np.ndarray:
    out = np.zeros(shape, dtype=bool)
    out[window] = crop
    return out


def _window(mask: np.ndarray) -> Window:
    ys, xs = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    return slice(int(ys[0]), int(ys[-1]) + 1), slice(int(xs[0]), int(xs[-1]) + 1)


def bounding_box(mask: np.ndarray, margin: float | Sequence[float] = 0.0) -> np.ndarray:
    """``(x0, y0, x1, y1)`` of a non-empty binary mask, widened by ``margin`` pixels and clipped to the slice.

    ``margin`` is one number or ``(margin_y, margin_x)``.
    """
    my, mx = (float(margin), float(margin)) if np.isscalar(margin) else (float(margin[0]), float(margin[1]))
    ys, xs = np.nonzero(mask)
    h, w = mask.shape
    return np.array([
        max(0.0, xs.min() - mx), max(0.0, ys.min() - my),
        min(w - 1.0, xs.max() + mx), min(h - 1.0, ys.max() + my),
    ], dtype=np.float32)


def positive_points(component: np.ndarray, n: int = 1, spacing: Sequence[float] = (1.0, 1.0)) -> np.ndarray:
    """``(n', 2)`` x/y points at interior maxima of the distance transform of ``component`` (``n' <= n``).

    The first point is the pixel farthest from the border; each next one is the farthest pixel outside the
    disc already covered by the previous points, so several points spread over elongated shapes.
    """
    if n <= 0 or not component.any():
        return np.zeros((0, 2), dtype=np.float32)
    window = _window(component)
    return _positive_points(component[window], window, n, spacing)


def _positive_points(crop: np.ndarray, window: Window, n: int, spacing: Sequence[float]) -> np.ndarray:
    """:func:`positive_points` of the component whose bounding window is ``window`` and crop there ``crop``.

    Outside its bounding box the component is background, and the one-pixel zero ring around the crop is as near
    to every inside pixel as any background beyond it, so the crop's distance transform is the slice's."""
    dist = ndimage.distance_transform_edt(np.pad(crop, 1), sampling=spacing)[1:-1, 1:-1]
    yy, xx = np.indices(crop.shape)
    points = []
    for _ in range(max(0, n)):
        if dist.max() <= 0:
            break
        y, x = np.unravel_index(np.argmax(dist), dist.shape)
        points.append((x + window[1].start, y + window[0].start))
        radius = dist[y, x]
        covered = ((yy - y) * spacing[0]) ** 2 + ((xx - x) * spacing[1]) ** 2 <= radius ** 2
        dist = np.where(covered, 0.0, dist)
    return np.asarray(points, dtype=np.float32).reshape(-1, 2)


def negative_points(component: np.ndarray, class_mask: np.ndarray, n: int = 1) -> np.ndarray:
    """``(n', 2)`` x/y points outside ``class_mask``, in a ring around ``component``.

    The ring lies at ``r`` to ``2r`` pixels from the component, ``r = max(2, 0.15 * sqrt(area))``; the first
    point is the ring pixel closest to the component's centre of mass (where leaks into the background are most
    likely to start from), further ones are spread by farthest-point sampling.
    """
    if n <= 0 or not component.any():
        return np.zeros((0, 2), dtype=np.float32)
    window = _window(component)
    return _negative_points(component[window], window, class_mask, n)


def _negative_points(crop: np.ndarray, window: Window, class_mask: np.ndarray, n: int) -> np.ndarray:
    """:func:`negative_points` of the component with bounding window ``window`` and crop ``crop`` there.

    The ring lies within ``2r`` of the component, so it is found in the window widened by ``2r``; only when that
    ring is empty does the fallback (any pixel outside the class) need the whole slice."""
    if n <= 0:
        return np.zeros((0, 2), dtype=np.float32)
    area = int(crop.sum())
    r = max(2.0, 0.15 * np.sqrt(area))
    reach = int(np.floor(2 * r)) + 1
    h, w = class_mask.shape
    y0, x0 = max(0, window[0].start - reach), max(0, window[1].start - reach)
    wide = (slice(y0, min(h, window[0].stop + reach)), slice(x0, min(w, window[1].stop + reach)))
    component = np.zeros((wide[0].stop - y0, wide[1].stop - x0), dtype=bool)
    component[window[0].start - y0 : window[0].stop - y0, window[1].start - x0 : window[1].stop - x0] = crop
    outside = ndimage.distance_transform_edt(~component)
    ring = (outside >= r) & (outside <= 2 * r) & ~class_mask[wide]
    if not ring.any():  # rare: then the whole slice, as before
        y0 = x0 = 0
        component = _full(crop, window, class_mask.shape)
        outside = ndimage.distance_transform_edt(~component)
        ring = ~class_mask & (outside > 0)
    if not ring.any():
        return np.zeros((0, 2), dtype=np.float32)
    ys, xs = np.nonzero(ring)
    ys, xs = ys + y0, xs + x0
    cys, cxs = np.nonzero(crop)  # the centre of mass exactly as ndimage computes it on the whole slice
    cy = float(np.sum((cys + window[0].start).astype(float))) / area
    cx = float(np.sum((cxs + window[1].start).astype(float))) / area
    chosen = [int(np.argmin((ys - cy) ** 2 + (xs - cx) ** 2))]
    nearest = (ys - ys[chosen[0]]) ** 2 + (xs - xs[chosen[0]]) ** 2
    while len(chosen) < min(n, len(ys)):
        chosen.append(int(np.argmax(nearest)))
        nearest = np.minimum(nearest, (ys - ys[chosen[-1]]) ** 2 + (xs - xs[chosen[-1]]) ** 2)
    return np.stack([xs[chosen], ys[chosen]], axis=1).astype(np.float32)


def mask_logits(prob: np.ndarray, box: Optional[np.ndarray] = None, bound: float = 8.0) -> np.ndarray:
    """Probabilities ``(h, w)`` -> logits in ``[-bound, bound]`` for SAM's mask prompt; ``-bound`` outside ``box``."""
    eps = 1.0 / (1.0 + np.exp(bound))
    p = np.clip(prob.astype(np.float32), eps, 1 - eps)
    logits = np.log(p / (1 - p)).astype(np.float32)
    if box is not None:
        x0, y0, x1, y1 = (int(round(v)) for v in box)
        inside = np.zeros(prob.shape, dtype=bool)
        inside[y0 : y1 + 1, x0 : x1 + 1] = True
        logits[~inside] = -bound
    return logits


@dataclass
class Component:
    """What a strategy sees: one component, its whole class mask on the slice, the class probabilities (or the
    binary mask when none were given), the in-plane spacing (y, x) and the options."""

    mask: np.ndarray
    class_mask: np.ndarray
    prob: np.ndarray
    spacing: tuple[float, float]
    options: PromptOptions
    #: the component's bounding window (found from ``mask`` when not given)
    window: Optional[Window] = None
    #: what the components of one class on one slice share (the mask prompt's logits, computed once)
    shared: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.window is None and self.mask.any():
            self.window = _window(self.mask)

    def box(self) -> np.ndarray:
        rows, cols = self.window
        hw = (float(rows.stop - rows.start), float(cols.stop - cols.start))
        my, mx = self.options.margin_px(self.spacing, hw)
        h, w = self.mask.shape
        return np.array([max(0.0, cols.start - mx), max(0.0, rows.start - my),
                         min(w - 1.0, cols.stop - 1 + mx), min(h - 1.0, rows.stop - 1 + my)], dtype=np.float32)

    def points(self, negatives: bool = True) -> tuple[np.ndarray, np.ndarray]:
        crop = self.mask[self.window]
        pos = _positive_points(crop, self.window, self.options.positive_points, self.spacing)
        neg = _negative_points(crop, self.window, self.class_mask, self.options.negative_points if negatives else 0)
        labels = np.concatenate([np.ones(len(pos)), np.zeros(len(neg))]).astype(np.float32)
        return np.concatenate([pos, neg]).astype(np.float32), labels

    def mask_prompt(self, box: np.ndarray) -> np.ndarray:
        """:func:`mask_logits` of the class probabilities within ``box``; the logits are computed once per slice."""
        bound = self.options.mask_logit
        if self.shared.get("bound") != bound or self.shared.get("prob") is not self.prob:
            self.shared.update(bound=bound, prob=self.prob, logits=mask_logits(self.prob, None, bound))
        logits = self.shared["logits"]
        x0, y0, x1, y1 = (int(round(v)) for v in box)
        out = np.full(logits.shape, -bound, dtype=np.float32)
        out[y0 : y1 + 1, x0 : x1 + 1] = logits[y0 : y1 + 1, x0 : x1 + 1]
        return out


def _box(c: Component) -> SamPrompt:
    return SamPrompt(-1, box=c.box())


def _box_points(c: Component) -> SamPrompt:
    pts, lab = c.points()
    return SamPrompt(-1, box=c.box(), points=pts, point_labels=lab)


def _box_mask(c: Component) -> SamPrompt:
    box = c.box()
    return SamPrompt(-1, box=box, mask=c.mask_prompt(box))


def _box_points_mask(c: Component) -> SamPrompt:
    box = c.box()
    pts, lab = c.points()
    return SamPrompt(-1, box=box, points=pts, point_labels=lab, mask=c.mask_prompt(box))


def _points(c: Component) -> SamPrompt:
    pts, lab = c.points()
    return SamPrompt(-1, points=pts, point_labels=lab)


#: Strategy name -> function(Component) -> SamPrompt (``slice_index`` -1, filled in by :func:`prompts_for_slices`).
prompt_strategies: dict[str, Callable[[Component], SamPrompt]] = {
    "box": _box,
    "box+points": _box_points,
    "box+mask": _box_mask,
    "box+points+mask": _box_points_mask,
    "points": _points,
}


def fill_gaps(masks: np.ndarray) -> np.ndarray:
    """``(S, h, w)`` binary masks of one class; a slice without the class whose two neighbours both have it gets
    the neighbours' intersection (their union where they do not overlap). Returns a new array."""
    out = masks.copy()
    present = masks.reshape(len(masks), -1).any(axis=1)
    for s in range(1, len(masks) - 1):
        if not present[s] and present[s - 1] and present[s + 1]:
            both = masks[s - 1] & masks[s + 1]
            out[s] = both if both.any() else masks[s - 1] | masks[s + 1]
    return out


def prompts_for_slices(
    label_slices: Optional[np.ndarray],
    labels: Sequence[int],
    strategy: str = "box",
    margin: float = 0.0,
    min_size: int = 1,
    slice_indices: Optional[Sequence[int]] = None,
    *,
    prob_slices: Optional[np.ndarray] = None,
    spacing: Sequence[float] = (1.0, 1.0),
    margin_unit: str = "mm",
    positive_points: int = 1,
    negative_points: int = 1,
    mask_logit: float = 8.0,
    gaps: bool = False,
    max_objects: int = 0,
) -> list[ClassPrompt]:
    """Prompts for every class, slice and connected component of ``label_slices`` ``(S, h, w)``.

    ``max_objects`` (0: no limit) keeps only the largest components of a class on a slice: an object-count prior
    (one fetal head per image) that drops a coarse map's stray blobs before they become prompts.

    ``prob_slices`` ``(S, K, h, w)`` are the coarse probabilities of ``labels`` (same order), used for mask
    prompts; without ``label_slices`` the label map is their argmax. ``spacing`` is the in-plane (y, x) spacing
    (for mm margins and distances). With ``gaps``, a slice missing a class between two slices that have it gets
    prompts from its neighbours (:func:`fill_gaps`). ``slice_indices`` maps the position of each given slice to
    the index used for encoding (default: same).
    """
    if strategy not in prompt_strategies:
        raise AutosamError(f"unknown prompt strategy {strategy!r}; choose one of {', '.join(prompt_strategies)}")
    if label_slices is None:
        if prob_slices is None:
            raise AutosamError("prompts need a label map or probabilities")
        label_slices = labels_from_probabilities(prob_slices, labels, axis=1)
    options = PromptOptions(margin=margin, margin_unit=margin_unit, min_size=min_size, positive_points=positive_points,
                            negative_points=negative_points, mask_logit=mask_logit)
    options.margin_px(spacing)  # validates the unit
    make = prompt_strategies[strategy]
    spacing = (float(spacing[0]), float(spacing[1]))
    out = []
    for k, value in enumerate(labels):
        masks, filled = label_slices == value, None
        if gaps:
            gap_filled = fill_gaps(masks)
            filled = gap_filled.reshape(len(masks), -1).any(1) & ~masks.reshape(len(masks), -1).any(1)
            masks = gap_filled
        for s in range(len(masks)):
            if not masks[s].any():
                continue
            prob = _slice_probability(masks, prob_slices, k, s, filled)
            index = s if slice_indices is None else int(slice_indices[s])
            out += [ClassPrompt(int(value), p)
                    for p in _slice_prompts(masks[s], prob, make, spacing, options, max_objects, index)]
    return out


def _slice_probability(masks: np.ndarray, prob_slices: Optional[np.ndarray], k: int, s: int,
                       filled: Optional[np.ndarray]) -> np.ndarray:
    """Class ``k``'s probabilities on slice ``s``: the binary mask without probabilities, the mean of the two
    neighbours on a slice that gap filling (``filled``) gave the class, else the slice's own."""
    if prob_slices is None:
        return masks[s].astype(np.float32)
    if filled is not None and filled[s]:
        return 0.5 * (prob_slices[s - 1, k] + prob_slices[s + 1, k])
    return prob_slices[s, k]


def _slice_prompts(mask: np.ndarray, prob: np.ndarray, make: Callable[[Component], SamPrompt],
                   spacing: tuple[float, float], options: PromptOptions, max_objects: int,
                   index: int) -> list[SamPrompt]:
    """One prompt per component of one class's ``mask`` on one slice (at most the ``max_objects`` largest; 0: all),
    each with ``slice_index`` ``index``."""
    shared: dict = {}
    found = list(_components(mask, options.min_size))
    if max_objects and len(found) > max_objects:
        found = sorted(found, key=lambda wc: -int(wc[1].sum()))[:max_objects]
    prompts = []
    for window, crop in found:
        prompt = make(Component(_full(crop, window, mask.shape), mask, prob, spacing, options, window, shared))
        prompt.slice_index = index
        prompts.append(prompt)
    return prompts
