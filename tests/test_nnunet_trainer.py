"""The drop-in nnU-Net trainers (``nnunet_plugins``) driven by nnU-Net's own commands, as a user's shell would.

The slow test builds a subprocess environment holding only the documented step (the line ``autosam nnunet-env``
prints) plus ``AUTOSAM_*`` SAM settings, then runs ``nnUNetv2_plan_and_preprocess``, ``nnUNetv2_train -tr
nnUNetTrainerAutoSAM_Short``, ``nnUNetv2_predict`` with the same trainer and ``nnUNetv2_find_best_configuration`` on
the bundled hippocampus sample, each case cut to a few slices (SAM encodes each slice: CPU time). The network is
nearly untrained: its masks are noise, which is what the plumbing needs (foreground to prompt SAM with), not what a
score needs.
"""
from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from autosam import io
from nnunet_helpers import run_cmd, slab_sample

TRAINER = "nnUNetTrainerAutoSAM_Short"


def documented_env(venv_bin: Path, base: dict) -> dict:
    """``base`` without nnUNet_extTrainer, plus what ``eval "$(autosam nnunet-env)"`` would export."""
    env = {k: v for k, v in base.items() if k != "nnUNet_extTrainer"}
    line = run_cmd(venv_bin, env, "autosam", "nnunet-env").strip().splitlines()[-1]
    words = shlex.split(line)
    assert words[0] == "export" and words[1].startswith("nnUNet_extTrainer="), line
    env["nnUNet_extTrainer"] = words[1].split("=", 1)[1]
    return env


def test_nnunet_env_line(venv_bin):
    env = {k: v for k, v in os.environ.items() if k != "nnUNet_extTrainer"}
    env["nnUNet_extTrainer"] = "/somewhere/else"
    done = subprocess.run([str(venv_bin / "autosam"), "nnunet-env"], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    value = shlex.split(done.stdout.strip())[1].split("=", 1)[1]
    folders = value.split(os.pathsep)
    assert folders[0] == "/somewhere/else", "folders already listed must be kept"
    assert (Path(folders[1]) / "autosam_trainers.py").is_file()


def test_import_autosam_sets_the_variable_and_stays_light():
    code = ("import os, sys, autosam; print(os.environ['nnUNet_extTrainer']); "
            "print('torch' in sys.modules, 'nnunetv2' in sys.modules)")
    env = {k: v for k, v in os.environ.items() if k != "nnUNet_extTrainer"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    folder, modules = done.stdout.strip().splitlines()
    assert Path(folder, "autosam_trainers.py").is_file() and modules == "False False"


def test_settings_from_environment_are_checked(tmp_path):
    from autosam.errors import AutosamError
    from autosam.settings import SETTINGS_FILE
    from autosam.settings.model import Settings, load_recorded

    (tmp_path / SETTINGS_FILE).write_text(json.dumps({"fusion": "union", "margin": 2.0}))
    settings = Settings.resolve(tmp_path, env={"AUTOSAM_MARGIN": "3", "AUTOSAM_AXIS": "2"})
    assert settings.refine.fusion == "union"  # from the JSON next to the plans
    assert settings.refine.margin.value == 3.0 and settings.refine.axis == 2  # the environment wins
    for bad in ({"AUTOSAM_PROMPT": "nonsense"}, {"AUTOSAM_MIN_SIZE": "x"}, {"AUTOSAM_SAM": "sam_vit_q"},
                {"AUTOSAM_CHECKPOINT": str(tmp_path / "missing.pth")},
                {"AUTOSAM_ADAPTER": str(tmp_path / "missing_adapter")}):
        with pytest.raises(AutosamError):
            Settings.resolve(None, env=bad)
    # an adapter for another backend is refused before any training starts, naming both backends
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base": "sam_vit_b", "method": "decoder"}))
    with pytest.raises(AutosamError, match="sam_vit_b.*litemedsam"):
        Settings.resolve(None, env={"AUTOSAM_ADAPTER": str(adapter)})
    assert Settings.resolve(None, env={"AUTOSAM_ADAPTER": str(adapter), "AUTOSAM_SAM": "sam_vit_b",
                                       "AUTOSAM_CHECKPOINT": str(adapter / "adapter_config.json")})
    recorded = tmp_path / "model" / "fold_0"
    settings.write(recorded, by="test", runtime=True)
    assert load_recorded(tmp_path / "model", [0]) == settings
    assert load_recorded(tmp_path / "model", [1]) is None


def test_region_based_datasets_are_refused():
    from nnunet_plugins.autosam_trainers import refuse_regions

    refuse_regions({"labels": {"background": 0, "a": 1}}, TRAINER)
    with pytest.raises(RuntimeError, match="region-based"):
        refuse_regions({"labels": {"background": 0, "whole": [1, 2], "core": 2}, "regions_class_order": [1, 2]},
                       TRAINER)


def test_the_trainer_scores_fit_s_grid_around_its_settings():
    from autosam.errors import AutosamError
    from autosam.nnunet.validation import trainer_grid
    from autosam.refine import RefineConfig
    from autosam.settings.model import Settings

    settings = Settings(refine=RefineConfig(min_size=8))
    full, small = trainer_grid(settings, {}), trainer_grid(settings, {"AUTOSAM_SMALL_GRID": "1"})
    assert len(full) == 153 and len(small) == 73  # no SAM; prompts x object limits x levers x fusions; planes
    assert any(c.use_sam and c.config.planes for c in full) and any(c.use_sam and c.config.box_hypotheses for c in full)
    assert not any(c.use_sam and (c.config.planes or c.config.box_hypotheses) for c in small)
    assert all(c.config.min_size == 8 for c in full if c.use_sam)  # the settings' own fields are kept
    with pytest.raises(AutosamError, match="AUTOSAM_SMALL_GRID='maybe'"):
        trainer_grid(settings, {"AUTOSAM_SMALL_GRID": "maybe"})


def test_prediction_hook_only_attaches_to_nnunet_predictor(capsys):
    from nnunet_plugins.autosam_predict_hook import attach_from_caller

    assert attach_from_caller(sys._getframe()) is False  # not nnUNetPredictor.initialize_from_trained_model_folder
    assert "SAM refinement NOT applied" in capsys.readouterr().err


N_SLICES = 8
VAL_CASE = "hippocampus_320"


def seg(path: Path) -> np.ndarray:
    return io.read_label(path)[0]


def cut_sample(dst: Path) -> list[str]:
    """The bundled hippocampus sample as ``Dataset951_HippoCut``, every case cut to N_SLICES slices through its
    labels, so that SAM encodes at most N_SLICES slices per case (CPU time). Returns the case ids."""
    return slab_sample(dst, N_SLICES)


@pytest.mark.slow
def test_train_validate_predict_find_best_from_the_shell(venv_bin, tmp_path, decoder_adapter):
    """Plan, train (1 epoch x 3 iterations, CPU), validate with SAM, predict and select, all through nnU-Net's
    console scripts in an environment holding only the documented ``autosam nnunet-env`` line."""
    dataset = "Dataset951_HippoCut"
    cases = cut_sample(tmp_path / "nnUNet_raw" / dataset)
    base = {k: v for k, v in os.environ.items() if k != "nnUNet_extTrainer" and not k.startswith("AUTOSAM_")}
    base.update(nnUNet_raw=str(tmp_path / "nnUNet_raw"), nnUNet_preprocessed=str(tmp_path / "nnUNet_preprocessed"),
                nnUNet_results=str(tmp_path / "nnUNet_results"), nnUNet_def_n_proc="1")
    base.setdefault("OMP_NUM_THREADS", "2")
    env = documented_env(venv_bin, base)

    run_cmd(venv_bin, env, "nnUNetv2_plan_and_preprocess", "-d", "951", "-c", "2d", "-np", "1")
    split = [{"train": [c for c in cases if c != VAL_CASE], "val": [VAL_CASE]}]  # nnU-Net's own split file
    (tmp_path / "nnUNet_preprocessed" / dataset / "splits_final.json").write_text(json.dumps(split))

    # 1. training + final validation. SAM settings through the environment, other than the defaults: boxes only
    #    for fragments of >= 8 pixels of the untrained network's noisy masks, SAM's answer replacing them, and
    #    LiteMedSAM with a decoder adapter from autosam finetune
    adapter = str(decoder_adapter[0].resolve())
    sam_env = {"AUTOSAM_PROMPT": "box", "AUTOSAM_FUSION": "replace", "AUTOSAM_MIN_SIZE": "8",
               "AUTOSAM_ADAPTER": adapter}
    train_env = {**env, **sam_env, "AUTOSAM_BATCH_SIZE": "8", "nnUNet_n_proc_DA": "0",
                 "AUTOSAM_NNUNET_EPOCHS": "1", "AUTOSAM_NNUNET_ITERATIONS": "3", "AUTOSAM_NNUNET_VAL_ITERATIONS": "1",
                 "AUTOSAM_NNUNET_SEED": "1"}
    out = run_cmd(venv_bin, train_env, "nnUNetv2_train", "951", "2d", "0", "-tr", TRAINER, "-device", "cpu",
                  "--npz")
    model = tmp_path / "nnUNet_results" / dataset / f"{TRAINER}__nnUNetPlans__2d"
    fold = model / "fold_0"
    assert "Mean Validation Dice, SAM-refined" in out
    for f in ("validation/summary.json", "validation/summary_unrefined.json", f"validation/{VAL_CASE}.nii.gz",
              f"validation/{VAL_CASE}.npz", f"validation/{VAL_CASE}.pkl", "validation_unrefined/summary.json",
              f"validation_unrefined/{VAL_CASE}.nii.gz", f"validation_unrefined/{VAL_CASE}.npz", "autosam_sam.json"):
        assert (fold / f).is_file(), f
    assert not list((fold / "validation").glob(".tmp*"))
    recorded = json.loads((fold / "autosam_sam.json").read_text())
    assert recorded["sam"] == "litemedsam" and recorded["adapter"] == adapter
    chosen = {k: recorded["refine"][k] for k in ("prompt", "fusion", "min_size")}
    assert chosen == {"prompt": "box", "fusion": "replace", "min_size": 8}
    refined = seg(fold / "validation" / f"{VAL_CASE}.nii.gz")
    unrefined = seg(fold / "validation_unrefined" / f"{VAL_CASE}.nii.gz")
    assert unrefined.any(), "the tiny nnU-Net model predicted no foreground; SAM was not exercised"
    assert (refined != unrefined).any(), "SAM changed no voxel"
    summary = json.loads((fold / "validation" / "summary.json").read_text())
    summary_unrefined = json.loads((fold / "validation" / "summary_unrefined.json").read_text())
    assert summary_unrefined == json.loads((fold / "validation_unrefined" / "summary.json").read_text())
    for scores, labels in ((summary, refined), (summary_unrefined, unrefined)):  # each summary scores its folder
        metrics = scores["metric_per_case"][0]["metrics"]
        assert {k: metrics[k]["n_pred"] for k in ("1", "2")} == {k: float((labels == int(k)).sum()) for k in "12"}
    with np.load(fold / "validation" / f"{VAL_CASE}.npz") as data:
        assert np.array_equal(data["probabilities"].argmax(axis=0), refined)

    # 2. nnUNetv2_predict with the trainer refines with the settings recorded at validation (no AUTOSAM_* is set
    #    here), so the validation case comes out as in validation/
    images = tmp_path / "imagesTs"
    images.mkdir()
    shutil.copy(tmp_path / "nnUNet_raw" / dataset / "imagesTr" / f"{VAL_CASE}_0000.nii.gz", images)
    predicted = tmp_path / "predicted"
    predict = ["nnUNetv2_predict", "-i", images, "-o", predicted, "-d", "951", "-c", "2d", "-tr", TRAINER, "-f", "0",
               "-device", "cpu", "-npp", "1", "-nps", "1"]
    out = run_cmd(venv_bin, env, *predict)
    assert f"predictions will be refined with SAM litemedsam, adapter={adapter}" in out
    assert json.loads((predicted / "autosam_sam.json").read_text())["refine"] == recorded["refine"]
    for f in (f"{VAL_CASE}.nii.gz", "dataset.json", "plans.json", f"unrefined/{VAL_CASE}.nii.gz"):
        assert (predicted / f).is_file(), f
    assert not list(predicted.rglob("*.npz")), "probabilities were not asked for"
    assert (seg(predicted / "unrefined" / f"{VAL_CASE}.nii.gz") == unrefined).mean() > 0.999
    assert (seg(predicted / f"{VAL_CASE}.nii.gz") == refined).mean() > 0.999
    stamp = (predicted / f"{VAL_CASE}.nii.gz").stat().st_mtime_ns
    run_cmd(venv_bin, env, *predict, "--continue_prediction")
    assert (predicted / f"{VAL_CASE}.nii.gz").stat().st_mtime_ns == stamp, "a finished case was redone"

    # autosam predict on the same model uses the recorded settings too (adapter, prompts, fusion)
    ours = tmp_path / "autosam_predicted"
    out = run_cmd(venv_bin, env, "autosam", "predict", "-m", model, "-i", images, "-o", ours, "-f", "0",
                  "--device", "cpu")
    assert "using the SAM settings recorded in" in out
    run_record = json.loads((ours / "autosam_run.json").read_text())
    assert run_record["adapter"] == adapter and run_record["refine"] == recorded["refine"]
    assert (seg(ours / f"{VAL_CASE}.nii.gz") == refined).mean() > 0.999

    # 3. nnU-Net's model selection reads the refined validation
    out = run_cmd(venv_bin, env, "nnUNetv2_find_best_configuration", "951", "-c", "2d", "-tr", TRAINER, "-f", "0",
                  "-np", "1", "--disable_ensembling")
    assert f"-tr {TRAINER}" in out
    crossval = json.loads((model / "crossval_results_folds_0" / "summary.json").read_text())
    assert crossval["foreground_mean"]["Dice"] == pytest.approx(summary["foreground_mean"]["Dice"])

    # 4. validation again without an explicit prompt or fusion: the trainer tunes SAM's configuration (or "no SAM")
    #    on the fold's validation case, records what it compared, and validation/ holds the winner's output (the
    #    untrained network's speckle is prompted from fragments of >= 8 pixels, a setting the grid keeps; the small
    #    grid, whose size against the full one test_the_trainer_scores_fit_s_grid_around_its_settings checks)
    tune_env = {**env, "AUTOSAM_ADAPTER": adapter, "AUTOSAM_BATCH_SIZE": "8", "nnUNet_n_proc_DA": "0",
                "AUTOSAM_MIN_SIZE": "8", "AUTOSAM_SMALL_GRID": "1"}
    out = run_cmd(venv_bin, tune_env, "nnUNetv2_train", "951", "2d", "0", "-tr", TRAINER, "-device", "cpu", "--val",
                  "--npz")
    assert "autosam: tuned on 1 validation case(s)" in out
    tuned = json.loads((fold / "autosam_sam.json").read_text())
    assert tuned["tuning"]["validation_cases"] == [VAL_CASE] and tuned["adapter"] == adapter
    assert len(tuned["tuning"]["candidates"]) == 73  # every prompt, object limit and fusion, and no SAM

    revalidated = seg(fold / "validation" / f"{VAL_CASE}.nii.gz")
    if tuned["use_sam"]:
        assert tuned["tuning"]["chosen_mean_dice"] >= tuned["tuning"]["no_sam_mean_dice"] + tuned["tuning"]["min_gain"]
        assert tuned["refine"]["min_size"] == 8  # the grid varies prompts, levers and fusions, not the rest
    else:  # "no SAM" won: nnU-Net's own validation output
        assert np.array_equal(revalidated, seg(fold / "validation_unrefined" / f"{VAL_CASE}.nii.gz"))
    scored = json.loads((fold / "validation" / "summary.json").read_text())["foreground_mean"]["Dice"]
    assert scored == pytest.approx(tuned["tuning"]["chosen_mean_dice"], abs=0.01)
