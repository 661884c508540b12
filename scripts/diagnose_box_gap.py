"""Where an adapted SAM loses between boxes from the reference labels and boxes from an nnU-Net map: a diagnostic on
the test cases of an ``autosam study`` (its nnU-Net predictions with probabilities, its adapter, its embedding cache).

Part 1, slice choice against box geometry (SAM's masks alone, labels decided by probability):
``oracle`` (reference boxes), ``oracle@nn-slices`` (reference boxes only on the slices where nnU-Net found the
label), ``nn@gt-slices`` (nnU-Net's boxes only on the slices that hold the label) and ``nn-largest@gt-slices`` (its
largest component per slice and label). Part 2, nnU-Net's boxes on every slice, as they are and smoothed across
neighbouring slices (one box per label and slice; weights centre first), fused with nnU-Net's probabilities by
``replace`` and ``average``. Dice means over the test cases, per label in brackets.

    OMP_NUM_THREADS=2 python scripts/diagnose_box_gap.py --study /work/studies/hippocampus \\
        --data ../shared/data/hippocampus --run n10_s0
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
from scipy import ndimage

from autosam import io, slicing
from autosam.fusion import fuse
from autosam.labels import labels_from_probabilities
from autosam.oracle import oracle_prompts, segment_case_from_labels
from autosam.refine import coarse_foreground
from autosam.sam import build_sam
from autosam.sam.cache import CachingPredictor
from autosam.sam.transforms import normalize_case
from autosam.answers import ask_sam

from study_diagnostics import study_parts  # scripts/, beside this file

SMOOTHING = {"raw": None, "smooth 1-1": (1, 1), "smooth 2-1": (2, 1), "smooth 2-1-0.5": (2, 1, 0.5)}


def keep_slices(label: np.ndarray, axis: int, where: dict) -> np.ndarray:
    """``label`` with each label value kept only on the slices (along ``axis``) that ``where[value]`` marks."""
    out = np.zeros_like(label)
    for value, rows in where.items():
        shape = [1, 1, 1]
        shape[axis] = -1
        out[(label == value) & rows.reshape(shape)] = value
    return out


def slices_holding(label: np.ndarray, axis: int, values) -> dict:
    return {v: np.moveaxis(label == v, axis, 0).reshape(label.shape[axis], -1).any(1) for v in values}


def largest_per_slice(label: np.ndarray, axis: int, values) -> np.ndarray:
    out = np.zeros_like(label)
    for z in range(label.shape[axis]):
        src, dst = np.take(label, z, axis), np.moveaxis(out, axis, 0)[z]
        for v in values:
            comp, n = ndimage.label(src == v)
            if n:
                dst[comp == 1 + int(np.argmax(np.bincount(comp.ravel())[1:]))] = v
    return out


def smooth_boxes(prompts, weights):
    """Each label's single box per slice averaged with its neighbours' (``weights[d]`` at distance ``d``)."""
    by_label: dict = {}
    for cp in prompts:
        by_label.setdefault(cp.label, {}).setdefault(cp.prompt.slice_index, []).append(cp)
    out = []
    for per_slice in by_label.values():
        single = {z: v[0].prompt.box.astype(float) for z, v in per_slice.items() if len(v) == 1}
        for z, v in per_slice.items():
            if len(v) != 1:
                out += v
                continue
            total, weight = single[z] * weights[0], weights[0]
            for d, w in enumerate(weights[1:], 1):
                for other in (z - d, z + d):
                    if other in single:
                        total, weight = total + single[other] * w, weight + w
            out.append(replace(v[0], prompt=replace(v[0].prompt, box=(total / weight).astype(np.float32))))
    return out


def dice(a: np.ndarray, b: np.ndarray, value: int) -> float:
    a, b = a == value, b == value
    return 2 * (a & b).sum() / max(a.sum() + b.sum(), 1)


def main() -> None:
    study = study_parts(__doc__)
    info, values, nnunet_dir = study.info, study.info.foreground, study.nnunet
    sam = CachingPredictor(build_sam("litemedsam", adapter=str(study.adapter)), device="cpu", cache=study.cache)
    rows: dict = {}
    for case_id, files in study.cases:
        case = io.read_case(case_id, files)
        ref = study.reference(case_id)
        nn, _ = io.read_label(nnunet_dir / f"{case_id}{info.file_ending}")
        with np.load(nnunet_dir / f"{case_id}.npz") as npz:
            probs = npz["probabilities"]
        axis = slicing.choose_axis(case.spacing, ref.shape, None)
        ref_has, nn_has = slices_holding(ref, axis, values), slices_holding(nn, axis, values)
        results = {"nnunet alone": nn}
        for name, boxes_from in (("oracle", ref), ("oracle@nn-slices", keep_slices(ref, axis, nn_has)),
                                 ("nn@gt-slices", keep_slices(nn, axis, ref_has)),
                                 ("nn-largest@gt-slices", keep_slices(largest_per_slice(nn, axis, values), axis,
                                                                      ref_has))):
            results[name] = segment_case_from_labels(sam, case, boxes_from, info, axis=axis)
        image = normalize_case(case.image, info.channel_names)
        base = oracle_prompts(nn, axis, values, 0.0, margin_unit="px",
                              spacing=slicing.in_plane_spacing(case.spacing, axis))
        coarse = coarse_foreground(info, nn, probs)
        for name, weights in SMOOTHING.items():
            run = ask_sam(sam, image, axis, base if weights is None else smooth_boxes(base, weights), values)
            for fusion in ("replace", "average"):
                results[f"nnU-Net boxes, {name}, {fusion}"] = labels_from_probabilities(fuse(coarse, run, fusion),
                                                                                        values)
        for name, seg in results.items():
            rows.setdefault(name, []).append([dice(seg, ref, v) for v in values])
        print(case_id, {k: round(float(np.mean(v[-1])), 3) for k, v in rows.items()}, flush=True)
    print("\n| boxes (adapted SAM) | Dice | per label |\n|---|---:|---|")
    for name, r in rows.items():
        r = np.array(r)
        print(f"| {name} | {r.mean():.4f} | {', '.join(f'{m:.3f}' for m in r.mean(0))} |")


if __name__ == "__main__":
    main()
