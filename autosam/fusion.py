"""Coarse (nnU-Net or prompter) + SAM -> fused foreground probabilities; strategies registered by name.

Every strategy takes the coarse foreground probabilities ``(K, Z, Y, X)`` (one map per foreground label), SAM's
:class:`~autosam.answers.SamAnswer` for the same labels, and its typed options (:data:`fusion_options`: one frozen
dataclass per strategy that takes any, the one place they are declared); it returns fused ``(K, Z, Y, X)``.
Where SAM got no prompt (``run.prompted`` is False for that label and slice) every strategy keeps the coarse map.
Labels are decided afterwards from the fused maps (:mod:`autosam.labels`): where two
labels compete for a voxel the more probable one wins, whatever their label values.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Callable, Mapping, Optional

import numpy as np

from .errors import AutosamError
from .answers import SamAnswer


@dataclass(frozen=True)
class AverageOptions:
    """Options of :func:`average`."""

    weight: float = field(default=0.5, metadata={"help": "SAM's weight"})


@dataclass(frozen=True)
class GatedOptions:
    """Options of :func:`gated`."""

    min_iou: float = field(default=0.8, metadata={"help": "SAM's predicted IoU needed"})
    min_agreement: float = field(default=0.5, metadata={"help": "Dice with the coarse slice needed"})


def _per_slice(run: SamAnswer, values: np.ndarray) -> np.ndarray:
    """Broadcast a ``(K, S)`` per-label, per-slice table onto ``(K, Z, Y, X)``."""
    shape = [values.shape[0], 1, 1, 1]
    shape[run.axis + 1] = values.shape[1]
    return values.reshape(shape)


def _where_prompted(run: SamAnswer, fused: np.ndarray, coarse: np.ndarray) -> np.ndarray:
    return np.where(_per_slice(run, run.prompted), fused, coarse).astype(np.float32)


def replace(coarse: np.ndarray, run: SamAnswer, options: None = None) -> np.ndarray:
    """SAM's probability wherever a prompt existed, the coarse one elsewhere."""
    return _where_prompted(run, run.probabilities, coarse)


def union(coarse: np.ndarray, run: SamAnswer, options: None = None) -> np.ndarray:
    """Voxel-wise maximum of both."""
    return np.maximum(coarse, run.probabilities).astype(np.float32)


def intersection(coarse: np.ndarray, run: SamAnswer, options: None = None) -> np.ndarray:
    """Voxel-wise minimum where SAM was prompted (SAM can only remove voxels)."""
    return _where_prompted(run, np.minimum(coarse, run.probabilities), coarse)


def average(coarse: np.ndarray, run: SamAnswer, options: AverageOptions = AverageOptions()) -> np.ndarray:
    """``weight * SAM + (1 - weight) * coarse`` where SAM was prompted (with a one-hot coarse map and
    ``weight`` 0.5 this can only remove coarse voxels that SAM gives a probability of 0)."""
    weight = options.weight
    return _where_prompted(run, weight * run.probabilities + (1 - weight) * coarse, coarse)


def slice_dice(a: np.ndarray, b: np.ndarray, axis: int) -> np.ndarray:
    """Dice of two ``(K, Z, Y, X)`` binary stacks per label and slice -> ``(K, S)`` (1 where both are empty)."""
    a_s = np.moveaxis(a, axis + 1, 1).reshape(a.shape[0], a.shape[axis + 1], -1)
    b_s = np.moveaxis(b, axis + 1, 1).reshape(b.shape[0], b.shape[axis + 1], -1)
    inter = (a_s & b_s).sum(-1)
    total = a_s.sum(-1) + b_s.sum(-1)
    return np.where(total > 0, 2 * inter / np.maximum(total, 1), 1.0)


def gated(coarse: np.ndarray, run: SamAnswer, options: GatedOptions = GatedOptions()) -> np.ndarray:
    """SAM (as in :func:`replace`) only on the label's slices where SAM's mean predicted IoU >= ``min_iou`` and
    its Dice with the coarse mask >= ``min_agreement``; the coarse map everywhere else."""
    agreement = slice_dice(run.probabilities > 0.5, coarse > 0.5, run.axis)
    keep = run.prompted & (run.iou >= options.min_iou) & (agreement >= options.min_agreement)
    return np.where(_per_slice(run, keep), run.probabilities, coarse).astype(np.float32)


#: Fusion strategy name -> function(coarse, run, options).
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


#: Fusion strategy name -> the type of its options, for the strategies that take any.
fusion_options: dict[str, type] = {"average": AverageOptions, "gated": GatedOptions}


def resolve(strategy: str, soft: bool) -> str:
    """The strategy that ``strategy`` names for a coarse map with (``soft``) or without probabilities."""
    return ("average" if soft else "gated") if strategy == AUTO else strategy


def option_names(strategy: str) -> tuple[str, ...]:
    """The options ``strategy`` takes, by name (``auto``: average's and gated's)."""
    kinds = (resolve(strategy, True), resolve(strategy, False)) if strategy == AUTO else (strategy,)
    return tuple(f.name for k in kinds if k in fusion_options for f in fields(fusion_options[k]))


def options_of(strategy: str, given: Mapping[str, float]) -> Optional[object]:
    """``strategy``'s typed options from the record's spelling, a dict of the options set (the rest at their
    defaults; None for a strategy without options); a name the strategy does not take is refused."""
    unknown = sorted(set(given) - set(option_names(strategy)))
    if unknown:
        takes = "; ".join(f"{k}: {', '.join(f.name for f in fields(t))}" for k, t in fusion_options.items())
        raise AutosamError(f"fusion option(s) {', '.join(unknown)} do not apply to fusion {strategy!r} ({takes})")
    kind = fusion_options.get(strategy)
    return None if kind is None else kind(**given)


def fuse(coarse: np.ndarray, run: SamAnswer, strategy: str = "replace", options: Optional[object] = None) -> np.ndarray:
    """Apply a named strategy with its typed ``options`` (None: its defaults); ``coarse`` and
    ``run.probabilities`` must both be ``(K, Z, Y, X)``."""
    if strategy not in fusion_strategies:
        raise AutosamError(f"unknown fusion strategy {strategy!r}; choose one of {', '.join(fusion_strategies)}")
    if coarse.shape != run.probabilities.shape:
        raise AutosamError(f"coarse probabilities {coarse.shape} and SAM's {run.probabilities.shape} differ in shape")
    kind = fusion_options.get(strategy)
    if options is None:
        options = None if kind is None else kind()
    elif kind is None or not isinstance(options, kind):
        raise AutosamError(f"fusion {strategy!r} takes {kind.__name__ if kind else 'no options'}, "
                           f"not {type(options).__name__}")
    return fusion_strategies[strategy](coarse, run, options)


__all__ = ["AverageOptions", "GatedOptions", "fusion_options", "fusion_strategies", "fuse", "option_names",
           "options_of", "slice_dice"] + list(fusion_strategies)
