"""SAM on one case: prompted slices encoded once, every prompt decoded, answers gathered per label.

The step between prompts (:mod:`autosam.prompts`) and fusion (:mod:`autosam.fusion`): both of those use
:class:`SamAnswer`, and neither imports the other's layer above.
"""
from __future__ import annotations

from dataclasses import dataclass, replace as dc_replace
from typing import Optional, Sequence

import numpy as np
import torch

from . import slicing
from .prompts import ClassPrompt
from .sam import SamPredictor, SamPrompt


@dataclass
class SamAnswer:
    """SAM's answer for one case.

    ``probabilities`` ``(K, Z, Y, X)``: per foreground label (in ``labels`` order), the max over that label's
    prompts of SAM's sigmoid, 0 where no prompt was given; ``prompted`` ``(K, S)``: which label got a prompt on
    which slice; ``iou`` ``(K, S)``: the mean predicted IoU of those prompts (0 elsewhere). ``overlap`` ``(K, 3)``
    (set by :func:`autosam.refine.refine_case`, else None): per label, voxels of SAM's mask (sigmoid above 0.5),
    of the coarse mask, and of both, for the label-free quality signals (:mod:`autosam.qc`).
    """

    labels: list[int]
    axis: int
    probabilities: np.ndarray
    prompted: np.ndarray
    iou: np.ndarray
    overlap: Optional[np.ndarray] = None


#: Box scales tried by ``box_hypotheses`` (about the box centre); SAM's predicted IoU picks one per prompt.
BOX_SCALES = (0.85, 1.0, 1.2)


def _scaled_box(box: np.ndarray, scale: float, size: tuple[int, int]) -> np.ndarray:
    x0, y0, x1, y1 = (float(v) for v in box)
    cx, cy, hw, hh = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2 * scale, (y1 - y0) / 2 * scale
    h, w = size
    return np.array([max(0.0, cx - hw), max(0.0, cy - hh), min(w - 1.0, cx + hw), min(h - 1.0, cy + hh)], np.float32)


def _reboxed(prompt: SamPrompt, logits: np.ndarray) -> Optional[SamPrompt]:
    """``prompt`` with its box redrawn around SAM's own mask (and SAM's logits as the mask prompt, if it had
    one); None when the mask is empty or the prompt has no box."""
    if prompt.box is None:
        return None
    ys, xs = np.nonzero(logits > 0)
    if len(ys) == 0:
        return None
    box = np.array([xs.min(), ys.min(), xs.max(), ys.max()], np.float32)
    mask = np.clip(logits, -20.0, 20.0).astype(np.float32) if prompt.mask is not None else None
    return dc_replace(prompt, box=box, mask=mask)


def _decode(predictor: SamPredictor, prompts: list[SamPrompt], box_hypotheses: bool, rebox: int
            ) -> tuple[list[np.ndarray], np.ndarray]:
    """Logits and predicted IoU per prompt, with the two localisation levers: ``box_hypotheses`` decodes each box
    at :data:`BOX_SCALES` and keeps the answer SAM rates highest; ``rebox`` times, each box is redrawn around
    SAM's own mask and decoded again."""
    if box_hypotheses:
        tried = [dc_replace(p, box=_scaled_box(p.box, s, predictor.sizes[p.slice_index]))
                 if p.box is not None and s != 1.0 else p for p in prompts for s in BOX_SCALES]
        result = predictor.predict(tried)
        n = len(BOX_SCALES)
        best = [i * n + int(np.argmax(result.iou[i * n:(i + 1) * n])) for i in range(len(prompts))]
        logits, iou = [result.logits[b] for b in best], result.iou[best]
        prompts = [tried[b] for b in best]
    else:
        result = predictor.predict(prompts)
        logits, iou = list(result.logits), np.asarray(result.iou)
    for _ in range(rebox):
        again = [(i, q) for i, q in ((i, _reboxed(p, logits[i])) for i, p in enumerate(prompts)) if q is not None]
        if not again:
            break
        redone = predictor.predict([q for _, q in again])
        for (i, q), lg, score in zip(again, redone.logits, redone.iou):
            prompts[i], logits[i], iou[i] = q, lg, score
    return logits, iou


def ask_sam(
    predictor: SamPredictor,
    image: np.ndarray,
    axis: int,
    prompts: Sequence[ClassPrompt],
    labels: Sequence[int],
    chunk: Optional[int] = None,
    box_hypotheses: bool = False,
    rebox: int = 0,
) -> SamAnswer:
    """Encode the prompted slices of a normalised ``(C, Z, Y, X)`` image (``chunk`` at a time) and decode prompts
    (``box_hypotheses``, ``rebox``: see :func:`_decode`).

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
        logits, scores = _decode(predictor, [dc_replace(cp.prompt, slice_index=local[cp.prompt.slice_index])
                                             for cp in batch], box_hypotheses, rebox)
        for cp, lg, score in zip(batch, logits, scores):
            k, s = label_pos[cp.label], cp.prompt.slice_index
            p = torch.sigmoid(torch.from_numpy(lg)).numpy()
            np.maximum(probs[k, s], p, out=probs[k, s])
            prompted[k, s] = True
            iou_sum[k, s] += score
            count[k, s] += 1
    iou = np.where(count > 0, iou_sum / np.maximum(count, 1), 0.0).astype(np.float32)
    probs = np.stack([slicing.from_slices(p[:, None], axis)[0] for p in probs]) if len(labels) else probs
    return SamAnswer(labels=list(labels), axis=axis, probabilities=probs, prompted=prompted, iou=iou)
