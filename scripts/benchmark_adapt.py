#!/usr/bin/env python
"""Benchmark of SAM adaptation (``autosam finetune``): frozen LiteMedSAM vs decoder fine-tuning, LoRA and the
DeSAM-style decoder, on held-out cases, with boxes from the reference labels and with automatic prompts.

Held-out split: the cases (hc18: subjects) of each dataset are shuffled with a fixed seed; the first
``--test-cases`` are the test set, the next ``--train-cases`` the training set. The bundled sample cases (and
hc18 subjects 719, 800, 801) are never used. Nothing is tuned on the test cases, and the run stops if the
prompter was trained on one of them (its ``splits.json``).

Prompts at test time, one box per connected component per slice:
- ``gt``: the tight box of the reference label (as ``autosam oracle``);
- ``degraded``: each such box rescaled by a factor drawn in [0.8, 1.25] per axis and its centre shifted by
  N(0, 0.1 x side) per axis (seeded per case): a synthetic stand-in for a poor prompter;
- ``prompter``: automatic: the boxes of the shipped prompter's coarse map (``autosam segment --prompt box``:
  components of >= 4 pixels, gaps between slices filled). Its rows also give the gated fusion of SAM's masks
  with the prompter's map (``--fusion gated``), and a ``prompter alone`` row scores the coarse map itself.

Metrics per case and label (whole cases, 3D for volumes), averaged over labels then cases: Dice, and NSD
(normalised surface Dice) at a tolerance of 1 mm (hippocampus) or 2 mm (hc18, with each image's pixel size
from ``pixel_size_and_HC.csv``). Seconds per case = encoder time of the prompted slices + decoding (models
with a frozen encoder share one encoding of each slice, whose time is charged to each); the prompter's own
time is in its ``prompter alone`` row.

Run (CPU, one thread each; the two datasets can run side by side, about 50 minutes on 2 cores):
    OMP_NUM_THREADS=1 python scripts/benchmark_adapt.py --dataset hc18
    OMP_NUM_THREADS=1 python scripts/benchmark_adapt.py --dataset hippocampus
Work files go to --work (default /tmp/autosam_benchmark_adapt); reruns reuse finished adapters.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
import zlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

warnings.filterwarnings("ignore")

from autosam import evaluation, io, slicing  # noqa: E402
from autosam.adapt.config import PromptNoise  # noqa: E402
from autosam.adapt.train import finetune  # noqa: E402
from autosam.labels import labels_from_probabilities  # noqa: E402
from autosam.oracle import oracle_prompts  # noqa: E402
from autosam.progress import progress  # noqa: E402
from autosam.prompts import ClassPrompt  # noqa: E402
from autosam.refine import RefineConfig, refine_case  # noqa: E402
from autosam.sam import build_sam  # noqa: E402
from autosam.sam import transforms as T  # noqa: E402
from autosam.sam.cache import CachingPredictor, EmbeddingCache  # noqa: E402
from autosam.answers import ask_sam  # noqa: E402
from autosam.splits import subject_of  # noqa: E402

#: the development data beside the checkout (../shared/data), as CI and the README use it
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

SAMPLE = {"hippocampus": ["hippocampus_148", "hippocampus_149", "hippocampus_165", "hippocampus_221",
                          "hippocampus_319", "hippocampus_320"],
          "hc18": ["719", "800", "801"]}
SUBJECT = {"hippocampus": None, "hc18": r"^[^_]+"}
TOLERANCE = {"hippocampus": 1.0, "hc18": 2.0}  # mm (hc18: pixel size from pixel_size_and_HC.csv)
#: per-dataset defaults: train cases, slices per case, epochs of decoder/desam, LoRA steps
DEFAULTS = {"hippocampus": dict(train=20, slices=6, epochs=4, lora_steps=40),
            "hc18": dict(train=30, slices=0, epochs=20, lora_steps=40)}
#: learning rates: MedSAM's 1e-4 for the pretrained decoder; new modules (DeSAM mask module, LoRA factors
#: starting at zero) get 5e-4 because the CPU budget allows only a few dozen steps
LR = {"decoder": 1e-4, "desam": 5e-4, "lora": 5e-4}
#: LoRA's mask decoder is pretrained: it keeps MedSAM's 1e-4 while the LoRA factors take LR["lora"]
DECODER_LR = {"lora": 1e-4}


def degraded(prompts: list[ClassPrompt], hw: tuple[int, int], rng: np.random.Generator) -> list[ClassPrompt]:
    """Boxes rescaled by U(0.8, 1.25) per axis and shifted by N(0, 0.1 side) per axis, clipped to the slice."""
    out = []
    for cp in prompts:
        x0, y0, x1, y1 = cp.prompt.box.astype(np.float64)
        c = np.array([(x0 + x1) / 2, (y0 + y1) / 2])
        side = np.array([x1 - x0 + 1, y1 - y0 + 1])
        c = c + rng.normal(0, 0.1, 2) * side
        half = side * rng.uniform(0.8, 1.25, 2) / 2
        box = np.array([c[0] - half[0], c[1] - half[1], c[0] + half[0], c[1] + half[1]])
        box[0::2] = np.clip(box[0::2], 0, hw[1] - 1)
        box[1::2] = np.clip(box[1::2], 0, hw[0] - 1)
        out.append(ClassPrompt(cp.label, replace(cp.prompt, box=box.astype(np.float32))))
    return out


def dice_nsd(pred: np.ndarray, ref: np.ndarray, spacing, tol: float) -> tuple[float, float]:
    """Dice and normalised surface Dice at tolerance ``tol`` (mm) of two binary masks (NSD as ``autosam evaluate``)."""
    total = pred.sum() + ref.sum()
    dice = 2 * np.logical_and(pred, ref).sum() / total if total else 1.0
    return float(dice), evaluation.nsd_and_hd95(pred, ref, spacing, tol)[0]


def choose_split(cases: list[str], dataset: str, n_test: int, n_train: int, seed: int) -> tuple[list[str], list[str]]:
    pattern = SUBJECT[dataset]
    banned = set(SAMPLE[dataset])
    groups = sorted({subject_of(c, pattern) for c in cases} - banned)
    groups = [groups[i] for i in np.random.default_rng(seed).permutation(len(groups))]
    members = {g: sorted(c for c in cases if subject_of(c, pattern) == g) for g in groups}
    test, train = [], []
    for g in groups:
        if len(test) < n_test:
            test += members[g]
        elif len(train) < n_train:
            train += members[g]
    return sorted(test), sorted(train)


def train_adapters(args, root: Path, work: Path, train_cases: list[str]) -> dict[str, float]:
    """Train (or reuse) the adapters; returns training seconds per method."""
    d = DEFAULTS[args.dataset]
    times_file = work / "train_seconds.json"
    times = json.loads(times_file.read_text()) if times_file.is_file() else {}
    common = dict(cases=train_cases, val_fraction=0.0, seed=args.seed, subject_pattern=SUBJECT[args.dataset],
                  max_slices_per_case=args.max_slices if args.max_slices is not None else d["slices"],
                  cache_dir=work / "cache", device="cpu", overwrite=True,
                  prompt_noise=PromptNoise(types=("box",), jitter=0.1, margin=0.1))
    for method in args.methods:
        if method == "frozen" or method in times:
            continue
        if "cache" not in times and method != "lora":  # build the embedding cache alone, to time it separately
            t = time.time()
            finetune(root, work / "cache_probe", method="decoder", epochs=1, iterations_per_epoch=1, **common)
            times["cache"] = time.time() - t
        t = time.time()
        if method == "lora":
            finetune(root, work / method, method="lora", rank=args.rank, epochs=1, batch_size=2, lr=LR[method],
                     decoder_lr=DECODER_LR["lora"],
                     iterations_per_epoch=args.lora_steps or d["lora_steps"], **common)
        else:
            epochs = args.epochs or d["epochs"]
            if method == "desam":  # its mask module starts from scratch: three times the decoder's epochs
                epochs = args.desam_epochs or 3 * epochs
            finetune(root, work / method, method=method, epochs=epochs, batch_size=8, lr=LR[method], **common)
        times[method] = time.time() - t
        io.write_json(times, times_file)
    return times


def pixel_sizes(root: Path) -> dict[str, float]:
    """hc18: millimetres per pixel of each image (nnU-Net reads PNGs with spacing 1)."""
    path = root / "pixel_size_and_HC.csv"
    if not path.is_file():
        return {}
    lines = path.read_text().splitlines()
    col = lines[0].split(",").index("pixel_size_mm")
    return {ln.split(",")[0]: float(ln.split(",")[col]) for ln in lines[1:] if ln.strip()}


def scores(seg: np.ndarray, label: np.ndarray, labels, spacing, tol: float) -> np.ndarray:
    """(Dice, NSD) of a whole case, averaged over the foreground labels."""
    return np.mean([dice_nsd(seg == v, label == v, spacing, tol) for v in labels], axis=0)


def load_prompter(args, test_cases: list[str]):
    """The prompter for automatic prompts; refuses one whose training split holds a test case."""
    from autosam.prompter import Prompter

    prompter = Prompter.load(args.prompter or args.dataset)
    split_file = prompter.folder / "splits.json"
    trained_on = set(json.loads(split_file.read_text())["train"]) if split_file.is_file() else None
    if trained_on is None:
        raise SystemExit(f"{prompter.folder}: no splits.json, so the test cases cannot be checked as unseen")
    seen = sorted(trained_on & set(test_cases))
    if seen:
        raise SystemExit(f"prompter {prompter.folder} was trained on test cases {seen}; choose another split")
    return prompter


def read_test_cases(args, root: Path, info: io.DatasetInfo, test_cases: list[str]) -> tuple[list, list[dict]]:
    """Per test case: image, label, axis, spacing, the gt and degraded prompts and the prompter's coarse map; and
    the ``prompter alone`` row."""
    files = io.list_cases(root / "imagesTr", info.file_ending, info.num_channels)
    mm = pixel_sizes(root)
    rw = io.reader_writer(info.file_ending)
    prompter = load_prompter(args, test_cases) if "prompter" in args.prompts else None
    data, rows, prompter_scores, prompter_seconds = [], [], [], []
    for case in progress(test_cases, "read + prompter"):
        c = io.read_case(case, files[case], rw)
        label, _ = io.read_label(root / "labelsTr" / f"{case}{info.file_ending}", rw)
        axis = slicing.choose_axis(c.spacing, label.shape)
        gt = oracle_prompts(label, axis, info.foreground)
        hw = slicing.to_slices(label[None], axis).shape[-2:]
        rng = np.random.default_rng([args.seed, zlib.crc32(case.encode())])
        spacing = (1.0, mm[case], mm[case]) if case in mm else c.spacing
        coarse = None
        if prompter is not None:
            t = time.perf_counter()
            coarse = prompter.coarse(c, axis=axis)
            prompter_seconds.append(time.perf_counter() - t)
            prompter_scores.append(scores(coarse[0], label, info.foreground, spacing, TOLERANCE[args.dataset]))
        data.append((c, label, axis, spacing, {"gt": gt, "degraded": degraded(gt, hw, rng)}, coarse))
    if prompter is not None:
        s = np.array(prompter_scores)
        rows.append({"method": "prompter alone", "prompts": "-", "dice": float(s[:, 0].mean()),
                     "nsd": float(s[:, 1].mean()), "s_per_case": float(np.mean(prompter_seconds)), "cases": len(data)})
    return data, rows


def score_prompts(predictor: CachingPredictor, data: list, kind: str, info: io.DatasetInfo, tol: float,
                  desc: str) -> dict:
    """Mean Dice/NSD of SAM (and of the gated fusion, for prompter prompts) over the test cases, and seconds per
    case with every prompted slice's encoding charged at its measured cost (shared encodings counted for each)."""
    stats = predictor.cache.stats
    sam_scores, fused_scores, seconds = [], [], []
    for c, label, axis, spacing, prompts, coarse in progress(data, desc):
        t, spent, charged = time.perf_counter(), stats.encode_seconds, stats.charged_seconds
        if kind == "prompter":
            result = refine_case(predictor, c, info, coarse[0], coarse[1], RefineConfig(prompt="box", fusion="gated"))
            run = result.sam
            fused_scores.append(scores(result.segmentation, label, info.foreground, spacing, tol))
        else:
            image = T.normalize_case(c.image, info.channel_names)
            run = ask_sam(predictor, image, axis, prompts[kind], info.foreground)
        wall = time.perf_counter() - t
        seconds.append(wall - (stats.encode_seconds - spent) + (stats.charged_seconds - charged))
        seg = labels_from_probabilities(run.probabilities, info.foreground)
        sam_scores.append(scores(seg, label, info.foreground, spacing, tol))
    s = np.array(sam_scores)
    row = {"prompts": kind, "dice": float(s[:, 0].mean()), "nsd": float(s[:, 1].mean()),
           "s_per_case": float(np.mean(seconds)), "cases": len(data)}
    if fused_scores:
        f = np.array(fused_scores)
        row.update(fused_dice=float(f[:, 0].mean()), fused_nsd=float(f[:, 1].mean()))
    return row


def evaluate(args, root: Path, info: io.DatasetInfo, test_cases: list[str], work: Path) -> list[dict]:
    data, rows = read_test_cases(args, root, info, test_cases)
    cache = EmbeddingCache()  # models with the image encoder unchanged share their embeddings (same fingerprint)
    for method in args.methods:
        model = build_sam("litemedsam", adapter=None if method == "frozen" else str(work / method))
        predictor = CachingPredictor(model.to("cpu").eval(), device="cpu", cache=cache)
        for kind in args.prompts:
            rows.append({"method": method, **score_prompts(predictor, data, kind, info, TOLERANCE[args.dataset],
                                                           f"{method}/{kind}")})
            print(json.dumps(rows[-1]), file=sys.stderr)
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", required=True, choices=sorted(DEFAULTS))
    p.add_argument("--data-root", default=str(DATA))
    p.add_argument("--work", default="/tmp/autosam_benchmark_adapt")
    p.add_argument("--methods", nargs="+", default=["frozen", "decoder", "desam", "lora"])
    p.add_argument("--test-cases", type=int, default=10)
    p.add_argument("--train-cases", type=int, default=None)
    p.add_argument("--max-slices", type=int, default=None, help="labelled slices per training case")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--lora-steps", type=int, default=None)
    p.add_argument("--rank", type=int, default=4)
    p.add_argument("--prompts", nargs="+", default=["gt", "degraded", "prompter"], choices=["gt", "degraded", "prompter"])
    p.add_argument("--prompter", default=None, help="prompter folder or shipped name (default: the dataset's)")
    p.add_argument("--desam-epochs", type=int, default=None, help="default: 3 x the decoder's epochs")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(1)
    root = Path(args.data_root) / args.dataset
    work = Path(args.work) / args.dataset
    work.mkdir(parents=True, exist_ok=True)
    info = io.load_dataset_json(root)
    cases = list(io.list_cases(root / "imagesTr", info.file_ending, info.num_channels))
    test, train = choose_split(cases, args.dataset, args.test_cases, args.train_cases or DEFAULTS[args.dataset]["train"],
                               args.seed)
    assert not set(test) & set(train)
    io.write_json({"train": train, "test": test}, work / "benchmark_split.json")
    times = train_adapters(args, root, work, train)
    rows = evaluate(args, root, info, test, work)
    io.write_json({"rows": rows, "train_seconds": times, "train": train, "test": test}, work / "results.json")
    print(f"\n{args.dataset}: {len(test)} held-out test cases, adapters trained on {len(train)} cases "
          f"(CPU, 1 thread; embedding cache built in {times.get('cache', 0):.0f} s, not included below)\n")
    print("| model | train time (s) | prompts | Dice | NSD | gated fusion Dice | gated fusion NSD | s/case |")
    print("|---|---:|---|---:|---:|---:|---:|---:|")
    for r in rows:
        t = f"{times[r['method']]:.0f}" if r["method"] in times else "-"
        fused = (f"{r['fused_dice']:.4f} | {r['fused_nsd']:.4f}" if "fused_dice" in r else "- | -")
        print(f"| {r['method']} | {t} | {r['prompts']} | {r['dice']:.4f} | {r['nsd']:.4f} | {fused} | "
              f"{r['s_per_case']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
