"""Adaptation on automatic prompts (autosam.adapt.crossfit, ``finetune --prompts-from``) on the bundled
hippocampus sample: a tiny prompter trained on it, cross-fitted fold prompters, and an adapter trained on both."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from autosam import io
from autosam.adapt import read_config
from autosam.adapt.crossfit import (FOLDS_DIR, RECORD, crossfit_coarse, fold_assignment, parse_source,
                                    read_record)
from autosam.adapt.data import box_target
from autosam.adapt.train import load_training_set
from autosam.cli import main
from autosam.errors import AutosamError
from autosam.prompter.train import SPLITS, TrainOptions, train_prompter
from autosam.prompts import bounding_box
from autosam.sample import sample_dataset
from autosam.sam import build_sam

HIPPO = sample_dataset("hippocampus")
CASES = sorted(io.list_cases(HIPPO / "imagesTr", ".nii.gz", 1))


@pytest.fixture(scope="module")
def prompter(tmp_path_factory) -> Path:
    """A prompter trained (20 steps) on the sample itself, so every sample case is in its splits.json. Its maps are
    still speckle, but about a quarter of the components of a 2-step one, which SAM's tuning prompts one by one."""
    folder = tmp_path_factory.mktemp("prompter") / "p"
    train_prompter(HIPPO, folder, TrainOptions(epochs=2, iterations=10, batch_size=4, input_size=64, base=8,
                                               depth=3, val_fraction=0.2), log=lambda m: None)
    return folder


def _label(case: str) -> np.ndarray:
    return io.read_label(HIPPO / "labelsTr" / f"{case}.nii.gz")[0]


# --- pure pieces ---------------------------------------------------------------------------------------------------


def test_fold_assignment_covers_every_case_once_and_keeps_subjects_together():
    cases = ["a_1", "a_2", "b_1", "c_1", "c_2", "d_1", "e_1"]
    folds = fold_assignment(cases, 3, seed=0, subject_pattern=r"^([^_]+)_")
    assert len(folds) == 3 and sorted(sum(folds, [])) == sorted(cases)
    for part in folds:
        for other in folds:
            if other is not part:
                assert not {c[0] for c in part} & {c[0] for c in other}
    assert len(fold_assignment(["x_1", "y_1"], 5)) == 2  # fewer subjects than folds: fewer folds
    with pytest.raises(AutosamError, match="two subjects"):
        fold_assignment(["a_1", "a_2"], 3, subject_pattern=r"^([^_]+)_")


def test_prompt_sources_are_parsed_or_refused():
    assert str(parse_source("prompter:hippocampus")) == "prompter:hippocampus"
    assert parse_source("coarse:/x/y").path == "/x/y"
    for bad in ("nnunet:/x", "prompter:", "hippocampus"):
        with pytest.raises(AutosamError, match="--prompts-from"):
            parse_source(bad)


def test_box_target_is_the_reference_components_the_box_reaches():
    ref = np.zeros((30, 30), dtype=bool)
    ref[2:8, 2:8] = True  # reached by the box
    ref[20:25, 20:25] = True  # not reached
    target = box_target(ref, np.array([6, 6, 12, 12], dtype=np.float32))
    assert target[2:8, 2:8].all() and target.sum() == 36  # whole, also outside the box
    assert not box_target(ref, np.array([12, 12, 16, 16], dtype=np.float32)).any()  # a false positive: nothing


def test_automatic_samples_from_a_coarse_map():
    """A perfect coarse map gives one automatic sample per label component, with the component's box as prompt and
    the component as target; a false-positive blob on a slice without labels gets an empty target."""
    info = io.load_dataset_json(HIPPO)
    case = CASES[0]
    coarse = _label(case).astype(np.int16)
    empty = int(np.nonzero(~coarse.reshape(coarse.shape[0], -1).any(1))[0][0])  # a slice with no label (axis 0)
    coarse[empty, 10:16, 10:16] = 1
    data = load_training_set(HIPPO, info, [case], 0, 0, "test", coarse={case: (coarse, None)})
    auto = [s for s in data.samples if s.box is not None]
    plain = [s for s in data.samples if s.box is None]
    hit = [s for s in auto if s.mask.any()]
    assert plain and len(hit) == len(plain)
    for s in hit:
        assert np.array_equal(s.box, bounding_box(s.mask))
    for s in auto:  # no target: only where the reference lacks the class (the blob, or a gap filled in)
        assert s.mask.any() or not (data.slices[s.slice].label == s.label).any()
    fp = [s for s in auto if data.slices[s.slice].index == empty]
    assert len(fp) == 1 and not fp[0].mask.any() and np.array_equal(fp[0].box, [10, 10, 15, 15])


def test_planes_train_on_the_slices_of_all_three_axes():
    """``planes``: the labelled and prompted slices of every axis, the default axis's first and unchanged, each
    automatic sample pointing at a slice of its own axis whose label holds its target."""
    info = io.load_dataset_json(HIPPO)
    case = CASES[0]
    coarse = _label(case).astype(np.int16)
    one = load_training_set(HIPPO, info, [case], None, 0, "test", coarse={case: (coarse, None)})
    three = load_training_set(HIPPO, info, [case], None, 0, "test", coarse={case: (coarse, None)}, planes=True)
    first = one.slices[0].axis
    assert {s.axis for s in one.slices} == {first} and {s.axis for s in three.slices} == {0, 1, 2}
    assert three.slices[0].axis == first
    assert [(s.axis, s.index) for s in three.slices[: len(one.slices)]] == [(s.axis, s.index) for s in one.slices]
    for ax in (0, 1, 2):  # every slice with foreground along each axis
        fg = (_label(case) > 0).any(axis=tuple(a for a in (0, 1, 2) if a != ax))
        assert sorted(s.index for s in three.slices if s.axis == ax) == list(np.nonzero(fg)[0])
    auto = [s for s in three.samples if s.box is not None]
    assert {three.slices[s.slice].axis for s in auto} == {0, 1, 2}
    for s in auto:
        sl = three.slices[s.slice]
        assert s.mask.shape == sl.label.shape and (not s.mask.any() or (sl.label[s.mask] == s.label).all())
    assert len(three.samples) > 2 * len(one.samples)
    train = load_training_set(HIPPO, info, [case], None, 0, "test", planes=True)  # label samples only
    assert {s.axis for s in train.slices} == {0, 1, 2}
    with pytest.raises(AutosamError, match="--planes"):
        from autosam.adapt.train import finetune

        finetune(HIPPO, Path("/nonexistent/never_written"), axis=0, planes=True)
    assert not Path("/nonexistent/never_written").exists()


def test_automatic_box_mask_samples_carry_the_coarse_probabilities_as_mask_prompt():
    """``box+mask`` automatic prompts: each sample's mask prompt is the coarse probabilities as logits, inside its
    box only (a label map without probabilities gives the same from itself); the decoder gets it (the loss on the
    same batch differs without it)."""
    import torch

    from autosam.adapt.config import PromptNoise
    from autosam.adapt.data import auto_prompts
    from autosam.adapt.train import batch_loss

    info = io.load_dataset_json(HIPPO)
    case = CASES[0]
    coarse = _label(case).astype(np.int16)
    probs = np.stack([coarse == v for v in (0, 1, 2)]).astype(np.float32)
    data = load_training_set(HIPPO, info, [case], 0, 4, "test", coarse={case: (coarse, probs)},
                             prompts=auto_prompts("box+mask"))
    auto = [i for i, s in enumerate(data.samples) if s.box is not None]
    assert auto and all(data.samples[i].prompt_mask is not None for i in auto)
    for i in auto:
        s = data.samples[i]
        x0, y0, x1, y1 = (int(v) for v in s.box)
        inside = np.zeros_like(s.mask)
        inside[y0 : y1 + 1, x0 : x1 + 1] = True
        class_map = data.slices[s.slice].label == s.label
        assert np.array_equal(s.prompt_mask > 0, class_map & inside)
    hard = load_training_set(HIPPO, info, [case], 0, 4, "test", coarse={case: (coarse, None)},
                             prompts=auto_prompts("box+mask"))  # a label map alone: its own mask, as refine does
    assert [np.array_equal(h.prompt_mask, s.prompt_mask) for h, s in zip(hard.samples, data.samples)
            if s.box is not None] == [True] * len(auto)
    with pytest.raises(AutosamError, match="box, box\\+mask"):
        auto_prompts("points")

    model = build_sam("litemedsam").eval()
    idx = auto[:4]
    rng = lambda: np.random.default_rng(0)
    with torch.no_grad():
        with_mask = batch_loss(model, data, idx, "box", PromptNoise(), rng(), "dice_bce", torch.device("cpu"))[0]
        for i in idx:
            data.samples[i].prompt_mask = None
        box_only = batch_loss(model, data, idx, "box", PromptNoise(), rng(), "dice_bce", torch.device("cpu"))[0]
    assert not torch.allclose(with_mask, box_only)


# --- cross-fitting -------------------------------------------------------------------------------------------------


def test_crossfitted_prompts_never_come_from_a_prompter_that_trained_on_the_case(prompter, tmp_path):
    assert set(json.loads((prompter / SPLITS).read_text())["train"]) & set(CASES)
    logs: list[str] = []
    coarse = crossfit_coarse(HIPPO, CASES, prompter, tmp_path, folds=3, epochs=1, log=logs.append)
    record = read_record(tmp_path)
    assert record["use"] == "crossfit" and len(record["folds"]) == 3
    prompted = []
    for fold in record["folds"]:
        split = json.loads((tmp_path / fold["folder"] / SPLITS).read_text())
        assert fold["trained_on"] == split["train"]
        assert not (set(split["train"]) | set(split["val"])) & set(fold["prompted"])
        prompted += fold["prompted"]
    assert sorted(prompted) == CASES and sorted(coarse) == CASES
    for case, (seg, probs) in coarse.items():
        assert seg.shape == _label(case).shape and probs.shape == (3, *seg.shape)
    weights = tmp_path / FOLDS_DIR / "fold_0" / "model.pt"
    stamp = weights.stat().st_mtime_ns
    logs.clear()
    crossfit_coarse(HIPPO, CASES, prompter, tmp_path, folds=3, epochs=1, probabilities=False, log=logs.append)
    assert weights.stat().st_mtime_ns == stamp and sum("reusing" in m for m in logs) == 3


def test_a_prompter_that_never_saw_the_cases_is_used_directly(tmp_path):
    """The shipped hippocampus prompter left the bundled sample out of its training."""
    coarse = crossfit_coarse(HIPPO, CASES[:2], "hippocampus", tmp_path, log=lambda m: None)
    record = read_record(tmp_path)
    assert record["use"] == "direct" and not (tmp_path / FOLDS_DIR).exists()
    assert not set(record["folds"][0]["trained_on"]) & set(CASES[:2]) and sorted(coarse) == CASES[:2]


@pytest.mark.slow
def test_finetune_on_crossfitted_prompts_writes_a_loadable_adapter(prompter, tmp_path, capsys):
    out = tmp_path / "adapter"
    argv = ["finetune", "-d", str(HIPPO), "-o", str(out), "--prompts-from", f"prompter:{prompter}", "--folds", "2",
            "--fold-epochs", "1", "--epochs", "1", "--iterations", "2", "--batch-size", "4", "--max-slices", "3",
            "--val-fraction", "0", "--device", "cpu", "--cache-dir", str(tmp_path / "cache"), "--tune-cases", "1"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "cross-fitting 2 fold prompters" in captured.err and "automatic)" in captured.err
    # the prompter's first validation case was left out of training, then tuned the adapter's default
    held_out = json.loads((prompter / "splits.json").read_text())["val"][:1]
    assert "validation case(s) are left out of training" in captured.err
    tuned = json.loads((out / "autosam_sam.json").read_text())
    assert tuned["tuning"]["validation_cases"] == held_out and tuned["adapter"] == str(out.resolve())
    config = read_config(out)
    assert config.prompts_from["source"] == f"prompter:{prompter}" and config.prompts_from["use"] == "crossfit"
    assert config.prompts_from["prompts"]["strategy"] == "box+mask"  # the default: refine's built-in prompt
    record = json.loads((out / RECORD).read_text())
    assert sorted(sum((f["prompted"] for f in record["folds"]), [])) == sorted(set(CASES) - set(held_out))
    assert build_sam("litemedsam", adapter=out) is not None
    samples = [line for line in captured.err.splitlines() if "training samples" in line][0]
    assert " 0 automatic" not in samples
