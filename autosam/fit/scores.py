"""A fold's share of the tuning: the grid scored on the fold's cross-fitted maps with frozen SAM or with the fold's
adapter, by the one tuner (:func:`autosam.tune.tune`), and kept in ``autosam_fit/scores/`` so a rerun with the same
options scores nothing again."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Optional, Sequence

from .. import io
from ..nnunet.folds import CrossValidation
from ..tune import Candidate, TuneCase, TuneResult, choose, coarse_items, tune

SCORES_DIR = "scores"


def chosen_cases(cv: CrossValidation, max_cases: int) -> dict[str, list[str]]:
    """Per fold, the cases scored: all, or ``max_cases`` in all taken round-robin over the folds."""
    if max_cases <= 0 or max_cases >= len(cv.cases):
        return {f: list(c) for f, c in cv.folds.items()}
    taken: dict[str, list[str]] = {f: [] for f in cv.folds}
    queues = {f: list(c) for f, c in cv.folds.items()}
    while sum(map(len, taken.values())) < max_cases:
        for f, queue in queues.items():
            if queue and sum(map(len, taken.values())) < max_cases:
                taken[f].append(queue.pop(0))
    return taken


def fold_items(cv: CrossValidation, fold: str, cases: Sequence[str]) -> list[TuneCase]:
    """The scored cases of a fold: raw image, raw label and the fold's validation map and probabilities."""
    folder = cv.maps[cases[0]][0].parent
    return coarse_items(cases, cv.images, cv.labels, folder, cv.info)


def adapter_stamp(adapter: Optional[Path]) -> Optional[dict]:
    """What identifies an adapter's weights for the kept scores (None: frozen SAM)."""
    if adapter is None:
        return None
    weights = Path(adapter) / "adapter.pt"
    stat = weights.stat()
    return {"adapter": str(adapter), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def score_key(grid: Sequence[Candidate], cases: Sequence[str], sam: dict, adapter: Optional[Path],
              min_gain: float) -> dict:
    return {"grid": [c.name for c in grid], "cases": list(cases), "sam": sam, "adapter": adapter_stamp(adapter),
            "min_gain": min_gain}


def scored(path: Path, key: dict, grid: Sequence[Candidate], compute: Callable[[], TuneResult],
           sign_test: Optional[float] = None) -> TuneResult:
    """The kept result at ``path`` when it was scored with ``key``; else ``compute()``, kept atomically."""
    by_name = {c.name: c for c in grid}
    try:
        kept = json.loads(path.read_text())
    except (OSError, ValueError):
        kept = None
    if isinstance(kept, dict) and kept.get("key") == key and set(kept.get("scores", {})) <= set(by_name):
        scores = {n: [float(v) for v in values] for n, values in kept["scores"].items()}
        return TuneResult(cases=kept["cases"], scores=scores, candidates=by_name,
                          best=choose(scores, by_name, key["min_gain"], sign_test), min_gain=key["min_gain"],
                          sign_test=sign_test)
    result = compute()
    io.write_json({"key": key, "cases": result.cases, "scores": result.scores}, path)
    return result


def score_fold(cv: CrossValidation, fold: str, cases: Sequence[str], predictor, grid: Sequence[Candidate],
               path: Path, key: dict, sign_test: Optional[float]) -> TuneResult:
    """Fold ``fold``'s ``cases`` scored on the grid with ``predictor`` (kept at ``path``)."""
    return scored(path, key, grid, lambda: tune(predictor, fold_items(cv, fold, cases), cv.info, grid,
                                                min_gain=key["min_gain"], sign_test=sign_test), sign_test)
