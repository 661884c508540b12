"""nnU-Net + autosam end to end: a real (tiny) nnU-Net model, ``nnUNetv2_predict``, ``autosam refine`` and
``autosam predict``, then nnU-Net's own evaluation, ensembling and postprocessing reading autosam's folder unchanged.

The model (fixture ``trained_hippo_2d`` in conftest.py) is trained for two iterations: its masks are noise, which is
what the plumbing needs (foreground to prompt SAM with), not what a score needs. The input is one sample case cut
to a few slices, so SAM encodes at most that many slices per run.
"""
from __future__ import annotations

import json
import math
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest

from autosam import io
from autosam.nnunet import inference as nnunet
from autosam.cli import main
from autosam.sample import sample_dataset
from nnunet_helpers import run_cmd, write_slab

N_SLICES = 6


@pytest.fixture(scope="module")
def cut_case(trained_hippo_2d, tmp_path_factory):
    """The validation case cut to N_SLICES slices through its labels: (imagesTs folder, labels folder, case id)."""
    case = trained_hippo_2d["val_case"]
    raw = trained_hippo_2d["raw"]
    root = tmp_path_factory.mktemp("cut")
    (root / "imagesTs").mkdir()
    (root / "labelsTs").mkdir()
    write_slab(raw / "imagesTr" / f"{case}_0000.nii.gz", raw / "labelsTr" / f"{case}.nii.gz",
               root / "imagesTs" / f"{case}_0000.nii.gz", root / "labelsTs" / f"{case}.nii.gz", N_SLICES)
    return root / "imagesTs", root / "labelsTs", case


def load_npz(path: Path) -> np.ndarray:
    with np.load(path) as data:
        return data["probabilities"]


@pytest.mark.slow
def test_nnunet_then_sam_through_nnunet_tools(trained_hippo_2d, cut_case, decoder_adapter, venv_bin, tmp_path,
                                              capsys):
    env, model = trained_hippo_2d["env"], trained_hippo_2d["model"]
    adapter = str(decoder_adapter[0])
    images, labels, case = cut_case
    # --min-size: the noise-level model marks ~150 specks on these slices; SAM decodes only the ~20 larger ones
    # --fusion replace: the default (auto: average on these probabilities) blends SAM with this barely trained
    # model's map, and the test must see SAM's voxels reach the output
    # --adapter: an adapted SAM (a decoder adapter from autosam finetune) in both verbs
    sam_args = ["--device", "cpu", "--save-probabilities", "--min-size", "40", "--fusion", "replace",
                "--adapter", adapter]

    # 1. nnU-Net's own prediction with probabilities, then `autosam refine` on that folder
    coarse = tmp_path / "nnunet"
    run_cmd(venv_bin, env, "nnUNetv2_predict", "-i", images, "-o", coarse, "-d", "900", "-c", "2d", "-tr",
            "nnUNetTrainer_autosam_Short", "-f", "0", "--save_probabilities", "-device", "cpu", "-npp", "1",
            "-nps", "1")
    for f in (f"{case}.nii.gz", f"{case}.npz", f"{case}.pkl", "plans.json", "dataset.json"):
        assert (coarse / f).is_file(), f
    refined = tmp_path / "refined"
    assert main(["refine", "-i", str(images), "-c", str(coarse), "-o", str(refined), *sam_args]) == 0

    # 2. `autosam predict`: the same two steps, nnU-Net's softmax passed in memory
    predicted = tmp_path / "predicted"
    out = run_cmd(venv_bin, env, "autosam", "predict", "-m", model, "-i", images, "-o", predicted, "-f", "0",
                  *sam_args)
    assert "predicted and refined 1 case(s)" in out
    for f in (f"{case}.nii.gz", f"{case}.npz", f"{case}.pkl", "plans.json", "dataset.json", "autosam_run.json"):
        assert (predicted / f).is_file(), f
    assert not list(predicted.glob(".tmp*"))
    record = json.loads((predicted / "autosam_run.json").read_text())
    assert record["verb"] == "predict" and record["folds"] == ["0"] and record["adapter"] == adapter

    seg_nn, _ = io.read_label(coarse / f"{case}.nii.gz")
    seg_refined, _ = io.read_label(refined / f"{case}.nii.gz")
    seg_pred, props = io.read_label(predicted / f"{case}.nii.gz")
    image_props = io.read_case(case, [images / f"{case}_0000.nii.gz"]).properties
    io.check_same_geometry(image_props, props, "predict output")
    probs = load_npz(predicted / f"{case}.npz")
    assert probs.shape == (3, *seg_pred.shape) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=0), 1.0, atol=1e-4)
    assert np.array_equal(probs.argmax(axis=0), seg_pred)
    # in memory and through nnU-Net's files: the same answer
    assert (seg_pred == seg_refined).mean() > 0.999
    np.testing.assert_allclose(probs, load_npz(refined / f"{case}.npz"), atol=1e-3)
    # SAM changed nnU-Net's (noise) masks: the untrained model marks foreground on some slice, so SAM was prompted
    assert seg_nn.any(), "the tiny nnU-Net model predicted no foreground; SAM was not exercised"
    assert (seg_pred != seg_nn).any()
    with open(predicted / f"{case}.pkl", "rb") as f:
        assert "sitk_stuff" in pickle.load(f)

    # resume: a second run skips the finished case and rewrites nothing
    stamp = (predicted / f"{case}.nii.gz").stat().st_mtime_ns
    capsys.readouterr()
    assert main(["predict", "-m", str(model), "-i", str(images), "-o", str(predicted), *sam_args]) == 0
    assert "1 case(s) already in" in capsys.readouterr().err
    assert (predicted / f"{case}.nii.gz").stat().st_mtime_ns == stamp

    # 3. nnU-Net's tools on autosam's folder as written
    summary = tmp_path / "summary.json"
    run_cmd(venv_bin, env, "nnUNetv2_evaluate_folder", labels, predicted, "-djfile", predicted / "dataset.json",
            "-pfile", predicted / "plans.json", "-o", summary, "-np", "1")
    scores = json.loads(summary.read_text())
    assert all(math.isfinite(scores["mean"][k]["Dice"]) for k in ("1", "2"))

    ensembled = tmp_path / "ensemble"
    run_cmd(venv_bin, env, "nnUNetv2_ensemble", "-i", predicted, coarse, "-o", ensembled, "-np", "1")
    seg_ens, _ = io.read_label(ensembled / f"{case}.nii.gz")
    mean = (probs + load_npz(coarse / f"{case}.npz")) / 2
    assert (seg_ens == mean.argmax(axis=0)).mean() > 0.999

    # a valid postprocessing.pkl as nnU-Net's determine_postprocessing writes it: keep each label's largest component
    from nnunetv2.postprocessing.remove_connected_components import remove_all_but_largest_component_from_segmentation

    pp_pkl = tmp_path / "postprocessing.pkl"
    with open(pp_pkl, "wb") as f:
        pickle.dump(([remove_all_but_largest_component_from_segmentation], [{"labels_or_regions": [1, 2]}]), f)
    postprocessed = tmp_path / "postprocessed"
    run_cmd(venv_bin, env, "nnUNetv2_apply_postprocessing", "-i", predicted, "-o", postprocessed, "-pp_pkl_file",
            pp_pkl, "-np", "1")
    seg_pp, _ = io.read_label(postprocessed / f"{case}.nii.gz")
    expected = remove_all_but_largest_component_from_segmentation(seg_pred.astype(np.uint8), [1, 2])
    assert np.array_equal(seg_pp, expected)

    # autosam's own evaluation (NSD, HD95) of the same folder agrees with nnU-Net's Dice
    assert main(["evaluate", str(labels), str(predicted), "-o", str(tmp_path / "autosam_summary.json")]) == 0
    ours = json.loads((tmp_path / "autosam_summary.json").read_text())
    for k in ("1", "2"):
        assert ours["mean"][k]["Dice"] == pytest.approx(scores["mean"][k]["Dice"], abs=1e-6)
        assert 0.0 <= ours["mean"][k]["NSD"] <= 1.0 or math.isnan(ours["mean"][k]["NSD"])


@pytest.mark.slow
def test_coarse_prediction_matches_nnunet_predictor(trained_hippo_2d, cut_case):
    """autosam.nnunet.inference in process: the model folder's folds, and nnU-Net's answer in the image's geometry."""
    model = trained_hippo_2d["model"]
    images, _, case_id = cut_case
    assert nnunet.available_folds(model) == ["0"]
    predictor = nnunet.load_nnunet_predictor(model, device="cpu")
    case = io.read_case(case_id, [images / f"{case_id}_0000.nii.gz"], nnunet.model_reader_writer(predictor))
    seg, probs = nnunet.coarse_prediction(predictor, case)
    assert seg.shape == case.image.shape[1:] and probs.shape == (3, *seg.shape)
    assert np.array_equal(probs.argmax(axis=0), seg)
    # nnU-Net's single-array path (its own preprocessing adapter) gives the same probabilities
    seg2, probs2 = predictor.predict_single_npy_array(case.image, dict(case.properties), None, None, True)
    np.testing.assert_allclose(probs, probs2, atol=1e-5)
    assert np.array_equal(seg, seg2)


def test_pipelined_predict_preprocesses_ahead_and_writes_what_the_plain_loop_writes(trained_hippo_2d, tmp_path,
                                                                                    monkeypatch):
    """``predict``'s pipelined loop runs nnU-Net's preprocessing of each case in the read-ahead thread, beside the
    case before it, or in worker processes (``-npp``), and writes the same files as the plain loop (nnU-Net alone:
    no SAM, so it is quick)."""
    import threading

    from autosam.pipelines.predict import predict_folder

    model, raw = trained_hippo_2d["model"], trained_hippo_2d["raw"]
    images = tmp_path / "images"
    images.mkdir()
    cases = sorted(f.name[: -len("_0000.nii.gz")] for f in (raw / "imagesTr").iterdir())[:3]
    for c in cases:
        (images / f"{c}_0000.nii.gz").symlink_to(raw / "imagesTr" / f"{c}_0000.nii.gz")
    info = nnunet.model_dataset_info(model)
    threads = []
    real = nnunet.preprocess_case

    def noting_thread(predictor, case):  # the real preprocessing; only notes which thread ran it
        threads.append(threading.current_thread().name)
        return real(predictor, case)

    monkeypatch.setattr(nnunet, "preprocess_case", noting_thread)
    pools = []
    monkeypatch.setattr(nnunet.PreprocessPool, "close", lambda self, _real=nnunet.PreprocessPool.close:
                        (pools.append(self), _real(self)))
    written = {}
    for variant, pipeline, processes in (("plain", False, 0), ("thread", True, 0), ("processes", True, 2)):
        threads.clear()
        out = tmp_path / variant
        predict_folder(images, out, lambda: nnunet.load_nnunet_predictor(model, device="cpu"), info, None, None,
                       plans=model / "plans.json", save_probabilities=True, pipeline=pipeline, quiet=True,
                       nnunet_processes=processes)
        # -npp 2: nnU-Net's preprocessing ran in the pool's processes (neither here nor in the read-ahead thread),
        # and the pool was shut down at the end of the loop
        assert threads == {"plain": ["MainThread"] * 3, "thread": ["autosam-read"] * 3, "processes": []}[variant]
        assert len(pools) == (variant == "processes")
        written[variant] = {c: (io.read_label(out / f"{c}.nii.gz")[0], load_npz(out / f"{c}.npz")) for c in cases}
    for variant in ("thread", "processes"):
        for c in cases:
            assert np.array_equal(written[variant][c][0], written["plain"][c][0])
            np.testing.assert_array_equal(written[variant][c][1], written["plain"][c][1])


def test_predict_runs_nnunet_alone_on_the_cpu_in_the_plain_loop(monkeypatch):
    """nnU-Net alone on the CPU: no read-ahead or background writes beside its threads (they cost 20% in
    scripts/benchmark_predict.py); with SAM the runner's default; AUTOSAM_PIPELINE decides either way."""
    from autosam.pipelines.predict import pipelined
    from autosam.refine import RefineConfig
    from autosam.runner import CaseRunner

    monkeypatch.delenv("AUTOSAM_PIPELINE", raising=False)
    assert pipelined(None, "cpu") is False and pipelined(RefineConfig(), "cpu") is None
    assert pipelined(None, "cpu", processes=2) is None  # -npp asked for: the loop that runs it
    info = io.load_dataset_json(sample_dataset("hippocampus"))
    assert CaseRunner("out", info, pipeline=pipelined(RefineConfig(), "cpu")).pipeline
    monkeypatch.setenv("AUTOSAM_PIPELINE", "1")
    assert pipelined(None, "cpu") is None and CaseRunner("out", info, pipeline=pipelined(None, "cpu")).pipeline


def fake_model(root: Path, folds=("0",), checkpoint=True) -> Path:
    """A folder shaped like nnU-Net's model folder (no weights): enough for the checks that run before loading."""

    model = root / "Dataset900_Hippo" / "nnUNetTrainer__nnUNetPlans__2d"
    model.mkdir(parents=True)
    shutil.copy(sample_dataset("hippocampus") / "dataset.json", model / "dataset.json")
    (model / "plans.json").write_text("{}")
    for f in folds:
        (model / f"fold_{f}").mkdir()
        if checkpoint:
            (model / f"fold_{f}" / "checkpoint_final.pth").write_bytes(b"")
    return model


@pytest.mark.parametrize("setup, extra, message", [
    ("missing", [], "nnU-Net model folder not found"),
    ("no_plans", [], "plans.json is missing"),
    ("no_folds", [], "no fold_* folders"),
    ("fold", ["-f", "3"], "fold_3 not found"),
    ("fold", ["-f", "x"], "fold must be a number or 'all'"),
    ("no_checkpoint", ["-f", "0"], "checkpoint_final.pth not found"),
    ("fold", ["-chk", "checkpoint_best.pth"], "no fold_* folder holds checkpoint_best.pth"),
])
def test_predict_bad_model_folder_is_one_line_error(tmp_path, capsys, setup, extra, message):
    if setup == "missing":
        model = tmp_path / "nope"
    elif setup == "no_plans":
        model = fake_model(tmp_path)
        (model / "plans.json").unlink()
    elif setup == "no_folds":
        model = fake_model(tmp_path, folds=())
    else:
        model = fake_model(tmp_path, checkpoint=setup != "no_checkpoint")
    images = tmp_path / "imagesTs"
    images.mkdir()
    out = tmp_path / "out"
    code = main(["predict", "-m", str(model), "-i", str(images), "-o", str(out), "--device", "cpu", *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("autosam predict: error:") and message in err[0]
    assert not out.exists()
