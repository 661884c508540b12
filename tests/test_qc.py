"""Label-free quality control (:mod:`autosam.qc`): signals on the bundled sample, a degraded coarse map ranked below
the clean one by real LiteMedSAM (4 slices), the quality model's record and its refusal of another dataset,
``quality.csv`` independent of write order and unchanged by a resume, and the benchmark script on the sample."""
from __future__ import annotations

import importlib.util
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from autosam import io
from autosam.errors import AutosamError
from autosam.pipelines import refine_folder
from autosam.pipelines.quality import QualityControl
from autosam.qc import (SIGNALS, QualityModel, case_signals, dice, rank_score, read_quality_csv, reference_volumes,
                        refined_signals, write_case_rows, write_quality_csv)
from autosam.refine import RefineConfig, refine_case
from autosam.sam import SamPredictor
from autosam.sample import sample_dataset

ROOT = Path(__file__).resolve().parents[1]
HIPPO = sample_dataset("hippocampus")
CASES = ["hippocampus_148", "hippocampus_165"]


def _soft(seg: np.ndarray, sigma: float = 0.7) -> np.ndarray:
    """nnU-Net-like probabilities ``(3, Z, Y, X)`` of a hippocampus label map: its one-hot, smoothed in-plane."""
    probs = ndimage.gaussian_filter(np.stack([seg == v for v in (0, 1, 2)]).astype(np.float32), (0, 0, sigma, sigma))
    return probs / probs.sum(0, keepdims=True)


def _label(case: str):
    return io.read_label(HIPPO / "labelsTr" / f"{case}.nii.gz", info=io.load_dataset_json(HIPPO))


def _crop(case: str, folder: Path, box=(slice(12, 16), slice(None), slice(None))) -> np.ndarray:
    """Write ``case``'s image cropped to ``box`` (``Z, Y, X``) into ``folder``; its label map cropped alike."""
    index = tuple(reversed(box))  # SimpleITK indexes x, y, z
    image = sitk.ReadImage(str(HIPPO / "imagesTr" / f"{case}_0000.nii.gz"))[index]
    sitk.WriteImage(image, str(folder / f"{case}_0000.nii.gz"))
    label = sitk.ReadImage(str(HIPPO / "labelsTr" / f"{case}.nii.gz"))[index]
    return sitk.GetArrayFromImage(label).astype(np.int16)


def test_signals_are_deterministic_finite_and_defined_for_empty_labels():
    info = io.load_dataset_json(HIPPO)
    stats = reference_volumes(sorted((HIPPO / "labelsTr").glob("*.nii.gz")), info)
    for case in CASES:
        gt, props = _label(case)
        coarse = np.where(ndimage.binary_erosion(gt > 0), gt, 0).astype(np.int16)
        runs = [(np.ones((2, gt.shape[0]), bool), np.full((2, gt.shape[0]), 0.8, np.float32))]
        args = (case, info, coarse, _soft(coarse), gt, props["spacing"])
        first = case_signals(*args, sam_runs=runs, volume_stats=stats)
        assert first == case_signals(*args, sam_runs=runs, volume_stats=stats)
        assert [r["label"] for r in first] == [1, 2]
        for row in first:
            assert set(row) == {"case", "label", *SIGNALS}
            assert all(math.isfinite(row[s]) for s in SIGNALS)
            assert 0 < row["dice_coarse_final"] < 1 and row["sam_iou_mean"] == pytest.approx(0.8)
            assert row["entropy_band"] > 0 and 0 < row["uncertain_share"] < 1 and row["components"] >= 1
            assert abs(row["volume_z"]) < 3 and row["empty"] == 0
    empty = np.where(gt == 2, 0, gt).astype(np.int16)
    row = case_signals(case, info, empty, None, empty, props["spacing"])[1]
    assert row["empty"] == 1 and row["components"] == 0 and row["dice_coarse_final"] == 1
    assert row["sam_iou_mean"] == row["entropy_band"] == row["volume_z"] == 0
    assert all(math.isfinite(row[s]) for s in SIGNALS)


def test_signals_of_a_2d_image_see_its_boundary():
    root = sample_dataset("hc18")
    info = io.load_dataset_json(root)
    gt, props = io.read_label(root / "labelsTr" / "801_HC.png", info=info)
    probs = ndimage.gaussian_filter(np.stack([gt == 0, gt == 1]).astype(np.float32), (0, 0, 2, 2))
    row = case_signals("801_HC", info, gt, probs / probs.sum(0, keepdims=True), gt, props["spacing"])[0]
    assert row["entropy_band"] > 0.1 and row["components"] == 1 and row["dice_coarse_final"] == 1


@pytest.fixture(scope="module")
def crop(tmp_path_factory):
    """hippocampus_165 cropped to 4 slices: image file, reference labels."""
    base = tmp_path_factory.mktemp("qc_crop")
    return base, _crop("hippocampus_165", base)


def test_an_overgrown_coarse_map_gets_lower_agreement_and_ranks_below_the_clean_one(crop, predictor):
    """Label 1 grown by two voxels into the background: SAM's mask and the coarse mask agree less, and the case
    ranks lower. (A shifted or eroded map, prompted with box + mask, moves SAM's mask along on this crop: the
    agreement does not drop there.)"""
    base, gt = crop
    info = io.load_dataset_json(HIPPO)
    case = io.read_case("hippocampus_165", [base / "hippocampus_165_0000.nii.gz"])
    grown = np.where(ndimage.binary_dilation(gt > 0, iterations=2) & (gt == 0), 1, gt).astype(np.int16)
    rows = {}
    for name, coarse in (("clean", gt), ("grown", grown)):
        refined = refine_case(predictor, case, info, coarse, _soft(coarse), RefineConfig(axis=0), keep=False)
        rows[name] = refined_signals(case.case_id, info, coarse, _soft(coarse), refined, case.spacing)
        assert refined.sam.overlap.shape == (2, 3) and all(r["sam_slices"] == 4 for r in rows[name])
    clean, worse = rows["clean"][0], rows["grown"][0]
    assert worse["dice_coarse_sam"] < clean["dice_coarse_sam"] - 0.1
    assert worse["entropy_band"] > clean["entropy_band"] and rank_score(worse) < rank_score(clean)
    assert np.mean([rank_score(r) for r in rows["grown"]]) < np.mean([rank_score(r) for r in rows["clean"]])


def _rows(n: int, seed: int = 0):
    """Synthetic signal rows whose true Dice follows the SAM agreement."""
    rng = np.random.default_rng(seed)
    rows, dice = [], []
    for i in range(n):
        agree = float(rng.uniform(0.5, 1.0))
        rows.append({"case": f"c{i:03d}", "label": 1, **{s: float(rng.uniform()) for s in SIGNALS},
                     "dice_coarse_sam": agree})
        dice.append(min(1.0, 0.9 * agree + float(rng.normal(0, 0.02))))
    return rows, dice


def test_quality_model_round_trip_and_refusal_of_another_dataset(tmp_path):
    info = io.load_dataset_json(HIPPO)
    rows, dice = _rows(60)
    model = QualityModel().fit(rows, dice, info, volume_stats={"1": [1.0, 0.5], "2": [2.0, 0.5]})
    predicted = model.predict(rows)
    assert predicted.min() >= 0 and predicted.max() <= 1 and np.mean(np.abs(predicted - dice)) < 0.05
    assert np.mean(predicted < model.flag_below) <= 0.1 < np.mean(predicted <= model.flag_below) + 1e-9
    path = model.save(tmp_path / "autosam_quality.json")
    again = QualityModel.load(tmp_path, info)
    np.testing.assert_array_equal(again.predict(rows), predicted)
    assert again.to_record() == json.loads(path.read_text()) and again.volume_stats["2"] == [2.0, 0.5]
    with pytest.raises(AutosamError) as e:
        QualityModel.load(path, io.load_dataset_json(sample_dataset("hc18")))
    message = str(e.value)
    assert message.startswith(f"{path}: quality model for dataset 'Hippocampus_sample'") and "\n" not in message
    relabelled = io.load_dataset_json(HIPPO)
    relabelled.labels = {**relabelled.labels, "Extra": 3}
    with pytest.raises(AutosamError, match="does not fit dataset"):
        QualityModel.load(path, relabelled)
    path.write_text("{}")
    with pytest.raises(AutosamError, match="not an autosam quality model"):
        QualityModel.load(path)


def test_quality_csv_is_the_same_whatever_the_write_order(tmp_path):
    rows, _ = _rows(12)
    by_case = {r["case"]: [dict(r, label=2, sam_iou_mean=r["sam_iou_mean"] / 2), dict(r, label=1)] for r in rows}
    tables = []
    for name, order in (("a", sorted(by_case)), ("b", sorted(by_case, reverse=True))):
        folder = tmp_path / name
        for case in order:
            write_case_rows(folder, case, by_case[case])
            (folder / f"{case}.nii.gz").write_bytes(b"seg")
        write_case_rows(folder, "z_unfinished", by_case["c000"])  # no segmentation: not in the table
        tables.append(write_quality_csv(folder, ".nii.gz").read_bytes())
    assert tables[0] == tables[1]
    table = read_quality_csv(tmp_path / "a" / "quality.csv")
    assert [(r["case"], r["label"]) for r in table] == [(c, v) for c in sorted(by_case) for v in (1.0, 2.0)]
    assert sum(r["flag"] for r in table) == 3 and all(r["calibrated"] == 0 for r in table)


def test_three_planes_give_plane_agreement_and_every_plane_s_iou(tiny_sam, tmp_path):
    info = io.load_dataset_json(HIPPO)
    gt = _crop(CASES[0], tmp_path, (slice(12, 16), slice(16, 32), slice(8, 24)))  # 36 slices along the 3 axes
    case = io.read_case(CASES[0], [tmp_path / f"{CASES[0]}_0000.nii.gz"])
    predictor = SamPredictor(tiny_sam, device="cpu")
    refined = refine_case(predictor, case, info, gt, _soft(gt), RefineConfig(planes=True), keep=False)
    assert len(refined.plane_segmentations) == len(refined.plane_runs) == 3
    one = refine_case(predictor, case, info, gt, _soft(gt), RefineConfig(axis=0), keep=False)
    three, single = (refined_signals(CASES[0], info, gt, _soft(gt), r, case.spacing) for r in (refined, one))
    for row, plain in zip(three, single):
        masks = [p == row["label"] for p in refined.plane_segmentations]
        pairs = [dice(masks[i], masks[j]) for i, j in ((0, 1), (0, 2), (1, 2))]
        assert row["dice_planes"] == pytest.approx(np.mean(pairs)) and plain["dice_planes"] == 1
        assert row["sam_slices"] == sum(int(r.prompted[row["label"] - 1].sum()) for r in refined.plane_runs)
        assert row["sam_slices"] > plain["sam_slices"]


def test_refine_folder_with_qc_writes_quality_csv_that_a_resume_keeps(tiny_sam, tmp_path, capsys):
    images, coarse = tmp_path / "images", tmp_path / "coarse"
    images.mkdir()
    coarse.mkdir()
    info = io.load_dataset_json(HIPPO)
    for case in CASES:  # 4 slices each
        gt = _crop(case, images)
        props = io.read_case(case, [images / f"{case}_0000.nii.gz"]).properties
        io.write_seg(np.where(ndimage.binary_erosion(gt > 0), gt, 0), coarse / f"{case}.nii.gz", props)
    make = lambda: SamPredictor(tiny_sam, device="cpu")  # noqa: E731
    refine_folder(images, coarse, tmp_path / "plain", info, make, quiet=True, pipeline=False)
    refine_folder(images, coarse, tmp_path / "qc", info, make, qc=QualityControl(), quiet=True, pipeline=False)
    assert not list((tmp_path / "plain").glob("*.quality.json"))
    for case in CASES:  # QC changes no output
        assert (tmp_path / "qc" / f"{case}.nii.gz").read_bytes() == (tmp_path / "plain" / f"{case}.nii.gz").read_bytes()
    table = tmp_path / "qc" / "quality.csv"
    before = table.read_bytes()
    assert [(r["case"], r["label"]) for r in read_quality_csv(table)] == [(c, v) for c in CASES for v in (1.0, 2.0)]
    assert json.loads((tmp_path / "qc" / "autosam_run.json").read_text())["qc"] is True
    (tmp_path / "qc" / f"{CASES[1]}.nii.gz").unlink()  # killed before its segmentation was written
    table.unlink()
    assert refine_folder(images, coarse, tmp_path / "qc", info, make, qc=QualityControl(), quiet=True) == [CASES[1]]
    assert table.read_bytes() == before
    capsys.readouterr()
    assert refine_folder(images, coarse, tmp_path / "plain", info, make, qc=QualityControl(), quiet=True) == []
    assert "note: 2 case(s) in" in capsys.readouterr().err  # refined without QC: said, not silently dropped
    assert read_quality_csv(tmp_path / "plain" / "quality.csv") == []


def _script():
    spec = importlib.util.spec_from_file_location("benchmark_qc", ROOT / "scripts" / "benchmark_qc.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_script_prints_its_table_on_the_sample_and_refuses_confirmation_cases(tmp_path, capsys):
    info = io.load_dataset_json(HIPPO)
    folders = {name: tmp_path / name for name in ("coarse", "refined", "labels")}
    for folder in folders.values():
        folder.mkdir()
    for i, path in enumerate(sorted((HIPPO / "labelsTr").glob("*.nii.gz"))):
        gt, props = io.read_label(path, info=info)
        coarse = np.where(ndimage.binary_erosion(gt > 0, iterations=i % 3) if i % 3 else gt > 0, gt, 0)
        io.write_seg(coarse, folders["coarse"] / path.name, props)
        np.savez_compressed(folders["coarse"] / path.name.replace(".nii.gz", ".npz"), probabilities=_soft(coarse))
        io.write_seg(coarse, folders["refined"] / path.name, props)
        shutil.copy(path, folders["labels"])
    shutil.copy(HIPPO / "dataset.json", folders["refined"])
    argv = [f"--{k}={v}" for k, v in folders.items()]
    assert _script().main(argv) == 0
    out = capsys.readouterr().out
    assert out.startswith("6 cases, 12 case-label rows") and "softmax entropy alone (anchor)" in out
    assert "stored model" not in out
    stored = QualityModel().fit(*_rows(20), info).save(tmp_path / "autosam_quality.json")  # as fit stores one
    assert _script().main([*argv, f"--quality-model={stored}"]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert rows[3].startswith(f"| stored model ({tmp_path.name}), as is | ") and rows[4].startswith("| signals")
    assert _script().main([*argv, f"--quality-model={_foreign_model(tmp_path / 'hc18.json')}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("benchmark_qc: error:") and "hc18.json" in err[0]
    confirmation = (ROOT / "docs" / "results" / "confirmation_hippocampus.txt").read_text().split()[0]
    for folder in ("refined", "labels"):
        shutil.copy(folders[folder] / "hippocampus_148.nii.gz", folders[folder] / f"{confirmation}.nii.gz")
    assert _script().main(argv) == 2
    assert f"confirmation case(s) in {folders['refined']} ({confirmation})" in capsys.readouterr().err
    assert _script().main([*argv, "--exclude-confirmation"]) == 0


def _foreign_model(path: Path) -> Path:
    """A quality model fitted for the HC18 sample (another dataset and label set), saved at ``path``."""
    rows, dice = _rows(20)
    return QualityModel().fit(rows, dice, io.load_dataset_json(sample_dataset("hc18"))).save(path)


def test_refine_verb_qc_writes_quality_csv_matching_the_case_files_and_refuses_a_foreign_model(tiny_sam, tmp_path,
                                                                                               capsys):
    from autosam.cli import main
    from autosam.qc import read_case_rows

    images, coarse = tmp_path / "images", tmp_path / "coarse"
    images.mkdir()
    coarse.mkdir()
    for case in CASES:  # 4 slices each
        gt = _crop(case, images)
        props = io.read_case(case, [images / f"{case}_0000.nii.gz"]).properties
        io.write_seg(np.where(ndimage.binary_erosion(gt > 0), gt, 0), coarse / f"{case}.nii.gz", props)
    shutil.copy(HIPPO / "dataset.json", coarse)
    verb = ["refine", "-i", str(images), "-c", str(coarse), "--sam", "tiny", "--device", "cpu", "--engine", "torch"]
    out = tmp_path / "out"
    assert main([*verb, "-o", str(out), "--qc"]) == 0
    table, per_case = read_quality_csv(out / "quality.csv"), read_case_rows(out)
    assert [(r["case"], r["label"]) for r in table] == [(c, v) for c in CASES for v in (1.0, 2.0)]
    for row, signals in zip(table, per_case):
        assert row["case"] == signals["case"] and row["label"] == signals["label"] and row["calibrated"] == 0
        assert all(row[s] == pytest.approx(signals[s], abs=1e-6) for s in SIGNALS)
    assert json.loads((out / "autosam_run.json").read_text())["qc"] is True
    assert not (out / ".autosam.quality.lock").exists()  # the table's lock (parts of a split run share it) is gone

    foreign = _foreign_model(tmp_path / "foreign" / "autosam_quality.json")
    capsys.readouterr()
    assert main([*verb, "-o", str(tmp_path / "refused"), "--quality-model", str(foreign)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{foreign}: quality model for dataset 'HC18_sample'" in err, err
    assert not (tmp_path / "refused").exists()


def test_predict_picks_up_the_model_folder_s_quality_model(tmp_path, monkeypatch, capsys):
    """``MODEL/autosam_quality.json`` switches QC on with that model; one for another dataset is refused in one
    line before nnU-Net loads or anything is written."""
    from autosam.cli import main
    from autosam.commands import predict as verb

    model = tmp_path / "Dataset904_Fake" / "nnUNetTrainer__nnUNetPlans__2d"
    (model / "fold_0").mkdir(parents=True)
    shutil.copy(HIPPO / "dataset.json", model)
    (model / "plans.json").write_text("{}")
    (model / "fold_0" / "checkpoint_final.pth").write_bytes(b"")
    images = tmp_path / "images"
    shutil.copytree(HIPPO / "imagesTr", images)
    seen = {}

    def fake_predict_folder(*args, qc=None, **kwargs):
        seen["qc"] = qc
        return []

    monkeypatch.setattr(verb, "predict_folder", fake_predict_folder)
    argv = ["predict", "-m", str(model), "-i", str(images), "-o", str(tmp_path / "out"), "--device", "cpu"]
    assert main(argv) == 0 and seen["qc"] is None  # no quality model: no QC unless asked
    rows, dice = _rows(20)
    QualityModel().fit(rows, dice, io.load_dataset_json(HIPPO)).save(model / "autosam_quality.json")
    capsys.readouterr()
    assert main(argv) == 0 and seen["qc"].model is not None and seen["qc"].flag_below is None
    assert f"quality control with the quality model {model / 'autosam_quality.json'}" in capsys.readouterr().err
    assert main([*argv, "--flag-below", "0.7"]) == 0 and seen["qc"].flag_below == 0.7
    _foreign_model(model / "autosam_quality.json")
    seen.clear()
    capsys.readouterr()
    assert main(argv) == 2 and not seen
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "does not fit dataset" in err and str(model) in err, err
    assert not (tmp_path / "out").exists()


def test_predict_with_no_sam_and_qc_runs_sam_for_the_signals_alone(tiny_sam, tmp_path, monkeypatch):
    """"no SAM" with QC: the output is nnU-Net's map as it is; the signals come from SAM with the default
    settings (prompted slices, the final map being the coarse one)."""
    from autosam.pipelines import predict as pipeline
    from autosam.pipelines.quality import QualityControl

    info = io.load_dataset_json(HIPPO)
    gt = _crop(CASES[0], tmp_path)
    coarse = np.where(ndimage.binary_erosion(gt > 0), gt, 0).astype(np.int16)
    monkeypatch.setattr(pipeline.nnunet, "coarse_prediction", lambda *a: (coarse, _soft(coarse)))
    job = pipeline.PredictJob(lambda: object(), lambda: SamPredictor(tiny_sam, device="cpu"), info, None,
                              qc=QualityControl())
    job.setup()
    out = job.process(io.read_case(CASES[0], [tmp_path / f"{CASES[0]}_0000.nii.gz"]))
    assert out.segmentation is coarse and [r["label"] for r in out.quality] == [1, 2]
    assert all(r["dice_coarse_final"] == 1 and r["sam_slices"] > 0 for r in out.quality)
    assert any(r["dice_coarse_sam"] < 1 for r in out.quality)
    plain = pipeline.PredictJob(lambda: object(), lambda: SamPredictor(tiny_sam, device="cpu"), info, None)
    plain.setup()
    assert plain._sam is None and plain.process(io.read_case(CASES[0], [tmp_path / f"{CASES[0]}_0000.nii.gz"])
                                                ).quality is None


def test_parts_assemble_quality_csv_one_at_a_time(tmp_path):
    """Parts of a split run (``--num-parts``) finishing together: each assembles ``quality.csv`` under the table's
    lock, waiting while another holds it, so the last one writes the table of every finished case."""
    import os
    import socket
    import threading
    import time

    from autosam.pipelines.quality import TABLE_LOCK, QualityControl, finish_quality

    rows, _ = _rows(3)
    for row in rows:
        write_case_rows(tmp_path, row["case"], [row])
        (tmp_path / f"{row['case']}.nii.gz").write_bytes(b"seg")
    lock = tmp_path / TABLE_LOCK
    lock.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "verb": "quality"}))
    other = threading.Thread(target=finish_quality, args=(tmp_path, io.load_dataset_json(HIPPO), QualityControl()))
    other.start()
    time.sleep(0.6)
    assert not (tmp_path / "quality.csv").exists()  # waits for the part holding the table's lock
    lock.unlink()
    other.join(10)
    assert [r["case"] for r in read_quality_csv(tmp_path / "quality.csv")] == [r["case"] for r in rows]
    assert not lock.exists()
