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
    python scripts/benchmark_fit.py --cases all --held-out 30 --max-cases 20   # full data (below)

Full data (issue #35: never below nnU-Net by more than 0.2 Dice points on held-out cases): ``--held-out N`` keeps
the last N cases of the shuffled exploration pool out of everything (``--cases all``: every other one trains), fits
(``--max-cases``: fit scores that many cross-fitted maps), then segments the held-out cases with nnU-Net's 5-fold
ensemble alone and with ``autosam predict -m MODEL`` (which reads fit's record), and prints the paired difference
with its bootstrap interval. The bundled sample's cases are never drawn.
"""
from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path
from typing import Optional

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
CONFIRMATION = ROOT / "docs" / "results" / "confirmation_hippocampus.txt"


def exploration_cases(data: Path, n: Optional[int], seed: int, held_out: int = 0) -> tuple[list[str], list[str]]:
    """``n`` training cases (None: all) and ``held_out`` others, drawn from the cases outside the confirmation set
    and the bundled sample (the order of earlier rounds' draws, which had no sample case, is kept)."""
    from autosam import io
    from autosam.sample import sample_dataset

    info = io.load_dataset_json(data)
    cases = sorted(io.list_cases(data / "imagesTr", info.file_ending, info.num_channels))
    sacred = set(CONFIRMATION.read_text().split()) if CONFIRMATION.is_file() else set()
    own = sample_dataset("hippocampus")  # on the sample itself (no ../shared), every case is the sample's
    sample = set() if data.resolve() == own.resolve() else set(io.list_cases(own / "imagesTr", info.file_ending,
                                                                              info.num_channels))
    pool = [c for c in cases if c not in sacred]
    order = [pool[i] for i in np.random.default_rng(seed).permutation(len(pool)) if pool[i] not in sample]
    held = order[len(order) - held_out:] if held_out else []
    train = order[: len(order) - held_out]
    return sorted(train[:n] if n is not None else train), sorted(held)


def held_out_check(model: Path, data: Path, held: list[str], work: Path, schedule) -> list[str]:
    """nnU-Net's fold ensemble alone against ``autosam predict`` with fit's record on the held-out cases."""
    from autosam import io
    from autosam.cli import main as autosam_main
    from autosam.nnunet.train import predict_nnunet
    from autosam.study.results import case_values, score_folder
    from autosam.study.stats import compare

    info = io.load_dataset_json(data)
    images = work / "held_out_images"
    images.mkdir(exist_ok=True)
    for case in held:
        link = images / f"{case}_0000{info.file_ending}"
        if not link.exists():
            link.symlink_to((data / "imagesTr" / link.name).resolve())
    folds = sorted(f.name[len("fold_"):] for f in model.glob("fold_*") if (f / "checkpoint_final.pth").is_file())
    predict_nnunet(model, images, work / "held_out_nnunet", schedule, folds=folds)
    assert autosam_main(["predict", "-m", str(model), "-i", str(images), "-o", str(work / "held_out_fit"),
                         "-f", *folds]) == 0
    run = {"size": 0, "repeat": 0, "seed": 0}
    rows = [r for name in ("nnunet", "fit")
            for r in score_folder(work / f"held_out_{name}", data / "labelsTr", info, held, name, run, 0.0)]
    dice = case_values(rows)  # per method: (repeat, case) -> Dice averaged over labels, as the study scores
    c = compare(dice[("fit", 0)], dice[("nnunet", 0)])
    verdict = "met" if c["diff"] >= -0.002 else f"missed by {-0.002 - c['diff']:.4f}"
    return [f"held-out cases: {len(held)}; nnU-Net {len(folds)}-fold ensemble {c['baseline_mean']:.4f}, with fit's "
            f"record {c['mean']:.4f}: {c['diff']:+.4f} [{c['ci_low']:+.4f}, {c['ci_high']:+.4f}], "
            f"{c['wins']}/{c['losses']}/{c['ties']} (target: not below by more than 0.002: {verdict})"]


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
    p.add_argument("--cases", default="10", help="training cases (default 10; 'all')")
    p.add_argument("--held-out", type=int, default=0, help="cases kept out, then segmented with and without fit")
    p.add_argument("--max-cases", type=int, default=0, help="fit scores at most this many maps (default: all)")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--epochs", type=int, default=10, help="nnU-Net epochs per fold (default 10)")
    p.add_argument("--iterations", type=int, default=50, help="nnU-Net iterations per epoch (default 50)")
    p.add_argument("--adapters", action="store_true", help="also time fit with fold adapters")
    p.add_argument("--device", default="cpu")
    p.add_argument("--work", default="/tmp/autosam_benchmark_fit")
    a = p.parse_args()
    data = Path(a.data) if Path(a.data).is_dir() else sample_dataset("hippocampus")
    work = Path(a.work) / f"e{a.epochs}x{a.iterations}"  # a fold trained on another schedule is refused
    cases, held = exploration_cases(data, None if a.cases == "all" else int(a.cases), 20261206, a.held_out)
    if held:
        work = work.with_name(f"{work.name}_n{len(cases)}_h{len(held)}")
    split = fold_assignment(cases, a.folds, seed=0)
    start = time.perf_counter()
    schedule = Schedule(configuration="2d", epochs=a.epochs, iterations=a.iterations, device=a.device)
    model = train_cross_validation(data, cases, work, 905, schedule, split, name="FitBench")
    rows = [("nnU-Net 2d cross-validation", len(split), time.perf_counter() - start, "-")]
    roots = {"raw_root": work / "nnUNet_raw", "preprocessed_root": work / "nnUNet_preprocessed"}
    runs = [("fit --frozen", FitOptions(frozen=True, max_cases=a.max_cases), 15 * 60)]
    runs += [("fit (fold adapters)", FitOptions(max_cases=a.max_cases), 90 * 60)] if a.adapters else []
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
    for line in held_out_check(model, data, held, work, schedule) if held else []:
        print(line)


if __name__ == "__main__":
    main()
