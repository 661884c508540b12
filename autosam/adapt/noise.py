"""Prompts drawn from a label component with the noise automatic prompts have (shifted, too large or too
small boxes; a few scattered points), so an adapted model learns not to trust the prompt's outline."""
from __future__ import annotations

from typing import Optional

import numpy as np

from .config import PromptNoise


def noisy_box(mask: np.ndarray, noise: PromptNoise, rng: np.random.Generator) -> np.ndarray:
    """``(x0, y0, x1, y1)`` around a non-empty binary ``mask``: each edge widened by a random margin and
    shifted by Gaussian jitter (both relative to the box side), clipped to the slice, never empty."""
    ys, xs = np.nonzero(mask)
    box = np.array([xs.min(), ys.min(), xs.max(), ys.max()], dtype=np.float64)
    return perturb_box(box, mask.shape, noise.margin, noise.jitter, rng)


def perturb_box(box: np.ndarray, hw: tuple[int, int], margin: float, jitter: float,
                rng: np.random.Generator) -> np.ndarray:
    """``box`` ``(x0, y0, x1, y1)`` with each edge widened by a margin drawn in ``[0, margin]`` and shifted by
    Gaussian ``jitter`` (both relative to the box side), clipped to a slice of ``hw``, never empty."""
    h, w = hw
    box = np.asarray(box, dtype=np.float64)
    side = np.array([box[2] - box[0] + 1, box[3] - box[1] + 1] * 2)
    grow = rng.uniform(0, margin, 4) * side * np.array([-1, -1, 1, 1])
    box = box + grow + rng.normal(0, jitter, 4) * side
    box[0::2] = np.clip(box[0::2], 0, w - 1)
    box[1::2] = np.clip(box[1::2], 0, h - 1)
    for lo, hi, size in ((0, 2, w), (1, 3, h)):
        if box[hi] - box[lo] < 1:  # collapsed by the jitter: a 2-pixel box around the middle
            mid = np.clip((box[lo] + box[hi]) / 2, 1, size - 2)
            box[lo], box[hi] = mid - 1, mid + 1
    return box.astype(np.float32)


def noisy_points(mask: np.ndarray, noise: PromptNoise, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """1 to ``max_points`` positive points inside ``mask`` and maybe one negative point in its box, outside it.

    Returns ``(K, 2)`` x/y coordinates and ``(K,)`` labels (1 positive, 0 negative).
    """
    ys, xs = np.nonzero(mask)
    k = int(rng.integers(1, noise.max_points + 1))
    pick = rng.choice(len(xs), size=min(k, len(xs)), replace=False)
    points = [np.stack([xs[pick], ys[pick]], axis=1).astype(np.float32)]
    labels = [np.ones(len(pick), dtype=np.float32)]
    if rng.random() < noise.negative:
        y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        ny, nx = np.nonzero(~mask[y0:y1, x0:x1])
        if len(nx):
            j = int(rng.integers(len(nx)))
            points.append(np.array([[nx[j] + x0, ny[j] + y0]], dtype=np.float32))
            labels.append(np.zeros(1, dtype=np.float32))
    return np.concatenate(points), np.concatenate(labels)


def prompt_kind(noise: PromptNoise, rng: np.random.Generator) -> str:
    """``box``, ``points`` or ``box+points``, drawn among those ``noise.types`` allows."""
    kinds = list(noise.types) + (["box+points"] if len(noise.types) > 1 else [])
    return kinds[int(rng.integers(len(kinds)))]


def sample_prompt(
    mask: np.ndarray, kind: str, noise: PromptNoise, rng: np.random.Generator
) -> tuple[Optional[np.ndarray], Optional[np.ndarray], Optional[np.ndarray]]:
    """A prompt of ``kind`` for ``mask``: ``(box or None, points or None, point labels or None)`` in slice pixels."""
    box = noisy_box(mask, noise, rng) if "box" in kind else None
    points, labels = noisy_points(mask, noise, rng) if "points" in kind else (None, None)
    return box, points, labels
