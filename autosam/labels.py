"""The one label decision: per-label foreground probabilities -> nnU-Net-style distribution -> label map.

Every place that turns probabilities into labels (fusion, prompts, the oracle, the prompter) goes through
:func:`labels_from_probabilities`, so a voxel gets the same label wherever it is decided: background gets
``1 - sum_k p_k`` (at least 0), and the most probable of background and the labels wins, whatever their values.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


def to_distribution(foreground: np.ndarray) -> np.ndarray:
    """``(K, ...)`` foreground probabilities -> ``(K+1, ...)`` with background first, summing to 1 per voxel.

    Where the maps are an untouched softmax (nnU-Net's), the argmax is nnU-Net's own decision; where labels
    compete (sum above 1), the most probable label wins, whatever its value.
    """
    fg = np.asarray(foreground, dtype=np.float32)
    bg = np.clip(1.0 - fg.sum(axis=0, keepdims=True), 0.0, 1.0) if len(fg) else np.ones((1,) + fg.shape[1:])
    stacked = np.concatenate([bg.astype(np.float32), fg])
    return stacked / np.maximum(stacked.sum(axis=0, keepdims=True), 1e-6)


def to_segmentation(distribution: np.ndarray, labels: Sequence[int]) -> np.ndarray:
    """``(K+1, ...)`` background-first distribution -> int16 label map (argmax; ties go to the earlier channel)."""
    lut = np.asarray([0, *labels], dtype=np.int16)
    return lut[np.asarray(distribution).argmax(axis=0)]


def labels_from_probabilities(foreground: np.ndarray, labels: Sequence[int], axis: int = 0) -> np.ndarray:
    """Foreground probabilities with the labels along ``axis`` (``(K, ...)`` by default; ``axis=1`` for
    ``(S, K, h, w)`` slice stacks) -> int16 label map without that axis."""
    fg = np.moveaxis(np.asarray(foreground, dtype=np.float32), axis, 0)
    if len(labels) == 0:
        return np.zeros(fg.shape[1:], dtype=np.int16)
    return to_segmentation(to_distribution(fg), labels)


def dice_per_label(seg: np.ndarray, ref: np.ndarray, labels: Sequence[int]) -> list[float]:
    """Dice of each label value between two label maps (NaN where both are empty, as nnU-Net reports it)."""
    out = []
    for v in labels:
        a, b = seg == v, ref == v
        total = int(a.sum()) + int(b.sum())
        out.append(float("nan") if total == 0 else 2.0 * int((a & b).sum()) / total)
    return out
