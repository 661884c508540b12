#!/usr/bin/env python
"""Benchmark: does SAM refine nnU-Net's predictions? Hippocampus (MSD Task04), nnU-Net 2d, short CPU schedule.

Not a test. Steps (each resumes from --work-dir, so an interrupted run picks up where it stopped):

1. Seeded split by case of ``--data/imagesTr``: ``--eval-cases`` held-out cases are scored; ``--train-cases``
   others form the nnU-Net dataset (the held-out cases are never in it). The bundled sample cases are in neither.
2. ``nnUNetv2_plan_and_preprocess -c 2d`` and ``nnUNetv2_train ... 2d 0 -tr nnUNetTrainer_autosam_Short -device
   cpu`` with a short schedule (``--epochs`` x ``--iterations``, batch ``--batch``); fold 0 is written by this script:
   training on all training cases but ``--nnunet-val`` of them (nnU-Net's own validation set).
3. For every held-out case: nnU-Net's softmax in memory (:func:`autosam.nnunet.inference.coarse_prediction`), then
   for each prompt strategy SAM runs once and every fusion strategy is applied to that same SAM answer; plus the
   oracle (boxes from the reference labels, SAM's ceiling with these prompts).
4. Dice and NSD (1 mm) per label and their mean, and seconds per case, printed as a markdown table and written to
   ``results.json``, ``results.csv`` and ``table.md`` in --work-dir.

Seconds per case are wall-clock on the machine that runs it (noisy on a shared CPU). The SAM encoder's embeddings
are shared between prompt strategies (the encoder never sees the prompt); each strategy is charged the encoder
time of its slices as if it had run alone, so its seconds are those of a standalone ``autosam predict``.

    OMP_NUM_THREADS=1 python scripts/benchmark_refine.py --work-dir /tmp/autosam_bench_refine
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

from autosam import evaluation, io
from autosam.nnunet import inference as nnunet
from autosam.fusion import fuse, fusion_strategies
from autosam.labels import to_distribution, to_segmentation
from autosam.nnunet.train import Schedule, make_raw_dataset, train_nnunet
from autosam.refine import RefineConfig, coarse_foreground, refine_case
from autosam.sam import build_sam
from autosam.sam.cache import CachingPredictor
from autosam.sample import sample_dataset

#: the development data beside the checkout (../shared/data), as CI and the README use it
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

DATASET_ID, DATASET_NAME = 950, "HippoRefineBench"
TRAINER = "nnUNetTrainer_autosam_Short"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default=str(DATA / "hippocampus"), help="nnU-Net raw hippocampus folder")
    p.add_argument("--work-dir", required=True, help="everything is written here (nnU-Net folders, results)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-cases", type=int, default=12, help="held-out cases scored (default 12)")
    p.add_argument("--train-cases", type=int, default=60, help="cases in the nnU-Net dataset (default 60)")
    p.add_argument("--nnunet-val", type=int, default=4, help="of those, nnU-Net's own validation set (default 4)")
    p.add_argument("--epochs", type=int, default=16)
    p.add_argument("--iterations", type=int, default=40, help="training iterations per epoch (default 40)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--prompts", nargs="+", default=["box", "box+points", "box+mask"])
    p.add_argument("--fusions", nargs="+", default=list(fusion_strategies))
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1: the machine is shared)")
    p.add_argument("--tolerance-mm", type=float, default=1.0, help="NSD tolerance (default 1 mm)")
    return p.parse_args(argv)


# --- 1. split and nnU-Net dataset --------------------------------------------------------------------------------


def make_split(data: Path, args) -> dict:
    info = io.load_dataset_json(data)
    cases = sorted(io.list_cases(data / "imagesTr", info.file_ending, info.num_channels))
    sample = set(io.list_cases(sample_dataset("hippocampus") / "imagesTr", info.file_ending, 1))
    pool = [c for c in cases if c not in sample]
    random.Random(args.seed).shuffle(pool)
    if args.eval_cases + args.train_cases > len(pool):
        sys.exit(f"only {len(pool)} cases available for {args.eval_cases} + {args.train_cases}")
    evaluation_cases = sorted(pool[: args.eval_cases])
    train = sorted(pool[args.eval_cases : args.eval_cases + args.train_cases])
    assert not set(evaluation_cases) & set(train) and not (set(train) | set(evaluation_cases)) & sample
    return {"seed": args.seed, "eval": evaluation_cases, "train": train, "excluded_sample_cases": sorted(sample),
            "nnunet_val": train[: args.nnunet_val]}


def build_raw(data: Path, work: Path, split: dict) -> Path:
    """The nnU-Net dataset of the training cases, and ``heldout/imagesTs`` linking the held-out images."""
    info = io.load_dataset_json(data)
    raw = make_raw_dataset(data, split["train"], work / "nnUNet_raw", DATASET_ID, DATASET_NAME)
    held_out = work / "heldout" / "imagesTs"
    held_out.mkdir(parents=True, exist_ok=True)
    for c in split["eval"]:
        dst = held_out / f"{c}_0000{info.file_ending}"
        if not dst.exists():
            dst.symlink_to((data / "imagesTr" / dst.name).resolve())
    return raw


def train(data: Path, work: Path, split: dict, args) -> tuple[Path, dict]:
    """nnU-Net 2d, fold 0 = ``split["nnunet_val"]`` validating, through :func:`autosam.nnunet.train.train_nnunet`
    (resumes; a finished fold is kept, another schedule in ``work`` is refused)."""
    schedule = Schedule(trainer=TRAINER, configuration="2d", fold="0", epochs=args.epochs,
                        iterations=args.iterations, val_iterations=3, batch=args.batch, seed=None, device="cpu",
                        threads=args.threads)
    model = train_nnunet(data, split["train"], work, DATASET_ID, schedule, name=DATASET_NAME,
                         val_cases=split["nnunet_val"])
    return model, json.loads((model / "fold_0" / "autosam_schedule.json").read_text())


# --- 3. SAM with embeddings shared between prompt strategies ------------------------------------------------------


def timed_refine(sam: CachingPredictor, *args, **kw):
    """refine_case and the seconds it would take alone (wall time, encoder time as if nothing were cached)."""
    stats = sam.cache.stats
    spent, charged = stats.encode_seconds, stats.charged_seconds
    start = time.perf_counter()
    result = refine_case(sam, *args, **kw)
    wall = time.perf_counter() - start
    return result, wall - (stats.encode_seconds - spent) + (stats.charged_seconds - charged)


def scores(gt, seg, spacing, info, tol) -> dict:
    m = evaluation.case_metrics(gt, seg, spacing, info.foreground, tol, info.ignore_label)
    return {str(k): {"Dice": v["Dice"], "NSD": v["NSD"]} for k, v in m.items()}


def evaluate_case(case_id, files, gt_file, nn_predictor, sam, info, args) -> dict:
    rw = nnunet.model_reader_writer(nn_predictor)
    case = io.read_case(case_id, files, rw)
    gt, props = io.read_label(gt_file, rw)
    io.check_same_geometry(case.properties, props, str(gt_file))
    tol = args.tolerance_mm
    sam.clear()
    start = time.perf_counter()
    seg, probs = nnunet.coarse_prediction(nn_predictor, case)
    coarse_s = time.perf_counter() - start
    out = {"coarse": {"scores": scores(gt, seg, case.spacing, info, tol), "seconds": coarse_s}}
    oracle, sec = timed_refine(sam, case, info, gt, None, RefineConfig(prompt="box", fusion="replace"))
    out["oracle"] = {"scores": scores(gt, oracle.segmentation, case.spacing, info, tol), "seconds": sec,
                     "prompted_slices": int(oracle.sam.prompted.any(0).sum())}
    coarse_fg = coarse_foreground(info, seg, probs)
    for prompt in args.prompts:
        first, sec = timed_refine(sam, case, info, seg, probs, RefineConfig(prompt=prompt, fusion=args.fusions[0]))
        for fusion in args.fusions:
            start = time.perf_counter()
            if fusion == args.fusions[0]:
                refined = first.segmentation
            else:
                refined = to_segmentation(to_distribution(fuse(coarse_fg, first.sam, fusion)), info.foreground)
            fusion_s = time.perf_counter() - start if fusion != args.fusions[0] else 0.0
            out[f"{prompt} / {fusion}"] = {"scores": scores(gt, refined, case.spacing, info, tol),
                                           "seconds": coarse_s + sec + fusion_s,
                                           "prompted_slices": int(first.sam.prompted.any(0).sum())}
    return out


# --- 4. tables ----------------------------------------------------------------------------------------------------


def mean(values) -> float:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(finite)) if finite else math.nan


def aggregate(per_case: dict, info: io.DatasetInfo) -> list[dict]:
    methods = list(next(iter(per_case.values())))
    rows = []
    for method in methods:
        row = {"method": method}
        for metric in ("Dice", "NSD"):
            for label in info.foreground:
                row[f"{metric} {label}"] = mean([c[method]["scores"][str(label)][metric] for c in per_case.values()])
            row[f"{metric} mean"] = mean([row[f"{metric} {label}"] for label in info.foreground])
        row["s/case"] = mean([c[method]["seconds"] for c in per_case.values()])
        rows.append(row)
    return rows


def markdown(rows: list[dict], info: io.DatasetInfo) -> str:
    names = {v: k for k, v in info.labels.items()}
    cols = [c for c in rows[0] if c != "method"]
    head = ["method"] + [" ".join(names.get(int(p), p) if p.isdigit() else p for p in c.split()) for c in cols]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    best = {c: max(r[c] for r in rows if r["method"] != "oracle") for c in cols if c != "s/case"}
    for r in rows:
        cells = []
        for c in cols:
            v = r[c]
            text = f"{v:.1f}" if c == "s/case" else f"{v:.3f}"
            cells.append(f"**{text}**" if c in best and r["method"] != "oracle" and v == best[c] else text)
        label = {"coarse": "nnU-Net 2d alone (coarse)", "oracle": "oracle: SAM with boxes from the reference"}
        lines.append(f"| {label.get(r['method'], 'nnU-Net + SAM ' + r['method'])} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    data, work = Path(args.data), Path(args.work_dir)
    if not (data / "dataset.json").is_file():
        sys.exit(f"{data}: no hippocampus dataset here (pass --data)")
    work.mkdir(parents=True, exist_ok=True)
    split = make_split(data, args)
    split_file = work / "split.json"
    if split_file.is_file() and json.loads(split_file.read_text()) != json.loads(json.dumps(split)):
        sys.exit(f"{split_file} holds another split; use a new --work-dir")
    io.write_json(split, split_file)
    build_raw(data, work, split)
    model, training = train(data, work, split, args)

    info = nnunet.model_dataset_info(model)
    nn_predictor = nnunet.load_nnunet_predictor(model, ["0"], device="cpu")
    sam = CachingPredictor(build_sam("litemedsam"), device="cpu")
    data_info = io.load_dataset_json(data)
    files = io.list_cases(work / "heldout" / "imagesTs", data_info.file_ending, data_info.num_channels)
    cache = work / "cases"
    cache.mkdir(exist_ok=True)
    per_case = {}
    for i, case_id in enumerate(split["eval"]):
        f = cache / f"{case_id}.json"
        key = {"prompts": args.prompts, "fusions": args.fusions, "tolerance_mm": args.tolerance_mm}
        if f.is_file() and json.loads(f.read_text()).get("key") == key:
            per_case[case_id] = json.loads(f.read_text())["results"]
            continue
        print(f"[{i + 1}/{len(split['eval'])}] {case_id}", file=sys.stderr, flush=True)
        result = evaluate_case(case_id, files[case_id], data / "labelsTr" / f"{case_id}{data_info.file_ending}",
                               nn_predictor, sam, info, args)
        io.write_json({"key": key, "results": result}, f)
        per_case[case_id] = result

    rows = aggregate(per_case, info)
    table = markdown(rows, info)
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               "unknown CPU") if Path("/proc/cpuinfo").is_file() else "unknown CPU"
    setup = {"cases_scored": len(per_case), "split": {k: split[k] for k in ("seed", "eval", "nnunet_val")},
             "n_train": len(split["train"]), "training": training, "torch_threads": args.threads, "cpu": cpu,
             "cpu_count": os.cpu_count(), "sam": "litemedsam", "nsd_tolerance_mm": args.tolerance_mm,
             "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:])}
    io.write_json({"setup": setup, "rows": rows, "per_case": per_case}, work / "results.json")
    with io.atomic_output(work / "results.csv") as tmp:
        with open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    with io.atomic_output(work / "table.md") as tmp:
        tmp.write_text(table + "\n")
    print(f"\nnnU-Net 2d ({TRAINER}, {args.epochs} epochs x {args.iterations} iterations, batch {args.batch}, "
          f"{len(split['train']) - len(split['nnunet_val'])} training cases) + LiteMedSAM on {len(per_case)} held-out "
          f"hippocampus cases (seed {args.seed}); CPU: {cpu}, {args.threads} torch thread(s). NSD at "
          f"{args.tolerance_mm:g} mm. s/case: wall clock incl. nnU-Net.\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
