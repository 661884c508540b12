"""The learned prompter: training (loss, checkpoint, resume), shipped weights, the segment verb, AutoSAM mode."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from autosam import cli, io
from autosam.prompter import Prompter, shipped_prompters
from autosam.labels import dice_per_label
from autosam.prompter.infer import WEIGHTS_ROOT
from autosam.sample import sample_dataset
from autosam.splits import split_by_subject

HIPPO, HC18 = sample_dataset("hippocampus"), sample_dataset("hc18")


def run_cli(argv, capsys):
    rc = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("autosam ")]


def folder_dice(pred: Path, dataset: Path, cases) -> dict[str, list[float]]:
    info = io.load_dataset_json(dataset)
    out = {}
    for case in cases:
        seg = io.read_label(pred / f"{case}{info.file_ending}")[0]
        ref = io.read_label(dataset / "labelsTr" / f"{case}{info.file_ending}")[0]
        out[case] = dice_per_label(seg, ref, info.foreground)
    return out


@pytest.mark.slow
def test_train_lowers_loss_writes_checkpoint_and_resumes(tmp_path, capsys):
    model = tmp_path / "model"
    common = ["train-prompter", "-d", HIPPO, "-o", model, "--input-size", 32, "--base", 8, "--iterations", 10,
              "--batch-size", 8, "--seed", 3, "--no-tune"]  # tuning: the next test
    torch.manual_seed(0)
    rc, out, err = run_cli(common + ["--epochs", 1], capsys)
    assert rc == 0, err
    first = json.loads((model / "log.json").read_text())
    assert [e["epoch"] for e in first] == [1]
    assert torch.load(model / "checkpoint.pt", weights_only=False)["epoch"] == 1

    rc, out, err = run_cli(common + ["--epochs", 2], capsys)  # same folder: continues after epoch 1
    assert rc == 0, err
    assert "resuming after epoch 1" in err
    history = json.loads((model / "log.json").read_text())
    assert [e["epoch"] for e in history] == [1, 2]
    assert history[0] == first[0]
    assert history[1]["loss"] < history[0]["loss"]

    # the split is deterministic, by case, and recorded
    info = io.load_dataset_json(HIPPO)
    cases = list(io.list_cases(HIPPO / "imagesTr", info.file_ending, 1))
    split = json.loads((model / "splits.json").read_text())
    assert split == split_by_subject(cases, 0.2, 3, None)
    assert sorted(split["train"] + split["val"]) == sorted(cases) and split["val"]

    # the final weights load from config.json alone and give per-class probabilities on the case grid
    prompter = Prompter.load(model)
    config = json.loads((model / "config.json").read_text())
    assert config["preprocessing"]["input_size"] == 32 and config["dataset"]["channel_names"] == ["MRI"]
    assert config["validation"]["dice"]["mean"] >= 0
    case_id = split["val"][0]
    case = io.read_case(case_id, io.list_cases(HIPPO / "imagesTr", ".nii.gz", 1)[case_id])
    seg, probs = prompter.coarse(case)
    assert seg.shape == case.image.shape[1:] and probs.shape == (3, *seg.shape)
    assert np.allclose(probs.sum(0), 1, atol=1e-4)

    # other network settings in the same folder are refused instead of silently mixing checkpoints
    rc, out, err = run_cli(common[:-3] + ["--seed", 4, "--epochs", 3], capsys)
    assert rc == 2 and "other settings (seed" in err


@pytest.mark.slow
def test_train_prompter_tunes_its_sam_default_and_sets_a_stale_one_aside(tmp_path, capsys):
    """After training, SAM's default is tuned on the validation case (the HC18 sample: one slice a case); new
    weights trained with --no-tune set the record tuned for the earlier ones aside instead of using it."""
    model = tmp_path / "model"
    common = ["train-prompter", "-d", HC18, "-o", model, "--input-size", 32, "--base", 8, "--iterations", 2,
              "--batch-size", 2, "--seed", 1]
    rc, out, err = run_cli(common + ["--epochs", 1], capsys)
    assert rc == 0, err
    split = json.loads((model / "splits.json").read_text())
    tuned = json.loads((model / "autosam_sam.json").read_text())
    assert tuned["tuning"]["validation_cases"] == split["val"] and len(tuned["tuning"]["candidates"]) > 100
    assert f"tuned on {len(split['val'])} validation case(s)" in err
    rc, out, err = run_cli(common + ["--epochs", 2, "--no-tune"], capsys)
    assert rc == 0 and "resuming after epoch 1" in err, err
    assert not (model / "autosam_sam.json").exists() and "tuned for the earlier weights" in err
    assert json.loads((model / "autosam_sam.earlier-weights.json").read_text()) == tuned
    # a rerun that trains no new epoch leaves a record where it is (put back here by hand)
    (model / "autosam_sam.earlier-weights.json").replace(model / "autosam_sam.json")
    rc, out, err = run_cli(common + ["--epochs", 2, "--no-tune"], capsys)
    assert rc == 0 and "earlier weights" not in err and (model / "autosam_sam.json").is_file(), err


def test_exclude_keeps_cases_out(tmp_path, capsys):
    excluded = tmp_path / "exclude.txt"
    excluded.write_text("hippocampus_148\nhippocampus_149  # sample\n")
    rc, _, err = run_cli(["train-prompter", "-d", HIPPO, "-o", tmp_path / "m", "--input-size", 32, "--base", 8,
                          "--epochs", 1, "--iterations", 1, "--batch-size", 2, "--no-tune", "--exclude", excluded],
                         capsys)
    assert rc == 0, err
    split = json.loads((tmp_path / "m" / "splits.json").read_text())
    assert not {"hippocampus_148", "hippocampus_149"} & set(split["train"] + split["val"])
    assert len(split["train"] + split["val"]) == 4


def test_train_prompter_takes_a_dataset_folder(tmp_path, capsys):
    rc, _, err = run_cli(["train-prompter", "-d", HIPPO / "dataset.json", "-o", tmp_path / "m"], capsys)
    assert rc == 2 and "-d takes an nnU-Net raw dataset folder" in err
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("name", ["hippocampus", "hc18"])
def test_shipped_prompter_reproduces_its_sample_dice(name, tmp_path, capsys):
    assert name in shipped_prompters()
    folder = WEIGHTS_ROOT / name
    assert sum(f.stat().st_size for f in folder.iterdir()) < 5e6
    config = json.loads((folder / "config.json").read_text())
    recorded = config["sample"]["per_case"]
    # never trained or validated on the bundled sample
    split = json.loads((folder / "splits.json").read_text())
    assert not set(recorded) & set(split["train"] + split["val"])
    rc, _, err = run_cli(["segment", "-i", sample_dataset(name) / "imagesTr", "-o", tmp_path / "out",
                          "--prompter", name, "--no-sam"], capsys)
    assert rc == 0, err
    dice = folder_dice(tmp_path / "out", sample_dataset(name), recorded)
    for case, values in dice.items():
        assert values == pytest.approx(list(recorded[case].values()), abs=0.01), case
    assert config["validation"]["dice"]["mean"] > 0.75  # a useful prompter, measured on held-out cases


@pytest.mark.parametrize("what", ["labels", "channels", "channel-files"])
def test_mismatching_dataset_is_refused(what, tmp_path, capsys):
    images = tmp_path / "imagesTs"
    images.mkdir()
    shutil.copy(HC18 / "imagesTr" / "719_HC_0000.png", images)
    raw = json.loads((HC18 / "dataset.json").read_text())
    if what == "labels":
        raw["labels"] = {"background": 0, "head": 1, "brain": 2}
    elif what == "channels":
        raw["channel_names"] = {"0": "MRI"}
    else:  # no dataset.json: the prompter's own is used, and a second channel file is one too many
        shutil.copy(HC18 / "imagesTr" / "719_HC_0000.png", images / "719_HC_0001.png")
        raw = None
    if raw is not None:
        (tmp_path / "dataset.json").write_text(json.dumps(raw))
    rc, out, err = run_cli(["segment", "-i", images, "-o", tmp_path / "out", "--prompter", "hc18"], capsys)
    assert rc == 2
    lines = error_lines(err)
    assert len(lines) == 1 and "prompter 'hc18'" in lines[0], err
    assert not (tmp_path / "out").exists()  # refused before anything is written


def test_other_dataset_refused_for_shipped_prompter(tmp_path, capsys):
    rc, _, err = run_cli(["segment", "-i", HC18 / "imagesTr", "-o", tmp_path / "o", "--prompter", "hippocampus"],
                         capsys)
    assert rc == 2
    assert error_lines(err) == [line for line in err.splitlines() if line.strip()]
    assert "do not match prompter 'hippocampus'" in err
    rc, _, err = run_cli(["segment", "-i", HC18 / "imagesTr", "-o", tmp_path / "o", "--prompter", "nope"], capsys)
    assert rc == 2 and "shipped: hc18, hippocampus" in err


@pytest.mark.slow
def test_segment_with_sam_writes_nnunet_output_and_resumes(tmp_path, capsys):
    images = tmp_path / "imagesTs"
    images.mkdir()
    shutil.copy(HC18 / "imagesTr" / "800_HC_0000.png", images)
    out = tmp_path / "out"
    argv = ["segment", "-i", images, "-o", out, "--prompter", "hc18", "--save-probabilities", "--device", "cpu"]
    rc, _, err = run_cli(argv, capsys)
    assert rc == 0, err
    for f in ("800_HC.png", "800_HC.npz", "800_HC.pkl", "dataset.json", "plans.json", "autosam_run.json"):
        assert (out / f).is_file(), f
    probs = np.load(out / "800_HC.npz")["probabilities"]
    seg = io.read_label(out / "800_HC.png")[0]
    assert probs.shape == (2, *seg.shape) and np.array_equal(probs.argmax(0), seg)
    assert folder_dice(out, HC18, ["800_HC"])["800_HC"][0] > 0.85
    mtime = (out / "800_HC.png").stat().st_mtime_ns
    rc, _, err = run_cli(argv, capsys)
    assert rc == 0 and "1 case(s) already in" in err
    assert (out / "800_HC.png").stat().st_mtime_ns == mtime


@pytest.mark.slow
def test_embedding_mode_trains_through_the_frozen_decoder(tmp_path, capsys, litemedsam):
    model = tmp_path / "autosam_mode"
    rc, _, err = run_cli(["train-prompter", "-d", HC18, "-o", model, "--mode", "embedding", "--input-size", 32,
                          "--base", 8, "--epochs", 2, "--iterations", 3, "--batch-size", 2, "--val-fraction", 0,
                          "--max-embedding-slices", 2], capsys)
    assert rc == 0, err
    assert (model / "embedding_cache" / "index.json").is_file()  # SAM embeddings of the training slices
    prompter = Prompter.load(model)
    assert prompter.mode == "embedding"
    assert prompter.net.project.weight.abs().sum() > 0  # the dense-embedding head learned (it starts at zero)
    case = io.read_case("801_HC", io.list_cases(HC18 / "imagesTr", ".png", 1)["801_HC"])
    with torch.inference_mode():
        dense = prompter.net(torch.zeros(1, 1, 32, 32))
    assert dense.shape == (1, 1, 256, 64, 64)  # SAM's dense prompt embedding, one per class
    seg, probs = prompter.coarse(case, sam=litemedsam)
    assert seg.shape == case.image.shape[1:] and probs.shape == (2, *seg.shape)
    assert set(np.unique(seg)) <= {0, 1}


@pytest.mark.slow
def test_training_is_bit_identical_for_a_seed_and_after_a_resume(tmp_path, monkeypatch):
    """The same --seed gives the same weights bit for bit on the CPU (the augmentations' numpy and Python
    generators seeded per epoch), and a training stopped after its first epoch and resumed ends where an
    uninterrupted one does."""
    from autosam.prompter import train as T
    from autosam.sample import sample_dataset

    def train(folder):
        T.train_prompter(sample_dataset("hc18"), folder, T.TrainOptions(epochs=2, iterations=2, device="cpu"),
                         log=lambda m: None)
        return torch.load(folder / "model.pt", map_location="cpu", weights_only=True)

    one, two = train(tmp_path / "one"), train(tmp_path / "two")
    assert all(torch.equal(one[k], two[k]) for k in one)

    epoch = T._train_epoch

    def stop_at_the_second(prompter, optimizer, data, info, opts, e, *rest):
        if e == 1:
            raise KeyboardInterrupt
        return epoch(prompter, optimizer, data, info, opts, e, *rest)

    monkeypatch.setattr(T, "_train_epoch", stop_at_the_second)
    with pytest.raises(KeyboardInterrupt):
        train(tmp_path / "resumed")
    monkeypatch.setattr(T, "_train_epoch", epoch)
    resumed = train(tmp_path / "resumed")
    assert all(torch.equal(one[k], resumed[k]) for k in one)
