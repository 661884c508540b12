"""NSD and HD95 with known answers, nnU-Net parity of the summary, and the evaluate verb."""
from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from autosam import cli, evaluation, io
from autosam.sample import sample_dataset


def _square(shift=0, shape=(1, 20, 24)):
    m = np.zeros(shape, bool)
    m[0, 5:15, 5 + shift : 15 + shift] = True
    return m


def test_identical_and_empty_masks():
    a = _square()
    assert evaluation.nsd_and_hd95(a, a, (999, 1, 1)) == (1.0, 0.0)
    empty = np.zeros_like(a)
    assert evaluation.nsd_and_hd95(empty, empty, (999, 1, 1)) == (1.0, 0.0)
    assert evaluation.nsd_and_hd95(a, empty, (999, 1, 1)) == (0.0, math.inf)
    assert evaluation.nsd_and_hd95(empty, a, (999, 1, 1)) == (0.0, math.inf)


def test_shifted_square_known_answer_and_spacing():
    # a 10x10 square and the same shifted by 2 columns. Of a's 36-pixel outline, 16 lie on b's outline (top and
    # bottom rows), 4 at 1 pixel (2 by the corners, 2 by b's top and bottom rows inside b) and 16 at 2 pixels;
    # b's is the mirror image. The dummy 999 mm axis of length 1 is ignored.
    a, b = _square(), _square(shift=2)
    nsd, hd = evaluation.nsd_and_hd95(a, b, (999, 1.0, 1.0), tolerance_mm=1.0)
    assert nsd == pytest.approx(40 / 72)
    assert hd == pytest.approx(2.0)
    # columns 0.5 mm apart: every distance halves, all within 1 mm
    nsd, hd = evaluation.nsd_and_hd95(a, b, (999, 1.0, 0.5), tolerance_mm=1.0)
    assert (nsd, hd) == (pytest.approx(1.0), pytest.approx(1.0))
    # tolerance 0: only the 16 shared outline pixels of each count
    assert evaluation.nsd_and_hd95(a, b, (999, 1, 1), tolerance_mm=0.0)[0] == pytest.approx(32 / 72)


def test_3d_slab_offset_along_a_coarse_axis():
    a = np.zeros((6, 8, 8), bool)
    a[1:3, 2:6, 2:6] = True
    b = np.roll(a, 1, axis=0)  # one slice further along z
    nsd1, hd1 = evaluation.nsd_and_hd95(a, b, (1.0, 1.0, 1.0), tolerance_mm=0.5)
    nsd3, hd3 = evaluation.nsd_and_hd95(a, b, (3.0, 1.0, 1.0), tolerance_mm=0.5)
    assert hd1 == pytest.approx(1.0) and hd3 == pytest.approx(3.0)
    assert nsd3 == pytest.approx(nsd1)  # same voxels are off the other surface, whatever the distance
    assert evaluation.nsd_and_hd95(a, b, (3.0, 1.0, 1.0), tolerance_mm=3.0)[0] == pytest.approx(1.0)


def test_case_metrics_match_nnunet_rules_and_ignore_label():
    gt = np.zeros((1, 10, 10), np.int16)
    gt[0, 2:6, 2:6] = 1
    gt[0, 8:10, :] = 3  # ignore label
    pred = np.zeros_like(gt)
    pred[0, 2:6, 2:6] = 1
    pred[0, 8:10, :] = 1  # inside the ignore region: must not count
    m = evaluation.case_metrics(gt, pred, (999, 1, 1), [1, 2], tolerance_mm=1.0, ignore_label=3)
    assert m[1]["Dice"] == 1.0 and m[1]["FP"] == 0 and m[1]["NSD"] == 1.0 and m[1]["HD95"] == 0.0
    assert math.isnan(m[2]["Dice"]) and m[2]["NSD"] == 1.0  # empty in both
    assert set(m[1]) == {"Dice", "IoU", "FP", "TP", "FN", "TN", "n_pred", "n_ref", "NSD", "HD95"}


@pytest.fixture
def hippocampus_folders(tmp_path):
    """gt: 3 bundled labels; pred: the same, one dilated, one with a label removed."""
    root = sample_dataset("hippocampus")
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    gt.mkdir()
    pred.mkdir()
    from scipy import ndimage

    for i, case in enumerate(["hippocampus_148", "hippocampus_149", "hippocampus_165"]):
        shutil.copy(root / "labelsTr" / f"{case}.nii.gz", gt)
        img = sitk.ReadImage(str(root / "labelsTr" / f"{case}.nii.gz"))
        arr = sitk.GetArrayFromImage(img)
        if i == 1:
            arr = np.where((arr == 0) & ndimage.binary_dilation(arr == 1), 1, arr).astype(arr.dtype)
        if i == 2:
            arr[arr == 2] = 0
        out = sitk.GetImageFromArray(arr)
        out.CopyInformation(img)
        sitk.WriteImage(out, str(pred / f"{case}.nii.gz"))
    shutil.copy(root / "dataset.json", pred)
    return gt, pred


def test_evaluate_folder_matches_nnunet_summary(hippocampus_folders):
    gt, pred = hippocampus_folders
    info = io.load_dataset_json(pred)
    ours = evaluation.evaluate_folder(gt, pred, info, tolerance_mm=1.0)
    from nnunetv2.evaluation.evaluate_predictions import compute_metrics_on_folder

    theirs = compute_metrics_on_folder(str(gt), str(pred), None, io.reader_writer(info.file_ending)(),
                                       info.file_ending, info.foreground, ignore_label=info.ignore_label,
                                       num_processes=1)
    for mine, ref in zip(ours["metric_per_case"], sorted(theirs["metric_per_case"], key=lambda c: c["prediction_file"])):
        for label in (1, 2):
            for key, value in ref["metrics"][label].items():
                assert mine["metrics"][label][key] == pytest.approx(value, nan_ok=True), (key, label)
    assert ours["foreground_mean"]["Dice"] == pytest.approx(theirs["foreground_mean"]["Dice"])
    case3 = ours["metric_per_case"][2]["metrics"][2]
    assert case3["NSD"] == 0.0 and math.isinf(case3["HD95"])
    assert ours["mean"][2]["HD95_n_inf"] == 1
    assert 0 < ours["metric_per_case"][1]["metrics"][1]["NSD"] < 1


def test_evaluate_cli_writes_summary_and_table(hippocampus_folders, capsys):
    gt, pred = hippocampus_folders
    assert cli.main(["evaluate", str(gt), str(pred), "--tolerance-mm", "2"]) == 0
    out = capsys.readouterr().out
    assert "NSD@2mm" in out and "Anterior" in out and "foreground mean" in out
    summary = json.loads((pred / "summary.json").read_text())
    assert set(summary) >= {"metric_per_case", "mean", "foreground_mean"}
    assert summary["NSD_tolerance_mm"] == 2.0 and "NSD" in summary["mean"]["1"]
    from nnunetv2.evaluation.evaluate_predictions import load_summary_json

    assert load_summary_json(str(pred / "summary.json"))["mean"][1]["Dice"] == pytest.approx(summary["mean"]["1"]["Dice"])
    # no silent overwrite; -o elsewhere works
    assert cli.main(["evaluate", str(gt), str(pred)]) == 2
    assert "exists" in capsys.readouterr().err
    assert cli.main(["evaluate", str(gt), str(pred), "-o", str(pred.parent / "s.json")]) == 0


def test_evaluate_cli_errors_are_one_line(hippocampus_folders, tmp_path, capsys):
    gt, pred = hippocampus_folders
    (pred / "dataset.json").unlink()
    assert cli.main(["evaluate", str(gt), str(pred)]) == 2
    err = capsys.readouterr().err.strip()
    assert "dataset.json not found" in err and len(err.splitlines()) == 1
    root = sample_dataset("hippocampus")
    shutil.copy(root / "labelsTr" / "hippocampus_221.nii.gz", pred)  # no reference for it
    assert cli.main(["evaluate", str(gt), str(pred), "--dataset-json", str(root / "dataset.json")]) == 2
    assert "no reference" in capsys.readouterr().err
