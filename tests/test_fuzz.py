"""A fuzz layer on the bad-input matrix: corrupt variants of the bundled sample, drawn with a fixed seed.

Each variant breaks one file (a truncation at a random offset, flipped bytes, odd label values or dtypes, another
channel count, non-finite probabilities) and runs the verb that reads it, in-process. Every run keeps the three
promises: exit 2 with one line on stderr, or exit 0 with complete outputs; the inputs unchanged; and on refusal
nothing written anywhere under the test's folder.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from autosam.cli import main
from autosam.sample import sample_dataset

pytestmark = pytest.mark.slow

HIPPO, HC18 = sample_dataset("hippocampus"), sample_dataset("hc18")
SETS = {"hippocampus": (HIPPO, ["hippocampus_148", "hippocampus_149"], ".nii.gz"),
        "hc18": (HC18, ["800_HC", "801_HC"], ".png")}
#: how many variants of each kind; 200 in all
KINDS = {"truncate": 70, "flip": 60, "label": 25, "channels": 20, "probabilities": 25}


def _hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(root.rglob("*")) if not p.is_symlink()}


def _copy(root: Path, name: str) -> Path:
    src, cases, ending = SETS[name]
    d = root / name
    for sub in ("imagesTr", "labelsTr"):
        (d / sub).mkdir(parents=True)
    shutil.copy(src / "dataset.json", d / "dataset.json")
    for case in cases:
        shutil.copy(src / "imagesTr" / f"{case}_0000{ending}", d / "imagesTr")
        shutil.copy(src / "labelsTr" / f"{case}{ending}", d / "labelsTr")
    return d


def _segment(d: Path, out: Path, name: str) -> list:
    return ["segment", "-i", d / "imagesTr", "-o", out, "--prompter", name, "--no-sam", "--device", "cpu"]


def _evaluate(d: Path, out: Path, gt: Path) -> list:
    return ["evaluate", gt, d / "labelsTr", "-d", d, "-o", out / "summary.json"]


def _break_bytes(path: Path, rng: np.random.Generator, kind: str) -> None:
    data = bytearray(path.read_bytes())
    if kind == "truncate":
        path.write_bytes(bytes(data[: int(rng.integers(0, len(data)))]))
        return
    for at in rng.integers(0, len(data), size=int(rng.integers(1, 5))):
        data[at] ^= int(rng.integers(1, 256))
    path.write_bytes(bytes(data))


def _write_like(array: np.ndarray, like: Path, out: Path) -> None:
    ref = sitk.ReadImage(str(like))
    img = sitk.GetImageFromArray(array, isVector=array.ndim == ref.GetDimension() + 1 and array.shape[-1] <= 4)
    if img.GetDimension() == ref.GetDimension():
        img.CopyInformation(ref)
    sitk.WriteImage(img, str(out))


def variant(kind: str, rng: np.random.Generator, root: Path) -> list:
    """Inputs under ``root/in`` broken one way; the argv that reads them (outputs under ``root/out``)."""
    if kind == "probabilities":
        return _probabilities(rng, root)
    name = str(rng.choice(list(SETS)))
    src, cases, ending = SETS[name]
    d, out = _copy(root / "in", name), root / "out"
    case = str(rng.choice(cases))
    image, label = d / "imagesTr" / f"{case}_0000{ending}", d / "labelsTr" / f"{case}{ending}"
    if kind in ("truncate", "flip"):
        if rng.random() < 0.5:
            _break_bytes(image, rng, kind)
            return _segment(d, out, name)
        gt = root / "in" / "gt"
        shutil.copytree(src / "labelsTr", gt)
        _break_bytes(label, rng, kind)
        return _evaluate(d, out, gt)
    if kind == "label":
        values = sitk.GetArrayFromImage(sitk.ReadImage(str(label)))
        choices = [(np.uint8, 255), (np.uint16, 3), (np.uint16, None), (np.uint8, None)]  # what a PNG holds
        if name == "hippocampus":
            choices += [(np.int32, 65537), (np.int16, -1), (np.float32, 0.5), (np.float32, None), (np.int32, None)]
        dtype, odd = choices[int(rng.integers(0, len(choices)))]
        broken = values.astype(dtype)
        if odd is not None:
            flat = broken.reshape(-1)
            flat[rng.integers(0, flat.size, size=int(rng.integers(1, 20)))] = odd
        _write_like(broken, label, label)
        gt = root / "in" / "gt"
        shutil.copytree(src / "labelsTr", gt)
        return _evaluate(d, out, gt)
    if kind == "channels":
        pixels = sitk.GetArrayFromImage(sitk.ReadImage(str(image)))
        n = int(rng.integers(2, 4))
        if name == "hc18":  # an RGB or two-channel PNG export
            _write_like(np.repeat(pixels[..., None], n, axis=-1).astype(np.uint8), image, image)
        else:  # a 4D volume
            _write_like(np.stack([pixels] * n), image, image)
        return _segment(d, out, name)
    raise ValueError(kind)


def _probabilities(rng: np.random.Generator, root: Path) -> list:
    """refine with a coarse ``.npz`` whose probabilities hold non-finite or out-of-range values."""
    d, out = _copy(root / "in", "hippocampus"), root / "out"
    case = "hippocampus_148"
    coarse = root / "in" / "coarse"
    shutil.copytree(d / "labelsTr", coarse)
    shutil.copy(d / "dataset.json", coarse / "dataset.json")
    seg = sitk.GetArrayFromImage(sitk.ReadImage(str(coarse / f"{case}.nii.gz"))).astype(int)
    probs = np.eye(3, dtype=np.float32)[seg].transpose(3, 0, 1, 2).copy()
    flat = probs.reshape(-1)
    spots = rng.integers(0, flat.size, size=int(rng.integers(1, 50)))
    flat[spots] = [np.nan, np.inf, -np.inf, -0.5, 1.5, 7.0][int(rng.integers(0, 6))]
    np.savez_compressed(coarse / f"{case}.npz", probabilities=probs)
    return ["refine", "-i", d / "imagesTr", "-c", coarse, "-o", out, "--device", "cpu", "--engine", "torch"]


def _complete(argv: list, out: Path) -> bool:
    if argv[0] == "evaluate":
        summary = json.loads((out / "summary.json").read_text())
        return all(np.isfinite(v["Dice"]) or np.isnan(v["Dice"]) for c in summary["metric_per_case"]
                   for v in c["metrics"].values())
    images = Path(argv[argv.index("-i") + 1])
    return len(list(images.iterdir())) == len([p for p in out.iterdir() if p.name.endswith((".png", ".nii.gz"))])


def test_corrupt_variants_keep_the_three_promises(tmp_path, capsys):
    rng = np.random.default_rng(20261206)
    outcomes = {"refused": 0, "done": 0}
    for kind, count in KINDS.items():
        for i in range(count):
            root = tmp_path / f"{kind}{i}"
            argv = [str(a) for a in variant(kind, rng, root)]
            inputs, everything = _hashes(root / "in"), _hashes(root)
            capsys.readouterr()
            try:
                code = main(argv)
            except SystemExit as e:
                code = e.code
            err = [line.split("\r")[-1] for line in capsys.readouterr().err.split("\n") if line.split("\r")[-1].strip()]
            where = (kind, i, argv[0], err[-3:])
            assert _hashes(root / "in") == inputs, ("an input changed", where)
            if code == 2:
                assert len(err) == 1 and err[0].startswith(f"autosam {argv[0]}: error:"), where
                assert _hashes(root) == everything, ("a refused run wrote", where)
                outcomes["refused"] += 1
            else:
                assert code == 0 and _complete(argv, root / "out"), where
                outcomes["done"] += 1
            shutil.rmtree(root)
    assert sum(outcomes.values()) == sum(KINDS.values()) >= 200
    assert outcomes["refused"] > sum(KINDS.values()) // 2, outcomes
