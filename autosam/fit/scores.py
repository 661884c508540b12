"""A fold's share of the tuning: the grid scored on the fold's cross-fitted maps with frozen SAM or with the fold's
adapter, by the one tuner (:func:`autosam.tune.tune`), and kept in ``autosam_fit/scores/`` so a rerun with the same
options scores nothing again."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from .. import io
from ..nnunet.folds import CrossValidation
from ..progress import progress
from ..runner.parallel import Parallel
from ..sam.cache import EmbeddingCache
from ..settings import Runtime, SamSpec
from ..tune import Candidate, TuneCase, TuneResult, choose, coarse_items, tune

SCORES_DIR = "scores"
#: The embedding cache every scoring and adapter of one fit shares (removed when fit finishes).
CACHE_DIR = "embedding_cache"


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


def kept_result(path: Path, key: dict, grid: Sequence[Candidate], sign_test: Optional[float]
                ) -> Optional[TuneResult]:
    """The result kept at ``path`` when it was scored with ``key`` (None: none, or made with other options)."""
    by_name = {c.name: c for c in grid}
    try:
        kept = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not (isinstance(kept, dict) and kept.get("key") == key and set(kept.get("scores", {})) <= set(by_name)):
        return None
    scores = {n: [float(v) for v in values] for n, values in kept["scores"].items()}
    return TuneResult(cases=kept["cases"], scores=scores, candidates=by_name,
                      best=choose(scores, by_name, key["min_gain"], sign_test), min_gain=key["min_gain"],
                      sign_test=sign_test)


@dataclass
class ScoreJob:
    """One fold's scoring, plain data (it travels to a Ray worker): the grid on ``cases`` with ``spec``'s SAM."""

    cv: CrossValidation
    fold: str
    cases: list
    spec: SamSpec
    runtime: Runtime
    cache: Path
    grid: list
    path: Path
    key: dict
    sign_test: Optional[float]

    def kept(self) -> Optional[TuneResult]:
        return kept_result(self.path, self.key, self.grid, self.sign_test)

    def __call__(self) -> TuneResult:
        """Score (or read back) the fold; the predictor encodes each slice once in the fit's shared cache."""
        kept = self.kept()
        if kept is not None:
            return kept
        predictor = self.spec.predictor(self.runtime, cache=EmbeddingCache(self.cache))
        result = tune(predictor, fold_items(self.cv, self.fold, self.cases), self.cv.info, self.grid,
                      min_gain=self.key["min_gain"], sign_test=self.sign_test)
        io.write_json({"key": self.key, "cases": result.cases, "scores": result.scores}, self.path)
        return result


def run_jobs(jobs: Sequence[ScoreJob], parallel: Optional[Parallel], desc: str) -> list[TuneResult]:
    """Every job's result, in order: kept ones read back, the others run here or, with ``parallel`` Ray, as Ray
    tasks (``--cpus-per-worker`` / ``--gpus-per-worker`` each)."""
    if parallel is None or not parallel.distributed:
        return [job() for job in progress(list(jobs), desc, unit="fold")]  # each reads its kept result first
    from ..runner.distributed import ray_session

    kept = [job.kept() for job in jobs]
    if all(k is not None for k in kept):  # nothing to score: no Ray instance started
        return kept
    with ray_session(parallel) as ray:
        task = ray.remote(num_cpus=parallel.cpus_per_worker, num_gpus=parallel.gpus_per_worker)(_call)
        futures = [k if k is not None else task.remote(job) for job, k in zip(jobs, kept)]
        return [f if isinstance(f, TuneResult) else ray.get(f) for f in progress(futures, desc, unit="fold")]


def _call(job: ScoreJob) -> TuneResult:
    return job()
