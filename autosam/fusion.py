"""Coarse (nnU-Net or prompter) + SAM -> fused foreground probabilities; strategies registered by name.

Every strategy takes the coarse foreground probabilities ``(K, Z, Y, X)`` (one map per foreground label), SAM's
:class:`~autosam.answers.SamAnswer` for the same labels, and keyword options; it returns fused ``(K, Z, Y, X)``.
Where SAM got no prompt (``run.prompted`` is False for that label and slice) every strategy keeps the coarse map.
Labels are decided afterwards from the fused maps (:mod:`autosam.labels`): where two
labels compete for a voxel the more probable one wins, whatever their label values.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from .errors import AutosamError
from .answers import SamAnswer


def _per_slice(run: SamAnswer, values: np.ndarray) -> np.ndarray:
    """Broadcast a ``(K, S)`` per-label, per-slice table onto ``(K, Z, Y, X)``."""
    shape = [values.shape[0], 1, 1, 1]
    shape[run.axis + 1] = values.shape[1]
    return values.reshape(shape)


def _where_prompted(run: SamAnswer, fused: np.ndarray, coarse: np.ndarray) -> np.ndarray:
    return np.where(_per_slice(run, run.prompted), fused, coarse).astype(np.float32)


def replace(coarse: np.ndarray, run: SamAnswer, **_) -> np.ndarray:
    """SAM's probability wherever a prompt existed, the coarse one elsewhere."""
    return _where_prompted(run, run.probabilities, coarse)


def union(coarse: np.ndarray, run: SamAnswer, **_) -> np.ndarray:
    """Voxel-wise maximum of both."""
    return np.maximum(coarse, run.probabilities).astype(np.float32)


def intersection(coarse: np.ndarray, run: SamAnswer, **_) -> np.ndarray:
    """Voxel-wise minimum where SAM was prompted (SAM can only remove voxels)."""
    return _where_prompted(run, np.minimum(coarse, run.probabilities), coarse)


def average(coarse: np.ndarray, run: SamAnswer, weight: float = 0.5, **_) -> np.ndarray:
    """``weight * SAM + (1 - weight) * coarse`` where SAM was prompted (with a one-hot coarse map and
    ``weight`` 0.5 this can only remove coarse voxels that SAM gives a probability of 0)."""
    return _where_prompted(run, weight * run.probabilities + (1 - weight) * coarse, coarse)


def slice_dice(a: np.ndarray, b: np.ndarray, axis: int) -> np.ndarray:
    """Dice of two ``(K, Z, Y, X)`` binary stacks per label and slice -> ``(K, S)`` (1 where both are empty)."""
    a_s = np.moveaxis(a, axis + 1, 1).reshape(a.shape[0], a.shape[axis + 1], -1)
    b_s = np.moveaxis(b, axis + 1, 1).reshape(b.shape[0], b.shape[axis + 1], -1)
    inter = (a_s & b_s).sum(-1)
    total = a_s.sum(-1) + b_s.sum(-1)
    return np.where(total > 0, 2 * inter / np.maximum(total, 1), 1.0)


def gated(coarse: np.ndarray, run: SamAnswer, min_iou: float = 0.8, min_agreement: float = 0.5, **_) -> np.ndarray:
    """SAM (as in :func:`replace`) only on the label's slices where SAM's mean predicted IoU >= ``min_iou`` and
    its Dice with the coarse mask >= ``min_agreement``; the coarse map everywhere else."""
    agreement = slice_dice(run.probabilities > 0.5, coarse > 0.5, run.axis)
    keep = run.prompted & (run.iou >= min_iou) & (agreement >= min_agreement)
    return np.where(_per_slice(run, keep), run.probabilities, coarse).astype(np.float32)


#: Fusion strategy name -> function(coarse, run, **options).
fusion_strategies: dict[str, Callable[..., np.ndarray]] = {
    "replace": replace,
    "union": union,
    "intersection": intersection,
    "average": average,
    "gated": gated,
}


#: Not a strategy of its own: ``average`` where the coarse map carries probabilities, ``gated`` on a hard label map
#: (there an average of a 0/1 map and SAM ties at 0.5 and acts as an intersection). Resolve it with :func:`resolve`.
AUTO = "auto"


def resolve(strategy: str, soft: bool) -> str:
    """The strategy that ``strategy`` names for a coarse map with (``soft``) or without probabilities."""
    return ("average" if soft else "gated") if strategy == AUTO else strategy


def fuse(coarse: np.ndarray, run: SamAnswer, strategy: str = "replace", **options) -> np.ndarray:
    """Apply a named strategy; ``coarse`` and ``run.probabilities`` must both be ``(K, Z, Y, X)``."""
    if strategy not in fusion_strategies:
        raise AutosamError(f"unknown fusion strategy {strategy!r}; choose one of {', '.join(fusion_strategies)}")
    if coarse.shape != run.probabilities.shape:
        raise AutosamError(f"coarse probabilities {coarse.shape} and SAM's {run.probabilities.shape} differ in shape")
    return fusion_strategies[strategy](coarse, run, **options)


__all__ = ["fusion_strategies", "fuse", "slice_dice"] + list(fusion_strategies)
