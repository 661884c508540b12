"""fit's quality model: the label-free signals of the chosen setting on every cross-fitted map fit scored, each
case and label's true Dice against the raw labels, and :class:`autosam.qc.QualityModel` fitted on them and saved
as ``MODEL/autosam_quality.json`` (read by ``autosam predict``).

The signals come from the setting fit chose (each fold's cases with that fold's adapter when adapted SAM won), in
fit's embedding cache so no slice is encoded again; where "no SAM" won they come from frozen SAM with the default
settings, the final map being the coarse one, as ``predict --qc`` computes them. A rerun with the same choice and
cases keeps the model.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from .. import qc
from ..errors import AutosamError
from ..nnunet.folds import CrossValidation
from ..pipelines.quality import case_quality
from ..progress import notice, progress
from ..refine import refine_case
from ..sam.cache import EmbeddingCache
from ..settings import Runtime, SamSpec
from ..tune import TuneResult
from .scores import CACHE_DIR, adapter_stamp, fold_items

#: the calibration entry that says what the model was fitted on (a rerun keeps the model when it is unchanged)
KEY = "fit_key"


def quality_key(cv: CrossValidation, picked: dict, result: TuneResult, sam: SamSpec, adapters: dict) -> dict:
    """What identifies the calibration: the chosen setting, the scored cases, SAM and each fold's adapter."""
    return {"chosen": result.best.name, "cases": {f: list(c) for f, c in picked.items() if c},
            "sam": sam.to_record(), "adapters": {f: adapter_stamp(cv.model / a) for f, a in sorted(adapters.items())}}


def _kept(path: Path, key: dict, cv: CrossValidation) -> Optional[qc.QualityModel]:
    try:
        model = qc.QualityModel.load(path, cv.info)
    except AutosamError:
        return None
    return model if model.calibration.get(KEY) == key else None


def _signals(cv: CrossValidation, picked: dict, result: TuneResult, sam: SamSpec, runtime: Runtime,
             adapters: dict, work: Path, volumes: dict) -> tuple[list[dict], list[float]]:
    """Every scored case's signal rows and true Dice per label, fold by fold with the fold's SAM, and the volume
    statistics of the labels outside the fold (as a new case's come from training labels that never held it)."""
    config = result.best.config  # None: "no SAM" (signals from frozen SAM with the default settings)
    rows, dice = [], []
    for fold, cases in picked.items():
        if not cases:
            continue
        stats = qc.volume_statistics([v for c, v in volumes.items() if c not in cv.folds[fold]], cv.info)
        adapter = cv.model / adapters[fold] if config is not None and fold in adapters else None
        spec = SamSpec(sam.name, sam.checkpoint, str(adapter) if adapter else None)
        predictor = spec.predictor(runtime, cache=EmbeddingCache(work / CACHE_DIR))
        for item in progress(fold_items(cv, fold, cases), f"fit: quality signals, fold {fold}"):
            refined = None if config is None else refine_case(predictor, item.case, cv.info, item.coarse_seg,
                                                              item.coarse_probs, config, keep=False)
            final = item.coarse_seg if refined is None else refined.segmentation
            for row in case_quality(predictor, item.case, cv.info, item.coarse_seg, item.coarse_probs, refined,
                                    stats):
                rows.append(row)
                dice.append(qc.dice(final == row["label"], item.reference == row["label"]))
    return rows, dice


def calibrate(cv: CrossValidation, picked: dict, result: TuneResult, sam: SamSpec, runtime: Runtime,
              adapters: dict, work: Path, log=notice) -> Optional[qc.QualityModel]:
    """Fit (or keep) ``MODEL/autosam_quality.json`` on the chosen setting's cross-fitted maps (``adapters``: fold
    -> its adapter folder relative to the model, when adapted SAM won); None when it cannot be fitted (said)."""
    path = cv.model / qc.QUALITY_FILE
    key = quality_key(cv, picked, result, sam, adapters)
    kept = _kept(path, key, cv)
    if kept is not None:
        return kept
    volumes = {c: qc.label_volumes(cv.labels[c], cv.info) for c in cv.cases}  # each label file read once
    rows, dice = _signals(cv, picked, result, sam, runtime, adapters, work, volumes)
    stats = qc.volume_statistics(list(volumes.values()), cv.info)  # all training labels: what prediction uses
    try:
        model = qc.QualityModel().fit(rows, dice, cv.info, stats)
    except AutosamError as e:
        log(f"fit: no quality model ({e})")
        return None
    model.calibration[KEY] = key
    model.save(path)
    return model


def quality_line(model: Optional[qc.QualityModel]) -> str:
    """fit's table line for the quality model."""
    if model is None:
        return "  quality model: none (too few scored cases)"
    c = model.calibration
    return (f"  quality model: in-sample MAE {c['mae']:.4f}, Spearman rho {c['spearman']:.3f} on {c['rows']} "
            f"case-label row(s) of {c['cases']} case(s) -> {qc.QUALITY_FILE}")
