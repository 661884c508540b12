"""Per-case comparison of a study's methods against one baseline method, from the study's ``results.csv``.

For each method and training size: the mean Dice over test cases (a case's Dice is its mean over labels, and over
seeds), on how many test cases it is better or worse than the baseline (by more than ``--tie``), and its largest
loss on one case. Reads only ``results.csv``; nothing is computed again.

    python scripts/compare_study_cases.py STUDY_DIR --baseline nnunet
"""
from __future__ import annotations

import argparse
import csv
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("study", type=Path, help="a study folder (autosam study -o)")
    p.add_argument("--baseline", default="nnunet", help="method to compare against (default nnunet)")
    p.add_argument("--tie", type=float, default=1e-4, help="differences up to this count as ties (default 1e-4)")
    args = p.parse_args(argv)
    path = args.study / "results.csv"
    if not path.is_file():
        print(f"{path}: not found (give a folder written by autosam study)", file=sys.stderr)
        return 2
    dice = case_dice(path)
    sizes = sorted({size for _, size in dice}, key=lambda s: (not s.isdigit(), int(s) if s.isdigit() else 0))
    if not any((args.baseline, s) in dice for s in sizes):
        print(f"{path}: no rows of the baseline method {args.baseline!r}", file=sys.stderr)
        return 2
    print(f"| method | n | mean Dice | better / worse than {args.baseline} | largest loss |")
    print("|---|---:|---:|---:|---:|")
    for size in sizes:
        base = dice.get((args.baseline, size))
        if base is None:
            continue
        for (method, s), cases in dice.items():
            if s != size:
                continue
            diffs = [cases[c] - base[c] for c in base if c in cases]
            better = sum(d > args.tie for d in diffs)
            worse = sum(d < -args.tie for d in diffs)
            print(f"| {method} | {size} | {mean(cases.values()):.3f} | {better} / {worse} of {len(diffs)} | "
                  f"{min(diffs):+.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
