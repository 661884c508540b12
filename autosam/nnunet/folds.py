"""A trained nnU-Net model's cross-validation, read and checked: which fold validated which cases, where each
case's validation map and probabilities are (``fold_k/validation/<case>.npz``, written by ``nnUNetv2_train ...
--npz``), and the raw training images and labels (``$nnUNet_raw/<dataset>``). Every problem is one line naming the
file and the command that fixes it; nothing is written here but :func:`link_maps`' links.

>>> cv = read_cross_validation(model_folder)       # or model_folder_of("4", "2d") for -d/-c/-tr/-p
>>> cv.folds["0"], cv.maps["hippocampus_001"], cv.images["hippocampus_001"], cv.labels["hippocampus_001"]
>>> link_maps(cv, folder)                          # every case's map in one folder (links; fit and the study)
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from .. import io
from ..errors import AutosamError
from .inference import check_model_folder

#: Where the autosam trainers keep nnU-Net's own validation output (they refine into ``validation/``).
UNREFINED = "validation_unrefined"


@dataclass
class CrossValidation:
    """``folds``: fold -> the cases it validated; ``maps``: case -> ``(label map, probabilities .npz)`` of the fold
    that left it out; ``images`` / ``labels``: case -> raw channel files / raw label file."""

    model: Path
    info: io.DatasetInfo
    raw: Path
    folds: dict[str, list[str]]
    maps: dict[str, tuple[Path, Path]]
    images: dict[str, list[Path]] = field(default_factory=dict)
    labels: dict[str, Path] = field(default_factory=dict)

    @property
    def cases(self) -> list[str]:
        return sorted(self.maps)

    def fold_of(self, case: str) -> str:
        return next(f for f, cases in self.folds.items() if case in cases)

    def train_command(self, fold: str) -> str:
        """The nnU-Net command that (re)writes a fold's validation with probabilities."""
        trainer, plans, conf = (self.model.name.split("__") + ["?", "?", "?"])[:3]
        return f"nnUNetv2_train {self.model.parent.name} {conf} {fold} -tr {trainer} -p {plans} --val --npz"


def model_folder_of(dataset: str, configuration: str, trainer: str = "nnUNetTrainer",
                    plans: str = "nnUNetPlans") -> Path:
    """``$nnUNet_results/DatasetXXX_Name/trainer__plans__configuration`` for nnU-Net's ``-d -c -tr -p``."""
    results = os.environ.get("nnUNet_results")
    if not results:
        raise AutosamError("nnUNet_results is not set: give the model folder with -m, or export nnUNet_results")
    name = str(dataset)
    if name.isdigit():  # an id, as nnU-Net's verbs take it: the one DatasetXXX_* folder of nnUNet_results
        found = sorted(p.name for p in Path(results).glob(f"Dataset{int(name):03d}_*") if p.is_dir())
        if len(found) != 1:
            raise AutosamError(f"-d {dataset}: {len(found)} folder(s) Dataset{int(name):03d}_* in {results}; "
                               "give the dataset's name or the model folder with -m")
        name = found[0]
    return Path(results) / name / f"{trainer}__{plans}__{configuration}"


def _fold_folders(model: Path, folds: Optional[Sequence[str]]) -> list[str]:
    numbered = sorted((p.name[5:] for p in model.iterdir() if p.is_dir() and p.name[5:].isdigit()
                       and p.name.startswith("fold_")), key=int)
    if folds:
        missing = [str(f) for f in folds if str(f) not in numbered]
        if missing:
            raise AutosamError(f"{model}: fold_{missing[0]} not found (folds here: {', '.join(numbered) or 'none'})")
        return [str(f) for f in folds]
    if len(numbered) < 2:
        raise AutosamError(f"{model}: fit needs nnU-Net's cross-validation, at least two numbered folds with their "
                           f"validation (found {len(numbered)}); train them with nnUNetv2_train ... --npz")
    return numbered


def _expected_cases(model: Path, fold: str, validation: Path, pre: Optional[str]) -> Optional[list[str]]:
    """The cases fold ``fold`` validated: ``splits_final.json`` (in ``pre``, nnU-Net's preprocessed folder), else
    the fold's ``summary.json``; None when neither says."""
    split = Path(pre) / model.parent.name / "splits_final.json" if pre else None
    if split is not None and split.is_file():
        try:
            return sorted(json.loads(split.read_text())[int(fold)]["val"])
        except (ValueError, KeyError, IndexError, TypeError):
            raise AutosamError(f"{split}: no fold {fold} in nnU-Net's splits") from None
    summary = validation / "summary.json"
    if summary.is_file():
        try:
            per_case = json.loads(summary.read_text())["metric_per_case"]
            return sorted(Path(c["prediction_file"]).name.split(".")[0] for c in per_case)
        except (ValueError, KeyError, TypeError):
            return None
    return None


def _fold_maps(cv: CrossValidation, fold: str, pre: Optional[str]) -> None:
    """Each validation case of ``fold`` with its map and ``.npz``; a missing one is one line naming the command."""
    folder = cv.model / f"fold_{fold}"
    validation = folder / UNREFINED if (folder / UNREFINED).is_dir() else folder / "validation"
    ending = cv.info.file_ending
    if not validation.is_dir():
        raise AutosamError(f"{validation} not found: fold {fold} has no validation; run {cv.train_command(fold)}")
    found = sorted(f.name[: -len(ending)] for f in validation.iterdir()
                   if f.name.endswith(ending) and not f.name.startswith("."))
    expected = _expected_cases(cv.model, fold, validation, pre) or found
    if not expected:
        raise AutosamError(f"{validation}: no validation cases; run {cv.train_command(fold)}")
    for case in expected:
        seg, npz = validation / f"{case}{ending}", validation / f"{case}.npz"
        if not seg.is_file():
            raise AutosamError(f"{seg}: fold {fold} is missing validation case {case}; run {cv.train_command(fold)}")
        if not npz.is_file():
            raise AutosamError(f"{npz} is missing: fit reads nnU-Net's validation probabilities; run "
                               f"{cv.train_command(fold)}")
        if case in cv.maps:
            raise AutosamError(f"{seg}: case {case} is validated by fold {cv.fold_of(case)} too; "
                               "folds must not share cases")
        cv.maps[case] = (seg, npz)
    cv.folds[fold] = sorted(expected)


def _raw_cases(cv: CrossValidation) -> None:
    """The raw images and labels of every cross-validated case (one line naming the first missing file)."""
    if not cv.raw.is_dir():
        raise AutosamError(f"{cv.raw} not found: fit reads the raw training images and labels from "
                           "$nnUNet_raw/<dataset>")
    images = io.list_cases(cv.raw / "imagesTr", cv.info.file_ending, cv.info.num_channels)
    missing = [c for c in cv.cases if c not in images]
    if missing:
        raise AutosamError(f"{cv.raw / 'imagesTr' / (missing[0] + '_0000' + cv.info.file_ending)}: raw image of "
                           f"validation case {missing[0]} not found")
    cv.images = {c: images[c] for c in cv.cases}
    cv.labels = io.label_files(cv.raw / "labelsTr", cv.cases, cv.info.file_ending)


def read_cross_validation(model_folder: str | os.PathLike, folds: Optional[Sequence[str]] = None,
                          raw_root: Optional[str | os.PathLike] = None,
                          preprocessed_root: Optional[str | os.PathLike] = None) -> CrossValidation:
    """The model's cross-validation (module doc), every file checked to exist; reads no image. ``raw_root`` /
    ``preprocessed_root``: nnU-Net's folders (default ``$nnUNet_raw`` / ``$nnUNet_preprocessed``)."""
    model = check_model_folder(model_folder)
    info = io.load_dataset_json(model)  # region-based labels: one line (io)
    raw_root = raw_root or os.environ.get("nnUNet_raw")
    pre = str(preprocessed_root or os.environ.get("nnUNet_preprocessed") or "") or None
    cv = CrossValidation(model.resolve(), info, Path(raw_root or ".") / model.parent.name, {}, {})
    for fold in _fold_folders(model, folds):
        _fold_maps(cv, fold, pre)
    if not raw_root:
        raise AutosamError("nnUNet_raw is not set: fit reads the raw training images and labels of the "
                           f"cross-validated cases from $nnUNet_raw/{model.parent.name}")
    _raw_cases(cv)
    return cv


def link_maps(cv: CrossValidation, folder: Path) -> Path:
    """``folder``: every case's cross-fitted map and probabilities, linked from the validation of the fold that left
    it out (a link to another file is replaced; kept links stay)."""
    folder.mkdir(parents=True, exist_ok=True)
    for seg, npz in cv.maps.values():
        for src in (seg, npz):
            dst = folder / src.name
            if dst.is_symlink() and os.path.realpath(dst) != os.path.realpath(src):
                dst.unlink()
            if not dst.is_symlink():
                dst.symlink_to(src)
    return folder


__all__ = ["CrossValidation", "UNREFINED", "link_maps", "model_folder_of", "read_cross_validation"]
