"""What a study writes of its scores: one row per test case and label (``results.csv``), ``summary.md``, the
learning curve, and the seconds each step took (kept across resumes)."""
from __future__ import annotations

import csv
import json
import math
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .. import evaluation, io
from ..errors import AutosamError
from .methods import describe

RESULT_FIELDS = ("method", "train_size", "seed", "case", "label", "dice", "nsd", "hd95", "seconds")


def score_folder(pred: Path, labels: Path, info: io.DatasetInfo, cases: Sequence[str], method: str, run: dict,
                 seconds: float) -> list[dict]:
    """One row per case and label (Dice, NSD at 1 mm, HD95) for the predictions of ``cases`` in ``pred``,
    scored by :func:`autosam.evaluation.evaluate_folder`."""
    summary = evaluation.evaluate_folder(labels, pred, info)
    scored = {Path(c["prediction_file"]).name[: -len(info.file_ending)]: c["metrics"]
              for c in summary["metric_per_case"]}
    missing = [c for c in cases if c not in scored]
    if missing:
        raise AutosamError(f"{pred}: no prediction for test case {missing[0]}")
    names = {v: k for k, v in info.labels.items()}
    return [{"method": method, "train_size": run["size"], "seed": run["seed"], "case": c, "label": names[value],
             "dice": m["Dice"], "nsd": m["NSD"], "hd95": m["HD95"], "seconds": seconds}
            for c in cases for value, m in ((v, scored[c][v]) for v in info.foreground)]


def write_results(study: Path, rows: list[dict]) -> Path:
    """``results.csv`` in ``study``: every row so far (floats with five decimals), rewritten atomically."""
    path = study / "results.csv"
    with io.atomic_output(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=RESULT_FIELDS)
        writer.writeheader()
        for r in rows:
            writer.writerow({k: (f"{v:.5f}" if isinstance(v, float) else v) for k, v in r.items()})
    return path


def _case_means(rows: list[dict], key: str = "dice") -> dict[tuple, list[float]]:
    """Per (method, size) the list over (seed, case) of the label-mean metric (labels empty in both skipped)."""
    per_case: dict[tuple, list[float]] = {}
    for r in rows:
        v = float(r[key])
        if math.isfinite(v):
            per_case.setdefault((r["method"], int(r["train_size"]), int(r["seed"]), r["case"]), []).append(v)
    out: dict[tuple, list[float]] = {}
    for (method, size, _seed, _case), values in sorted(per_case.items()):
        out.setdefault((method, size), []).append(float(np.mean(values)))
    return out


def summary_markdown(rows: list[dict], plan: dict, methods: Sequence[str]) -> str:
    """Mean Dice (± std over test cases and seeds) per method and training size, plus NSD and seconds per case."""
    dice, nsd, secs = _case_means(rows, "dice"), _case_means(rows, "nsd"), _case_means(rows, "seconds")
    sizes = sorted({size for _, size in dice})
    lines = [f"# autosam study: {plan['dataset']}", "",
             f"{len(plan['test'])} test cases (never trained or tuned on); sizes = training cases; "
             f"{plan['options']['seeds']} seed(s). Dice mean ± std over test cases (and seeds); "
             "best automatic method per size in bold.", "",
             "| method | " + " | ".join(f"n={s}" for s in sizes) + " | NSD (largest n) | s/case |",
             "|---|" + "---:|" * (len(sizes) + 2)]
    automatic = [m for m in methods if "oracle" not in m]
    best = {s: max(((np.mean(dice[(m, s)]), m) for m in automatic if (m, s) in dice), default=(0, None))[1]
            for s in sizes}
    for m in methods:
        cells = []
        for s in sizes:
            v = dice.get((m, s))
            text = f"{np.mean(v):.3f} ± {np.std(v):.3f}" if v else "-"
            cells.append(f"**{text}**" if best.get(s) == m else text)
        last = nsd.get((m, sizes[-1])) if sizes else None
        sec = secs.get((m, sizes[-1])) if sizes else None
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {np.mean(last):.3f} |" if last else
                     f"| {m} | " + " | ".join(cells) + " | - |")
        lines[-1] += f" {np.mean(sec):.1f} |" if sec else " - |"
    lines += ["", "Methods:"] + [f"- `{m}`: {describe(m)}" for m in methods]
    return "\n".join(lines) + "\n"


def learning_curve(rows: list[dict], methods: Sequence[str], path: Path, title: str) -> Path:
    """Dice against the number of training cases, one line per method (error bars: std over cases)."""
    import matplotlib  # optional (autosam[report]): imported only when a study has scores to plot

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dice = _case_means(rows, "dice")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for m in methods:
        pts = sorted((s, np.mean(v), np.std(v)) for (mm, s), v in dice.items() if mm == m)
        if pts:
            xs, ys, es = zip(*pts)
            style = "--" if "oracle" in m else "-"
            ax.errorbar(xs, ys, yerr=es, label=m, linestyle=style, marker="o", capsize=3, alpha=0.85)
    ax.set_xlabel("training cases")
    ax.set_ylabel("Dice (test cases)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    with io.atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path


def timed(step: Callable[[], object], record: Path) -> float:
    """Run ``step`` and add its seconds to those kept in ``record``: a resumed step (which skips what is done)
    adds only what it still did, so the total is that of one full run."""
    t0 = time.perf_counter()
    step()
    spent = time.perf_counter() - t0
    old = 0.0
    if record.is_file():
        try:
            old = float(json.loads(record.read_text())["seconds"])
        except (OSError, ValueError, KeyError, TypeError):
            old = 0.0
    record.parent.mkdir(parents=True, exist_ok=True)
    io.write_json({"seconds": old + spent}, record)
    return old + spent
