"""Label or probability maps -> SAM prompts, per class, per slice, per connected component.

Strategies are registered by name in :data:`prompt_strategies`; each takes a 2D binary mask of one class
on one slice and returns the prompts (without slice index) for it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np
from scipy import ndimage

from .sam import SamPrompt


@dataclass
class ClassPrompt:
    """A SAM prompt and the label value it is meant to segment."""

    label: int
    prompt: SamPrompt


def components(mask: np.ndarray, min_size: int = 1) -> list[np.ndarray]:
    """Connected components (8-connected in 2D) of a binary mask with at least ``min_size`` pixels."""
    lab, n = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    if n == 0:
        return []
    sizes = np.bincount(lab.ravel())[1:]
    return [lab == i + 1 for i in range(n) if sizes[i] >= min_size]


def bounding_box(mask: np.ndarray, margin: float = 0.0) -> np.ndarray:
    """``(x0, y0, x1, y1)`` of a non-empty binary mask, widened by ``margin`` pixels and clipped to the slice."""
    ys, xs = np.nonzero(mask)
    h, w = mask.shape
    return np.array([
        max(0.0, xs.min() - margin), max(0.0, ys.min() - margin),
        min(w - 1.0, xs.max() + margin), min(h - 1.0, ys.max() + margin),
    ], dtype=np.float32)


def box_prompts(mask: np.ndarray, margin: float = 0.0, min_size: int = 1) -> list[SamPrompt]:
    """One box per connected component."""
    return [SamPrompt(-1, box=bounding_box(c, margin)) for c in components(mask, min_size)]


#: Strategy name -> function(mask2d, margin, min_size) -> prompts with ``slice_index`` -1 (filled in later).
prompt_strategies: dict[str, Callable[..., list[SamPrompt]]] = {
    "box": box_prompts,
}


def prompts_for_slices(
    label_slices: np.ndarray,
    labels: Sequence[int],
    strategy: str = "box",
    margin: float = 0.0,
    min_size: int = 1,
    slice_indices: Optional[Sequence[int]] = None,
) -> list[ClassPrompt]:
    """Prompts for every class on every slice of ``label_slices`` ``(S, h, w)``.

    ``slice_indices`` maps the position of each given slice to the index used for encoding (default: same).
    """
    make = prompt_strategies[strategy]
    out = []
    for s, lab in enumerate(label_slices):
        for value in labels:
            for p in make(lab == value, margin=margin, min_size=min_size):
                p.slice_index = s if slice_indices is None else int(slice_indices[s])
                out.append(ClassPrompt(int(value), p))
    return out
