"""The label-free quality estimates of a prediction folder, as the report shows them.

:func:`load_quality` reads the folder's ``quality.csv`` (written by :mod:`autosam.qc.table`) into one
:class:`CaseQuality` per case, or says in one line why it cannot and returns None: the report then goes on without
it and never writes into the prediction folder. :func:`sort_predicted_worst_first` orders cases by their mean
predicted Dice, :func:`flagged` lists the flagged ones, and :func:`quality_pairs` and :func:`agreement` give the
predicted-against-true Dice points and their Spearman rho and mean absolute error (with a reference).
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional, Sequence

import numpy as np

from ..errors import AutosamError
from ..evaluation import finite_mean
from ..qc import TABLE_FILE, read_quality_csv

if TYPE_CHECKING:
    from .build import CaseReport

#: columns the report needs from ``quality.csv``
NEEDED = ("case", "label", "predicted_dice", "calibrated", "flag")


@dataclass
class CaseQuality:
    """One case's rows of ``quality.csv``: the predicted Dice per label, and whether any label is flagged."""

    predicted: dict[int, float]
    flags: dict[int, bool]
    calibrated: bool

    @property
    def flag(self) -> bool:
        return any(self.flags.values())

    @property
    def mean_predicted(self) -> float:
        """Mean predicted Dice over the labels (NaN if none has one)."""
        return finite_mean(list(self.predicted.values())) if self.predicted else math.nan


def _check_rows(rows: list[dict], cases: Sequence[str], labels: Sequence[int]) -> Optional[str]:
    """Why ``rows`` do not describe this folder (None when they do)."""
    if not rows:
        return "it has no rows"
    missing = [c for c in NEEDED if c not in rows[0]]
    if missing:
        return f"it has no column {missing[0]!r}"
    if any(any(r[c] is None or (c != "case" and math.isnan(r[c])) for c in NEEDED if c != "predicted_dice")
           for r in rows):
        return "a row has an empty cell"
    stray = sorted({r["case"] for r in rows} - set(cases))
    if stray:
        return f"its case {stray[0]!r} is not in the folder ({len(stray)} such case{'s' if len(stray) > 1 else ''})"
    odd = sorted({int(r["label"]) for r in rows} - set(int(v) for v in labels))
    if odd:
        return f"its label {odd[0]} is not a foreground label of dataset.json"
    return None


def quality_from_rows(rows: list[dict], cases: Sequence[str], labels: Sequence[int]) -> dict[str, CaseQuality]:
    """Each case's :class:`CaseQuality` from the rows of a ``quality.csv``; :class:`AutosamError` when the rows do
    not describe these cases and labels. Cases without rows are left out."""
    problem = _check_rows(rows, cases, labels)
    if problem:
        raise AutosamError(problem)
    out: dict[str, CaseQuality] = {}
    for r in rows:
        q = out.setdefault(r["case"], CaseQuality({}, {}, True))
        q.predicted[int(r["label"])] = float(r["predicted_dice"])
        q.flags[int(r["label"])] = bool(r["flag"])
        q.calibrated = q.calibrated and bool(r["calibrated"])
    return out


def load_quality(pred: Path, cases: Sequence[str], labels: Sequence[int],
                 log: Callable[[str], object] = print) -> Optional[dict[str, CaseQuality]]:
    """The quality estimates of ``pred/quality.csv`` per case; None (after one line through ``log``) when the
    folder has none, or it cannot be read, or it describes other cases or labels. Read-only."""
    path = Path(pred) / TABLE_FILE
    if not path.is_file():
        return None
    try:
        return quality_from_rows(read_quality_csv(path), cases, labels)
    except (AutosamError, TypeError) as e:  # TypeError: a row with too few or too many cells
        reason = str(e).removeprefix(f"{path}: ") if isinstance(e, AutosamError) else "a row has a wrong length"
        log(f"autosam report: ignoring {path}: {reason}; the report goes on without quality estimates")
        return None


def mean_predicted(case: CaseReport) -> float:
    """A case's mean predicted Dice (NaN without an estimate)."""
    return case.quality.mean_predicted if case.quality is not None else math.nan


def sort_predicted_worst_first(cases: list[CaseReport]) -> list[CaseReport]:
    """Lowest mean predicted Dice first (flagged before unflagged at equal scores); cases without an estimate
    last, by case id."""
    def key(c: CaseReport):
        score = mean_predicted(c)
        missing = math.isnan(score)
        return (missing, 0.0 if missing else score, not (c.quality is not None and c.quality.flag), c.case_id)

    return sorted(cases, key=key)


def flagged(cases: Sequence[CaseReport]) -> list[str]:
    """The ids of the flagged cases, in the given order."""
    return [c.case_id for c in cases if c.quality is not None and c.quality.flag]


def quality_pairs(cases: Sequence[CaseReport]) -> list[tuple[str, int, float, float]]:
    """``(case, label, predicted Dice, true Dice)`` for every case and label with both values finite."""
    out = []
    for c in cases:
        if c.quality is None or c.metrics is None:
            continue
        for value, predicted in c.quality.predicted.items():
            true = c.metrics.get(value, {}).get("Dice", math.nan)
            if math.isfinite(predicted) and math.isfinite(true):
                out.append((c.case_id, value, float(predicted), float(true)))
    return out


def agreement(pairs: Sequence[tuple[str, int, float, float]]) -> dict:
    """Spearman's rho and the mean absolute error of predicted against true Dice: ``{"n", "rho", "mae"}`` (rho
    NaN with fewer than three points or a constant side, MAE NaN without points)."""
    from scipy.stats import spearmanr

    predicted = np.array([p[2] for p in pairs], float)
    true = np.array([p[3] for p in pairs], float)
    rho = math.nan
    if len(pairs) >= 3 and np.ptp(predicted) > 0 and np.ptp(true) > 0:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rho = float(spearmanr(predicted, true)[0])
    mae = float(np.abs(predicted - true).mean()) if len(pairs) else math.nan
    return {"n": len(pairs), "rho": rho, "mae": mae}


def quality_summary(cases: Sequence[CaseReport], calibrated: bool) -> str:
    """One line on a report's quality table: what its estimate is and which cases are flagged."""
    names = flagged(cases)
    shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    what = "calibrated predicted Dice" if calibrated else "uncalibrated rank score (no quality model)"
    return (f"quality.csv: {what}; {len(names)} of {len(cases)} case{'s' if len(cases) != 1 else ''} flagged"
            + (f": {shown}" if names else ""))
