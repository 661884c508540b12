"""Peak memory of ``autosam refine`` on a large synthetic CT case (issue: bounded memory at dataset scale).

Builds a 512 x 512 x 300 CT volume (int16 Hounsfield units, spacing 2.5 x 0.8 x 0.8 mm) with 5 labels (ellipsoids
of different sizes and slice ranges), writes it in nnU-Net's raw layout with a coarse prediction (the labels,
shifted by two voxels, so SAM has something to fix), then runs ``autosam refine`` at its default settings in a
child process and reports the child's peak resident memory (``ru_maxrss``), its wall time and how many slices
SAM encoded. Nothing is downloaded; everything lives in a temporary folder.

    python scripts/benchmark_memory.py            # default: 512 x 512 x 300, 5 labels
    python scripts/benchmark_memory.py --slices 120 --keep
    python scripts/benchmark_memory.py --components   # peak memory of SAM's parts alone, torch on the CPU
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def synthetic_case(shape: tuple[int, int, int], n_labels: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A CT-like volume (soft tissue around 40 HU, air outside a body ellipse) and ``n_labels`` ellipsoids."""
    rng = np.random.default_rng(seed)
    z, y, x = shape
    zz, yy, xx = np.ogrid[:z, :y, :x]
    body = ((yy - y / 2) / (0.42 * y)) ** 2 + ((xx - x / 2) / (0.46 * x)) ** 2 <= 1
    image = np.where(body, 40, -1000).astype(np.int16) + rng.normal(0, 15, shape).astype(np.int16)
    label = np.zeros(shape, np.uint8)
    for k in range(1, n_labels + 1):
        cz, cy, cx = rng.uniform(0.25, 0.75) * z, rng.uniform(0.35, 0.65) * y, rng.uniform(0.35, 0.65) * x
        rz, ry, rx = rng.uniform(0.04, 0.08) * z, rng.uniform(0.04, 0.1) * y, rng.uniform(0.04, 0.1) * x
        inside = ((zz - cz) / rz) ** 2 + ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        label[inside] = k
        image[inside] = 40 + 60 * k  # each organ its own brightness, as contrast-enhanced CT
    return image, label


def write_raw(root: Path, image: np.ndarray, label: np.ndarray, spacing: tuple[float, float, float]) -> None:
    import SimpleITK as sitk

    n_labels = int(label.max())
    for folder in ("imagesTs", "coarse"):
        (root / folder).mkdir(parents=True)
    dataset = {"channel_names": {"0": "CT"}, "labels": {"background": 0, **{f"organ{k}": k for k in
                                                                              range(1, n_labels + 1)}},
               "numTraining": 0, "file_ending": ".nii.gz"}
    (root / "dataset.json").write_text(json.dumps(dataset))
    (root / "coarse" / "dataset.json").write_text(json.dumps(dataset))
    for array, path in ((image, root / "imagesTs" / "big_0000.nii.gz"),
                        (np.roll(label, 2, axis=2), root / "coarse" / "big.nii.gz")):
        img = sitk.GetImageFromArray(array)
        img.SetSpacing(spacing[::-1])  # SimpleITK is (x, y, z)
        sitk.WriteImage(img, str(path))


COMPONENT = """
import resource, sys, numpy as np, torch
from autosam.sam import SamPredictor, SamPrompt, build_sam
part, n = sys.argv[1], int(sys.argv[2])
predictor = SamPredictor(build_sam("litemedsam"), device="cpu", batch_size=n, engine="torch")
with torch.inference_mode():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if part == "encoder":
        predictor.set_slices([np.zeros((1, 256, 256), np.float32)] * n)
    else:
        predictor.embeddings, predictor.sizes = torch.zeros(n, 256, 64, 64), [(512, 512)] * n
        box, mask = np.array([100, 100, 200, 220], np.float32), np.zeros((512, 512), np.float32)
        predictor.predict([SamPrompt(i, box=box, mask=mask) for i in range(n)], batch_size=n)
    print(before / 1024 ** 2, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2)
"""


def components(threads: int) -> None:
    """Peak memory of LiteMedSAM's torch encoder per batch of slices and of its decoder per batch of box+mask
    prompts (512 x 512 slices), each in a fresh process."""
    print("| part (torch, CPU) | batch | peak RSS (GB) | above the loaded model (GB) |")
    print("|---|---|---|---|")
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    for part, batches in (("encoder", (4, 16)), ("decoder", (16, 64))):
        for n in batches:
            out = subprocess.run([sys.executable, "-c", COMPONENT, part, str(n)], env=env, capture_output=True,
                                 text=True, check=True).stdout.split()
            base, peak = float(out[-2]), float(out[-1])
            print(f"| {part} | {n} {'slices' if part == 'encoder' else 'prompts'} | {peak:.2f} | {peak - base:.2f} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=300, help="slices of the volume (default 300)")
    parser.add_argument("--size", type=int, default=512, help="in-plane size (default 512)")
    parser.add_argument("--labels", type=int, default=5, help="foreground labels (default 5)")
    parser.add_argument("--keep", action="store_true", help="also save probabilities (--save-probabilities)")
    parser.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS of the child (default 2)")
    parser.add_argument("--components", action="store_true",
                        help="instead: peak memory of the torch encoder and decoder alone, per batch size")
    args = parser.parse_args()
    if args.components:
        components(args.threads)
        return 0

    shape = (args.slices, args.size, args.size)
    with tempfile.TemporaryDirectory(prefix="autosam_mem_") as tmp:
        root = Path(tmp)
        image, label = synthetic_case(shape, args.labels)
        prompted = int(np.any(label > 0, axis=(1, 2)).sum())
        write_raw(root, image, label, (2.5, 0.8, 0.8))
        del image, label
        cmd = [sys.executable, "-m", "autosam.cli", "refine", "-i", str(root / "imagesTs"), "-c",
               str(root / "coarse"), "-o", str(root / "out"), "--device", "cpu"]
        if args.keep:
            cmd.append("--save-probabilities")
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
        start = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        if proc.returncode != 0:
            print(proc.stderr[-2000:], file=sys.stderr)
            return proc.returncode
        peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024 ** 2  # KiB on Linux
    volume_mb = np.prod(shape) * 4 / 1024 ** 2
    print("| case | labels | slices with labels | probabilities saved | threads | peak RSS (GB) | wall (s) |")
    print("|---|---|---|---|---|---|---|")
    print(f"| {' x '.join(map(str, shape[::-1]))} CT (one float32 volume = {volume_mb:.0f} MB) | {args.labels} | "
          f"{prompted} | {'yes' if args.keep else 'no'} | {args.threads} | {peak_gb:.2f} | {seconds:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
