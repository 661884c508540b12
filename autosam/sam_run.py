"""SAM on one case: prompted slices encoded once, every prompt decoded, answers gathered per label.

The step between prompts (:mod:`autosam.prompts`) and fusion (:mod:`autosam.fusion`): both of those use
:class:`SamRun`, and neither imports the other's layer above.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional, Sequence

import numpy as np
import torch

from . import slicing
from .prompts import ClassPrompt
from .sam import SamPredictor


@dataclass
class SamRun:
    """SAM's answer for one case.

    ``probabilities`` ``(K, Z, Y, X)``: per foreground label (in ``labels`` order), the max over that label's
    prompts of SAM's sigmoid, 0 where no prompt was given; ``prompted`` ``(K, S)``: which label got a prompt on
    which slice; ``iou`` ``(K, S)``: the mean predicted IoU of those prompts (0 elsewhere).
    """

    labels: list[int]
    axis: int
    probabilities: np.ndarray
    prompted: np.ndarray
    iou: np.ndarray


def run_sam(
    predictor: SamPredictor,
    image: np.ndarray,
    axis: int,
    prompts: Sequence[ClassPrompt],
    labels: Sequence[int],
    chunk: Optional[int] = None,
) -> SamRun:
    """Encode the prompted slices of a normalised ``(C, Z, Y, X)`` image (``chunk`` at a time) and decode prompts.

    Each prompt's ``slice_index`` is its position along ``axis``; slices without a prompt are never encoded.
    """
    slices = slicing.to_slices(image, axis)
    n_slices = slices.shape[0]
    label_pos = {int(v): k for k, v in enumerate(labels)}
    probs = np.zeros((len(labels), n_slices) + slices.shape[2:], dtype=np.float32)
    prompted = np.zeros((len(labels), n_slices), dtype=bool)
    iou_sum = np.zeros((len(labels), n_slices), dtype=np.float32)
    count = np.zeros((len(labels), n_slices), dtype=np.int32)
    wanted = sorted({cp.prompt.slice_index for cp in prompts})
    chunk = chunk or max(64, predictor.batch_size)  # slices held encoded at once; --batch-size above it is honoured
    for start in range(0, len(wanted), chunk):
        part = wanted[start : start + chunk]
        local = {s: i for i, s in enumerate(part)}
        predictor.set_slices([slices[s] for s in part])
        batch = [cp for cp in prompts if cp.prompt.slice_index in local]
        result = predictor.predict([replace(cp.prompt, slice_index=local[cp.prompt.slice_index]) for cp in batch])
        for cp, logits, score in zip(batch, result.logits, result.iou):
            k, s = label_pos[cp.label], cp.prompt.slice_index
            p = torch.sigmoid(torch.from_numpy(logits)).numpy()
            np.maximum(probs[k, s], p, out=probs[k, s])
            prompted[k, s] = True
            iou_sum[k, s] += score
            count[k, s] += 1
    iou = np.where(count > 0, iou_sum / np.maximum(count, 1), 0.0).astype(np.float32)
    probs = np.stack([slicing.from_slices(p[:, None], axis)[0] for p in probs]) if len(labels) else probs
    return SamRun(labels=list(labels), axis=axis, probabilities=probs, prompted=prompted, iou=iou)
