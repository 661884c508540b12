"""A SAM predictor that encodes each distinct slice once across calls (for comparing runs on the same images)."""
from __future__ import annotations

import hashlib
import time
from typing import Sequence

import numpy as np
import torch

from ..sam import SamPredictor


def slice_key(image: np.ndarray) -> str:
    """Content key of a normalised slice (shape and float32 bytes)."""
    a = np.ascontiguousarray(image, dtype=np.float32)
    return f"{a.shape}:{hashlib.sha1(a.tobytes()).hexdigest()}"


class CachingPredictor(SamPredictor):
    """:class:`~autosam.sam.SamPredictor` whose ``set_slices`` reuses embeddings of slices it has seen before.

    Used where several runs share slices (the demo's label-box and automatic runs, a benchmark's fusion
    strategies), so each slice pays the encoder once. ``clear()`` frees the memory (about 4 MB per slice).
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.cache: dict[str, torch.Tensor] = {}
        self.encoded = 0  # slices actually run through the encoder
        self.requested = 0  # slices asked for (encoded or found in the cache)
        self.encode_seconds = 0.0  # wall time spent in the encoder

    def set_slices(self, slices: Sequence[np.ndarray]) -> None:
        keys = [slice_key(s) for s in slices]
        todo: dict[str, int] = {}
        for i, k in enumerate(keys):
            if k not in self.cache and k not in todo:
                todo[k] = i
        self.requested += len(keys)
        if todo:
            t0 = time.perf_counter()
            super().set_slices([slices[i] for i in todo.values()])
            self.encode_seconds += time.perf_counter() - t0
            for k, emb in zip(todo, self.embeddings):
                self.cache[k] = emb
            self.encoded += len(todo)
        self.sizes = [tuple(np.asarray(s).shape[-2:]) for s in slices]
        self.embeddings = torch.stack([self.cache[k] for k in keys]) if keys else None

    def clear(self) -> None:
        self.cache.clear()
