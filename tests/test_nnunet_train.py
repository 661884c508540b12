"""autosam.nnunet.train: nnU-Net trained and run on a subset of a raw dataset through nnU-Net's own commands.

The slow test trains nnU-Net 2d (1 epoch x 3 iterations, CPU) on 4 bundled hippocampus cases and predicts the other
2; the network is nearly untrained, so only the plumbing is checked (files, geometry, label values, resuming).
"""
from __future__ import annotations

import json
import time

import numpy as np
import pytest

pytest.importorskip("nnunetv2")

from autosam import io  # noqa: E402
from autosam.errors import AutosamError  # noqa: E402
from autosam.nnunet.train import Schedule, make_raw_dataset, predict_nnunet, train_nnunet  # noqa: E402
from autosam.sample import sample_dataset  # noqa: E402

SOURCE = sample_dataset("hippocampus")
CASES = sorted(f.name[: -len(".nii.gz")] for f in (SOURCE / "labelsTr").iterdir())
TINY = Schedule(configuration="2d", epochs=1, iterations=3, val_iterations=1, seed=1)


def one_line_error(call) -> str:
    with pytest.raises(AutosamError) as e:
        call()
    message = str(e.value)
    assert "\n" not in message
    return message


def test_raw_dataset_is_idempotent_and_refuses_other_cases(tmp_path):
    raw = make_raw_dataset(SOURCE, CASES[:2], tmp_path, 7, "Part")
    assert raw == tmp_path / "Dataset007_Part"
    assert make_raw_dataset(SOURCE, CASES[:2], tmp_path, 7, "Part") == raw
    assert io.load_dataset_json(raw).raw["numTraining"] == 2
    assert sorted(p.name for p in (raw / "labelsTr").iterdir()) == [f"{c}.nii.gz" for c in CASES[:2]]
    assert (raw / "imagesTr" / f"{CASES[0]}_0000.nii.gz").resolve() == \
        (SOURCE / "imagesTr" / f"{CASES[0]}_0000.nii.gz").resolve()
    assert "other cases" in one_line_error(lambda: make_raw_dataset(SOURCE, CASES[:3], tmp_path, 7, "Part"))
    assert "Dataset007_Part" in one_line_error(lambda: make_raw_dataset(SOURCE, CASES[:2], tmp_path, 7, "Other"))
    assert "hippocampus_999" in one_line_error(
        lambda: make_raw_dataset(SOURCE, ["hippocampus_999"], tmp_path, 8, "Bad"))
    assert "fold" in one_line_error(lambda: Schedule(fold="first"))
    assert Schedule().trainer == "nnUNetTrainer_autosam_Short" and Schedule(device="cuda").trainer == "nnUNetTrainer"
    assert "three positive numbers" in one_line_error(lambda: Schedule(spacing=(1.0, 2.0)))
    assert Schedule(spacing=(999, 3, 3)).plans == "nnUNetPlans_spacing_999x3x3" and Schedule().plans == "nnUNetPlans"


def test_a_cross_validation_split_is_checked_before_anything_is_written(tmp_path):
    split = [CASES[:2], CASES[2:4]]
    for bad, fold, message in (([CASES[:2], CASES[1:3]], "0", "each in one fold"),
                               ([CASES[:2], ["hippocampus_999"]], "1", "hippocampus_999"),
                               (split, "2", "has no fold 2"), (split, "all", "has no fold all")):
        schedule = Schedule(configuration="2d", fold=fold)
        assert message in one_line_error(lambda: train_nnunet(SOURCE, CASES[:4], tmp_path / "w", 904, schedule,
                                                              split=bad, npz=True))
    assert not (tmp_path / "w").exists()


@pytest.mark.slow
def test_train_predict_and_resume(tmp_path):
    work = tmp_path / "work"
    model = train_nnunet(SOURCE, CASES[:4], work, 901, TINY, name="Tiny")
    assert model == work / "nnUNet_results" / "Dataset901_Tiny" / "nnUNetTrainer_autosam_Short__nnUNetPlans__2d"
    checkpoint = model / "fold_all" / "checkpoint_final.pth"
    assert checkpoint.is_file()

    images = tmp_path / "imagesTs"
    images.mkdir()
    for case in CASES[4:]:
        (images / f"{case}_0000.nii.gz").symlink_to(SOURCE / "imagesTr" / f"{case}_0000.nii.gz")
    out = predict_nnunet(model, images, tmp_path / "predicted", TINY)
    for case in CASES[4:]:
        seg, _ = io.read_label(out / f"{case}.nii.gz")
        image, _ = io.read_label(images / f"{case}_0000.nii.gz")
        assert seg.shape == image.shape
        assert set(np.unique(seg)) <= {0, 1, 2}

    # a second call finds everything done: nothing runs, no log grows, no file is rewritten
    logs = {p: p.stat().st_size for p in (*(work / "logs").iterdir(), out / "nnunet_predict.log")}
    stamps = {p: p.stat().st_mtime_ns for p in (checkpoint, out / f"{CASES[4]}.nii.gz")}
    start = time.perf_counter()
    assert train_nnunet(SOURCE, CASES[:4], work, 901, TINY, name="Tiny") == model
    assert predict_nnunet(model, images, out, TINY) == out
    assert time.perf_counter() - start < 10
    assert {p: p.stat().st_size for p in logs} == logs
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps

    # a target spacing plans, preprocesses and trains under its own plans name beside the default one; the
    # predictions come back at the images' own geometry
    spaced = Schedule(configuration="2d", epochs=1, iterations=3, val_iterations=1, seed=1, spacing=(2, 2, 2))
    coarse = train_nnunet(SOURCE, CASES[:4], work, 901, spaced, name="Tiny")
    assert coarse.name == "nnUNetTrainer_autosam_Short__nnUNetPlans_spacing_2x2x2__2d"
    plans = json.loads((coarse / "plans.json").read_text())
    assert plans["plans_name"] == spaced.plans and plans["configurations"]["2d"]["spacing"] == [2.0, 2.0]
    assert checkpoint.stat().st_mtime_ns == stamps[checkpoint]  # the default plans' model is untouched
    assert train_nnunet(SOURCE, CASES[:4], work, 901, spaced, name="Tiny") == coarse  # its record matches on reruns
    out = predict_nnunet(coarse, images, tmp_path / "predicted_coarse", spaced)
    for case in CASES[4:]:
        seg, _ = io.read_label(out / f"{case}.nii.gz")
        assert seg.shape == io.read_label(images / f"{case}_0000.nii.gz")[0].shape

    # another schedule in the same fold, or a case that is not in the dataset, is one line naming the problem
    longer = Schedule(configuration="2d", epochs=2, iterations=3, val_iterations=1, seed=1)
    assert "epochs" in one_line_error(lambda: train_nnunet(SOURCE, CASES[:4], work, 901, longer, name="Tiny"))
    assert "hippocampus_999" in one_line_error(
        lambda: train_nnunet(SOURCE, ["hippocampus_999"], tmp_path / "bad", 902, TINY))
