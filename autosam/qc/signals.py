"""Label-free quality signals of one case: per foreground label, from the coarse map, the final segmentation and
what SAM already reported while refining (no reference labels, no second SAM run; numpy and scipy only).

>>> rows = case_signals("case_1", info, coarse_seg, coarse_probs, final_seg, spacing, sam_iou=..., sam_prompted=...)
>>> rows[0]  # {"case": "case_1", "label": 1, "dice_coarse_final": 0.93, ..., "empty": 0.0}

Every signal is a finite float, defined for empty labels too (see :data:`SIGNALS`).
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, Optional, Sequence

import numpy as np
from scipy import ndimage

from .. import io

#: signal name -> what it means (the columns of ``quality.csv``, in this order)
SIGNALS = {
    "dice_coarse_final": "Dice between the coarse and the final label mask (1 when both are empty)",
    "dice_coarse_sam": "Dice between the coarse mask and SAM's own mask (sigmoid > 0.5); the final's Dice "
                       "with the coarse mask when SAM's overlap counts are not given",
    "dice_planes": "mean Dice between the per-plane label masks of a three-plane refinement (1 with one plane)",
    "sam_iou_mean": "SAM's predicted IoU, mean over the slices where the label was prompted (0 if none)",
    "sam_iou_min": "SAM's predicted IoU, minimum over those slices (0 if none)",
    "sam_slices": "slices where SAM was prompted for the label",
    "entropy_band": "mean binary entropy (bits) of the label's coarse probability in a band around the coarse "
                    "boundary (0 for an empty coarse mask or a hard label map)",
    "uncertain_share": "share of voxels of the coarse mask plus band whose top coarse probability is below the "
                       "confidence level (0.75)",
    "entropy_mean": "mean softmax entropy (over all classes, normalised to [0, 1]) in the coarse mask plus band: "
                    "the anchor a user has today",
    "volume_mm3": "volume of the final mask (voxels x spacing)",
    "volume_z": "z-score of that volume against the training labels' (0 without reference statistics)",
    "volume_absz": "absolute value of volume_z, capped at 10",
    "components": "connected components of the final mask (face connectivity)",
    "empty": "1 when the final mask is empty, else 0",
}


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two boolean masks; 1 when both are empty."""
    total = int(np.count_nonzero(a)) + int(np.count_nonzero(b))
    return 1.0 if total == 0 else 2.0 * int(np.count_nonzero(a & b)) / total


def _squeezed(mask: np.ndarray) -> np.ndarray:
    """The mask without axes of length one (a 2D image read as ``(1, Y, X)``), so morphology sees its real grid."""
    return mask.reshape([n for n in mask.shape if n > 1] or [1])


def boundary_band(mask: np.ndarray, width: int = 2) -> np.ndarray:
    """Voxels within ``width`` steps (face connectivity) of the mask's boundary, inside or outside; the image's
    edge is no boundary."""
    flat = _squeezed(mask.astype(bool))
    if width < 1 or not flat.any():
        return np.zeros(mask.shape, bool)
    structure = ndimage.generate_binary_structure(flat.ndim, 1)
    grown = ndimage.binary_dilation(flat, structure, iterations=width)
    shrunk = ndimage.binary_erosion(flat, structure, iterations=width, border_value=1)
    return (grown & ~shrunk).reshape(mask.shape)


def components(mask: np.ndarray) -> int:
    """Connected components of a boolean mask (face connectivity)."""
    flat = _squeezed(mask.astype(bool))
    return int(ndimage.label(flat, ndimage.generate_binary_structure(flat.ndim, 1))[1]) if flat.any() else 0


def _binary_entropy(p: np.ndarray) -> np.ndarray:
    p = np.clip(p.astype(np.float64), 1e-7, 1 - 1e-7)
    return -(p * np.log2(p) + (1 - p) * np.log2(1 - p))


def _softmax_entropy(probs: np.ndarray, where: np.ndarray) -> float:
    """Mean entropy over all classes, normalised by ``log(C)``, of the voxels in ``where``."""
    if not where.any() or probs.shape[0] < 2:
        return 0.0
    p = np.clip(probs[:, where].astype(np.float64), 1e-7, 1.0)
    return float(np.mean(-(p * np.log(p)).sum(axis=0)) / math.log(probs.shape[0]))


def _sam_iou(runs: Sequence[tuple[np.ndarray, np.ndarray]], k: int) -> tuple[float, float, float]:
    """Mean and minimum predicted IoU of label ``k`` over its prompted slices in every run, and their count."""
    values = np.concatenate([np.asarray(iou)[k][np.asarray(prompted)[k]] for prompted, iou in runs] or [[]])
    if values.size == 0:
        return 0.0, 0.0, 0.0
    return float(values.mean()), float(values.min()), float(values.size)


def _label_boxes(maps: Sequence[np.ndarray], labels: Sequence[int], margin: int) -> dict[int, tuple]:
    """Per label, the bounding box of its voxels in every map, grown by ``margin`` (clipped to the grid); one
    voxel where no map holds the label."""
    shape, top = maps[0].shape, max(labels, default=0)
    lo = {v: np.full(len(shape), np.iinfo(np.int64).max) for v in labels}
    hi = {v: np.full(len(shape), -1) for v in labels}
    for m in maps:
        found = ndimage.find_objects(np.clip(m, 0, None).astype(np.int32, copy=False), max_label=top)
        for v in labels:
            if found[v - 1] is not None:
                lo[v] = np.minimum(lo[v], [sl.start for sl in found[v - 1]])
                hi[v] = np.maximum(hi[v], [sl.stop for sl in found[v - 1]])
    return {v: tuple(slice(max(0, int(a) - margin), min(n, int(b) + margin)) for a, b, n in zip(lo[v], hi[v], shape))
            if hi[v][0] >= 0 else tuple(slice(0, 1) for _ in shape) for v in labels}


def _plane_dice(planes: Sequence[np.ndarray], value: int) -> float:
    masks = [p == value for p in planes]
    pairs = [dice(masks[i], masks[j]) for i in range(len(masks)) for j in range(i + 1, len(masks))]
    return float(np.mean(pairs)) if pairs else 1.0


def _volume(mask: np.ndarray, spacing: Sequence[float]) -> float:
    return float(np.count_nonzero(mask)) * float(np.prod([float(s) for s in spacing]))


def _coarse_uncertainty(coarse: np.ndarray, probs: Optional[np.ndarray], k: int, band: int, confident: float
                        ) -> tuple[float, float, float]:
    """``entropy_band``, ``uncertain_share`` and ``entropy_mean`` of label ``k``'s coarse mask."""
    if probs is None or not coarse.any():
        return 0.0, 0.0, 0.0
    ring = boundary_band(coarse, band)
    region = coarse | ring
    entropy_band = float(_binary_entropy(probs[k + 1][ring]).mean()) if ring.any() else 0.0
    uncertain = float(np.mean(probs[:, region].max(axis=0) < confident))
    return entropy_band, uncertain, _softmax_entropy(probs, region)


def case_signals(
    case_id: str,
    info: io.DatasetInfo,
    coarse_seg: np.ndarray,
    coarse_probs: Optional[np.ndarray],
    final_seg: np.ndarray,
    spacing: Sequence[float],
    *,
    sam_runs: Sequence[tuple[np.ndarray, np.ndarray]] = (),
    sam_overlap: Optional[np.ndarray] = None,
    plane_segs: Sequence[np.ndarray] = (),
    volume_stats: Optional[Mapping[Any, Sequence[float]]] = None,
    band: int = 2,
    confident: float = 0.75,
) -> list[dict]:
    """One row per foreground label: ``{"case", "label", <each of SIGNALS>}``.

    ``coarse_seg``/``final_seg`` are ``(Z, Y, X)`` label maps, ``coarse_probs`` the coarse ``(C, Z, Y, X)``
    softmax (background first; None for a hard label map); ``sam_runs`` SAM's ``(prompted, iou)`` arrays
    ``(K, S)`` per plane; ``sam_overlap`` ``(K, 3)`` voxel counts of SAM's mask, the coarse mask and both (summed
    over planes); ``plane_segs`` the per-plane label maps; ``volume_stats`` label -> (mean, std) volume in mm³
    (:func:`reference_volumes`); ``band`` the boundary band's width in voxels.
    """
    rows = []
    boxes = _label_boxes([coarse_seg, final_seg, *plane_segs], info.foreground, band + 1)
    for k, value in enumerate(info.foreground):
        box = boxes[value]  # every map's voxels of the label, and the band, lie inside: the work stays small
        coarse, final = coarse_seg[box] == value, final_seg[box] == value
        planes = [p[box] for p in plane_segs]
        probs = None if coarse_probs is None else coarse_probs[(slice(None), *box)]
        row: dict = {"case": case_id, "label": int(value), "dice_coarse_final": dice(coarse, final)}
        if sam_overlap is not None:
            n_sam, n_coarse, both = (int(v) for v in np.asarray(sam_overlap)[k])
            row["dice_coarse_sam"] = 1.0 if n_sam + n_coarse == 0 else 2.0 * both / (n_sam + n_coarse)
        else:
            row["dice_coarse_sam"] = row["dice_coarse_final"]
        row["dice_planes"] = _plane_dice(planes, value)
        row["sam_iou_mean"], row["sam_iou_min"], row["sam_slices"] = _sam_iou(sam_runs, k)
        row["entropy_band"], row["uncertain_share"], row["entropy_mean"] = _coarse_uncertainty(
            coarse, probs, k, band, confident)
        volume = _volume(final, spacing)
        stats = (volume_stats or {}).get(str(value)) or (volume_stats or {}).get(value)
        z = 0.0 if not stats else (volume - float(stats[0])) / max(float(stats[1]), 1e-6 * max(float(stats[0]), 1.0))
        z = float(np.clip(z, -1e3, 1e3))
        row.update(volume_mm3=volume, volume_z=z, volume_absz=min(abs(z), 10.0), components=float(components(final)),
                   empty=float(not final.any()))
        rows.append(row)
    return rows


def refined_signals(case_id: str, info: io.DatasetInfo, coarse_seg: np.ndarray, coarse_probs: Optional[np.ndarray],
                    refined, spacing: Sequence[float], volume_stats: Optional[Mapping] = None, **options) -> list[dict]:
    """:func:`case_signals` of a :class:`autosam.refine.Refined` result (read, not imported: this layer sits below
    refine), from what its SAM run(s) already hold: per-slice IoU, the SAM/coarse overlap counts, the planes."""
    runs = list(refined.plane_runs) or [refined.sam]
    overlaps = [r.overlap for r in runs if getattr(r, "overlap", None) is not None]
    overlap = np.sum(overlaps, axis=0) if len(overlaps) == len(runs) else None
    return case_signals(case_id, info, coarse_seg, coarse_probs, refined.segmentation, spacing,
                        sam_runs=[(r.prompted, r.iou) for r in runs], sam_overlap=overlap,
                        plane_segs=list(refined.plane_segmentations), volume_stats=volume_stats, **options)


def label_volumes(path, info: io.DatasetInfo) -> dict[str, float]:
    """Per foreground label (its value as a string): the volume in mm³ of one reference label file."""
    seg, props = io.read_label(path, info=info)
    return {str(v): _volume(seg == v, props["spacing"]) for v in info.foreground}


def volume_statistics(volumes: Sequence[Mapping[str, float]], info: io.DatasetInfo) -> dict[str, list[float]]:
    """Per foreground label: ``[mean, std]`` of :func:`label_volumes` results (0 without any)."""
    out = {}
    for value in info.foreground:
        v = [vol[str(value)] for vol in volumes]
        out[str(value)] = [float(np.mean(v)) if v else 0.0, float(np.std(v)) if v else 0.0]
    return out


def reference_volumes(label_files: Iterable, info: io.DatasetInfo) -> dict[str, list[float]]:
    """Per foreground label (its value as a string, as JSON keys are): ``[mean, std]`` of the volume in mm³ over
    the given reference label files (training labels)."""
    return volume_statistics([label_volumes(path, info) for path in label_files], info)
