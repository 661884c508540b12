"""Issue #37's targets for label-free quality estimates, on held-out cases, in one table.

    python scripts/benchmark_qc.py --coarse COARSE --refined REFINED --labels LABELS [--train-labels labelsTr]
        [--quality-model MODEL/autosam_quality.json]

``COARSE`` holds the coarse maps (``<case><ending>``, and ``<case>.npz`` probabilities when nnU-Net saved them),
``REFINED`` the refined outputs (with ``<case>.quality.json`` signal files when refined with QC; otherwise the
signals are computed here from the coarse and refined maps, without SAM's IoU and mask), ``LABELS`` the reference
labels. Predicted Dice is cross-fitted: a :class:`autosam.qc.QualityModel` fitted on the other folds' cases
predicts each fold's (``--folds``; subjects split by a seeded permutation, ``--subject-pattern``). Case Dice is the mean over labels. Rows:
the signals' model; softmax entropy alone (the anchor a user has today, calibrated the same way); the
uncalibrated rank score (no MAE); with ``--quality-model``, first, that stored model as it is (for example the one
``autosam fit`` calibrated on nnU-Net's cross-fitted maps of the training cases; nothing is fitted here). Columns: Spearman rho, MAE, the share of the true worst 10% of cases among the
20% flagged worst, each against its target (rho >= 0.6, MAE <= 0.05, capture >= 0.6), with the gap where missed.

The confirmation cases of docs/results/confirmation_*.txt are refused (``--exclude-confirmation`` drops them
instead, with a note). ``--train-labels`` (training labels, never the evaluated ones) gives the volume
statistics for signals computed here.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from autosam import io  # noqa: E402
from autosam.errors import AutosamError  # noqa: E402
from autosam.qc import QualityModel, case_signals, dice, rank_score, reference_volumes  # noqa: E402
from autosam.qc.table import case_file, read_case_file  # noqa: E402
from autosam.splits import subject_of  # noqa: E402

CONFIRMATION = sorted((ROOT / "docs" / "results").glob("confirmation_*.txt"))
TARGETS = {"rho": (0.6, ">="), "mae": (0.05, "<="), "capture": (0.6, ">=")}


def confirmation_cases() -> set[str]:
    """Every case of the protocol's confirmation sets (never to be scored here)."""
    return {line.strip() for f in CONFIRMATION for line in f.read_text().splitlines() if line.strip()}


def _probs(coarse: Path, case_id: str):
    npz = coarse / f"{case_id}.npz"
    if not npz.is_file():
        return None
    with np.load(npz) as data:
        return data["probabilities"].astype(np.float32)


def case_rows(case_id: str, info: io.DatasetInfo, coarse: Path, refined: Path, labels: Path, stats) -> list[dict]:
    """The case's signal rows (its quality file, else computed here), each with its ``true_dice``."""
    final, props = io.read_label(refined / f"{case_id}{info.file_ending}", info=info)
    ref, _ = io.read_label(labels / f"{case_id}{info.file_ending}", info=info)
    if case_file(refined, case_id).is_file():
        rows = read_case_file(case_file(refined, case_id))
    else:
        seg, _ = io.read_label(coarse / f"{case_id}{info.file_ending}", info=info)
        rows = case_signals(case_id, info, seg, _probs(coarse, case_id), final, props["spacing"], volume_stats=stats)
    for row in rows:
        value = int(row["label"])
        row["true_dice"] = dice(ref == value, final == value)
    return rows


def cross_fitted(rows: list[dict], features, folds: int, pattern=None, seed: int = 0) -> np.ndarray:
    """Each row's Dice predicted by a model fitted on the other folds' cases (a subject's cases in one fold)."""
    subjects = sorted({subject_of(r["case"], pattern) for r in rows})
    fold_of = {s: i % folds for i, s in enumerate(np.random.default_rng(seed).permutation(subjects))}
    fold_of = {r["case"]: fold_of[subject_of(r["case"], pattern)] for r in rows}
    predicted = np.zeros(len(rows))
    for fold in range(folds):
        train = [r for r in rows if fold_of[r["case"]] != fold]
        test = [i for i, r in enumerate(rows) if fold_of[r["case"]] == fold]
        if not test:
            continue
        model = QualityModel(features).fit(train, [r["true_dice"] for r in train])
        predicted[test] = model.predict([rows[i] for i in test])
    return predicted


def per_case(rows: list[dict], values) -> tuple[list[str], np.ndarray]:
    cases = sorted({r["case"] for r in rows})
    by_case: dict[str, list[float]] = {c: [] for c in cases}
    for r, v in zip(rows, values):
        by_case[r["case"]].append(float(v))
    return cases, np.array([np.mean(by_case[c]) for c in cases])


def measures(predicted: np.ndarray, true: np.ndarray, calibrated: bool) -> dict:
    """Spearman rho, MAE (calibrated only) and the share of the true worst 10% among the predicted worst 20%."""
    n = len(true)
    rho = float(spearmanr(predicted, true)[0]) if n > 2 and np.ptp(predicted) > 0 and np.ptp(true) > 0 else math.nan
    worst = set(np.argsort(true, kind="stable")[: max(1, math.ceil(0.1 * n))])
    flagged = set(np.argsort(predicted, kind="stable")[: max(1, math.ceil(0.2 * n))])
    return {"rho": rho, "mae": float(np.mean(np.abs(predicted - true))) if calibrated else math.nan,
            "capture": len(worst & flagged) / len(worst)}


def _cell(name: str, value: float) -> str:
    if math.isnan(value):
        return "-"
    target, sense = TARGETS[name]
    met = value >= target if sense == ">=" else value <= target
    return f"{value:.3f}" + ("" if met else f" (misses by {abs(value - target):.3f})")


def table(results: dict[str, dict], n_cases: int, n_rows: int) -> str:
    head = (f"{n_cases} cases, {n_rows} case-label rows; targets: rho >= 0.6, MAE <= 0.05, capture (true worst 10% "
            f"among flagged worst 20%) >= 0.6")
    lines = [head, "| method | Spearman rho | MAE | capture |", "|---|---|---|---|"]
    for name, m in results.items():
        lines.append(f"| {name} | " + " | ".join(_cell(k, m[k]) for k in ("rho", "mae", "capture")) + " |")
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--coarse", type=Path, required=True, help="coarse maps (+ <case>.npz probabilities)")
    p.add_argument("--refined", type=Path, required=True, help="refined outputs (+ <case>.quality.json)")
    p.add_argument("--labels", type=Path, required=True, help="reference labels of the evaluated cases")
    p.add_argument("--train-labels", type=Path, help="training labels, for volume statistics of computed signals")
    p.add_argument("--dataset-json", type=Path)
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--subject-pattern", help="regex whose first group is a case's subject (HC18: '^([^_]+)_'); "
                   "a subject's cases share a fold")
    p.add_argument("--exclude-confirmation", action="store_true", help="drop confirmation cases instead of refusing")
    p.add_argument("--quality-model", type=Path, help="a stored quality model (autosam_quality.json), scored as is")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        info = io.load_dataset_json(io.find_dataset_json(args.dataset_json, predictions=args.refined,
                                                         labels=args.labels))
        cases = sorted(p.name[: -len(info.file_ending)] for p in args.refined.glob(f"*{info.file_ending}"))
        held = sorted(set(cases) & confirmation_cases())
        if held and not args.exclude_confirmation:
            raise AutosamError(f"{len(held)} confirmation case(s) in {args.refined} ({', '.join(held[:3])}"
                               f"{', ...' if len(held) > 3 else ''}): refused (--exclude-confirmation drops them)")
        if held:
            print(f"note: {len(held)} confirmation case(s) dropped", file=sys.stderr)
        cases = [c for c in cases if c not in held]
        subjects = len({subject_of(c, args.subject_pattern) for c in cases})
        if subjects < 2:
            raise AutosamError(f"{args.refined}: {len(cases)} case(s) of {subjects} subject(s) to score; need at "
                               f"least 2 subjects")
        stats = reference_volumes(sorted(args.train_labels.glob(f"*{info.file_ending}")), info) \
            if args.train_labels else None
        rows = [r for c in cases for r in case_rows(c, info, args.coarse, args.refined, args.labels, stats)]
        stored = QualityModel.load(args.quality_model, info) if args.quality_model else None
    except AutosamError as e:
        print(f"benchmark_qc: error: {e}", file=sys.stderr)
        return 2
    folds = max(2, min(args.folds, subjects))
    names, true = per_case(rows, [r["true_dice"] for r in rows])
    results = {}
    if stored is not None:
        results[f"stored model ({args.quality_model.parent.name}), as is"] = measures(
            per_case(rows, stored.predict(rows))[1], true, True)
    for name, features, calibrated in (("signals, ridge (cross-fitted)", None, True),
                                       ("softmax entropy alone (anchor)", ["entropy_mean"], True)):
        predicted = cross_fitted(rows, features or QualityModel().features, folds, args.subject_pattern)
        results[name] = measures(per_case(rows, predicted)[1], true, calibrated)
    results["rank score (uncalibrated)"] = measures(per_case(rows, [rank_score(r) for r in rows])[1], true, False)
    print(table(results, len(names), len(rows)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
