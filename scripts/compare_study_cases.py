"""Per-case comparison of a study's methods against one baseline method, from the study's ``results.csv``.

For each method and training size: the mean Dice over test cases (a case's Dice is its mean over labels, and over
seeds), on how many test cases it is better or worse than the baseline (by more than ``--tie``), and its largest
loss on one case. Reads only ``results.csv``; nothing is computed again.

    python scripts/compare_study_cases.py STUDY_DIR --baseline nnunet

Given ``summary.json`` files instead (``autosam evaluate`` or ``nnUNetv2_evaluate_folder``, e.g. of a refined
validation folder), it compares them case by case in the same way, the first one being the baseline:

    python scripts/compare_study_cases.py BASELINE/summary.json OTHER/summary.json
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from collections import defaultdict
from pathlib import Path
from statistics import mean


def case_dice(path: Path) -> dict[tuple[str, str], dict[str, float]]:
    """(method, train size) -> case -> Dice averaged over labels and seeds."""
    values: dict = defaultdict(lambda: defaultdict(list))
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            if row["dice"] not in ("", "nan"):
                values[(row["method"], row["train_size"])][row["case"]].append(float(row["dice"]))
    return {key: {case: mean(v) for case, v in cases.items()} for key, cases in values.items()}


def summary_dice(path: Path) -> dict[str, float]:
    """case -> Dice averaged over labels, from an nnU-Net ``summary.json``."""
    per_case = json.loads(path.read_text())["metric_per_case"]
    return {Path(c["prediction_file"]).name: mean(m["Dice"] for m in c["metrics"].values()) for c in per_case}


def print_header(name: str) -> None:
    print(f"| method | n | mean Dice | better / worse than {name} | largest loss |")
    print("|---|---:|---:|---:|---:|")


def print_rows(base: dict[str, float], rows: dict[tuple[str, str], dict[str, float]], tie: float) -> None:
    """One table row per (method, n): its mean Dice and how its cases compare with ``base``'s."""
    for (method, size), cases in rows.items():
        diffs = [cases[c] - base[c] for c in base if c in cases]
        better = sum(d > tie for d in diffs)
        worse = sum(d < -tie for d in diffs)
        print(f"| {method} | {size} | {mean(cases.values()):.3f} | {better} / {worse} of {len(diffs)} | "
              f"{min(diffs):+.3f} |")


def compare_summaries(paths: list[Path], tie: float) -> int:
    try:
        dice = {path: summary_dice(path) for path in paths}
    except (OSError, ValueError, KeyError, TypeError) as e:
        print(f"cannot read the summaries ({e}); give summary.json files of autosam evaluate", file=sys.stderr)
        return 2
    for path, cases in dice.items():
        if not cases.keys() & dice[paths[0]].keys():
            print(f"{path}: no case in common with the baseline {paths[0]}", file=sys.stderr)
            return 2
    print_header(str(paths[0]))
    print_rows(dice[paths[0]], {(str(path), str(len(d))): d for path, d in dice.items()}, tie)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("study", type=Path, nargs="+",
                   help="a study folder (autosam study -o), or summary.json files, the baseline first")
    p.add_argument("--baseline", default="nnunet", help="method to compare against (default nnunet)")
    p.add_argument("--tie", type=float, default=1e-4, help="differences up to this count as ties (default 1e-4)")
    args = p.parse_args(argv)
    if all(path.suffix == ".json" for path in args.study) and len(args.study) > 1:
        return compare_summaries(args.study, args.tie)
    if len(args.study) > 1:
        print("give one study folder, or two or more summary.json files", file=sys.stderr)
        return 2
    path = args.study[0] / "results.csv"
    if not path.is_file():
        print(f"{path}: not found (give a folder written by autosam study)", file=sys.stderr)
        return 2
    dice = case_dice(path)
    sizes = sorted({size for _, size in dice}, key=lambda s: (not s.isdigit(), int(s) if s.isdigit() else 0))
    if not any((args.baseline, s) in dice for s in sizes):
        print(f"{path}: no rows of the baseline method {args.baseline!r}", file=sys.stderr)
        return 2
    print_header(args.baseline)
    for size in sizes:
        base = dice.get((args.baseline, size))
        if base is not None:
            print_rows(base, {key: cases for key, cases in dice.items() if key[1] == size}, args.tie)
    return 0


if __name__ == "__main__":
    sys.exit(main())
