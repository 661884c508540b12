"""What a study writes of its scores: one row per test case and label (``results.csv``), the case values the
summary reads, and the seconds each step took (kept across resumes)."""
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

RESULT_FIELDS = ("method", "train_size", "repeat", "seed", "case", "label", "dice", "nsd", "hd95", "seconds")
_FLOATS, _INTS = ("dice", "nsd", "hd95", "seconds"), ("train_size", "repeat", "seed")


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
    return [{"method": method, "train_size": run["size"], "repeat": run["repeat"], "seed": run["seed"], "case": c,
             "label": names[value], "dice": m["Dice"], "nsd": m["NSD"], "hd95": m["HD95"], "seconds": seconds}
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


def read_results(study: Path) -> list[dict]:
    """The rows of ``study``'s ``results.csv`` (none when it does not exist), typed as :func:`score_folder` makes
    them."""
    path = study / "results.csv"
    if not path.is_file():
        return []
    try:
        with open(path, newline="") as f:
            return [{k: (float(v) if k in _FLOATS else int(v) if k in _INTS else v) for k, v in r.items()}
                    for r in csv.DictReader(f)]
    except (OSError, ValueError, csv.Error) as e:
        raise AutosamError(f"{path}: cannot read the study's results ({e}); move it away to score every run "
                           "again") from None


def kept_rows(rows: list[dict], run: dict, methods: Sequence[str]) -> dict[str, list[dict]]:
    """``run``'s rows among ``rows``, by method, for each of ``methods`` whose rows score every test case of the run
    (a resumed study does not run such a method again, even in a new folder)."""
    mine = [r for r in rows if r["train_size"] == run["size"] and r["repeat"] == run["repeat"]
            and r["seed"] == run["seed"]]
    kept = {}
    for method in methods:
        found = [r for r in mine if r["method"] == method]
        if {r["case"] for r in found} == set(run["test"]):
            kept[method] = found
    return kept


def case_values(rows: list[dict], key: str = "dice") -> dict[tuple, dict[tuple, float]]:
    """Per (method, size), per (repeat, case), the metric averaged over labels (labels empty in both, NaN, left
    out; a case with no finite label is left out)."""
    per_case: dict[tuple, list[float]] = {}
    for r in rows:
        v = float(r[key])
        if math.isfinite(v):
            per_case.setdefault((r["method"], int(r["train_size"]), int(r["repeat"]), r["case"]), []).append(v)
    out: dict[tuple, dict[tuple, float]] = {}
    for (method, size, repeat, case), values in sorted(per_case.items()):
        out.setdefault((method, size), {})[(repeat, case)] = float(np.mean(values))
    return out


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
