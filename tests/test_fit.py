"""``autosam fit``: nnU-Net's cross-validation chooses SAM, and everything that predicts reads the record.

The fast tests build a fake model folder (the bundled sample's labels as fold maps) and check every refusal: one
line, exit 2, nothing written. The slow test fits a real tiny 2-fold nnU-Net (``nnunet_cv``) with frozen SAM, reruns
it (nothing scored again), and predicts with ``autosam predict`` and ``nnUNetv2_predict`` through the hook.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from autosam.cli import main
from autosam.sample import sample_dataset

NAME = "Dataset903_Fake"
FOLD_ARGS = ["--frozen", "--small-grid", "--max-objects", "1", "--device", "cpu"]


def tree_hash(folder: Path) -> str:
    h = hashlib.sha1()
    for p in sorted(folder.rglob("*")):
        h.update(str(p.relative_to(folder)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """A model folder whose two folds' maps are the sample's labels (and zero probabilities), its raw dataset under
    ``nnUNet_raw``, and no ``nnUNet_preprocessed`` split (each fold's ``summary.json`` lists its cases)."""
    source = sample_dataset("hippocampus")
    raw = tmp_path / "raw" / NAME
    shutil.copytree(source, raw)
    model = tmp_path / "results" / NAME / "nnUNetTrainer__nnUNetPlans__2d"
    model.mkdir(parents=True)
    shutil.copy(source / "dataset.json", model)
    (model / "plans.json").write_text("{}")
    cases = sorted(f.name[: -len(".nii.gz")] for f in (source / "labelsTr").iterdir())
    for fold, part in enumerate((cases[::2], cases[1::2])):
        val = model / f"fold_{fold}" / "validation"
        val.mkdir(parents=True)
        for c in part:
            shutil.copy(source / "labelsTr" / f"{c}.nii.gz", val)
            np.savez(val / f"{c}.npz", probabilities=np.zeros((3, 2, 2, 2), np.float32))
        per_case = [{"prediction_file": str(val / f"{c}.nii.gz")} for c in part]
        (val / "summary.json").write_text(json.dumps({"metric_per_case": per_case}))
    monkeypatch.setenv("nnUNet_raw", str(tmp_path / "raw"))
    monkeypatch.delenv("nnUNet_preprocessed", raising=False)
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "results"))
    return {"model": model, "raw": raw, "cases": cases, "tmp": tmp_path}


def refused(capsys, fake, args, expected: str) -> str:
    """``fit`` exits 2 with one line holding ``expected``, and writes nothing anywhere under the test folder."""
    before = tree_hash(fake["tmp"])
    assert main(["fit", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected in err, err
    assert tree_hash(fake["tmp"]) == before, "a refused fit wrote something"
    return err


def test_dry_run_prints_the_plan_and_writes_nothing(fake, capsys):
    before = tree_hash(fake["tmp"])
    assert main(["fit", "-d", "903", "-c", "2d", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "2 fold(s), 6 cross-fitted case(s)" in out and "fold adapters" in out and "rough time" in out
    assert tree_hash(fake["tmp"]) == before


def test_bad_model_folders_are_one_line_each(fake, capsys, monkeypatch):
    model, case = fake["model"], fake["cases"][1]
    m = ["-m", str(model)]
    refused(capsys, fake, m + ["-d", "903", "-c", "2d"], "not both")
    refused(capsys, fake, ["-d", "903"], "-m MODEL_FOLDER")
    refused(capsys, fake, m + ["-f", "0", "3"], "fold_3 not found")
    (model / "fold_1" / "validation" / f"{case}.npz").unlink()
    refused(capsys, fake, m, f"nnUNetv2_train {NAME} 2d 1 -tr nnUNetTrainer -p nnUNetPlans --val --npz")
    (model / "fold_1" / "validation" / f"{case}.nii.gz").unlink()
    refused(capsys, fake, m, f"fold 1 is missing validation case {case}")
    shutil.rmtree(model / "fold_1")
    refused(capsys, fake, m, "at least two numbered folds")
    (model / "plans.json").unlink()
    refused(capsys, fake, m, "not an nnU-Net model folder")


def test_bad_raw_data_and_labels_are_one_line_each(fake, capsys, monkeypatch):
    model, m = fake["model"], ["-m", str(fake["model"])]
    (fake["raw"] / "imagesTr" / f"{fake['cases'][2]}_0000.nii.gz").unlink()
    refused(capsys, fake, m, f"raw image of validation case {fake['cases'][2]} not found")
    monkeypatch.delenv("nnUNet_raw")
    refused(capsys, fake, m, "nnUNet_raw is not set")
    monkeypatch.delenv("nnUNet_results")
    refused(capsys, fake, ["-d", "903", "-c", "2d"], "nnUNet_results is not set")
    meta = json.loads((model / "dataset.json").read_text())
    meta["labels"]["whole"] = [1, 2]
    (model / "dataset.json").write_text(json.dumps(meta))
    refused(capsys, fake, m, "region-based labels")


def test_a_kept_adapter_trained_with_other_options_is_refused(fake, capsys):
    model = fake["model"]
    kept = model / "autosam_fit" / "adapters" / "fold_0"
    kept.mkdir(parents=True)
    (kept / "autosam_fit.json").write_text(json.dumps({"adapt": "decoder", "adapt_epochs": 9}))
    err = refused(capsys, fake, ["-m", str(model)], "trained with another adapt_epochs (9, now 4)")
    assert str(kept) in err
    assert main(["fit", "-m", str(model), "--adapt-epochs", "9", "--dry-run"]) == 2  # and another field differs
    assert "trained with another" in capsys.readouterr().err


def test_fit_frozen_record_is_read_by_predict_and_the_hook(nnunet_cv, venv_bin, tmp_path, monkeypatch, capsys):
    from nnunet_helpers import CV_TRAINER, run_cmd

    env, model = nnunet_cv["env"], nnunet_cv["model"]
    for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(key, env[key])
    assert main(["fit", "-d", "902", "-c", "2d", "-tr", CV_TRAINER, *FOLD_ARGS]) == 0
    out = capsys.readouterr().out
    assert "nnU-Net alone (no SAM)" in out and "chosen:" in out and "per case at prediction time" in out
    path = model / "autosam_sam.json"
    record = json.loads(path.read_text())
    cases = sorted(c for part in nnunet_cv["folds"].values() for c in part)
    assert record["fit"]["folds"] == nnunet_cv["folds"] and sorted(record["fit"]["per_case"]) == cases
    assert record["tuning"]["validation_cases"] and record["tuning"]["candidates"]["no SAM"] > 0
    assert record["recorded_by"].startswith("autosam fit") and record["adapter"] is None
    assert record["fit"]["quality_model"] == "autosam_quality.json" and (model / "autosam_quality.json").is_file()
    kept = {p: p.stat().st_mtime_ns for p in (model / "autosam_fit" / "scores").glob("*.json")}
    assert len(kept) == 2

    # a rerun resumes: both folds' scores are kept, and the same choice is recorded
    assert main(["fit", "-m", str(model), *FOLD_ARGS]) == 0
    assert {p: p.stat().st_mtime_ns for p in kept} == kept
    assert json.loads(path.read_text())["tuning"]["chosen"] == record["tuning"]["chosen"]

    images = tmp_path / "images"
    images.mkdir()
    case = nnunet_cv["folds"]["0"][0]
    shutil.copy(nnunet_cv["raw"] / "imagesTr" / f"{case}_0000.nii.gz", images)
    ours = tmp_path / "ours"
    assert main(["predict", "-m", str(model), "-i", str(images), "-o", str(ours), "--device", "cpu"]) == 0
    assert f"using the SAM settings recorded in {path}" in capsys.readouterr().err
    run = json.loads((ours / "autosam_run.json").read_text())
    assert run["recorded_settings"] == str(path)
    assert (run["use_sam"], run["refine"]) == (record["use_sam"], record["refine"])  # one shape for both records

    hooked = tmp_path / "hooked"
    out = run_cmd(venv_bin, env, "nnUNetv2_predict", "-i", images, "-o", hooked, "-d", "902", "-c", "2d", "-tr",
                  CV_TRAINER, "-f", "0", "1", "-device", "cpu", "-npp", "1", "-nps", "1")
    assert (hooked / f"{case}.nii.gz").is_file()
    if record["use_sam"]:
        written = json.loads((hooked / "autosam_sam.json").read_text())
        assert written["refine"] == record["refine"] and "predictions will be refined with SAM" in out
    else:
        assert "the recorded default is 'no SAM'" in out
    assert "AUTOSAM_* setting" not in out


def test_the_record_is_read_with_paths_relative_to_the_model_and_each_fold_validates_with_its_adapter(tmp_path,
                                                                                                        monkeypatch):
    """predict and the hook read fit's adapter relative to the model folder (the folder can move); the trainer's
    validation of fold k uses fold k's adapter, which never trained on that fold's cases."""
    from autosam.nnunet.validation import fitted_settings
    from autosam.settings.model import load_recorded

    model = tmp_path / "model"
    (model / "fold_0" / "validation_unrefined").mkdir(parents=True)
    for name in ("autosam_adapter", "autosam_fit/adapters/fold_0"):
        (model / name).mkdir(parents=True)
        (model / name / "adapter_config.json").write_text(json.dumps({"base": "litemedsam", "method": "decoder"}))
    record = {"sam": "litemedsam", "adapter": "autosam_adapter", "use_sam": True,
              "refine": {"prompt": "box", "fusion": "replace"},
              "fit": {"adapted": {"fold_adapters": {"0": "autosam_fit/adapters/fold_0"}}}}
    (model / "autosam_sam.json").write_text(json.dumps(record))
    (model / "fold_0" / "autosam_sam.json").write_text(json.dumps({**record, "adapter": None}))  # fit's comes first
    monkeypatch.chdir(tmp_path.parent)
    assert load_recorded(model, ["0"]).sam.adapter == str(model / "autosam_adapter")
    said = []
    fitted = fitted_settings(str(model), str(model / "fold_0" / "validation_unrefined"), said.append)
    assert fitted.sam.adapter == str(model / "autosam_fit" / "adapters" / "fold_0")
    assert fitted.refine.prompt == "box" and "autosam fit's choice" in said[0]
    assert fitted_settings(str(tmp_path), str(model / "fold_0" / "validation_unrefined"), said.append) is None


def test_fit_calibrates_a_quality_model_that_predict_reads_and_a_rerun_keeps(fake, tiny_sam, capsys):
    """Frozen tiny SAM on the fake model's maps (the labels, softened; every case cropped to 4 slices): fit writes
    ``autosam_quality.json`` for the dataset, names it in the record's ``fit`` section and its table, and a rerun
    keeps it."""
    import SimpleITK as sitk
    from scipy import ndimage

    from autosam import io
    from autosam.qc import QualityModel

    model, raw = fake["model"], fake["raw"]
    info = io.load_dataset_json(raw)
    for case in fake["cases"]:
        crop = [raw / "imagesTr" / f"{case}_0000.nii.gz", raw / "labelsTr" / f"{case}.nii.gz",
                *model.glob(f"fold_*/validation/{case}.nii.gz")]
        for path in crop:
            sitk.WriteImage(sitk.ReadImage(str(path))[:, :, 12:16], str(path))
        seg, _ = io.read_label(crop[-1], info=info)
        probs = ndimage.gaussian_filter(np.stack([seg == v for v in (0, 1, 2)]).astype(np.float32), (0, 0, 1, 1))
        np.savez(crop[-1].with_suffix("").with_suffix(".npz"), probabilities=probs / probs.sum(0, keepdims=True))
    args = ["fit", "-m", str(model), "--sam", "tiny", "--engine", "torch", "--max-cases", "2", *FOLD_ARGS]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "quality model: in-sample MAE" in out and "on 4 case-label row(s) of 2 case(s)" in out, out
    path = model / "autosam_quality.json"
    quality = QualityModel.load(path, info)
    assert quality.volume_stats.keys() == {"1", "2"} and quality.calibration["fit_key"]["cases"]
    assert json.loads((model / "autosam_sam.json").read_text())["fit"]["quality_model"] == "autosam_quality.json"
    kept = path.stat().st_mtime_ns
    assert main(args) == 0 and path.stat().st_mtime_ns == kept
