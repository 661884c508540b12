"""Image embeddings computed once and kept on disk as memory-mapped numpy arrays.

For methods that leave the image encoder frozen, an epoch then costs decoder time only. One folder per
backend, checkpoint and dataset; one ``<case>_axis<a>.npy`` (float32 ``(n, 256, s, s)``) per case, with a
``.json`` beside it listing the slice indices of its rows. Files are written atomically, so an interrupted
build resumes at the first case not yet stored.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from ..io import atomic_output, write_json
from ..sam import transforms as T


def cache_folder(root: str | os.PathLike, model, dataset_dir: str | os.PathLike) -> Path:
    """``root/<backend>-<digest>``: digest of the checkpoint file and the dataset folder."""
    ckpt = str(getattr(model, "checkpoint", "") or "")
    stamp = ""
    if ckpt and Path(ckpt).is_file():
        st = Path(ckpt).stat()
        stamp = f"{st.st_size}-{int(st.st_mtime)}"
    key = f"{ckpt}|{stamp}|{Path(dataset_dir).resolve()}|{model.image_size}"
    return Path(root) / f"{model.name}-{hashlib.sha1(key.encode()).hexdigest()[:12]}"


class EmbeddingCache:
    """Embeddings of ``model``'s frozen encoder per case and slice, on disk under ``folder``."""

    def __init__(self, folder: str | os.PathLike, model, device: torch.device, batch_size: int = 8) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.model = model
        self.device = device
        self.batch_size = batch_size

    def _paths(self, case: str, axis: int) -> tuple[Path, Path]:
        stem = f"{case}_axis{axis}"
        return self.folder / f"{stem}.npy", self.folder / f"{stem}.json"

    def stored(self, case: str, axis: int) -> list[int]:
        """Slice indices already stored for a case (empty if none)."""
        arr, meta = self._paths(case, axis)
        if not (arr.is_file() and meta.is_file()):
            return []
        return [int(i) for i in json.loads(meta.read_text())["indices"]]

    def get(self, case: str, axis: int, indices: Sequence[int],
            images: Callable[[], Sequence[np.ndarray]]) -> np.ndarray:
        """Embeddings ``(len(indices), 256, s, s)`` (memory-mapped) of a case's slices in ``indices`` order.

        ``images()`` returns the ``(C, h, w)`` slices for ``indices``; it is called only if some are missing.
        """
        arr_path, meta_path = self._paths(case, axis)
        have = self.stored(case, axis)
        if not set(indices) <= set(have):
            self._build(case, axis, indices, images(), have)
            have = self.stored(case, axis)
        data = np.load(arr_path, mmap_mode="r")
        pos = {s: i for i, s in enumerate(have)}
        rows = [pos[s] for s in indices]
        if rows == list(range(len(have))):
            return data
        return data[rows]

    @torch.inference_mode()
    def _build(self, case: str, axis: int, indices: Sequence[int], images: Sequence[np.ndarray],
               have: list[int]) -> None:
        arr_path, meta_path = self._paths(case, axis)
        new = [(s, img) for s, img in zip(indices, images) if s not in set(have)]
        parts = [np.load(arr_path)] if have else []
        for start in range(0, len(new), self.batch_size):
            chunk = [img for _, img in new[start : start + self.batch_size]]
            canvas = T.to_canvas(chunk, self.model.image_size).to(self.device)
            parts.append(self.model.embed(canvas).float().cpu().numpy())
        all_indices = list(have) + [s for s, _ in new]
        with atomic_output(arr_path) as tmp:
            with open(tmp, "wb") as f:
                np.save(f, np.concatenate(parts).astype(np.float32))
        write_json({"case": case, "axis": axis, "indices": all_indices}, meta_path)
