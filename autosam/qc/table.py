"""Per-case signal files and the folder's ``quality.csv``.

Each case's signal rows are written atomically beside its outputs as ``<case>.quality.json`` (before its
segmentation, by :class:`autosam.runner.CaseRunner`), so a resumed, split or Ray run leaves the same files; the
folder's ``quality.csv`` is assembled from them in sorted case order, one row per case and label: ``case, label,
predicted_dice, calibrated, <each signal of autosam.qc.signals.SIGNALS>, flag``. ``calibrated`` is 0 where no
quality model was given: ``predicted_dice`` then holds the uncalibrated :func:`~autosam.qc.model.rank_score`.
"""
from __future__ import annotations

import csv
import io as _stdio
import json
import os
from pathlib import Path
from typing import Mapping, Optional, Sequence

from .. import io
from ..errors import AutosamError
from .model import QualityModel, rank_score, worst_share_threshold
from .signals import SIGNALS

CASE_SUFFIX = ".quality.json"
TABLE_FILE = "quality.csv"
COLUMNS = ("case", "label", "predicted_dice", "calibrated", *SIGNALS, "flag")


def case_file(folder: str | os.PathLike, case_id: str) -> Path:
    """Where a case's signal rows lie in an output folder."""
    return Path(folder) / f"{case_id}{CASE_SUFFIX}"


def write_case_rows(folder: str | os.PathLike, case_id: str, rows: Sequence[Mapping]) -> Path:
    """Write one case's signal rows atomically; returns the file."""
    path = case_file(folder, case_id)
    io.write_json({"case": case_id, "rows": [dict(r) for r in rows]}, path)
    return path


def read_case_file(path: str | os.PathLike) -> list[dict]:
    """One case's signal rows (label order), from its ``<case>.quality.json``."""
    path = Path(path)
    try:
        record = json.loads(path.read_text())
        return [{**r, "case": record["case"]} for r in sorted(record["rows"], key=lambda r: int(r["label"]))]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise AutosamError(f"{path}: cannot read the case's quality signals ({type(e).__name__}: {e})") from None


def read_case_rows(folder: str | os.PathLike, file_ending: Optional[str] = None) -> list[dict]:
    """Every case's signal rows in ``folder``, in sorted case order (then label order); with ``file_ending``,
    only cases whose segmentation ``<case><ending>`` exists (finished cases)."""
    rows = []
    for path in sorted(Path(folder).glob(f"*{CASE_SUFFIX}")):
        case_id = path.name[: -len(CASE_SUFFIX)]
        if path.name.startswith(".") or (file_ending and not (path.parent / f"{case_id}{file_ending}").is_file()):
            continue
        rows += read_case_file(path)
    return sorted(rows, key=lambda r: (r["case"], int(r["label"])))


def without_signals(folder: str | os.PathLike, file_ending: str) -> list[str]:
    """Finished cases of ``folder`` (a segmentation ``<case><ending>``) that have no signal file: written by a run
    without quality control, and missing from ``quality.csv``."""
    folder = Path(folder)
    cases = sorted(p.name[: -len(file_ending)] for p in folder.glob(f"*{file_ending}") if not p.name.startswith("."))
    return [c for c in cases if not case_file(folder, c).is_file()]


def score_rows(rows: Sequence[Mapping], model: Optional[QualityModel] = None, flag_below: Optional[float] = None
               ) -> list[dict]:
    """``rows`` with ``predicted_dice`` (the model's, else the uncalibrated rank score), ``calibrated`` and ``flag``
    (1 below ``flag_below``; default: the model's threshold, else the worst tenth of these rows' scores)."""
    rows = [dict(r) for r in rows]
    scores = list(model.predict(rows)) if model is not None else [rank_score(r) for r in rows]
    if flag_below is not None:
        flagged = [s < flag_below for s in scores]
    elif model is not None:
        flagged = [s < model.flag_below for s in scores]
    else:
        threshold = worst_share_threshold(scores)
        flagged = [s <= threshold for s in scores]
    for row, score, flag in zip(rows, scores, flagged):
        row.update(predicted_dice=float(score), calibrated=float(model is not None), flag=float(flag))
    return rows


#: columns written as whole numbers (the rest with six decimals)
WHOLE = {"label", "calibrated", "sam_slices", "components", "empty", "flag"}


def _cell(column: str, value) -> str:
    if column == "case":
        return str(value)
    return str(int(round(float(value)))) if column in WHOLE else f"{float(value):.6f}"


def write_quality_csv(folder: str | os.PathLike, file_ending: Optional[str] = None,
                      model: Optional[QualityModel] = None, flag_below: Optional[float] = None) -> Path:
    """Assemble ``quality.csv`` in ``folder`` from its per-case signal files (see :func:`read_case_rows`),
    atomically; returns its path."""
    rows = score_rows(read_case_rows(folder, file_ending), model, flag_below)
    text = _stdio.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(COLUMNS)
    for row in rows:
        writer.writerow([_cell(c, row[c]) for c in COLUMNS])
    path = Path(folder) / TABLE_FILE
    with io.atomic_output(path) as tmp:
        tmp.write_text(text.getvalue())
    return path


def read_quality_csv(path: str | os.PathLike) -> list[dict]:
    """The rows of a ``quality.csv`` (``case`` a string, every other column a float)."""
    path = Path(path)
    try:
        with open(path, newline="") as f:
            return [{k: (v if k == "case" else float(v)) for k, v in row.items()} for row in csv.DictReader(f)]
    except (OSError, ValueError) as e:
        raise AutosamError(f"{path}: cannot read the quality table: {e}") from None
