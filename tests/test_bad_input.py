"""The bad-input matrix: every verb refuses bad input with exit 2, exactly one line on stderr naming the file (or
option) and the problem, and leaves every input byte-identical.

Each case builds its inputs under ``tmp_path/in`` (copies of the bundled sample, then broken on purpose), hashes
every file there, runs the verb in-process and checks the three promises. Errors are found before SAM or nnU-Net
would run, so the matrix is fast.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import SimpleITK as sitk

from autosam.cli import main
from autosam.runner import LOCK_FILE
from autosam.sample import sample_dataset

HIPPO, HC18 = sample_dataset("hippocampus"), sample_dataset("hc18")
CASES = ["hippocampus_148", "hippocampus_149"]


def _hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(root.rglob("*")) if not p.is_symlink()}


def _lines(err: str) -> list[str]:
    """What a terminal shows: progress-bar redraws (``\\r``) and blank lines dropped."""
    return [line.split("\r")[-1] for line in err.split("\n") if line.split("\r")[-1].strip()]


def _dataset(root: Path, src: Path = HIPPO, cases=CASES, labels: bool = True) -> Path:
    """A raw dataset folder: dataset.json, imagesTr and (with ``labels``) labelsTr of ``cases``."""
    (root / "imagesTr").mkdir(parents=True)
    shutil.copy(src / "dataset.json", root / "dataset.json")
    info = json.loads((src / "dataset.json").read_text())
    for case in cases:
        shutil.copy(src / "imagesTr" / f"{case}_0000{info['file_ending']}", root / "imagesTr")
        if labels:
            (root / "labelsTr").mkdir(exist_ok=True)
            shutil.copy(src / "labelsTr" / f"{case}{info['file_ending']}", root / "labelsTr")
    return root


def _coarse(root: Path, data: Path) -> Path:
    """A coarse folder made of the reference labels (a perfect 'prediction') and its dataset.json."""
    shutil.copytree(data / "labelsTr", root)
    shutil.copy(data / "dataset.json", root / "dataset.json")
    return root


def _write_like(array: np.ndarray, like: Path, out: Path, spacing=None) -> None:
    ref = sitk.ReadImage(str(like))
    img = sitk.GetImageFromArray(array)
    img.SetSpacing(spacing or ref.GetSpacing())
    img.SetOrigin(ref.GetOrigin())
    img.SetDirection(ref.GetDirection())
    sitk.WriteImage(img, str(out))


def _label(data: Path, case: str = CASES[0]) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(data / "labelsTr" / f"{case}.nii.gz")))


# Each entry: id -> (setup(root) -> argv, words the one error line must contain)
Setup = Callable[[Path], list]
MATRIX: dict[str, tuple[Setup, list[str]]] = {}


def case(name: str, *words: str):
    def register(setup: Setup) -> Setup:
        MATRIX[name] = (setup, list(words))
        return setup
    return register


def _oracle(d: Path, out: Path, *extra) -> list:
    return ["oracle", "-i", d / "imagesTr", "-l", d / "labelsTr", "-o", out, "--device", "cpu", *extra]


def _refine(d: Path, coarse: Path, out: Path, *extra) -> list:
    return ["refine", "-i", d / "imagesTr", "-c", coarse, "-o", out, "--device", "cpu", *extra]


# --- oracle ------------------------------------------------------------------------------------------------------
@case("oracle: missing image folder", "image folder not found")
def _(root):
    d = _dataset(root / "d")
    return ["oracle", "-i", d / "imagesTs", "-l", d / "labelsTr", "-o", root.parent / "out", "--device", "cpu"]


@case("oracle: missing label file", "hippocampus_149", "missing")
def _(root):
    d = _dataset(root / "d")
    (d / "labelsTr" / "hippocampus_149.nii.gz").unlink()
    return _oracle(d, root.parent / "out")


@case("oracle: output is the label folder", "label folder", "must differ")
def _(root):
    d = _dataset(root / "d")
    return _oracle(d, d / "labelsTr", "--overwrite")


@case("oracle: output inside the image folder through a symlink", "image folder", "must differ")
def _(root):
    d = _dataset(root / "d")
    (root.parent / "link").symlink_to(d / "imagesTr")
    return _oracle(d, root.parent / "link" / "out")


@case("oracle: label of another shape", "hippocampus_148", "shape")
def _(root):
    d = _dataset(root / "d")
    f = d / "labelsTr" / "hippocampus_148.nii.gz"
    _write_like(_label(d)[:-2], f, f)
    return _oracle(d, root.parent / "out")


@case("oracle: label of another spacing", "hippocampus_148", "spacing")
def _(root):
    d = _dataset(root / "d")
    f = d / "labelsTr" / "hippocampus_148.nii.gz"
    _write_like(_label(d), f, f, spacing=(2.0, 1.0, 1.0))
    return _oracle(d, root.parent / "out")


@case("oracle: corrupt image file", "hippocampus_148_0000.nii.gz", "truncated or corrupt")
def _(root):
    d = _dataset(root / "d")
    (d / "imagesTr" / "hippocampus_148_0000.nii.gz").write_bytes(b"not a nifti file")
    return _oracle(d, root.parent / "out")


@case("oracle: empty image file", "hippocampus_149_0000.nii.gz", "empty file")
def _(root):
    d = _dataset(root / "d")
    (d / "imagesTr" / "hippocampus_149_0000.nii.gz").write_bytes(b"")
    return _oracle(d, root.parent / "out")


@case("oracle: dataset.json is not JSON", "dataset.json", "not valid JSON")
def _(root):
    d = _dataset(root / "d")
    (d / "dataset.json").write_text("{labels: oops")
    return _oracle(d, root.parent / "out")


@case("oracle: dataset.json without labels", "dataset.json", "labels")
def _(root):
    d = _dataset(root / "d")
    info = json.loads((d / "dataset.json").read_text())
    del info["labels"]
    (d / "dataset.json").write_text(json.dumps(info))
    return _oracle(d, root.parent / "out")


@case("oracle: a channel file is missing", "missing channel", "_0001")
def _(root):
    d = _dataset(root / "d")
    info = json.loads((d / "dataset.json").read_text())
    info["channel_names"] = {"0": "MRI", "1": "MRI2"}
    (d / "dataset.json").write_text(json.dumps(info))
    return _oracle(d, root.parent / "out")


@case("oracle: margin without a known unit", "--margin", "3cm")
def _(root):
    d = _dataset(root / "d")
    return _oracle(d, root.parent / "out", "--margin", "3cm")


@case("oracle: a margin without its unit", "--margin", "'2'", "give a number with its unit", "2mm")
def _(root):
    d = _dataset(root / "d")
    return _oracle(d, root.parent / "out", "--margin", "2")


@case("oracle: a box margin of the wrong unit kind", "--margin", "-1px")
def _(root):
    d = _dataset(root / "d")
    return _oracle(d, root.parent / "out", "--margin=-1px")


@case("oracle: unknown SAM backend", "--sam", "sam_vit_q")
def _(root):
    d = _dataset(root / "d")
    return _oracle(d, root.parent / "out", "--sam", "sam_vit_q")


@case("oracle: ViT backend without its checkpoint", "sam_vit_b", "--checkpoint")
def _(root):
    d = _dataset(root / "d")
    return _oracle(d, root.parent / "out", "--sam", "sam_vit_b")


@case("oracle: corrupt checkpoint", "ckpt.pth", "cannot read checkpoint")
def _(root):
    d = _dataset(root / "d")
    (root / "ckpt.pth").write_bytes(b"\x00garbage" * 100)
    return _oracle(d, root.parent / "out", "--checkpoint", root / "ckpt.pth")


@case("oracle: output folder held by another run", "in use by another autosam run", "PID")
def _(root):
    d = _dataset(root / "d")
    out = root.parent / "out"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    _LIVE.append(holder)
    (out / LOCK_FILE).write_text(json.dumps({"pid": holder.pid, "host": socket.gethostname()}))
    return _oracle(d, out)


# --- refine ------------------------------------------------------------------------------------------------------
@case("refine: a dataset.json file given with -d", "-d", "dataset.json", "is a file", "--dataset-json")
def _(root):
    d = _dataset(root / "d")
    return _refine(d, _coarse(root / "coarse", d), root.parent / "out", "-d", d / "dataset.json")


@case("refine: missing coarse folder", "coarse folder not found")
def _(root):
    d = _dataset(root / "d")
    return _refine(d, root / "nope", root.parent / "out")


@case("refine: coarse of another shape", "hippocampus_148.nii.gz", "shape")
def _(root):
    d = _dataset(root / "d")
    c = _coarse(root / "c", d)
    _write_like(_label(d)[:-1], c / "hippocampus_148.nii.gz", c / "hippocampus_148.nii.gz")
    return _refine(d, c, root.parent / "out")


@case("refine: coarse with an unknown label value", "hippocampus_148.nii.gz", "label value")
def _(root):
    d = _dataset(root / "d")
    c = _coarse(root / "c", d)
    lab = _label(d)
    lab[lab == 2] = 7
    _write_like(lab, c / "hippocampus_148.nii.gz", c / "hippocampus_148.nii.gz")
    return _refine(d, c, root.parent / "out")


@case("refine: probabilities of the wrong shape", "hippocampus_148.npz", "probabilities of shape")
def _(root):
    d = _dataset(root / "d")
    c = _coarse(root / "c", d)
    np.savez_compressed(c / "hippocampus_148.npz", probabilities=np.zeros((2, 3, 4, 5), np.float32))
    return _refine(d, c, root.parent / "out")


@case("refine: corrupt probabilities file", "hippocampus_148.npz", "cannot read probabilities")
def _(root):
    d = _dataset(root / "d")
    c = _coarse(root / "c", d)
    (c / "hippocampus_148.npz").write_bytes(b"PK garbage")
    return _refine(d, c, root.parent / "out")


@case("refine: output is the coarse folder", "coarse folder", "must differ")
def _(root):
    d = _dataset(root / "d")
    c = _coarse(root / "c", d)
    return _refine(d, c, c)


@case("refine: output contains the image folder", "image folder", "must differ")
def _(root):
    d = _dataset(root / "d")
    c = _coarse(root / "c", d)
    return _refine(d, c, d)


@case("refine: --min-iou with average fusion", "--min-iou", "gated")
def _(root):
    d = _dataset(root / "d")
    return _refine(d, _coarse(root / "c", d), root.parent / "out", "--fusion", "average", "--min-iou", "0.5")


@case("refine: point counts with a box-only prompt", "--positive-points", "box")
def _(root):
    d = _dataset(root / "d")
    return _refine(d, _coarse(root / "c", d), root.parent / "out", "--prompt", "box", "--positive-points", "3")


@case("refine: missing adapter folder", "adapter", "nope")
def _(root):
    d = _dataset(root / "d")
    return _refine(d, _coarse(root / "c", d), root.parent / "out", "--adapter", root / "nope")


@case("refine: corrupt adapter config", "config.json", "adapter")
def _(root):
    d = _dataset(root / "d")
    (root / "adapter").mkdir()
    (root / "adapter" / "config.json").write_text("[1, 2")
    return _refine(d, _coarse(root / "c", d), root.parent / "out", "--adapter", root / "adapter")


# --- segment -----------------------------------------------------------------------------------------------------
def _segment(images: Path, out: Path, prompter, *extra) -> list:
    return ["segment", "-i", images, "-o", out, "--prompter", prompter, "--device", "cpu", *extra]


@case("segment: unknown prompter", "prompter", "nope")
def _(root):
    d = _dataset(root / "d", HC18, ["719_HC"])
    return _segment(d / "imagesTr", root.parent / "out", "nope")


@case("segment: corrupt prompter weights", "model.pt")
def _(root):
    d = _dataset(root / "d", HC18, ["719_HC"])
    shutil.copytree(Path(sample_dataset("hc18")).parents[1] / "prompter" / "weights" / "hc18", root / "p")
    (root / "p" / "model.pt").write_bytes(b"not torch")
    return _segment(d / "imagesTr", root.parent / "out", root / "p")


@case("segment: corrupt prompter config", "config.json")
def _(root):
    d = _dataset(root / "d", HC18, ["719_HC"])
    shutil.copytree(Path(sample_dataset("hc18")).parents[1] / "prompter" / "weights" / "hc18", root / "p")
    (root / "p" / "config.json").write_text("{")
    return _segment(d / "imagesTr", root.parent / "out", root / "p")


@case("segment: images with channels the prompter does not take", "prompter", "channel")
def _(root):
    d = _dataset(root / "d", HC18, ["719_HC"])
    shutil.copy(d / "imagesTr" / "719_HC_0000.png", d / "imagesTr" / "719_HC_0001.png")
    return _segment(d / "imagesTr", root.parent / "out", "hc18")


@case("segment: output is the image folder", "image folder", "must differ")
def _(root):
    d = _dataset(root / "d", HC18, ["719_HC"])
    return _segment(d / "imagesTr", d / "imagesTr", "hc18", "--overwrite")


# --- predict -----------------------------------------------------------------------------------------------------
def _model(root: Path) -> Path:
    """A folder shaped like an nnU-Net model (plans, dataset.json, fold_0 with a checkpoint file)."""
    m = root / "Dataset900_X" / "nnUNetTrainer__nnUNetPlans__2d"
    (m / "fold_0").mkdir(parents=True)
    shutil.copy(HIPPO / "dataset.json", m / "dataset.json")
    (m / "plans.json").write_text(json.dumps({"dataset_name": "Dataset900_X", "configurations": {}}))
    return m


@case("fit: a folder that is not nnU-Net's", "not an nnU-Net model folder", "plans.json")
def _(root):
    (root / "nope").mkdir()
    return ["fit", "-m", root / "nope", "--device", "cpu"]


@case("fit: a fold without its validation probabilities", "--val --npz", "fold_1")
def _(root):
    m = _model(root)
    for fold in ("0", "1"):
        (m / f"fold_{fold}" / "validation").mkdir(parents=True)
        shutil.copy(HIPPO / "labelsTr" / "hippocampus_148.nii.gz" if fold == "0" else
                    HIPPO / "labelsTr" / "hippocampus_149.nii.gz", m / f"fold_{fold}" / "validation")
    (m / "fold_0" / "validation" / "hippocampus_148.npz").write_bytes(b"")
    return ["fit", "-m", m, "--device", "cpu"]


@case("fit: a negative --max-cases", "--max-cases", ">= 0")
def _(root):
    return ["fit", "-m", _model(root), "--max-cases", "-1"]


@case("predict: missing model folder", "model folder not found")
def _(root):
    d = _dataset(root / "d")
    return ["predict", "-m", root / "nope", "-i", d / "imagesTr", "-o", root.parent / "out", "--device", "cpu"]


@case("predict: corrupt checkpoint", "checkpoint_final.pth", "cannot load")
def _(root):
    d = _dataset(root / "d")
    m = _model(root)
    (m / "fold_0" / "checkpoint_final.pth").write_bytes(b"garbage")
    return ["predict", "-m", m, "-i", d / "imagesTr", "-o", root.parent / "out", "--device", "cpu"]


@case("predict: plans.json is not JSON", "plans.json", "not valid JSON")
def _(root):
    d = _dataset(root / "d")
    m = _model(root)
    (m / "fold_0" / "checkpoint_final.pth").write_bytes(b"garbage")
    (m / "plans.json").write_text("{")
    return ["predict", "-m", m, "-i", d / "imagesTr", "-o", root.parent / "out", "--device", "cpu"]


@case("predict: a fold without its checkpoint", "checkpoint_final.pth", "not found")
def _(root):
    d = _dataset(root / "d")
    m = _model(root)
    return ["predict", "-m", m, "-i", d / "imagesTr", "-o", root.parent / "out", "-f", "0", "--device", "cpu"]


@case("predict: negative --nnunet-processes", "--nnunet-processes", ">= 0")
def _(root):
    d = _dataset(root / "d")
    return ["predict", "-m", root / "nope", "-i", d / "imagesTr", "-o", root.parent / "out", "--device", "cpu",
            "-npp", "-1"]


# --- evaluate, report --------------------------------------------------------------------------------------------
@case("evaluate: missing prediction folder", "prediction folder not found")
def _(root):
    d = _dataset(root / "d")
    return ["evaluate", d / "labelsTr", root / "nope"]


@case("evaluate: a prediction without reference", "hippocampus_149", "no reference")
def _(root):
    d = _dataset(root / "d")
    c = _coarse(root / "c", d)
    (d / "labelsTr" / "hippocampus_149.nii.gz").unlink()
    return ["evaluate", d / "labelsTr", c, "-o", root.parent / "summary.json"]


@case("evaluate: summary exists", "summary.json", "--overwrite")
def _(root):
    d = _dataset(root / "d")
    c = _coarse(root / "c", d)
    (c / "summary.json").write_text("{}")
    return ["evaluate", d / "labelsTr", c]


@case("report: missing prediction folder", "nope")
def _(root):
    return ["report", root / "nope", "-o", root.parent / "r.html"]


# --- finetune, train-prompter ------------------------------------------------------------------------------------
@case("finetune: missing dataset folder", "dataset folder not found")
def _(root):
    return ["finetune", "-d", root / "nope", "-o", root.parent / "adapter", "--device", "cpu"]


@case("finetune: adapter folder inside the dataset", "dataset folder", "must differ")
def _(root):
    d = _dataset(root / "d", HC18, ["719_HC", "800_HC"])
    return ["finetune", "-d", d, "-o", d / "adapter", "--device", "cpu"]


@case("finetune: --planes with --axis", "--planes", "--axis")
def _(root):
    return ["finetune", "-d", _dataset(root / "d"), "-o", root.parent / "adapter", "--device", "cpu", "--planes",
            "--axis", "0"]


def _finetune(d: Path, root: Path, source: str, *extra) -> list:
    return ["finetune", "-d", d, "-o", root.parent / "adapter", "--device", "cpu", "--prompts-from", source, *extra]


@case("finetune: unknown --prompts-from kind", "--prompts-from nnunet:x", "prompter:DIR")
def _(root):
    return _finetune(_dataset(root / "d"), root, "nnunet:x")


@case("finetune: --prompts-from prompter folder missing", "--prompts-from", "nope", "neither a folder")
def _(root):
    return _finetune(_dataset(root / "d"), root, f"prompter:{root / 'nope'}")


@case("finetune: --prompts-from coarse folder missing", "--prompts-from", "coarse folder not found")
def _(root):
    return _finetune(_dataset(root / "d"), root, f"coarse:{root / 'nope'}")


@case("finetune: --prompts-from prompter with other labels", "--prompts-from", "labels", "do not match")
def _(root):
    d = _dataset(root / "d")
    shutil.copytree(Path(sample_dataset("hippocampus")).parents[1] / "prompter" / "weights" / "hippocampus", root / "p")
    config = json.loads((root / "p" / "config.json").read_text())
    config["dataset"]["labels"] = {"background": 0, "hippocampus": 1}
    (root / "p" / "config.json").write_text(json.dumps(config))
    return _finetune(d, root, f"prompter:{root / 'p'}")


@case("finetune: --prompts-from prompter with other channels", "--prompts-from", "channels", "do not match")
def _(root):
    return _finetune(_dataset(root / "d", HC18, ["719_HC", "800_HC"]), root, "prompter:hippocampus")


@case("finetune: --prompts-from coarse folder lacks a training case", "hippocampus_149", "coarse segmentation")
def _(root):
    d = _dataset(root / "d")
    c = _coarse(root / "c", d)
    (c / "hippocampus_149.nii.gz").unlink()
    return _finetune(d, root, f"coarse:{c}", "--val-fraction", "0")


@case("train-prompter: missing dataset folder", "dataset folder not found")
def _(root):
    return ["train-prompter", "-d", root / "nope", "-o", root.parent / "p"]


@case("train-prompter: validation share out of range", "--val-fraction")
def _(root):
    d = _dataset(root / "d", HC18, ["719_HC", "800_HC"])
    return ["train-prompter", "-d", d, "-o", root.parent / "p", "--val-fraction", "1.5"]


@case("train-prompter: model folder is the dataset folder", "dataset folder", "must differ")
def _(root):
    d = _dataset(root / "d", HC18, ["719_HC", "800_HC"])
    return ["train-prompter", "-d", d, "-o", d]


_LIVE: list = []


# --- study ------------------------------------------------------------------------------------------------------
def _study(d: Path, out: Path, *extra) -> list:
    return ["study", "-d", d, "-o", out, "--device", "cpu", *extra]


@case("study: train size larger than the dataset", "train size 5", "larger than")
def _(root):
    return _study(_dataset(root / "d", cases=CASES + ["hippocampus_165"]), root.parent / "out",
                  "--test-cases", "hippocampus_148", "--train-sizes", "2", "5")


@case("study: test case missing from the dataset", "hippocampus_999", "not in")
def _(root):
    return _study(_dataset(root / "d"), root.parent / "out", "--test-cases", "hippocampus_999")


@case("study: unknown method", "unknown method", "nnunet+magic")
def _(root):
    return _study(_dataset(root / "d"), root.parent / "out", "--methods", "prompter", "nnunet+magic")


@case("study: unknown lever in a method variant", "unknown lever", "magic")
def _(root):
    return _study(_dataset(root / "d"), root.parent / "out", "--methods", "prompter+sam/replace+magic")


@case("study: negative --max-objects", "--max-objects", "-1")
def _(root):
    return _study(_dataset(root / "d"), root.parent / "out", "--max-objects", "-1")


@case("study: --sign-test outside (0, 1]", "--sign-test", "(0, 1]")
def _(root):
    return _study(_dataset(root / "d"), root.parent / "out", "--sign-test", "0")


@case("study: --nnunet-spacing with two numbers", "--nnunet-spacing", "three")
def _(root):
    return _study(_dataset(root / "d"), root.parent / "out", "--nnunet-spacing", "3", "3")


@case("study: output inside the dataset", "must differ")
def _(root):
    d = _dataset(root / "d", cases=CASES + ["hippocampus_165"])
    return _study(d, d / "study", "--test-cases", "hippocampus_148", "--train-sizes", "2")


# --- file contents that used to read as a wrong answer with exit 0 (issue #34) ------------------------------------
def _truncate(f: Path) -> None:
    """Keep the first half of a file (ITK zero-fills the rest of a short .nii.gz)."""
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def _relabel(f: Path, old: int, new: int) -> None:
    """Rewrite a label file with value ``old`` changed to ``new`` (int32 NIfTI, or a uint8 PNG)."""
    if f.suffix == ".png":
        from PIL import Image

        a = np.asarray(Image.open(f)).copy()
        a[a == old] = new
        Image.fromarray(a.astype(np.uint8)).save(f)
        return
    a = sitk.GetArrayFromImage(sitk.ReadImage(str(f))).astype(np.int32)
    a[a == old] = new
    _write_like(a, f, f)


def _broken(verb: str, folder: str, breaker: Callable[[Path], None], src: Path = HIPPO, cases=CASES) -> Setup:
    """A setup: the dataset of ``cases`` and a coarse copy of its labels (folder ``c``, the 'prediction'), the first
    case's file in ``folder`` (imagesTr, labelsTr or c) broken by ``breaker``, and ``verb``'s argv."""
    def setup(root: Path) -> list:
        d = _dataset(root / "d", src, cases)
        c = _coarse(root / "c", d)
        ending = json.loads((d / "dataset.json").read_text())["file_ending"]
        first = cases[0]
        breaker({"imagesTr": d / "imagesTr" / f"{first}_0000{ending}", "labelsTr": d / "labelsTr" / f"{first}{ending}",
                 "c": c / f"{first}{ending}"}[folder])
        out = root.parent / "out"
        return {"oracle": _oracle(d, out), "refine": _refine(d, c, out),
                "evaluate": ["evaluate", d / "labelsTr", c, "-o", root.parent / "summary.json"]}[verb]
    return setup


for _verb, _folder in (("oracle", "imagesTr"), ("oracle", "labelsTr"), ("refine", "imagesTr"), ("refine", "c"),
                       ("evaluate", "labelsTr"), ("evaluate", "c")):
    _name = "hippocampus_148_0000.nii.gz" if _folder == "imagesTr" else "hippocampus_148.nii.gz"
    case(f"{_verb}: truncated .nii.gz in {_folder}", f"{_folder}/{_name}", "truncated or corrupt")(
        _broken(_verb, _folder, _truncate))
for _verb, _folder in (("oracle", "labelsTr"), ("refine", "c"), ("evaluate", "labelsTr"), ("evaluate", "c")):
    case(f"{_verb}: label value 65537 in {_folder} (int16 would wrap it to 1)", f"{_folder}/hippocampus_148.nii.gz",
         "65537", "not in", "dataset.json")(_broken(_verb, _folder, lambda f: _relabel(f, 1, 65537)))
    case(f"{_verb}: a 0/255 PNG in {_folder}", f"{_folder}/719_HC.png", "255", "not in", "dataset.json")(
        _broken(_verb, _folder, lambda f: _relabel(f, 1, 255), HC18, ["719_HC"]))


def _probabilities(poison: Callable[[np.ndarray], None]) -> Setup:
    """A refine setup whose ``hippocampus_148.npz`` holds the coarse map's one-hot probabilities, then ``poison``."""
    def setup(root: Path) -> list:
        d = _dataset(root / "d")
        c = _coarse(root / "c", d)
        probs = np.stack([_label(d) == v for v in (0, 1, 2)]).astype(np.float32)
        poison(probs)
        np.savez_compressed(c / "hippocampus_148.npz", probabilities=probs)
        return _refine(d, c, root.parent / "out")
    return setup


case("refine: NaN in the coarse probabilities", "hippocampus_148.npz", "non-finite")(
    _probabilities(lambda p: p[:, :4].fill(np.nan)))
case("refine: coarse probabilities above 1", "hippocampus_148.npz", "[0, 1]")(_probabilities(lambda p: p.__imul__(3)))
case("refine: coarse probabilities that do not sum to 1", "hippocampus_148.npz", "sum to 1")(
    _probabilities(lambda p: p[0].fill(0)))


@case("tune: a shipped prompter without -o", "ships with autosam", "-o FILE")
def _(root):
    return ["tune", "--prompter", "hc18", "-d", _dataset(root / "d", HC18, ["801_HC"]), "--device", "cpu"]


for _mode, _kind in (("RGB", "an RGB"), ("P", "a palette")):  # common exports where dataset.json lists one channel
    @case(f"segment: {_kind} PNG export", "801_HC_0000.png", "3 channel(s)")
    def _(root, mode=_mode):
        from PIL import Image

        d = _dataset(root / "d", HC18, ["801_HC"])
        image = d / "imagesTr" / "801_HC_0000.png"
        Image.open(image).convert(mode).save(image)
        return _segment(d / "imagesTr", root.parent / "out", "hc18", "--no-sam")


@case("oracle: a 4D NIfTI image", "hippocampus_148_0000.nii.gz", "2 channel(s)")
def _(root):
    d = _dataset(root / "d")
    image = d / "imagesTr" / "hippocampus_148_0000.nii.gz"
    pixels = sitk.GetArrayFromImage(sitk.ReadImage(str(image)))
    sitk.WriteImage(sitk.GetImageFromArray(np.stack([pixels, pixels]), isVector=False), str(image))
    return _oracle(d, root.parent / "out")


@case("segment: an output folder that cannot be made", "/dev/null", "cannot be made")
def _(root):
    d = _dataset(root / "d", HC18, ["801_HC"])
    return _segment(d / "imagesTr", "/dev/null/out", "hc18", "--no-sam")


@case("segment: a refused run over a folder of finished cases leaves it as it was", "800_HC_0000.png", "truncated")
def _(root):
    d = _dataset(root / "d", HC18, ["801_HC"])
    out = root.parent / "out"
    assert main([str(a) for a in _segment(d / "imagesTr", out, "hc18", "--no-sam")]) == 0
    assert (out / "autosam_run.json").is_file()
    image = d / "imagesTr" / "800_HC_0000.png"  # a new case, cut short, and other settings for the folder
    image.write_bytes((HC18 / "imagesTr" / "800_HC_0000.png").read_bytes()[:5000])
    return _segment(d / "imagesTr", out, "hc18", "--no-sam", "--save-probabilities")


@case("oracle: --device mps where there is none", "mps", "not available")
def _(root):
    return _oracle(_dataset(root / "d"), root.parent / "out", "--device", "mps")


# --- options: every numeric option is checked at parse time through autosam.settings.BOUNDS -------------------------
_OPTION_PROBES = [
    ("refine", "--weight", "5"), ("refine", "--weight", "nan"), ("refine", "--margin", "1e999mm"),
    ("refine", "--batch-size", "0"), ("refine", "--batch-size", "-1"), ("refine", "--device", "bogus"),
    ("finetune", "--lr", "-1"), ("train-prompter", "--base", "0"), ("train-prompter", "--lr", "nan"),
    ("train-prompter", "--input-size", "-8"), ("oracle", "--workers", "0"), ("tune", "--sign-test", "0"),
    ("study", "--test-fraction", "1"),
]
for _verb, _option, _value in _OPTION_PROBES:
    @case(f"{_verb}: {_option} {_value}", f"argument {_option}", repr(_value))
    def _(root, verb=_verb, option=_option, value=_value):
        d = _dataset(root / "d")
        if verb == "refine":
            return _refine(d, _coarse(root / "coarse", d), root.parent / "out", option, value)
        if verb == "oracle":
            return _oracle(d, root.parent / "out", option, value)
        return [verb, "-d", d, "-o", root.parent / "out", option, value]


def test_every_verb_that_reads_input_has_cases_in_the_matrix():
    from autosam.cli import VERBS

    verbs = {name.split(":")[0] for name in MATRIX}
    assert set(VERBS) - {"demo", "nnunet-env"} <= verbs, set(VERBS) - verbs


@pytest.mark.parametrize("name", list(MATRIX))
def test_bad_input_is_one_line_exit_2_inputs_untouched(name, tmp_path, capsys):
    setup, words = MATRIX[name]
    root = tmp_path / "in"
    root.mkdir()
    try:
        argv = [str(a) for a in setup(root)]
        before = _hashes(tmp_path)  # inputs, and any output folder a case made beforehand
        capsys.readouterr()
        try:
            code = main(argv)
        except SystemExit as e:  # argparse's own refusals
            code = e.code
        err = _lines(capsys.readouterr().err)
    finally:
        for proc in _LIVE:
            proc.kill()
            proc.wait()
        _LIVE.clear()
    assert code == 2, err
    assert len(err) == 1, err
    assert err[0].startswith(f"autosam {argv[0]}: error:") or err[0].startswith("autosam: error:"), err
    for word in words:
        assert word in err[0], (word, err[0])
    after = _hashes(tmp_path)
    assert after == before, ("a refused run wrote or changed files", sorted(set(after.items()) ^ set(before.items())))
    if argv[0] == "finetune":  # a refused training leaves no adapter folder
        assert not (tmp_path / "adapter").exists()
