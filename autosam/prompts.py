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

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np
from scipy import ndimage

from .errors import AutosamError
from .sam import SamPrompt

#: 8-connectivity in 2D.
_FULL = np.ones((3, 3), dtype=bool)


@dataclass
class ClassPrompt:
    """A SAM prompt and the label value it is meant to segment."""

    label: int
    prompt: SamPrompt


@dataclass
class PromptOptions:
    """Knobs shared by all strategies.

    ``margin`` widens each box on every side, in ``margin_unit`` (``"px"`` or ``"mm"``); ``min_size`` (pixels)
    drops smaller components; ``n_positive``/``n_negative`` points per component; ``mask_logit`` bounds the
    logits of the mask prompt (a probability of 1 becomes ``+mask_logit``).
    """

    margin: float = 0.0
    margin_unit: str = "px"
    min_size: int = 1
    n_positive: int = 1
    n_negative: int = 1
    mask_logit: float = 8.0

    def margin_px(self, spacing: Sequence[float]) -> tuple[float, float]:
        """The margin in pixels along (y, x) for an in-plane ``spacing`` (y, x)."""
        if self.margin_unit == "px":
            return float(self.margin), float(self.margin)
        if self.margin_unit == "mm":
            return self.margin / float(spacing[0]), self.margin / float(spacing[1])
        raise AutosamError(f"margin unit must be 'px' or 'mm', got {self.margin_unit!r}")


def components(mask: np.ndarray, min_size: int = 1) -> list[np.ndarray]:
    """Connected components (8-connected in 2D) of a binary mask with at least ``min_size`` pixels."""
    lab, n = ndimage.label(mask, structure=_FULL)
    if n == 0:
        return []
    sizes = np.bincount(lab.ravel())[1:]
    return [lab == i + 1 for i in range(n) if sizes[i] >= min_size]


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


def box_prompts(mask: np.ndarray, margin: float = 0.0, min_size: int = 1) -> list[SamPrompt]:
    """One box per connected component (margin in pixels)."""
    return [SamPrompt(-1, box=bounding_box(c, margin)) for c in components(mask, min_size)]


def positive_points(component: np.ndarray, n: int = 1, spacing: Sequence[float] = (1.0, 1.0)) -> np.ndarray:
    """``(n', 2)`` x/y points at interior maxima of the distance transform of ``component`` (``n' <= n``).

    The first point is the pixel farthest from the border; each next one is the farthest pixel outside the
    disc already covered by the previous points, so several points spread over elongated shapes.
    """
    dist = ndimage.distance_transform_edt(np.pad(component, 1), sampling=spacing)[1:-1, 1:-1]
    yy, xx = np.indices(component.shape)
    points = []
    for _ in range(max(0, n)):
        if dist.max() <= 0:
            break
        y, x = np.unravel_index(np.argmax(dist), dist.shape)
        points.append((x, y))
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
    if n <= 0:
        return np.zeros((0, 2), dtype=np.float32)
    r = max(2.0, 0.15 * np.sqrt(component.sum()))
    outside = ndimage.distance_transform_edt(~component)
    ring = (outside >= r) & (outside <= 2 * r) & ~class_mask
    if not ring.any():
        ring = ~class_mask & (outside > 0)
    if not ring.any():
        return np.zeros((0, 2), dtype=np.float32)
    ys, xs = np.nonzero(ring)
    cy, cx = ndimage.center_of_mass(component)
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

    def box(self) -> np.ndarray:
        return bounding_box(self.mask, self.options.margin_px(self.spacing))

    def points(self, negatives: bool = True) -> tuple[np.ndarray, np.ndarray]:
        pos = positive_points(self.mask, self.options.n_positive, self.spacing)
        neg = negative_points(self.mask, self.class_mask, self.options.n_negative if negatives else 0)
        labels = np.concatenate([np.ones(len(pos)), np.zeros(len(neg))]).astype(np.float32)
        return np.concatenate([pos, neg]).astype(np.float32), labels


def _box(c: Component) -> SamPrompt:
    return SamPrompt(-1, box=c.box())


def _box_points(c: Component) -> SamPrompt:
    pts, lab = c.points()
    return SamPrompt(-1, box=c.box(), points=pts, point_labels=lab)


def _box_mask(c: Component) -> SamPrompt:
    box = c.box()
    return SamPrompt(-1, box=box, mask=mask_logits(c.prob, box, c.options.mask_logit))


def _box_points_mask(c: Component) -> SamPrompt:
    box = c.box()
    pts, lab = c.points()
    return SamPrompt(-1, box=box, points=pts, point_labels=lab, mask=mask_logits(c.prob, box, c.options.mask_logit))


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


def labels_from_probabilities(prob_slices: np.ndarray, labels: Sequence[int]) -> np.ndarray:
    """``(S, K, h, w)`` foreground probabilities -> ``(S, h, w)`` label map (most probable label above 0.5)."""
    best = np.asarray(labels, dtype=np.int16)[prob_slices.argmax(axis=1)]
    return np.where(prob_slices.max(axis=1) > 0.5, best, 0).astype(np.int16)


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
    margin_unit: str = "px",
    n_positive: int = 1,
    n_negative: int = 1,
    mask_logit: float = 8.0,
    gaps: bool = False,
) -> list[ClassPrompt]:
    """Prompts for every class, slice and connected component of ``label_slices`` ``(S, h, w)``.

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
        label_slices = labels_from_probabilities(prob_slices, labels)
    options = PromptOptions(margin=margin, margin_unit=margin_unit, min_size=min_size, n_positive=n_positive,
                            n_negative=n_negative, mask_logit=mask_logit)
    options.margin_px(spacing)  # validates the unit
    make = prompt_strategies[strategy]
    spacing = (float(spacing[0]), float(spacing[1]))
    out = []
    for k, value in enumerate(labels):
        masks = label_slices == value
        if gaps:
            filled = fill_gaps(masks)
            new = filled.reshape(len(masks), -1).any(1) & ~masks.reshape(len(masks), -1).any(1)
            masks = filled
        for s in range(len(masks)):
            if not masks[s].any():
                continue
            if prob_slices is None:
                prob = masks[s].astype(np.float32)
            elif gaps and new[s]:
                prob = 0.5 * (prob_slices[s - 1, k] + prob_slices[s + 1, k])
            else:
                prob = prob_slices[s, k]
            for comp in components(masks[s], min_size):
                p = make(Component(comp, masks[s], prob, spacing, options))
                p.slice_index = s if slice_indices is None else int(slice_indices[s])
                out.append(ClassPrompt(int(value), p))
    return out
