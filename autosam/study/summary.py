"""What a study reports from its rows: ``summary.md`` (mean Dice per method and size, then every method against the
baseline with the paired statistics of :mod:`.stats`), ``stats.csv`` (the same comparisons, machine-readable) and
the learning curve (mean Dice and its 95% bootstrap interval per size)."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .. import io
from .convergence import convergence_lines
from .methods import describe
from .results import case_values
from .stats import RESAMPLES, SEED, compare, mean_ci

STATS_FIELDS = ("train_size", "method", "baseline", "repeats", "cases", "mean", "baseline_mean", "diff", "ci_low",
                "ci_high", "wins", "losses", "ties", "p")


def choose_baseline(rows: list[dict], methods: Sequence[str], baseline: str) -> tuple[Optional[str], str]:
    """The baseline to compare with (``baseline``, else the first method run; None: nothing was run) and, when it
    had to fall back, a line saying so."""
    run = [m for m in methods if any(r["method"] == m for r in rows)]
    if baseline in run or not run:
        return (baseline if run else None), ""
    return run[0], f"`{baseline}` (--baseline) was not run; the baseline here is `{run[0]}`, the first method run."


def comparisons(rows: list[dict], methods: Sequence[str], baseline: str) -> list[dict]:
    """Per size and method (the baseline excepted), :func:`.stats.compare` against ``baseline`` on the (repeat,
    case) keys both have."""
    dice = case_values(rows, "dice")
    out = []
    for size in sorted({s for _, s in dice}):
        base = dice.get((baseline, size))
        for m in methods:
            values = dice.get((m, size))
            if m == baseline or not values or not base:
                continue
            shared = set(values) & set(base)
            if shared:
                stats = compare({k: values[k] for k in shared}, {k: base[k] for k in shared})
                out.append({"train_size": size, "method": m, "baseline": baseline, **stats})
    return out


def write_stats(study: Path, stats: list[dict]) -> Path:
    """``stats.csv`` in ``study`` (beside ``results.csv``): one row per size and compared method."""
    path = study / "stats.csv"
    with io.atomic_output(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=STATS_FIELDS, extrasaction="ignore")
        writer.writeheader()
        for s in stats:
            writer.writerow({k: (f"{v:.4g}" if k == "p" else f"{v:.5f}" if isinstance(v, float) else v)
                             for k, v in s.items()})
    return path


def describe_tests(plan: dict) -> str:
    """The test cases in words: how many, and whether each repeat drew its own."""
    runs = plan.get("runs") or [{"repeat": 0, "test": plan["test"]}]
    tests = {r["repeat"]: r["test"] for r in runs}
    sizes = sorted({len(t) for t in tests.values()})
    count = str(sizes[0]) if len(sizes) == 1 else f"{sizes[0]}-{sizes[-1]}"
    if len(tests) == 1:
        return f"{count} test cases"
    same = all(t == plan["test"] for t in tests.values())
    return f"{count} test cases x {len(tests)} repeats (" + ("the same in every repeat)" if same else
                                                             "a new split in each)")


def summary_markdown(rows: list[dict], plan: dict, methods: Sequence[str], baseline: Optional[str] = None,
                     stats: Optional[list[dict]] = None, note: str = "") -> str:
    """Mean Dice (± std over test cases and repeats) per method and training size, plus NSD and seconds per case;
    then, with a ``baseline``, a table per size of every method against it (``stats``: :func:`comparisons`, made
    here when not given; ``note``: the baseline's fallback, :func:`choose_baseline`)."""
    dice, nsd, secs = case_values(rows, "dice"), case_values(rows, "nsd"), case_values(rows, "seconds")
    sizes = sorted({size for _, size in dice})
    lines = [f"# autosam study: {plan['dataset']}", "",
             f"{describe_tests(plan)}, never trained or tuned on; sizes = training cases. Dice mean ± std over "
             "test cases (and repeats); best automatic method per size in bold.", "",
             "| method | " + " | ".join(f"n={s}" for s in sizes) + " | NSD (largest n) | s/case |",
             "|---|" + "---:|" * (len(sizes) + 2)]
    mean = {k: float(np.mean(list(v.values()))) for k, v in dice.items()}
    automatic = [m for m in methods if "oracle" not in m]
    best = {s: max(((mean[(m, s)], m) for m in automatic if (m, s) in mean), default=(0, None))[1] for s in sizes}
    for m in methods:
        cells = []
        for s in sizes:
            v = dice.get((m, s))
            text = f"{mean[(m, s)]:.3f} ± {np.std(list(v.values())):.3f}" if v else "-"
            cells.append(f"**{text}**" if best.get(s) == m else text)
        last = nsd.get((m, sizes[-1])) if sizes else None
        sec = secs.get((m, sizes[-1])) if sizes else None
        lines.append(f"| {m} | " + " | ".join(cells) + (f" | {np.mean(list(last.values())):.3f} |" if last else
                                                         " | - |")
                     + (f" {np.mean(list(sec.values())):.1f} |" if sec else " - |"))
    if baseline is not None:
        stats = comparisons(rows, methods, baseline) if stats is None else stats
        lines += stats_markdown(stats, dice, methods, baseline, note)
    lines += ["", "Methods:"] + [f"- `{m}`: {describe(m)}" for m in methods]
    return "\n".join(lines) + "\n"


def stats_markdown(stats: list[dict], dice: dict, methods: Sequence[str], baseline: str, note: str) -> list[str]:
    """The section against the baseline: one table per size (the baseline's row first)."""
    lines = ["", f"## Against `{baseline}`", ""]
    lines += [note, ""] if note else []
    lines.append("Paired on identical (repeat, test case) pairs; a case's Dice is its mean over labels. diff: mean "
                 f"difference against `{baseline}`; 95% CI: hierarchical bootstrap (repeats, then cases within each "
                 f"repeat; {RESAMPLES} resamples, seed {SEED}); W/L/T: cases better / worse / within 0.001; p: "
                 "two-sided Wilcoxon signed-rank (n/a: every difference is zero).")
    if not stats:
        return lines + ["", "No other method to compare."]
    for size in sorted({s["train_size"] for s in stats}):
        base = dice.get((baseline, size), {})
        lines += ["", f"### n={size}", "",
                  "| method | n (cases x repeats) | mean | diff vs " + baseline + " | 95% CI | W/L/T | p |",
                  "|---|---:|---:|---:|---:|---:|---:|",
                  f"| {baseline} | {_count(base)} | {np.mean(list(base.values())):.3f} | (baseline) | | | |"]
        by_method = {s["method"]: s for s in stats if s["train_size"] == size}
        for m in (m for m in methods if m in by_method):
            s = by_method[m]
            count = f"{s['per_repeat'][0]} x {s['repeats']}" if len(s["per_repeat"]) == 1 else \
                f"{s['cases']} ({s['repeats']} repeats)"
            p = "n/a" if s["all_equal"] else f"{s['p']:.3g}"
            lines.append(f"| {m} | {count} | {s['mean']:.3f} | {s['diff']:+.3f} | [{s['ci_low']:+.3f}, "
                         f"{s['ci_high']:+.3f}] | {s['wins']}/{s['losses']}/{s['ties']} | {p} |")
    return lines


def _count(values: dict) -> str:
    per = {}
    for repeat, _case in values:
        per[repeat] = per.get(repeat, 0) + 1
    sizes = set(per.values())
    return f"{sizes.pop()} x {len(per)}" if len(sizes) == 1 else f"{len(values)} ({len(per)} repeats)"


def write_reports(folder: Path, rows: list[dict], plan: dict, methods: Sequence[str], baseline: str,
                  title: str) -> None:
    """``summary.md`` (against ``baseline``, or the first method run when it was not), ``stats.csv`` and
    ``learning_curve.png`` in ``folder``."""
    chosen, note = choose_baseline(rows, methods, baseline)
    stats = comparisons(rows, methods, chosen) if chosen else []
    write_stats(folder, stats)
    with io.atomic_output(folder / "summary.md") as tmp:
        tmp.write_text(summary_markdown(rows, plan, methods, chosen, stats, note) + "\n"
                       + "\n".join(convergence_lines(folder)))
    learning_curve(rows, methods, folder / "learning_curve.png", title)


def learning_curve(rows: list[dict], methods: Sequence[str], path: Path, title: str) -> Path:
    """Dice against the number of training cases, one line per method (error bars: the 95% hierarchical bootstrap
    interval of the mean, over repeats and test cases)."""
    import matplotlib  # optional (autosam[report]): imported only when a study has scores to plot

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dice = case_values(rows, "dice")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for m in methods:
        pts = []
        for (mm, s), v in sorted(dice.items()):
            if mm == m:
                mean, (low, high) = float(np.mean(list(v.values()))), mean_ci(v)
                pts.append((s, mean, max(0.0, mean - low), max(0.0, high - mean)))
        if pts:
            xs, ys, below, above = zip(*pts)
            style = "--" if "oracle" in m else "-"
            ax.errorbar(xs, ys, yerr=[below, above], label=m, linestyle=style, marker="o", capsize=3, alpha=0.85)
    ax.set_xlabel("training cases")
    ax.set_ylabel("Dice (test cases; bars: 95% bootstrap CI)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    with io.atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path
