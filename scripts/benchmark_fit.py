#!/usr/bin/env python
"""What ``autosam fit`` costs: nnU-Net's 5-fold cross-validation (``--npz``) on N hippocampus cases, then ``fit
--frozen`` and (with ``--adapters``) ``fit`` with fold adapters, timed; one table.

Cases: the exploration cases only (never the confirmation set of docs/protocol.md), shuffled with a fixed seed,
the first ``--cases``. nnU-Net trains a short 2d schedule (its quality does not change fit's cost much: the grid,
the cases and the slices do). Work goes to ``--work`` (default /tmp/autosam_benchmark_fit); a rerun reuses the
trained folds, and fit's own rerun would reuse its kept scores, so the timed fits start from a clean fit folder.
nnU-Net must predict something: with too short a schedule its maps are empty, SAM gets no prompt, and fit's time
means nothing (the table prints nnU-Net's cross-validation Dice to show it).

    python scripts/benchmark_fit.py                 # fit --frozen on 10 cases (target: at most 15 min on 2 CPU cores)
    python scripts/benchmark_fit.py --adapters      # and fit with adapters (target: at most 90 min)
"""
from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
CONFIRMATION = ROOT / "docs" / "results" / "confirmation_hippocampus.txt"


def exploration_cases(data: Path, n: int, seed: int) -> list[str]:
    from autosam import io

    info = io.load_dataset_json(data)
    cases = sorted(io.list_cases(data / "imagesTr", info.file_ending, info.num_channels))
    sacred = set(CONFIRMATION.read_text().split()) if CONFIRMATION.is_file() else set()
    pool = [c for c in cases if c not in sacred]
    return sorted(pool[i] for i in np.random.default_rng(seed).permutation(len(pool))[:n])


def _no_sam(model: Path) -> float:
    import json

    return json.loads((model / "autosam_sam.json").read_text())["tuning"]["no_sam_mean_dice"]


def main() -> None:
    from autosam.adapt.crossfit import fold_assignment
    from autosam.fit import FIT_DIR, FitOptions, fit
    from autosam.nnunet.train import Schedule, train_cross_validation
    from autosam.sample import sample_dataset
    from autosam.settings import Runtime

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "hippocampus"))
    p.add_argument("--cases", type=int, default=10)
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--epochs", type=int, default=10, help="nnU-Net epochs per fold (default 10)")
    p.add_argument("--iterations", type=int, default=50, help="nnU-Net iterations per epoch (default 50)")
    p.add_argument("--adapters", action="store_true", help="also time fit with fold adapters")
    p.add_argument("--device", default="cpu")
    p.add_argument("--work", default="/tmp/autosam_benchmark_fit")
    a = p.parse_args()
    data = Path(a.data) if Path(a.data).is_dir() else sample_dataset("hippocampus")
    work = Path(a.work) / f"e{a.epochs}x{a.iterations}"  # a fold trained on another schedule is refused
    cases = exploration_cases(data, a.cases, seed=20261206)
    split = fold_assignment(cases, a.folds, seed=0)
    start = time.perf_counter()
    model = train_cross_validation(data, cases, work, 905, Schedule(configuration="2d", epochs=a.epochs,
                                   iterations=a.iterations, device=a.device), split, name="FitBench")
    rows = [("nnU-Net 2d cross-validation", len(split), time.perf_counter() - start, "-")]
    roots = {"raw_root": work / "nnUNet_raw", "preprocessed_root": work / "nnUNet_preprocessed"}
    runs = [("fit --frozen", FitOptions(frozen=True), 15 * 60)]
    runs += [("fit (fold adapters)", FitOptions(), 90 * 60)] if a.adapters else []
    for name, opts, target in runs:
        shutil.rmtree(model / FIT_DIR, ignore_errors=True)
        start = time.perf_counter()
        fit(model, opts, runtime=Runtime(device=a.device), **roots)
        seconds = time.perf_counter() - start
        name += f" (nnU-Net alone {_no_sam(model):.3f})"
        rows.append((name, len(split), seconds, f"{'met' if seconds <= target else 'missed'} (<= {target // 60} min)"))
    print(f"\n{len(cases)} hippocampus cases ({data}), {len(split)} folds, device {a.device}")
    print("| step | folds | minutes | target |\n|---|---|---|---|")
    for name, k, seconds, verdict in rows:
        print(f"| {name} | {k} | {seconds / 60:.1f} | {verdict} |")


if __name__ == "__main__":
    main()
