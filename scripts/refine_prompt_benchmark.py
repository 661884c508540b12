"""Which prompt strategy, box margin and fusion should ``autosam refine`` use by default?

Coarse predictions are made by degrading the reference labels (so no trained nnU-Net is needed): per case and label
a random erosion or dilation, a small in-plane shift, and (3D) the label removed from one interior slice; coarse
"softmax" probabilities are the degraded one-hot maps smoothed with a Gaussian. Every combination of prompt
strategy x margin x fusion refines the same coarse maps with LiteMedSAM; each slice is encoded once per case.
The bundled sample cases (and HC18 images of the same subjects) are left out. Prints a markdown table of mean Dice.

    OMP_NUM_THREADS=1 python scripts/refine_prompt_benchmark.py --hippocampus 8 --hc18 6

Needs ../shared/data beside the checkout (or --data ROOT with hippocampus/ and hc18/ in nnU-Net raw layout). CPU is fine.
"""
from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from autosam import io
from autosam.evaluation import case_metrics
from autosam.fusion import fuse, fusion_strategies
from autosam.labels import to_distribution, to_segmentation
from autosam.prompts import Margin, prompt_strategies
from autosam.refine import RefineConfig, coarse_foreground, refine_case
from autosam.sam import build_sam
from autosam.sam.cache import CachingPredictor

#: the development data beside the checkout (../shared/data), as CI and the README use it
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

SAMPLE_SUBJECTS = {"hippocampus": {"148", "149", "165", "221", "319", "320"}, "hc18": {"719", "800", "801"}}


def subject(dataset: str, case: str) -> str:
    return case.split("_")[1] if dataset == "hippocampus" else case.split("_")[0]


def degrade(label: np.ndarray, labels, rng: np.random.Generator, is_2d: bool) -> tuple[np.ndarray, np.ndarray]:
    """A plausible coarse segmentation and softmax-like probabilities from a reference label map (Z, Y, X)."""
    out = np.zeros_like(label)
    for value in labels:
        m = label == value
        if not m.any():
            continue
        if is_2d:
            size = np.sqrt(m.sum())
            r = rng.uniform(0.03, 0.08) * size
            inside, outside = ndimage.distance_transform_edt(m[0]), ndimage.distance_transform_edt(~m[0])
            m = (outside <= r)[None] if rng.random() < 0.5 else (inside > r)[None]
            shift = rng.integers(-int(0.05 * size), int(0.05 * size) + 1, size=2)
            m = np.roll(m, tuple(shift), axis=(1, 2))
        else:
            op = rng.choice(["dilate", "erode", "none"])
            if op == "dilate":
                m = ndimage.binary_dilation(m)
            elif op == "erode" and ndimage.binary_erosion(m).sum() > 0.4 * m.sum():
                m = ndimage.binary_erosion(m)
            m = np.roll(m, tuple(rng.integers(-1, 2, size=2)), axis=(1, 2))
            present = np.nonzero(m.any(axis=(1, 2)))[0]
            if len(present) > 4 and rng.random() < 0.5:
                m[rng.choice(present[1:-1])] = False
        out[m & (out == 0)] = value
    onehot = np.stack([out == v for v in [0, *labels]]).astype(np.float32)
    sigma = (0, 0, 4.0, 4.0) if is_2d else (0, 0, 0.8, 0.8)
    probs = ndimage.gaussian_filter(onehot, sigma)
    probs /= probs.sum(0, keepdims=True)
    return out, probs


def table(coarse_scores: dict, scores: dict, combos: list) -> str:
    """Markdown table of mean Dice per (prompt, margin, fusion), best first."""
    lines = []
    datasets = list(coarse_scores)
    lines.append("\nMean Dice over cases (LiteMedSAM, CPU; coarse = degraded reference labels; "
                 + ", ".join(f"{d}: {len(coarse_scores[d])} cases" for d in datasets) + ")\n")
    lines.append("| prompt | margin (mm) | fusion | " + " | ".join(datasets) + " | mean |")
    lines.append("|---|---|---|" + "---|" * (len(datasets) + 1))
    lines.append("| (coarse) | | | " + " | ".join(f"{np.mean(coarse_scores[d]):.4f}" for d in datasets)
                 + f" | {np.mean([np.mean(coarse_scores[d]) for d in datasets]):.4f} |")
    rows = []
    for prompt, margin in combos:
        for fusion in fusion_strategies:
            vals = [float(np.mean(scores[(d, prompt, margin, fusion)])) for d in datasets]
            rows.append((float(np.mean(vals)), prompt, margin, fusion, vals))
    for mean, prompt, margin, fusion, vals in sorted(rows, reverse=True):
        lines.append(f"| {prompt} | {margin:g} | {fusion} | " + " | ".join(f"{v:.4f}" for v in vals)
                     + f" | {mean:.4f} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--hippocampus", type=int, default=8, help="number of hippocampus cases")
    ap.add_argument("--hc18", type=int, default=6, help="number of HC18 images")
    ap.add_argument("--margins", type=float, nargs="+", default=[0.0, 1.0, 2.0], help="box margins (mm)")
    ap.add_argument("--prompts", nargs="+", default=list(prompt_strategies))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--partial", default=None, help="rewrite this file with the table after every case")
    args = ap.parse_args()
    torch.set_num_threads(1)
    predictor = CachingPredictor(build_sam("litemedsam"), device="cpu")
    combos = list(itertools.product(args.prompts, args.margins))
    scores: dict = {}  # (dataset, prompt, margin, fusion) -> list of per-case mean Dice
    coarse_scores: dict = {}
    t0 = time.time()
    partial = Path(args.partial) if args.partial else None
    for dataset, n in (("hc18", args.hc18), ("hippocampus", args.hippocampus)):
        if n == 0:
            continue
        root = Path(args.data) / dataset
        info = io.load_dataset_json(root)
        cases = io.list_cases(root / "imagesTr", info.file_ending, info.num_channels)
        rng = np.random.default_rng(args.seed)
        pool = sorted(c for c in cases if subject(dataset, c) not in SAMPLE_SUBJECTS[dataset])
        chosen = sorted(rng.choice(pool, size=min(n, len(pool)), replace=False).tolist())
        rw = io.reader_writer(info.file_ending)
        for case_id in chosen:
            case = io.read_case(case_id, cases[case_id], rw)
            label, props = io.read_label(root / "labelsTr" / f"{case_id}{info.file_ending}", rw)
            coarse, probs = degrade(label, info.foreground, rng, is_2d=label.shape[0] == 1)

            def dice(seg):
                m = case_metrics(label, seg, case.spacing, info.foreground)
                return float(np.nanmean([m[v]["Dice"] for v in info.foreground]))

            coarse_scores.setdefault(dataset, []).append(dice(coarse))
            coarse_fg = coarse_foreground(info, coarse, probs)
            for prompt, margin in combos:  # SAM once per prompt variant; every fusion reuses its answer
                cfg = RefineConfig(prompt=prompt, margin=Margin(margin, "mm"))
                run = refine_case(predictor, case, info, coarse, probs, cfg).sam
                for fusion in fusion_strategies:
                    seg = to_segmentation(to_distribution(fuse(coarse_fg, run, fusion)), info.foreground)
                    scores.setdefault((dataset, prompt, margin, fusion), []).append(dice(seg))
            print(f"{dataset} {case_id}: coarse {coarse_scores[dataset][-1]:.3f}, box/replace "
                  f"{scores[(dataset, 'box', args.margins[0], 'replace')][-1]:.3f} ({time.time() - t0:.0f}s)",
                  file=sys.stderr, flush=True)
            if partial:  # the table so far, for long runs
                partial.write_text(table(coarse_scores, scores, combos) + "\n")
    print(table(coarse_scores, scores, combos))
    return 0


if __name__ == "__main__":
    sys.exit(main())
