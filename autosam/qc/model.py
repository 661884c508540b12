"""From signals to a predicted Dice: a small, transparent calibrated model, and the rank score used without one.

:class:`QualityModel` is ridge least squares on a handful of signals (each clipped to its 1st-99th percentile on
the calibration rows, then standardised), its prediction clipped to [0, 1]. It is fitted on cross-fitted
validation maps with their true Dice and stored as JSON (``autosam_quality.json``) with the dataset's name and
label set, the training labels' volume statistics and the flag threshold (the worst decile of predicted Dice on
the calibration rows). Loading it for another dataset or label set is refused in one line naming the file.

Without a model, :func:`rank_score` orders cases but is **not** a Dice estimate.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np

from .. import io
from ..errors import AutosamError

#: the record's file name, beside the SAM record in a model folder
QUALITY_FILE = "autosam_quality.json"
FORMAT, VERSION = "autosam_quality", 1
#: the signals the model uses unless told
FEATURES = ("dice_coarse_sam", "dice_coarse_final", "dice_planes", "sam_iou_mean", "sam_iou_min", "entropy_band",
            "uncertain_share", "volume_absz", "components", "empty")
#: the signals of :func:`rank_score`, each in [0, 1] with 1 the better (``1 -`` for the uncertainties)
RANK_SIGNALS = ("dice_coarse_sam", "dice_planes", "sam_iou_mean", "-entropy_band", "-uncertain_share")
#: share of calibration rows under the default flag threshold
FLAG_QUANTILE = 0.1


def dataset_name(info: io.DatasetInfo) -> str:
    """The dataset a model belongs to: dataset.json's ``name``, else its folder's name."""
    return str(info.raw.get("name") or info.path.parent.name)


def rank_score(row: Mapping[str, float]) -> float:
    """Uncalibrated score in [0, 1] (higher: probably better): the mean of :data:`RANK_SIGNALS`. It ranks cases;
    it is no estimate of their Dice."""
    values = [1.0 - float(row[s[1:]]) if s.startswith("-") else float(row[s]) for s in RANK_SIGNALS]
    return float(np.clip(np.mean(values), 0.0, 1.0))


def worst_share_threshold(scores: Sequence[float], share: float = FLAG_QUANTILE) -> float:
    """The score at or below which the worst ``share`` of ``scores`` (at least one) lie."""
    ordered = sorted(float(s) for s in scores)
    return ordered[max(1, math.ceil(share * len(ordered))) - 1] if ordered else 0.0


class QualityModel:
    """Ridge least squares from signals to true Dice (see the module). ``fit`` then ``predict``; ``to_record`` /
    ``from_record`` (or ``save`` / ``load``) keep it as JSON."""

    def __init__(self, features: Sequence[str] = FEATURES, ridge: float = 1.0) -> None:
        self.features, self.ridge = list(features), float(ridge)
        self.lo = self.hi = self.center = self.scale = self.coef = None
        self.intercept, self.flag_below = 0.0, 0.0
        self.dataset, self.labels, self.volume_stats, self.calibration = None, None, {}, {}

    def _matrix(self, rows: Sequence[Mapping[str, float]]) -> np.ndarray:
        x = np.array([[float(r[f]) for f in self.features] for r in rows], np.float64).reshape(len(rows), -1)
        return (np.clip(x, self.lo, self.hi) - self.center) / self.scale

    def fit(self, rows: Sequence[Mapping[str, float]], dice: Sequence[float], info: Optional[io.DatasetInfo] = None,
            volume_stats: Optional[Mapping] = None) -> "QualityModel":
        """Fit on signal rows and their true Dice (rows with a non-finite Dice are skipped); ``info`` names the
        dataset and label set the model is for, ``volume_stats`` are kept for the signals of new cases."""
        y = np.asarray(dice, np.float64)
        keep = np.isfinite(y)
        rows, y = [r for r, k in zip(rows, keep) if k], y[keep]
        if len(rows) < 2:
            raise AutosamError(f"a quality model needs at least 2 rows with a true Dice, got {len(rows)}")
        raw = np.array([[float(r[f]) for f in self.features] for r in rows], np.float64)
        self.lo, self.hi = np.percentile(raw, 1, axis=0), np.percentile(raw, 99, axis=0)
        clipped = np.clip(raw, self.lo, self.hi)
        self.center, self.scale = clipped.mean(axis=0), clipped.std(axis=0)
        self.scale[self.scale < 1e-9] = 1.0
        x = (clipped - self.center) / self.scale
        self.intercept = float(y.mean())
        self.coef = np.linalg.solve(x.T @ x + self.ridge * np.eye(x.shape[1]), x.T @ (y - self.intercept))
        predicted = self.predict(rows)
        self.flag_below = worst_share_threshold(predicted)
        if info is not None:
            self.dataset, self.labels = dataset_name(info), dict(info.labels)
        self.volume_stats = {str(k): [float(v) for v in s] for k, s in (volume_stats or {}).items()}
        from scipy.stats import spearmanr

        rho = spearmanr(predicted, y)[0] if np.ptp(y) > 0 and np.ptp(predicted) > 0 else 0.0
        self.calibration = {"rows": len(rows), "cases": len({r.get("case") for r in rows}),
                            "mae": float(np.mean(np.abs(predicted - y))), "spearman": float(rho)}
        return self

    def predict(self, rows: Sequence[Mapping[str, float]]) -> np.ndarray:
        """Predicted Dice per row, in [0, 1]."""
        if self.coef is None:
            raise AutosamError("the quality model is not fitted")
        if not len(rows):
            return np.zeros(0)
        return np.clip(self.intercept + self._matrix(rows) @ self.coef, 0.0, 1.0)

    def to_record(self) -> dict:
        """The JSON record (``autosam_quality.json``)."""
        if self.coef is None:
            raise AutosamError("the quality model is not fitted")
        arrays = {k: [float(v) for v in getattr(self, k)] for k in ("lo", "hi", "center", "scale", "coef")}
        return {"format": FORMAT, "version": VERSION, "dataset": self.dataset, "labels": self.labels,
                "features": self.features, "ridge": self.ridge, **arrays, "intercept": self.intercept,
                "flag_below": self.flag_below, "volume_stats": self.volume_stats, "calibration": self.calibration}

    @classmethod
    def from_record(cls, record: Mapping, info: Optional[io.DatasetInfo] = None, where: str = QUALITY_FILE
                    ) -> "QualityModel":
        """The model a record holds; with ``info``, refused (one line naming ``where``) unless it was fitted for
        that dataset and label set."""
        if not isinstance(record, Mapping) or record.get("format") != FORMAT:
            raise AutosamError(f"{where}: not an autosam quality model (no \"format\": \"{FORMAT}\")")
        if record.get("version") != VERSION:
            raise AutosamError(f"{where}: quality model version {record.get('version')!r}; this autosam reads "
                               f"version {VERSION}")
        if info is not None and (record.get("dataset") != dataset_name(info) or record.get("labels") != info.labels):
            raise AutosamError(f"{where}: quality model for dataset {record.get('dataset')!r} with labels "
                               f"{record.get('labels')} does not fit dataset {dataset_name(info)!r} with labels "
                               f"{info.labels}; fit one on this dataset")
        try:
            model = cls(record["features"], record["ridge"])
            for k in ("lo", "hi", "center", "scale", "coef"):
                setattr(model, k, np.asarray(record[k], np.float64))
            model.intercept, model.flag_below = float(record["intercept"]), float(record["flag_below"])
        except (KeyError, TypeError, ValueError) as e:
            raise AutosamError(f"{where}: broken quality model ({type(e).__name__}: {e})") from None
        model.dataset, model.labels = record.get("dataset"), record.get("labels")
        model.volume_stats = dict(record.get("volume_stats") or {})
        model.calibration = dict(record.get("calibration") or {})
        return model

    def save(self, path: str | os.PathLike) -> Path:
        """Write the record atomically; returns its path."""
        io.write_json(self.to_record(), path)
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike, info: Optional[io.DatasetInfo] = None) -> "QualityModel":
        """Read a record written by :meth:`save` (a model folder holding one, or the file), checked against
        ``info``."""
        path = Path(path)
        path = path / QUALITY_FILE if path.is_dir() else path
        try:
            record = json.loads(path.read_text())
        except FileNotFoundError:
            raise AutosamError(f"{path}: quality model not found") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise AutosamError(f"{path}: cannot read the quality model: {e}") from None
        return cls.from_record(record, info, str(path))
