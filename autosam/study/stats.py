"""Paired statistics of a study: each method against a baseline on the same (repeat, test case) pairs.

A case's value is its Dice averaged over labels. Two methods are compared only on identical ``(repeat, case)``
keys (:func:`pair` refuses unequal sets), by the mean paired difference with a 95% hierarchical bootstrap interval
(:func:`hierarchical_ci`: repeats resampled, then cases within each chosen repeat; :func:`crossed_ci` when every
repeat tests the same cases: one case draw shared by the drawn repeats), wins, losses and ties (ties
within :data:`autosam.tune.TIE`) and a two-sided Wilcoxon signed-rank p. Imports only numpy, scipy and
:data:`autosam.tune.TIE`.

>>> compare({(0, "c1"): 0.82, (0, "c2"): 0.80}, {(0, "c1"): 0.80, (0, "c2"): 0.79})["diff"]   # 0.015
"""
from __future__ import annotations

import warnings
from typing import Mapping, Sequence

import numpy as np

from ..errors import AutosamError
from ..tune import TIE

#: Bootstrap resamples and the generator's seed (fixed: the same scores give the same interval).
RESAMPLES = 2000
SEED = 0
#: A case of a study: ``(repeat, case id)``.
Key = tuple


def pair(values: Mapping[Key, float], base: Mapping[Key, float]) -> tuple[list[Key], np.ndarray, np.ndarray]:
    """The sorted shared keys and the two value arrays in that order; unequal key sets are refused (one line), so
    nothing is ever compared on unpaired cases."""
    if set(values) != set(base):
        only = sorted(set(values) ^ set(base))
        raise AutosamError(f"cannot pair {len(values)} case(s) with {len(base)}: {len(only)} (repeat, case) key(s) "
                           f"are in only one of them, e.g. {only[0]}")
    keys = sorted(values)
    return keys, np.array([values[k] for k in keys], float), np.array([base[k] for k in keys], float)


def by_repeat(keys: Sequence[Key], values: np.ndarray) -> list[np.ndarray]:
    """``values`` (in the order of ``keys``) grouped by repeat, repeats in order."""
    groups: dict = {}
    for (repeat, _case), v in zip(keys, values):
        groups.setdefault(repeat, []).append(v)
    return [np.asarray(groups[r], float) for r in sorted(groups)]


def hierarchical_ci(groups: Sequence[np.ndarray], resamples: int = RESAMPLES, seed: int = SEED,
                    level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the pooled mean of ``groups`` (one array per repeat): each resample draws
    as many repeats as there are, with replacement, then each drawn repeat's cases with replacement, and takes the
    mean of all drawn cases. One repeat: the plain bootstrap over cases."""
    groups = [np.asarray(g, float) for g in groups if len(g)]
    if not groups:
        raise AutosamError("no case to bootstrap")
    rng = np.random.default_rng(seed)
    k = len(groups)
    picks = rng.integers(0, k, size=(resamples, k))
    sums, counts = np.zeros((resamples, k)), np.zeros((resamples, k))
    for r, g in enumerate(groups):
        drawn = g[rng.integers(0, len(g), size=(resamples, k, len(g)))].sum(axis=2)
        chosen = picks == r
        sums[chosen], counts[chosen] = drawn[chosen], len(g)
    means = sums.sum(axis=1) / counts.sum(axis=1)
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def crossed_ci(matrix: np.ndarray, resamples: int = RESAMPLES, seed: int = SEED,
               level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of a repeats x cases ``matrix`` whose repeats all test the same
    cases (a fixed test set, ``--test-cases``): each resample draws the repeats and the cases with replacement,
    one case draw shared by the drawn repeats (docs/protocol.md)."""
    m = np.asarray(matrix, float)
    if m.ndim != 2 or not m.size or not np.all(np.isfinite(m)):
        raise AutosamError("crossed_ci needs a finite repeats x cases matrix")
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, m.shape[0], size=(resamples, m.shape[0]))
    cols = rng.integers(0, m.shape[1], size=(resamples, m.shape[1]))
    means = m[rows[:, :, None], cols[:, None, :]].mean(axis=(1, 2))
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def mean_ci(values: Mapping[Key, float], **kwargs) -> tuple[float, float]:
    """The hierarchical bootstrap interval of one method's mean (e.g. a learning curve's error bar)."""
    keys = sorted(values)
    return hierarchical_ci(by_repeat(keys, np.array([values[k] for k in keys], float)), **kwargs)


def wins_losses_ties(diffs: Sequence[float]) -> tuple[int, int, int]:
    """Cases better, worse and tied (``|diff| <= TIE``) against the baseline."""
    diffs = np.asarray(diffs, float)
    wins, losses = int(np.sum(diffs > TIE)), int(np.sum(diffs < -TIE))
    return wins, losses, len(diffs) - wins - losses


def wilcoxon_p(diffs: Sequence[float]) -> float:
    """Two-sided Wilcoxon signed-rank p of the paired differences (1.0 when every difference is zero)."""
    from scipy.stats import wilcoxon

    diffs = np.asarray(diffs, float)
    if not np.any(diffs != 0):
        return 1.0
    with warnings.catch_warnings():  # zeros or ties: scipy falls back to the normal approximation and says so
        warnings.simplefilter("ignore")
        p = float(wilcoxon(diffs, alternative="two-sided").pvalue)
    return p if np.isfinite(p) else 1.0


def compare(values: Mapping[Key, float], base: Mapping[Key, float], resamples: int = RESAMPLES,
            seed: int = SEED) -> dict:
    """A method against the baseline on the same ``(repeat, case)`` keys: cases, repeats, both means, the mean
    difference and its 95% hierarchical bootstrap interval, wins/losses/ties and the Wilcoxon p (``all_equal``:
    every difference is zero, so p is reported as n/a)."""
    keys, a, b = pair(values, base)
    if not keys:
        raise AutosamError("no paired case to compare")
    diffs = a - b
    groups = by_repeat(keys, diffs)
    low, high = hierarchical_ci(groups, resamples, seed)
    wins, losses, ties = wins_losses_ties(diffs)
    return {"cases": len(keys), "repeats": len(groups), "per_repeat": sorted({len(g) for g in groups}),
            "mean": float(a.mean()), "baseline_mean": float(b.mean()), "diff": float(diffs.mean()),
            "ci_low": low, "ci_high": high, "wins": wins, "losses": losses, "ties": ties,
            "p": wilcoxon_p(diffs), "all_equal": not bool(np.any(diffs != 0))}
