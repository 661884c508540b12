"""``autosam refine`` end to end with the real LiteMedSAM on small real cases, its output folder, and its errors.

Coarse predictions are reference labels degraded on purpose (dilated, a label dropped from one slice), written
into tmp folders the way a user or nnU-Net would. SAM work is kept to a few slices: one HC18 image and a
hippocampus case cropped to 4 slices.
"""
from __future__ import annotations

import json
import pickle
import shutil

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from autosam import cli, evaluation, export, io, slicing
from autosam.prompts import Margin
from autosam.refine import RefineConfig, refine_case
from autosam.sample import sample_dataset

HIPPO = "hippocampus_165"


def _write_like(arr: np.ndarray, ref: sitk.Image, path, spacing=None) -> None:
    img = sitk.GetImageFromArray(arr)
    img.CopyInformation(ref)
    if spacing is not None:
        img.SetSpacing(spacing)
    sitk.WriteImage(img, str(path))


def _dice(gt: np.ndarray, pred: np.ndarray, labels) -> float:
    m = evaluation.case_metrics(gt, pred, (1, 1, 1), labels)
    return float(np.nanmean([m[v]["Dice"] for v in labels]))


@pytest.fixture(scope="module")
def hippo(tmp_path_factory):
    """A hippocampus case cropped to 4 slices; coarse = label 1 dilated in-plane, label 2 gone from slice 1
    (kept on slices 0 and 2), with nnU-Net-style npz probabilities and a plans.json."""
    root = sample_dataset("hippocampus")
    base = tmp_path_factory.mktemp("hippo")
    for sub in ("images", "labels", "coarse"):
        (base / sub).mkdir()
    image = sitk.ReadImage(str(root / "imagesTr" / f"{HIPPO}_0000.nii.gz"))[:, :, 12:16]
    label = sitk.ReadImage(str(root / "labelsTr" / f"{HIPPO}.nii.gz"))[:, :, 12:16]
    sitk.WriteImage(image, str(base / "images" / f"{HIPPO}_0000.nii.gz"))
    sitk.WriteImage(label, str(base / "labels" / f"{HIPPO}.nii.gz"))
    gt = sitk.GetArrayFromImage(label).astype(np.int16)
    assert all((gt[s] == 2).any() for s in range(3))
    coarse = gt.copy()
    grown = np.stack([ndimage.binary_dilation(gt[s] == 1) for s in range(len(gt))])
    coarse[grown & (coarse == 0)] = 1
    coarse[1][coarse[1] == 2] = 0
    _write_like(coarse, label, base / "coarse" / f"{HIPPO}.nii.gz")
    onehot = np.stack([coarse == v for v in (0, 1, 2)]).astype(np.float32)
    probs = ndimage.gaussian_filter(onehot, (0, 0, 0.7, 0.7))
    np.savez_compressed(base / "coarse" / f"{HIPPO}.npz", probabilities=probs / probs.sum(0, keepdims=True))
    shutil.copy(root / "dataset.json", base / "coarse")
    info = io.load_dataset_json(root)
    io.write_json({**export.minimal_plans(info), "plans_name": "from_the_coarse_folder"}, base / "coarse" / "plans.json")
    return base, gt, coarse


@pytest.fixture(scope="module")
def hc18(tmp_path_factory):
    """One HC18 image; coarse = the head mask eroded by 20 pixels; a hand-made folder (labels + dataset.json)."""
    root = sample_dataset("hc18")
    base = tmp_path_factory.mktemp("hc18")
    for sub in ("images", "coarse"):
        (base / sub).mkdir()
    shutil.copy(root / "imagesTr" / "801_HC_0000.png", base / "images")
    gt, props = io.read_label(root / "labelsTr" / "801_HC.png")
    coarse = ndimage.distance_transform_edt(gt[0] == 1) > 20
    io.write_seg(coarse[None].astype(np.uint8), base / "coarse" / "801_HC.png", props)
    shutil.copy(root / "dataset.json", base / "coarse")
    return base, gt, coarse[None].astype(np.int16)


def _refine(base, out, *extra):
    return cli.main(["refine", "-i", str(base / "images"), "-c", str(base / "coarse"), "-o", str(out),
                     "--device", "cpu", *extra])


@pytest.mark.slow
def test_refine_hc18_improves_coarse_resumes_and_overwrites(hc18, tmp_path, capsys):
    base, gt, coarse = hc18
    out = tmp_path / "out"
    seg_file = out / "801_HC.png"
    assert _refine(base, out) == 0
    seg, _ = io.read_label(seg_file)
    assert seg.shape == gt.shape and set(np.unique(seg)) <= {0, 1}
    assert _dice(gt, seg, [1]) > _dice(gt, coarse, [1]) + 0.005  # SAM adds the missing rim (0.880 -> 0.892)
    assert json.loads((out / "dataset.json").read_text())["file_ending"] == ".png"
    assert json.loads((out / "plans.json").read_text())["image_reader_writer"] == "NaturalImage2DIO"
    run = json.loads((out / "autosam_run.json").read_text())
    assert run["verb"] == "refine" and run["refine"]["prompt"] == RefineConfig().prompt and run["sam"] == "litemedsam"
    assert not list(out.glob(".tmp*"))
    capsys.readouterr()

    # resume: nothing redone
    stamp = seg_file.stat().st_mtime_ns
    assert _refine(base, out) == 0
    assert seg_file.stat().st_mtime_ns == stamp
    assert "1 case(s) already" in capsys.readouterr().err

    # probabilities asked for: the case is not finished without its npz and pkl
    assert _refine(base, out, "--save-probabilities") == 0
    with np.load(out / "801_HC.npz") as data:
        assert data.files == ["probabilities"]
        probs = data["probabilities"]
    assert probs.shape == (2, *gt.shape) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-5)
    np.testing.assert_array_equal(probs.argmax(0), io.read_label(seg_file)[0])
    with open(out / "801_HC.pkl", "rb") as f:
        assert tuple(pickle.load(f)["spacing"]) == (999.0, 1.0, 1.0)
    stamp = seg_file.stat().st_mtime_ns
    assert _refine(base, out, "--save-probabilities") == 0
    assert seg_file.stat().st_mtime_ns == stamp
    assert _refine(base, out, "--save-probabilities", "--overwrite", "--prompt", "box+points") == 0
    assert seg_file.stat().st_mtime_ns != stamp


@pytest.mark.slow
def test_refine_hippocampus_with_probabilities_feeds_nnunet_tools(hippo, tmp_path):
    base, gt, coarse = hippo
    out = tmp_path / "out"
    assert _refine(base, out, "--save-probabilities", "--fusion", "average") == 0
    seg, props = io.read_label(out / f"{HIPPO}.nii.gz")
    img_props = io.read_case(HIPPO, [base / "images" / f"{HIPPO}_0000.nii.gz"]).properties
    io.check_same_geometry(img_props, props, "refined")
    assert seg.shape == gt.shape and set(np.unique(seg)) <= {0, 1, 2}
    with np.load(out / f"{HIPPO}.npz") as data:
        assert data["probabilities"].shape == (3, *gt.shape)
    assert json.loads((out / "plans.json").read_text())["plans_name"] == "from_the_coarse_folder"
    assert _dice(gt, seg, [1, 2]) > 0.5

    # the folder is what nnU-Net's ensembling and postprocessing read
    from nnunetv2.ensembling.ensemble import ensemble_folders
    from nnunetv2.postprocessing.remove_connected_components import apply_postprocessing_to_folder

    ensemble_folders([str(out), str(out)], str(tmp_path / "ens"), save_merged_probabilities=True, num_processes=1)
    np.testing.assert_array_equal(io.read_label(tmp_path / "ens" / f"{HIPPO}.nii.gz")[0], seg)
    apply_postprocessing_to_folder(str(out), str(tmp_path / "pp"), [], [], num_processes=1)
    np.testing.assert_array_equal(io.read_label(tmp_path / "pp" / f"{HIPPO}.nii.gz")[0], seg)


@pytest.mark.slow
def test_refine_case_prompts_the_gap_slice_and_returns_a_distribution(hippo, predictor):
    base, gt, coarse = hippo
    info = io.load_dataset_json(base / "coarse")
    case = io.read_case(HIPPO, [base / "images" / f"{HIPPO}_0000.nii.gz"])
    with np.load(base / "coarse" / f"{HIPPO}.npz") as data:
        probs = data["probabilities"]
    cfg = RefineConfig(prompt="box+points+mask", fusion="gated", axis=0, margin=Margin(1.0, "mm"))
    result = refine_case(predictor, case, info, coarse, probs, cfg)
    present = [bool((coarse[s] == 2).any()) for s in range(len(coarse))]
    assert present[:3] == [True, False, True]
    assert result.sam.prompted[1].tolist() == [True, True, *present[2:]]  # label 2: slice 1 filled from 0 and 2
    assert result.sam.prompted[0].all()
    assert result.probabilities.shape == (3, *gt.shape)
    np.testing.assert_allclose(result.probabilities.sum(0), 1.0, atol=1e-5)
    np.testing.assert_array_equal(np.asarray([0, 1, 2])[result.probabilities.argmax(0)], result.segmentation)
    no_gaps = refine_case(predictor, case, info, coarse, probs, RefineConfig(axis=0, fill_gaps=False))
    assert no_gaps.sam.prompted[1].tolist() == present


def _error(capsys, *argv) -> str:
    assert cli.main(["refine", *map(str, argv), "--device", "cpu"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()  # a progress bar may precede the error
    assert [line for line in lines if "error" in line] == lines[-1:]
    assert lines[-1].startswith("autosam refine: error: ")
    return lines[-1]


def _copy_folder(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_refine_errors_are_one_line_exit_2(hippo, tmp_path, capsys):
    base, gt, coarse = hippo
    images, good = base / "images", base / "coarse"
    label = sitk.ReadImage(str(base / "labels" / f"{HIPPO}.nii.gz"))

    shape = _copy_folder(good, tmp_path / "shape")
    (shape / f"{HIPPO}.npz").unlink()
    img = sitk.GetImageFromArray(coarse[:3])
    img.SetSpacing(label.GetSpacing())
    img.SetOrigin(label.GetOrigin())
    sitk.WriteImage(img, str(shape / f"{HIPPO}.nii.gz"))
    assert "shape" in _error(capsys, "-i", images, "-c", shape, "-o", tmp_path / "o1")

    spacing = _copy_folder(good, tmp_path / "spacing")
    _write_like(coarse, label, spacing / f"{HIPPO}.nii.gz", spacing=(1.0, 1.0, 2.0))
    assert "spacing" in _error(capsys, "-i", images, "-c", spacing, "-o", tmp_path / "o2")

    missing = _copy_folder(good, tmp_path / "missing")
    (missing / f"{HIPPO}.nii.gz").unlink()
    assert "is missing" in _error(capsys, "-i", images, "-c", missing, "-o", tmp_path / "o3")

    no_json = _copy_folder(good, tmp_path / "nojson")
    (no_json / "dataset.json").unlink()
    assert "dataset.json not found" in _error(capsys, "-i", images, "-c", no_json, "-o", tmp_path / "o4")

    bad_npz = _copy_folder(good, tmp_path / "npz")
    np.savez_compressed(bad_npz / f"{HIPPO}.npz", probabilities=np.zeros((2, *coarse.shape), np.float32))
    assert "probabilities of shape" in _error(capsys, "-i", images, "-c", bad_npz, "-o", tmp_path / "o5")

    regions = json.loads((good / "dataset.json").read_text())
    regions["labels"] = {"background": 0, "whole": [1, 2], "posterior": 2}
    regions["regions_class_order"] = [1, 2]
    (tmp_path / "regions.json").write_text(json.dumps(regions))
    assert "region-based" in _error(capsys, "-i", images, "-c", good, "-o", tmp_path / "o6", "--dataset-json",
                                    tmp_path / "regions.json")

    assert "must differ" in _error(capsys, "-i", images, "-c", good, "-o", good)
    before = {f.name: f.read_bytes() for f in good.iterdir()}
    assert "--axis does not apply with --planes" in _error(capsys, "-i", images, "-c", good, "-o", tmp_path / "o7",
                                                             "--planes", "--axis", "0")
    assert not (tmp_path / "o1" / f"{HIPPO}.nii.gz").exists() and not (tmp_path / "o7").exists()
    assert {f.name: f.read_bytes() for f in good.iterdir()} == before


@pytest.mark.slow
def test_planes_average_the_three_axes(litemedsam, tmp_path):
    """``planes``: a 3D case refined along each axis and the three fused distributions averaged; the coarse map
    is a real label grown by a voxel in 3D, which every plane of SAM then trims."""
    from autosam.sam.cache import CachingPredictor

    root = sample_dataset("hippocampus")
    info = io.load_dataset_json(root)
    box = (slice(4, 28), slice(4, 43), slice(5, 27))  # the labels with a margin, (Z, Y, X)
    image = sitk.ReadImage(str(root / "imagesTr" / f"{HIPPO}_0000.nii.gz"))
    crop = sitk.GetImageFromArray(sitk.GetArrayFromImage(image)[box])
    crop.SetSpacing(image.GetSpacing())
    gt = sitk.GetArrayFromImage(sitk.ReadImage(str(root / "labelsTr" / f"{HIPPO}.nii.gz")))[box].astype(np.int16)
    sitk.WriteImage(crop, str(tmp_path / f"{HIPPO}_0000.nii.gz"))
    case = io.read_case(HIPPO, [tmp_path / f"{HIPPO}_0000.nii.gz"])
    coarse = np.zeros_like(gt)
    for v in (1, 2):
        coarse[ndimage.binary_dilation(gt == v) & (coarse == 0)] = v
    onehot = np.stack([coarse == v for v in (0, 1, 2)]).astype(np.float32)
    probs = ndimage.gaussian_filter(onehot, (0, 0.7, 0.7, 0.7))
    probs /= probs.sum(0, keepdims=True)
    predictor = CachingPredictor(litemedsam, device="cpu")
    with predictor.remembering_decodes():
        planes = refine_case(predictor, case, info, coarse, probs, RefineConfig(fusion="average", planes=True))
        axes = [refine_case(predictor, case, info, coarse, probs, RefineConfig(fusion="average", axis=a))
                for a in (0, 1, 2)]
        replaced = refine_case(predictor, case, info, coarse, probs, RefineConfig(fusion="replace", planes=True))
    mean = sum(r.probabilities for r in axes) / 3
    np.testing.assert_allclose(planes.probabilities, mean, atol=1e-5)
    np.testing.assert_array_equal(np.asarray([0, 1, 2])[mean.argmax(0)], planes.segmentation)
    axis = slicing.choose_axis(case.spacing, gt.shape)  # the run returned is the default axis's
    assert planes.sam.axis == axis and planes.sam.prompted.shape == (2, gt.shape[axis])
    scores = {"coarse": _dice(gt, coarse, [1, 2]), "planes": _dice(gt, planes.segmentation, [1, 2]),
              **{f"axis {a}": _dice(gt, r.segmentation, [1, 2]) for a, r in enumerate(axes)}}
    print(scores)
    assert scores["planes"] > scores["coarse"] + 0.02, scores
    # tuning scores planes candidates (average and replace, both in the default grid) as refine_case segments them
    from autosam.tune import Candidate, TuneCase, candidates, tune

    grid = [Candidate(None), Candidate(RefineConfig(fusion="average", fusion_options={"weight": 0.5}, planes=True)),
            Candidate(RefineConfig(fusion="replace", planes=True))]
    assert {c.name for c in grid[1:]} <= {c.name for c in candidates(prompts=("box+mask",))}
    with predictor.remembering_decodes():
        tuned = tune(predictor, [TuneCase(case, gt, coarse, probs)], info, grid, min_gain=0.0)
    assert tuned.best.config.planes and tuned.mean(grid[1].name) == pytest.approx(scores["planes"], abs=1e-6)
    assert tuned.mean(grid[2].name) == pytest.approx(_dice(gt, replaced.segmentation, [1, 2]), abs=1e-6)
    # a 2D image has one plane: the same answer as without planes
    hc18 = sample_dataset("hc18")
    img = io.read_case("801_HC", [hc18 / "imagesTr" / "801_HC_0000.png"])
    ref = io.read_label(hc18 / "labelsTr" / "801_HC.png")[0]
    coarse2d = (ndimage.distance_transform_edt(ref[0] == 1) > 20)[None].astype(np.int16)
    info2d = io.load_dataset_json(hc18)
    flat = [refine_case(predictor, img, info2d, coarse2d, None, RefineConfig(planes=p)) for p in (True, False)]
    np.testing.assert_array_equal(flat[0].probabilities, flat[1].probabilities)
