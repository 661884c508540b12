"""The loop for one case: slices -> prompts -> SAM (each prompted slice encoded once) -> per-class probabilities.

And the loop over a folder: progress bar, skip finished cases, atomic writes (folders are set up by
:func:`autosam.export.prepare_folder`).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from . import io, slicing
from .errors import AutosamError
from .prompts import ClassPrompt, prompts_for_slices
from .sam import SamPredictor
from .sam.transforms import normalize_case


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
    chunk: int = 64,
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
    for start in range(0, len(wanted), chunk):
        part = wanted[start : start + chunk]
        local = {s: i for i, s in enumerate(part)}
        predictor.set_slices([slices[s] for s in part])
        batch = [cp for cp in prompts if cp.prompt.slice_index in local]
        sam_prompts = [_relocated(cp.prompt, local[cp.prompt.slice_index]) for cp in batch]
        result = predictor.predict(sam_prompts)
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


def _relocated(prompt, index: int):
    from dataclasses import replace

    return replace(prompt, slice_index=index)


def labels_from_probabilities(probabilities: np.ndarray, labels: Sequence[int], threshold: float = 0.5) -> np.ndarray:
    """``(K, Z, Y, X)`` foreground probabilities -> label map: the most probable label where it exceeds ``threshold``.

    Overlaps between labels are resolved by probability, never by label order.
    """
    if len(labels) == 0:
        return np.zeros(probabilities.shape[1:], dtype=np.uint8)
    best = probabilities.argmax(axis=0)
    lut = np.asarray(labels, dtype=np.int16)
    seg = lut[best]
    seg[probabilities.max(axis=0) <= threshold] = 0
    return seg


def oracle_prompts(label: np.ndarray, axis: int, labels: Sequence[int], margin: float = 0.0,
                   strategy: str = "box") -> list[ClassPrompt]:
    """Prompts taken from a reference label map ``(Z, Y, X)`` (the upper bound of automatic prompting)."""
    return prompts_for_slices(slicing.to_slices(label[None], axis)[:, 0], labels, strategy=strategy, margin=margin)


def segment_case_from_labels(
    predictor: SamPredictor,
    case: io.Case,
    label: np.ndarray,
    info: io.DatasetInfo,
    axis: Optional[int] = None,
    margin: float = 0.0,
) -> np.ndarray:
    """SAM with boxes taken from ``label`` -> a label map with the case's shape."""
    if label.shape != case.image.shape[1:]:
        raise AutosamError(f"case {case.case_id}: label shape {label.shape} differs from image shape "
                           f"{case.image.shape[1:]}")
    axis = slicing.choose_axis(case.spacing, label.shape, axis)
    image = normalize_case(case.image, info.channel_names)
    run = run_sam(predictor, image, axis, oracle_prompts(label, axis, info.foreground, margin), info.foreground)
    return labels_from_probabilities(run.probabilities, info.foreground)


def progress(items: Sequence, desc: str):
    """A tqdm progress bar on stderr (plain iteration when tqdm is unavailable)."""
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        return items
    return tqdm(items, desc=desc, unit="case", file=sys.stderr, dynamic_ncols=True)


def for_each_case(
    cases: dict[str, list[Path]],
    out_dir: Path,
    info: io.DatasetInfo,
    segment: Callable[[io.Case], np.ndarray],
    overwrite: bool = False,
    desc: str = "autosam",
) -> list[str]:
    """Read each pending case, call ``segment`` on it and write its label map; returns the cases written."""
    from .export import pending_cases

    todo = pending_cases(list(cases), out_dir, info.file_ending, overwrite=overwrite)
    rw = io.reader_writer(info.file_ending)
    for case_id in progress(todo, desc):
        case = io.read_case(case_id, cases[case_id], rw)
        seg = segment(case)
        io.write_seg(seg[None] if seg.ndim == 2 else seg, out_dir / f"{case_id}{info.file_ending}", case.properties, rw)
    return todo
