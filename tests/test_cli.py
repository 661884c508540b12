"""The command line: help on every verb, the demo's oracle path, and bad input -> one line, exit 2, no output."""
from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest

from autosam import io
from autosam.cli import VERBS, build_parser, main
from autosam.sample import sample_dataset


def test_every_option_of_every_verb_is_documented_in_its_help(capsys):
    """Each verb's --help exits 0 and names every one of its options, each with a help text of its own."""
    import argparse

    parser = build_parser()
    verbs = parser._subparsers._group_actions[0].choices
    assert sorted(verbs) == sorted(VERBS)
    for verb, sub in verbs.items():
        with pytest.raises(SystemExit) as e:
            main([verb, "--help"])
        text = capsys.readouterr().out
        assert e.value.code == 0 and text.startswith(f"usage: autosam {verb}")
        for action in sub._actions:
            if action.help == argparse.SUPPRESS or not action.option_strings:
                continue
            assert action.help, (verb, action.option_strings)
            assert action.option_strings[-1] in text, (verb, action.option_strings)


def make_hc18_subset(tmp_path, cases=("801_HC",)):
    src = sample_dataset("hc18")
    raw = tmp_path / "raw"
    (raw / "imagesTs").mkdir(parents=True)
    shutil.copy(src / "dataset.json", raw / "dataset.json")
    for c in cases:
        shutil.copy(src / "imagesTr" / f"{c}_0000.png", raw / "imagesTs")
    return raw


def test_oracle_cli_writes_nnunet_folder_and_resumes(tmp_path, capsys):
    raw = make_hc18_subset(tmp_path)
    out = tmp_path / "out"
    args = ["oracle", "-i", str(raw / "imagesTs"), "-l", str(sample_dataset("hc18") / "labelsTr"), "-o", str(out),
            "--device", "cpu"]
    assert main(args) == 0
    seg, _ = io.read_label(out / "801_HC.png")
    truth, _ = io.read_label(sample_dataset("hc18") / "labelsTr" / "801_HC.png")
    assert 2 * ((seg > 0) & (truth > 0)).sum() / ((seg > 0).sum() + (truth > 0).sum()) > 0.9
    assert (out / "dataset.json").is_file() and (out / "autosam_run.json").is_file()
    before = (out / "801_HC.png").stat().st_mtime_ns
    assert main(args) == 0
    assert "already in" in capsys.readouterr().err
    assert (out / "801_HC.png").stat().st_mtime_ns == before


@pytest.mark.parametrize("problem", ["no_dataset_json", "unknown_ending", "missing_label", "corrupt_image",
                                     "missing_checkpoint"])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, problem):
    raw = make_hc18_subset(tmp_path)
    labels = tmp_path / "labels"
    labels.mkdir()
    shutil.copy(sample_dataset("hc18") / "labelsTr" / "801_HC.png", labels)
    extra = []
    expected = {
        "no_dataset_json": "dataset.json not found",
        "unknown_ending": "unknown file ending '.jpg'",
        "missing_label": "has no label file",
        "corrupt_image": "801_HC_0000.png: not a PNG file",
        "missing_checkpoint": "checkpoint not found",
    }[problem]
    if problem == "no_dataset_json":
        (raw / "dataset.json").unlink()
    elif problem == "unknown_ending":
        (raw / "dataset.json").write_text((raw / "dataset.json").read_text().replace('".png"', '".jpg"'))
        (raw / "imagesTs" / "801_HC_0000.png").rename(raw / "imagesTs" / "801_HC_0000.jpg")
    elif problem == "missing_label":
        (labels / "801_HC.png").unlink()
    elif problem == "corrupt_image":
        (raw / "imagesTs" / "801_HC_0000.png").write_bytes(b"\x89PNG broken")
    elif problem == "missing_checkpoint":
        extra = ["--sam", "sam_vit_b", "--checkpoint", str(tmp_path / "missing.pth")]
    out = tmp_path / "out"
    code = main(["oracle", "-i", str(raw / "imagesTs"), "-l", str(labels), "-o", str(out), "--device", "cpu"] + extra)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith("autosam oracle: error: ") and expected in err[-1], err
    assert "Traceback" not in "\n".join(err)
    assert not out.exists() or not [f for f in out.iterdir() if f.suffix == ".png"]


def test_console_script_exit_code(tmp_path, venv_bin, cli_env):
    proc = subprocess.run([str(venv_bin / "autosam"), "oracle", "-i", str(tmp_path), "-l", str(tmp_path), "-o",
                           str(tmp_path / "o"), "--dataset-json", str(tmp_path / "dataset.json")],
                          capture_output=True, text=True, env=cli_env)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"autosam oracle: error: dataset.json not found: {tmp_path / 'dataset.json'}"


def test_label_map_from_probabilities_resolves_overlap_by_probability():
    from autosam.labels import labels_from_probabilities

    probs = np.zeros((2, 1, 2, 2), dtype=np.float32)
    probs[0, 0, 0, 0], probs[1, 0, 0, 0] = 0.9, 0.7
    probs[0, 0, 0, 1], probs[1, 0, 0, 1] = 0.6, 0.95
    probs[1, 0, 1, 0] = 0.4
    seg = labels_from_probabilities(probs, [1, 2])
    np.testing.assert_array_equal(seg[0], [[1, 2], [0, 0]])


def test_recorded_sam_settings_yield_to_options_given_on_the_command_line(tmp_path):
    """``autosam predict`` on a model trained by nnUNetTrainerAutoSAM: the recorded settings fill in what the
    command line left out, even where an option given equals its default."""
    from autosam.cli import build_parser, given_options
    from autosam.refine import RefineConfig
    from autosam.settings import SamSpec
    from autosam.settings.model import Settings

    recorded = Settings(SamSpec(adapter=str(tmp_path / "adapter")),
                        refine=RefineConfig(prompt="box", fusion="union", min_size=8, fusion_options={"min_iou": 0.5}))
    argv = ["predict", "-m", "m", "-i", "i", "-o", "o", "--fusion", "gated", "--min-agreement", "0.3",
            "--margin", "0mm"]
    args = build_parser().parse_args(argv)
    args.given = given_options(argv)
    assert {"fusion", "min_agreement", "margin"} <= args.given and not {"prompt", "adapter", "sam"} & args.given
    settings = recorded.merged(args)
    config = settings.refine
    assert (config.prompt, config.fusion, config.min_size, config.margin.value) == ("box", "gated", 8, 0.0)
    assert config.fusion_options == {"min_iou": 0.5, "min_agreement": 0.3}
    assert settings.sam.adapter == str(tmp_path / "adapter") and settings.sam.name == "litemedsam"
    explicit = build_parser().parse_args(argv + ["--sam", "litemedsam", "--adapter", "other"])
    explicit.given = given_options(argv + ["--sam", "litemedsam", "--adapter", "other"])
    assert recorded.merged(explicit).sam.adapter == "other"
