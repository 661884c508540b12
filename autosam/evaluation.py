"""Scores of a prediction folder against a reference folder: nnU-Net's summary plus surface metrics.

:func:`evaluate_folder` gives nnU-Net's ``summary.json`` content (Dice, IoU, TP, FP, FN, TN, n_pred, n_ref per case
and label, ``mean`` and ``foreground_mean``, computed with nnU-Net's own functions) with two more metrics per case
and label, honouring the voxel spacing:

- ``NSD``: normalised surface Dice at a tolerance in mm: the fraction of surface voxels of either mask lying within
  the tolerance of the other mask's surface (surface voxels = mask voxels with a 6-connected neighbour outside the
  mask or at the image border; a voxel count, not an area-weighted mesh). 1 if both masks are empty, 0 if one is.
- ``HD95``: the larger of the two directed 95th percentiles of surface-to-surface distances, in mm. 0 if both masks
  are empty, ``inf`` if exactly one is. Means over cases skip ``inf`` (and ``nan``); ``HD95_n_inf`` counts them.

Axes of length 1 (2D images read as ``(1, H, W)`` with nnU-Net's dummy spacing) are dropped before the surface
computation. Voxels of the ignore label in the reference are left out of every metric, as nnU-Net does.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from scipy import ndimage

from . import io
from .errors import AutosamError
from .progress import progress


def label_mean(summary: dict, value: int) -> dict:
    """The ``mean`` entry of one label in a summary (keys are ints in memory, strings once read from JSON)."""
    means = summary["mean"]
    return means[value] if value in means else means[str(value)]


def dice_table(summary: dict, info: io.DatasetInfo) -> str:
    """Per-label mean Dice of an nnU-Net summary as a small text table."""
    names = {v: k for k, v in info.labels.items()}
    rows = [f"{'label':<14}{'Dice':>8}"]
    for value in info.foreground:
        rows.append(f"{names[value]:<14}{label_mean(summary, value)['Dice']:>8.4f}")
    rows.append(f"{'mean':<14}{summary['foreground_mean']['Dice']:>8.4f}")
    return "\n".join(rows)


def _surface(mask: np.ndarray) -> np.ndarray:
    """Voxels of ``mask`` with a face neighbour outside it (the array border counts as outside)."""
    eroded = ndimage.binary_erosion(mask, structure=ndimage.generate_binary_structure(mask.ndim, 1), border_value=0)
    return mask & ~eroded


def surface_distances(a: np.ndarray, b: np.ndarray, spacing: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Distances (mm) from each surface voxel of ``a`` to the surface of ``b``, and from ``b``'s to ``a``'s.

    Both masks must be non-empty. Axes of length 1 are dropped first.
    """
    keep = [i for i, n in enumerate(a.shape) if n > 1] or [0]
    a, b = a.reshape([a.shape[i] for i in keep]), b.reshape([b.shape[i] for i in keep])
    spacing = [float(spacing[i]) for i in keep]
    # Crop to the union's bounding box plus one voxel: the crop's edge is then background in both masks (or the
    # image border), so surfaces and distances are the same as on the whole grid.
    union = np.argwhere(a | b)
    lo, hi = np.maximum(union.min(0) - 1, 0), np.minimum(union.max(0) + 2, a.shape)
    window = tuple(slice(int(start), int(stop)) for start, stop in zip(lo, hi))
    sa, sb = _surface(a[window]), _surface(b[window])
    to_b = ndimage.distance_transform_edt(~sb, sampling=spacing)
    to_a = ndimage.distance_transform_edt(~sa, sampling=spacing)
    return to_b[sa], to_a[sb]


def nsd_and_hd95(a: np.ndarray, b: np.ndarray, spacing: Sequence[float], tolerance_mm: float = 1.0
                 ) -> tuple[float, float]:
    """Normalised surface Dice at ``tolerance_mm`` and HD95 (mm) of two binary masks (rules in the module doc)."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    if a.shape != b.shape:
        raise AutosamError(f"masks of shapes {a.shape} and {b.shape} cannot be compared")
    empty_a, empty_b = not a.any(), not b.any()
    if empty_a and empty_b:
        return 1.0, 0.0
    if empty_a or empty_b:
        return 0.0, math.inf
    d_ab, d_ba = surface_distances(a, b, spacing)
    nsd = float(((d_ab <= tolerance_mm).sum() + (d_ba <= tolerance_mm).sum()) / (len(d_ab) + len(d_ba)))
    hd95 = float(max(np.percentile(d_ab, 95), np.percentile(d_ba, 95)))
    return nsd, hd95


def case_metrics(
    gt: np.ndarray,
    pred: np.ndarray,
    spacing: Sequence[float],
    labels: Sequence[int],
    tolerance_mm: float = 1.0,
    ignore_label: Optional[int] = None,
) -> dict[int, dict]:
    """Per label: nnU-Net's metrics (Dice, IoU, FP, TP, FN, TN, n_pred, n_ref) plus NSD and HD95.

    ``gt``/``pred`` are label maps on the same grid with ``spacing`` per axis; voxels where ``gt`` holds
    ``ignore_label`` count for nothing.
    """
    from nnunetv2.evaluation.evaluate_predictions import compute_tp_fp_fn_tn

    gt, pred = np.asarray(gt), np.asarray(pred)
    if gt.shape != pred.shape:
        raise AutosamError(f"reference shape {gt.shape} differs from prediction shape {pred.shape}")
    ignore = gt == ignore_label if ignore_label is not None else None
    out = {}
    for label in labels:
        ref, hyp = gt == label, pred == label
        tp, fp, fn, tn = (int(v) for v in compute_tp_fp_fn_tn(ref, hyp, ignore))
        m: dict = {}
        m["Dice"] = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else math.nan
        m["IoU"] = tp / (tp + fp + fn) if tp + fp + fn else math.nan
        m.update(FP=fp, TP=tp, FN=fn, TN=tn, n_pred=fp + tp, n_ref=fn + tp)
        if ignore is not None:
            hyp = hyp & ~ignore
        m["NSD"], m["HD95"] = nsd_and_hd95(ref, hyp, spacing, tolerance_mm)
        out[int(label)] = m
    return out


def finite_mean(values: Sequence[Optional[float]]) -> float:
    """Mean of the finite values (None, nan and inf skipped); nan if there are none."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(finite)) if finite else math.nan


def summarise(per_case: list[dict], labels: Sequence[int]) -> dict:
    """nnU-Net's ``mean`` (per label, nan and inf skipped) and ``foreground_mean`` (mean of the label means)."""
    means = {}
    for label in labels:
        keys = per_case[0]["metrics"][label].keys() if per_case else []
        means[label] = {k: finite_mean([c["metrics"][label][k] for c in per_case]) for k in keys}
        if per_case:
            means[label]["HD95_n_inf"] = sum(math.isinf(c["metrics"][label]["HD95"]) for c in per_case)
    keys = next(iter(means.values())).keys() if means else []
    foreground = {k: float(np.mean([means[label][k] for label in labels])) for k in keys}
    if "HD95_n_inf" in foreground:
        foreground["HD95_n_inf"] = int(sum(means[label]["HD95_n_inf"] for label in labels))
    return {"mean": means, "foreground_mean": foreground}


def evaluate_folder(
    gt_dir: str | os.PathLike,
    pred_dir: str | os.PathLike,
    info: io.DatasetInfo,
    output_file: Optional[str | os.PathLike] = None,
    tolerance_mm: float = 1.0,
) -> dict:
    """Score every ``<case><file_ending>`` of ``pred_dir`` against ``gt_dir``: nnU-Net's summary content with NSD
    and HD95 added per case and label (and the tolerance under ``"NSD_tolerance_mm"``); written atomically to
    ``output_file`` (nnU-Net's summary.json format) when given."""
    from nnunetv2.evaluation.evaluate_predictions import save_summary_json
    from nnunetv2.utilities.json_export import recursive_fix_for_json_export

    gt, pred = Path(gt_dir), Path(pred_dir)
    for folder, what in ((gt, "reference"), (pred, "prediction")):
        if not folder.is_dir():
            raise AutosamError(f"{what} folder not found: {folder}")
    if tolerance_mm < 0:
        raise AutosamError(f"tolerance must be >= 0 mm, got {tolerance_mm}")
    names = sorted(f.name for f in pred.iterdir()
                   if f.name.endswith(info.file_ending) and not f.name.startswith(".") and f.is_file())
    if not names:
        raise AutosamError(f"no {info.file_ending} predictions in {pred}")
    missing = [n for n in names if not (gt / n).is_file()]
    if missing:
        raise AutosamError(f"prediction {missing[0]} has no reference file in {gt}")
    rw = io.reader_writer(info.file_ending)
    per_case = []
    for name in progress(names, "evaluate"):
        ref, ref_props = io.read_label(gt / name, rw, info)
        hyp, hyp_props = io.read_label(pred / name, rw, info)
        if ref.shape != hyp.shape:
            raise AutosamError(f"{pred / name}: shape {hyp.shape} differs from the reference's {ref.shape}")
        io.check_same_geometry(ref_props, hyp_props, str(pred / name))
        metrics = case_metrics(ref, hyp, ref_props["spacing"], info.foreground, tolerance_mm, info.ignore_label)
        per_case.append({"reference_file": str(gt / name), "prediction_file": str(pred / name), "metrics": metrics})
    result = {"metric_per_case": per_case, **summarise(per_case, info.foreground), "NSD_tolerance_mm": tolerance_mm}
    recursive_fix_for_json_export(result)
    if output_file is not None:
        with io.atomic_output(output_file) as tmp:
            save_summary_json(result, str(tmp))
    return result


def summary_table(summary: dict, info: io.DatasetInfo) -> str:
    """One screen: per label mean Dice, IoU, NSD and HD95 (and how many cases had an infinite HD95)."""
    names = {v: k for k, v in info.labels.items()}
    tol = summary.get("NSD_tolerance_mm")
    nsd = f"NSD@{tol:g}mm" if tol is not None else "NSD"
    head = f"{'label':<16}{'Dice':>8}{'IoU':>8}{nsd:>12}{'HD95 mm':>10}{'inf':>5}"
    rows = [head, "-" * len(head)]

    def row(name, m, n_inf):
        return f"{name[:15]:<16}{m['Dice']:>8.4f}{m['IoU']:>8.4f}{m['NSD']:>12.4f}{m['HD95']:>10.2f}{n_inf:>5}"

    for value in info.foreground:
        m = label_mean(summary, value)
        rows.append(row(names.get(value, str(value)), m, int(m.get("HD95_n_inf", 0))))
    fg = summary["foreground_mean"]
    rows.append(row("foreground mean", fg, int(fg.get("HD95_n_inf", 0))))
    rows.append(f"{len(summary['metric_per_case'])} case(s); means skip nan (empty in both, nnU-Net's rule) and "
                f"inf HD95")
    return "\n".join(rows)
