"""Helpers shared by the nnU-Net command-line tests."""
from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np


def run_cmd(venv_bin: Path, env: dict, *cmd) -> str:
    """Run a console script of this venv; fail the test with its output tails if it exits non-zero."""
    done = subprocess.run([str(venv_bin / cmd[0]), *map(str, cmd[1:])], env=env, capture_output=True, text=True)
    assert done.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return done.stdout + done.stderr


def write_slab(image: Path, label: Path, image_out: Path, label_out: Path, n_slices: int) -> None:
    """Write ``n_slices`` slices of a 3D case, centred on its labelled slices (less SAM work on CPU)."""
    import SimpleITK as sitk

    img, lab = sitk.ReadImage(str(image)), sitk.ReadImage(str(label))
    z = np.nonzero(sitk.GetArrayFromImage(lab).any(axis=(1, 2)))[0]
    start = int((z.min() + z.max()) // 2 - n_slices // 2)
    sitk.WriteImage(img[:, :, start : start + n_slices], str(image_out))
    sitk.WriteImage(lab[:, :, start : start + n_slices], str(label_out))


CV_TRAINER = "nnUNetTrainerAutoSAM_Short"


def slab_sample(dst: Path, n_slices: int) -> list[str]:
    """The bundled hippocampus sample as a raw dataset in ``dst``, every case cut to ``n_slices`` slices through its
    labels (:func:`write_slab`: less SAM work on CPU). Returns the case ids."""
    import shutil

    from autosam.sample import sample_dataset

    src = sample_dataset("hippocampus")
    (dst / "imagesTr").mkdir(parents=True)
    (dst / "labelsTr").mkdir()
    shutil.copy(src / "dataset.json", dst / "dataset.json")
    cases = sorted(f.name[: -len(".nii.gz")] for f in (src / "labelsTr").iterdir())
    for case in cases:
        write_slab(src / "imagesTr" / f"{case}_0000.nii.gz", src / "labelsTr" / f"{case}.nii.gz",
                   dst / "imagesTr" / f"{case}_0000.nii.gz", dst / "labelsTr" / f"{case}.nii.gz", n_slices)
    return cases


def make_cv_model(root: Path, venv_bin: Path, env: dict, slices: int = 8) -> dict:
    """A tiny 2-fold nnU-Net 2d model with its cross-validation (``--npz``) on slabs of the bundled hippocampus
    sample: ``nnUNet_raw/Dataset902_HippoCV`` (``slices`` slices per case), a split of two folds of three cases,
    each fold trained with ``nnUNetTrainerAutoSAM_Short`` (the env's tiny schedule) on CPU, whose validation
    keeps nnU-Net's own maps (the record beside the plans says "no SAM": refining them is the shell test's job, and
    SAM on CPU is most of the fixture's time). Returns ``root``, ``env``, ``raw``, ``model`` and ``folds`` (fold ->
    validation cases)."""
    import json

    from autosam.settings.model import Settings

    raw = root / "nnUNet_raw" / "Dataset902_HippoCV"
    cases = slab_sample(raw, slices)
    run_cmd(venv_bin, env, "nnUNetv2_plan_and_preprocess", "-d", "902", "-c", "2d", "-np", "1", "-npfp", "1")
    folds = {"0": cases[::2], "1": cases[1::2]}
    split = [{"train": [c for c in cases if c not in v], "val": v} for v in folds.values()]
    preprocessed = root / "nnUNet_preprocessed" / raw.name
    (preprocessed / "splits_final.json").write_text(json.dumps(split))
    Settings(refine=None).write(preprocessed, by="tests: the fixture's folds validate without SAM")
    for fold in folds:
        run_cmd(venv_bin, {**env, "nnUNet_n_proc_DA": "0"}, "nnUNetv2_train", "902", "2d", fold, "-tr", CV_TRAINER,
                "-device", "cpu", "--npz")
    model = root / "nnUNet_results" / raw.name / f"{CV_TRAINER}__nnUNetPlans__2d"
    return {"root": root, "env": env, "raw": raw, "model": model, "folds": folds}
