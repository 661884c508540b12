#!/usr/bin/env python
"""The confirmation run's report, computed from a study's ``results.csv`` exactly as docs/protocol.md ("Primary
comparison") writes it, so that no choice is left for after the result: per case and repeat, Dice averaged over
the foreground labels; against each SAM-free control, the mean paired difference d, its 95% percentile interval
from 10,000 bootstrap replicates drawing the repeats and the cases with replacement (one case draw shared by the
drawn repeats; seed 0), a two-sided Wilcoxon signed-rank p on the per-case d averaged over repeats, and wins /
losses / ties per repeat and case (ties within 0.001). The best control is the one with the highest mean Dice;
the verdict is read against it: "SAM pays" only if the interval lies above 0, a loss if below, a tie otherwise.
The +2-point target (d >= 0.020 against ``nnunet``), the p values and the counts are reported beside it and
change nothing. NSD is reported, not decisive.

    python scripts/protocol_report.py docs/results/protocol_hippocampus_n10/results.csv
    python scripts/protocol_report.py docs/results/protocol_hc18_n10/results.csv --also tuned:prompter

Written before the run's result was read. Every (repeat, case) of the run must be scored for every method
compared (one line otherwise, exit 2).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from autosam.errors import AutosamError  # noqa: E402
from autosam.study.results import case_values, read_results  # noqa: E402
from autosam.study.stats import crossed_ci, wilcoxon_p, wins_losses_ties  # noqa: E402

RESAMPLES = 10_000
TARGET = 0.020  # the project's +2 points against nnU-Net
CONTROLS = ("nnunet", "nnunet+prompter", "nnunet-folds", "nnunet-planes")


def matrix(values: dict, repeats: list, cases: list, method: str) -> np.ndarray:
    """A method's repeats x cases matrix; a (repeat, case) it did not score is refused in one line."""
    missing = [(r, c) for r in repeats for c in cases if (r, c) not in values]
    if missing:
        raise AutosamError(f"{method}: no score for repeat {missing[0][0]}, case {missing[0][1]} "
                           f"({len(missing)} missing); the run has not finished")
    return np.array([[values[(r, c)] for c in cases] for r in repeats], float)


def verdict(low: float, high: float) -> str:
    return "pays" if low > 0 else "loses" if high < 0 else "ties (the interval holds 0)"


def compare(sam: np.ndarray, control: np.ndarray, sam_nsd: np.ndarray, control_nsd: np.ndarray) -> dict:
    d = sam - control
    low, high = crossed_ci(d, RESAMPLES, 0)
    wins, losses, ties = wins_losses_ties(d.ravel())
    return {"mean": float(control.mean()), "nsd": float(control_nsd.mean()), "d": float(d.mean()), "low": low,
            "high": high, "p": wilcoxon_p(d.mean(axis=0)), "wlt": f"{wins}/{losses}/{ties}",
            "d_nsd": float((sam_nsd - control_nsd).mean())}


def _row(name: str, c: dict) -> str:
    return (f"| {name} | {c['mean']:.4f} | {c['nsd']:.4f} | {c['d']:+.4f} | [{c['low']:+.4f}, {c['high']:+.4f}] | "
            f"{c['p']:.3g} | {c['wlt']} | {c['d_nsd']:+.4f} | {verdict(c['low'], c['high'])} |")


def report(rows: list[dict], sam: str, controls: list[str], also: list[tuple[str, str]]) -> str:
    """The report (markdown) of every training size in ``rows``."""
    dice, nsd = case_values(rows, "dice"), case_values(rows, "nsd")
    sizes = sorted({size for _m, size in dice})
    if not sizes:
        raise AutosamError("no scored rows")
    out = []
    for size in sizes:
        if (sam, size) not in dice:
            raise AutosamError(f"{sam}: not scored at {size} training cases")
        keys = dice[(sam, size)]
        repeats, cases = sorted({r for r, _ in keys}), sorted({c for _, c in keys})
        get = lambda m, table: matrix(table[(m, size)], repeats, cases, m)  # noqa: E731
        present = [m for m in controls if (m, size) in dice]
        out += [f"## {size} training cases: {len(repeats)} repeat(s) x {len(cases)} test cases",
                "", f"`{sam}`: mean Dice {get(sam, dice).mean():.4f}, NSD {get(sam, nsd).mean():.4f}. Against each "
                f"control: d = Dice({sam}) - Dice(control), 95% CI from {RESAMPLES:,} bootstrap replicates "
                "(repeats and cases; seed 0), Wilcoxon p on the per-case d averaged over repeats, wins/losses/ties "
                "per repeat and case (ties within 0.001).", "",
                "| control | control Dice | control NSD | d | 95% CI | Wilcoxon p | W/L/T | d NSD | SAM |",
                "|---|---:|---:|---:|---|---:|---|---:|---|"]
        results = {m: compare(get(sam, dice), get(m, dice), get(sam, nsd), get(m, nsd)) for m in present}
        out += [_row(m, results[m]) for m in present]
        out += ["", f"Controls not in the run: {', '.join(m for m in controls if m not in present) or 'none'}."]
        if results:
            best = max(present, key=lambda m: results[m]["mean"])
            b = results[best]
            out.append(f"**Best control: `{best}`** (mean Dice {b['mean']:.4f}). **Verdict: SAM "
                       f"{verdict(b['low'], b['high'])}** against it: d = {b['d']:+.4f}, 95% CI "
                       f"[{b['low']:+.4f}, {b['high']:+.4f}].")
        if "nnunet" in results:
            d = results["nnunet"]["d"]
            out.append(f"The +2-point target (d >= {TARGET:.3f} against `nnunet`): d = {d:+.4f}, "
                       f"{'met' if d >= TARGET else 'missed'} (changes nothing above).")
        for method, base in also:
            if (method, size) in dice and (base, size) in dice:
                c = compare(get(method, dice), get(base, dice), get(method, nsd), get(base, nsd))
                out += ["", f"`{method}` against `{base}` (mean Dice {get(method, dice).mean():.4f}):", "",
                        "| control | control Dice | control NSD | d | 95% CI | Wilcoxon p | W/L/T | d NSD | verdict |",
                        "|---|---:|---:|---:|---|---:|---|---:|---|", _row(base, c)]
        per_repeat = [m for m in [sam, *present] + [x for pair in also for x in pair] if (m, size) in dice]
        out += ["", "Mean Dice per repeat:", "", "| method | " + " | ".join(f"repeat {r}" for r in repeats) + " |",
                "|---|" + "---:|" * len(repeats)]
        out += [f"| {m} | " + " | ".join(f"{v:.4f}" for v in get(m, dice).mean(axis=1)) + " |"
                for m in dict.fromkeys(per_repeat)]
        out.append("")
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", type=Path, help="a study's results.csv (or its folder)")
    p.add_argument("--sam", default="nnunet+tuned", help="the SAM method (default: nnunet+tuned)")
    p.add_argument("--controls", nargs="+", default=list(CONTROLS), help="the SAM-free controls")
    p.add_argument("--also", nargs="*", default=[], metavar="METHOD:BASE", help="further comparisons (tuned:prompter)")
    p.add_argument("-o", "--output", type=Path, help="also write the report here")
    a = p.parse_args(argv)
    path = a.results / "results.csv" if a.results.is_dir() else a.results
    try:
        if path.name != "results.csv" or not path.is_file():
            raise AutosamError(f"{path}: no study results.csv there")
        if any(":" not in x for x in a.also):
            raise AutosamError(f"--also takes METHOD:BASE pairs, got {a.also}")
        text = report(read_results(path.parent), a.sam, a.controls, [tuple(x.split(":", 1)) for x in a.also])
    except AutosamError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(text)
    if a.output:
        a.output.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
