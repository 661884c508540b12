#!/usr/bin/env python
"""Keep a long study across sessions that do not keep its folder: what a rerun needs, small enough to commit.

A study resumes from ``results.csv`` and ``plan.json`` alone for every method already scored (``autosam.study``).
For a run with methods still to score, this also keeps what its next steps would otherwise train again: the
prompter, nnU-Net's model and its fold nnU-Nets' maps (checkpoints without the optimizer's state: enough to
predict, not to go on training), ``autosam fit``'s scores and record, every SAM adapter (the study's own, fit's fold
and final ones) once it has trained every epoch (without its optimizer state), the controls' weights and the seconds
already spent, and the cases a SAM method has finished. Embedding caches, preprocessed data, adapters still
training and the other predictions are not kept: a rerun makes them again (the seconds a step spent before its
session ended are not counted). Symbolic links are kept as links: the study's maps link into its own folder
(restore points them into the new one) and its raw datasets into the data. Files keep their modification times
(``mtimes.json``), which fit's kept scores name for the adapter they were scored with.

    python scripts/keep_study.py STUDY KEEP             # save (atomic: KEEP is replaced as a whole)
    python scripts/keep_study.py STUDY KEEP --restore   # into a STUDY without plan.json; nothing otherwise
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

#: per-run records a rerun reads instead of choosing again
RECORDS = ("convergence.json", "nnunet_prompter.json", "nnunet_planes.json")
#: the small files of an nnU-Net model folder and of its folds
MODEL_FILES = ("plans.json", "dataset.json", "dataset_fingerprint.json", "autosam_sam.json", "autosam_quality.json")
FOLD_FILES = ("autosam_schedule.json", "debug.json")
#: where the kept study was (its links into itself are moved to where it is restored)
STUDY_PATH = "study_path.txt"
#: the kept files' modification times (git does not keep them)
MTIMES = "mtimes.json"


def _copy(src: Path, dst: Path, moved: tuple[str, str] = ("", "")) -> None:
    """A file or a link (as a link), folders made; ``moved``: the old and new study folder, replaced in links'
    targets and in JSON records."""
    if not (src.is_file() or src.is_symlink()):
        return
    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.is_symlink():
        target = os.readlink(src)
        if moved[0] and target.startswith(moved[0] + os.sep):
            target = moved[1] + target[len(moved[0]):]
        os.symlink(target, dst)
    elif moved[0] and src.suffix == ".json":  # records name the study's own folders
        dst.write_text(src.read_text().replace(json.dumps(moved[0])[1:-1], json.dumps(moved[1])[1:-1]))
    else:
        shutil.copy2(src, dst)


def _tree(src: Path, dst: Path, moved: tuple[str, str] = ("", ""), skip: Optional[tuple[str, ...]] = None) -> None:
    """Every file and link below ``src``; with ``skip``, not hidden ones (locks, unfinished files) nor these names."""
    for p in sorted(src.rglob("*")) if src.is_dir() else []:
        parts = p.relative_to(src).parts
        if skip is not None and (p.name in skip or any(part.startswith(".") for part in parts)):
            continue
        if p.is_file() or p.is_symlink():
            _copy(p, dst / p.relative_to(src), moved)


def _checkpoint(src: Path, dst: Path, old: Path) -> None:
    """nnU-Net's ``checkpoint_final.pth`` without the optimizer's state (reused from ``old`` when unchanged)."""
    if old.is_file() and old.stat().st_mtime_ns == src.stat().st_mtime_ns:
        _copy(old, dst)
        return
    import torch

    state = torch.load(src, map_location="cpu", weights_only=False)
    for key in ("optimizer_state", "grad_scaler_state"):
        state.pop(key, None)
    dst.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, dst)
    os.utime(dst, ns=(src.stat().st_atime_ns, src.stat().st_mtime_ns))


def _model(model: Path, study: Path, out: Path, old: Path, checkpoints: bool) -> None:
    """An nnU-Net model folder's small files, its folds' records and validation maps, and (``checkpoints``) its
    folds' final checkpoints without the optimizer; fit's final adapter once fit's record is there."""
    rel = model.relative_to(study)
    for name in MODEL_FILES:
        _copy(model / name, out / rel / name)
    for adapter in [model / "autosam_adapter", *sorted(model.glob("autosam_fit/adapters/fold_*"))]:
        _adapter(adapter, study, out)
    for score in model.glob("autosam_fit/scores/*_fold_*.json"):
        _copy(score, out / score.relative_to(study))
    for fold in sorted(model.glob("fold_*")):
        if "train_s" not in _json(fold / "autosam_schedule.json"):  # still training or validating
            continue
        for name in FOLD_FILES:
            _copy(fold / name, out / rel / fold.name / name)
        _tree(fold / "validation", out / rel / fold.name / "validation")
        ckpt = fold / "checkpoint_final.pth"
        if checkpoints and ckpt.is_file():
            _checkpoint(ckpt, out / rel / fold.name / ckpt.name, old / rel / fold.name / ckpt.name)


def _adapter(folder: Path, study: Path, out: Path) -> None:
    """A SAM adapter that has trained every epoch, without the optimizer's state (only for going on training)."""
    config = _json(folder / "adapter_config.json")
    if config.get("epoch", 0) >= config.get("epochs", 1) > 0:
        _tree(folder, out / folder.relative_to(study), skip=("train_state.pt", "checkpoint.pt"))


def _finished_cases(folder: Path, study: Path, out: Path, method: str) -> None:
    """A SAM method's prediction folder, but for its lock and unfinished files: the case runner writes each case
    atomically and skips the finished ones on a rerun (nnU-Net and the controls predict again instead)."""
    from autosam.study.methods import CONTROLS

    if method == "nnunet" or method in CONTROLS or not folder.is_dir():
        return
    _tree(folder, out / folder.relative_to(study), skip=())


def _json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _pending(study: Path) -> list[tuple[int, dict, list[str]]]:
    """Each run of the plan with the methods that ``results.csv`` does not score yet."""
    from autosam.study.results import kept_rows, read_results

    plan = json.loads((study / "plan.json").read_text())
    methods, rows = plan["options"]["methods"], read_results(study)
    return [(i, run, [m for m in methods if m not in kept_rows(rows, run, methods)])
            for i, run in enumerate(plan["runs"])]


def save(study: Path, keep: Path) -> None:
    """Write what a rerun of ``study`` needs into ``keep`` (a new folder, then renamed over the old one)."""
    from autosam.study.folder import NNUNET_DATASET_ID

    if not (study / "plan.json").is_file():
        return
    tmp = keep.with_name(keep.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    for name in ("plan.json", "results.csv"):
        _copy(study / name, tmp / name)
    (tmp / STUDY_PATH).write_text(str(study.resolve()) + "\n")
    for index, run, pending in _pending(study):
        models = study / "models" / run["name"]
        for name in RECORDS:
            _copy(models / name, tmp / models.relative_to(study) / name)
        if not pending:
            continue
        _adapter(models / "adapter", study, tmp)  # the study's own adapter (adapted methods, the prompter's tuned)
        if (models / "prompter" / "model.pt").is_file():
            for p in (models / "prompter").glob("*"):
                if p.name == "model.pt" or p.suffix == ".json":
                    _copy(p, tmp / p.relative_to(study))
        for model in (study / "nnunet" / "nnUNet_results").glob(f"Dataset{NNUNET_DATASET_ID + index}_*/*"):
            _model(model, study, tmp, keep, checkpoints=True)
        folds = models / "nnunet_folds"
        _tree(folds / "predictions", tmp / folds.relative_to(study) / "predictions")
        _tree(folds / "nnUNet_raw", tmp / folds.relative_to(study) / "nnUNet_raw")
        for split in folds.glob("nnUNet_preprocessed/*/splits_final.json"):
            _copy(split, tmp / split.relative_to(study))
        controls = bool({"nnunet-folds", "nnunet-planes"} & set(pending))  # they predict with the fold models
        for model in folds.glob("nnUNet_results/*/*"):
            _model(model, study, tmp, keep, checkpoints=controls)
        _tree(study / "predictions" / run["name"] / "seconds", tmp / "predictions" / run["name"] / "seconds")
        for method in pending:
            _finished_cases(study / "predictions" / run["name"] / method.replace("/", "@"), study, tmp, method)
    mtimes = {str(p.relative_to(tmp)): p.stat().st_mtime_ns for p in sorted(tmp.rglob("*"))
              if p.is_file() and not p.is_symlink()}
    (tmp / MTIMES).write_text(json.dumps(mtimes, indent=0) + "\n")
    old = keep.with_name(keep.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if keep.exists():
        keep.rename(old)
    tmp.rename(keep)
    shutil.rmtree(old, ignore_errors=True)


def restore(study: Path, keep: Path) -> bool:
    """Copy ``keep`` into ``study`` when ``study`` has no plan yet; whether it did."""
    if (study / "plan.json").is_file() or not (keep / "plan.json").is_file():
        return False
    old = (keep / STUDY_PATH).read_text().strip() if (keep / STUDY_PATH).is_file() else ""
    _tree(keep, study, (old, str(study.resolve())))  # links into the old folder point into the new one
    for rel, ns in _json(keep / MTIMES).items():
        if (study / rel).is_file() and not (study / rel).is_symlink():
            os.utime(study / rel, ns=(ns, ns))
    for name in (STUDY_PATH, MTIMES):
        (study / name).unlink(missing_ok=True)
    return True


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("study", type=Path)
    p.add_argument("keep", type=Path)
    p.add_argument("--restore", action="store_true")
    a = p.parse_args()
    if a.restore:
        print(f"restored {a.keep} into {a.study}" if restore(a.study, a.keep) else f"{a.study}: nothing restored")
    else:
        save(a.study, a.keep)


if __name__ == "__main__":
    main()
