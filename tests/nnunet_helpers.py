"""Helpers shared by the nnU-Net command-line tests."""
from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np


def run_cmd(venv_bin: Path, env: dict, *cmd) -> str:
    """Run a console script of this venv; fail the test with its output tails if it exits non-zero."""
    done = subprocess.run([str(venv_bin / cmd[0]), *map(str, cmd[1:])], env=env, capture_output=True, text=True)
    assert done.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return done.stdout + done.stderr


def write_slab(image: Path, label: Path, image_out: Path, label_out: Path, n_slices: int) -> None:
    """Write ``n_slices`` slices of a 3D case, centred on its labelled slices (less SAM work on CPU)."""
    import SimpleITK as sitk

    img, lab = sitk.ReadImage(str(image)), sitk.ReadImage(str(label))
    z = np.nonzero(sitk.GetArrayFromImage(lab).any(axis=(1, 2)))[0]
    start = int((z.min() + z.max()) // 2 - n_slices // 2)
    sitk.WriteImage(img[:, :, start : start + n_slices], str(image_out))
    sitk.WriteImage(lab[:, :, start : start + n_slices], str(label_out))
