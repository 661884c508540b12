"""The stages of ``autosam fit`` (module :mod:`autosam.fit`): frozen SAM scored on every fold's maps, fold adapters
trained and scored, the choice by the project's rule, the final adapter, and the record ``MODEL/autosam_sam.json``
that ``autosam predict``, the ``nnUNetv2_predict`` hook and the trainer's validation read, with the quality model
``MODEL/autosam_quality.json`` calibrated on the chosen setting (:mod:`.quality`)."""
from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Optional, Sequence

from ..nnunet.folds import CrossValidation, link_maps, read_cross_validation
from ..progress import notice, progress
from ..qc import QUALITY_FILE
from ..runner.locks import FolderLock
from ..runner.parallel import Parallel
from ..settings import Runtime, SamSpec
from ..settings.model import Settings
from ..tune import NO_SAM, TuneResult, combine
from . import adapters as ad
from .estimate import cost_per_case, describe_plan
from .options import ADAPTER_DIR, FIT_DIR, FitOptions
from .quality import calibrate, quality_line
from .scores import CACHE_DIR, SCORES_DIR, ScoreJob, chosen_cases, run_jobs, score_key

FROZEN, ADAPTED = "frozen SAM", "adapted SAM (fold adapters)"


def preflight(cv: CrossValidation, opts: FitOptions, sam: SamSpec) -> None:
    """Every kept adapter matches the options (one line otherwise); nothing is written."""
    if opts.frozen:
        return
    work = cv.model / FIT_DIR
    for fold in cv.folds:
        ad.check_kept(ad.fold_folder(work, fold), ad.wanted(opts, sam, ad.outside(cv, fold)))
    ad.check_kept(cv.model / ADAPTER_DIR, ad.wanted(opts, sam, cv.cases))


def _score_all(cv: CrossValidation, picked: dict, opts: FitOptions, sam: SamSpec, runtime: Runtime,
               adapted: bool, parallel: Optional[Parallel], log=notice) -> tuple[TuneResult, dict]:
    """Every fold's picked cases scored with frozen SAM, or each with its fold's adapter (trained here first); a
    fold's scoring is one :class:`~autosam.fit.scores.ScoreJob`, run here or as a Ray task."""
    work, grid = cv.model / FIT_DIR, opts.grid()
    folds = [f for f, c in picked.items() if c]
    fold_adapters = {}
    if adapted:
        maps = link_maps(cv, work / ad.MAPS_DIR)
        for fold in progress(folds, "fit: fold adapters", unit="fold"):
            adapter = ad.train_adapter(cv, ad.fold_folder(work, fold), ad.outside(cv, fold), opts, sam, runtime,
                                       maps, work / CACHE_DIR, log)
            fold_adapters[fold] = str(adapter.relative_to(cv.model))
    jobs = []
    for fold in folds:
        adapter = cv.model / fold_adapters[fold] if adapted else None
        spec = SamSpec(sam.name, sam.checkpoint, str(adapter) if adapter else None)
        key = score_key(grid, picked[fold], sam.to_record(), adapter, opts.min_gain)
        path = work / SCORES_DIR / f"{'adapted' if adapted else 'frozen'}_fold_{fold}.json"
        jobs.append(ScoreJob(cv, fold, picked[fold], spec, runtime, work / CACHE_DIR, grid, path, key,
                             opts.sign_test))
    parts = run_jobs(jobs, parallel, "fit: " + ("adapted" if adapted else "frozen"))
    return combine(parts, opts.min_gain, opts.sign_test), fold_adapters


def _summary(result: TuneResult) -> dict:
    best = result.best.name
    return {"chosen": best, "chosen_mean_dice": round(result.mean(best), 5),
            "no_sam_mean_dice": round(result.mean(NO_SAM), 5), "best_sam": result.best_sam()}


def _fit_section(cv: CrossValidation, picked: dict, opts: FitOptions, frozen: TuneResult,
                 adapted: Optional[TuneResult], fold_adapters: dict, result: TuneResult, choice: str) -> dict:
    best = result.best.name
    return {"model": str(cv.model), "folds": cv.folds, "scored_cases": {f: c for f, c in picked.items() if c},
            "options": opts.to_record(), "frozen": _summary(frozen),
            "adapted": None if adapted is None else {**_summary(adapted), "fold_adapters": fold_adapters},
            "choice": choice,
            "per_case": {c: {"chosen": round(a, 5), "no_sam": round(b, 5)}
                         for c, a, b in zip(result.cases, result.scores[best], result.scores[NO_SAM])}}


def _table(section: dict, result: TuneResult, cost: float, record: Path, quality: str) -> str:
    rows = [("nnU-Net alone (no SAM)", section["frozen"]["no_sam_mean_dice"], "")]
    for name, key in (("best frozen SAM", "frozen"), ("best adapted SAM", "adapted")):
        best = (section[key] or {}).get("best_sam")
        rows.append((name, best["mean_dice"], best["name"]) if best else (name, None, "not run"))
    lines = [f"cross-validation Dice on {len(result.cases)} case(s) of {len(section['scored_cases'])} fold(s) "
             "(the cases the choice was made on):"]
    lines += [f"  {n:<24} {('%.4f' % d) if d is not None else '   -  '}  {what}" for n, d, what in rows]
    lines.append(f"  chosen: {section['choice']}: {result.best.name}, {result.mean(result.best.name):.4f}; "
                 f"SAM costs {cost:.1f} s per case at prediction time")
    lines.append(quality)
    lines.append(f"  record: {record}")
    return "\n".join(lines)


def fit(model_folder, opts: FitOptions = FitOptions(), sam: SamSpec = SamSpec(), runtime: Runtime = Runtime(),
        folds: Optional[Sequence[str]] = None, dry_run: bool = False, log=notice, raw_root=None,
        preprocessed_root=None, parallel: Optional[Parallel] = None) -> Optional[Path]:
    """Choose (and adapt) SAM on the model's cross-validation; returns the record written (None: ``dry_run``).
    ``raw_root`` / ``preprocessed_root``: nnU-Net's folders (default: its environment variables); ``parallel``
    with Ray: each fold's scoring is a Ray task."""
    opts.check()
    cv = read_cross_validation(model_folder, folds, raw_root, preprocessed_root)
    Settings(sam).checked()
    picked = chosen_cases(cv, opts.max_cases)
    preflight(cv, opts, sam)
    if dry_run:
        print(describe_plan(cv, picked, opts, runtime))
        return None
    work = cv.model / FIT_DIR
    work.mkdir(exist_ok=True)
    start = time.perf_counter()
    with FolderLock(work, "fit"):
        frozen, _ = _score_all(cv, picked, opts, sam, runtime, False, parallel, log)
        adapted, fold_adapters = (None, {}) if opts.frozen else _score_all(
            cv, picked, opts, sam, runtime, True, parallel, log)
        results = [(frozen, FROZEN)] + ([(adapted, ADAPTED)] if adapted else [])
        result, kind = max(results, key=lambda r: r[0].mean(r[0].best.name))  # ties: frozen
        choice = kind if result.best.use_sam else NO_SAM
        adapter = None
        if choice == ADAPTED:
            adapter = ad.train_adapter(cv, cv.model / ADAPTER_DIR, cv.cases, opts, sam, runtime,
                                       link_maps(cv, work / ad.MAPS_DIR), work / CACHE_DIR, log)
        section = _fit_section(cv, picked, opts, frozen, adapted, fold_adapters, result, choice)
        cost = cost_per_case(cv, result, sam, adapter, runtime) if result.best.use_sam else 0.0
        quality = calibrate(cv, picked, result, sam, runtime, fold_adapters if choice == ADAPTED else {}, work, log)
        section.update(cost_per_case_s=round(cost, 2), seconds=round(time.perf_counter() - start, 1),
                       quality_model=QUALITY_FILE if quality is not None else None)
        chosen = SamSpec(sam.name, sam.checkpoint, ADAPTER_DIR if adapter else None)
        path = Settings.from_tuning(result, chosen, runtime).write(cv.model, by="autosam fit", runtime=True,
                                                                    extra={"fit": section})
        shutil.rmtree(work / CACHE_DIR, ignore_errors=True)  # gigabytes; the scores are kept
    print(_table(section, result, cost, path, quality_line(quality)))
    return path
