"""Speed-up of Ray workers on one machine: the same run in one process, on 1 Ray worker and on N Ray workers.

Usage:
    python scripts/benchmark_ray.py [--data autosam/sample/hc18] [--copies 4] [--workers 1 2] [--verb segment]

The images of ``--data``'s imagesTr are linked ``--copies`` times under new case ids (a folder of more cases; the
work per case is real). Each variant runs ``autosam VERB`` through the command line in this process, one torch
thread per worker (and in the single process), into its own folder; wall times include starting the local Ray
instance and loading the models in each worker. The outputs of every variant are checked to be the same files as
the single process's. Prints a markdown table last.

Verbs: ``segment`` (the shipped prompter of the dataset's name, then LiteMedSAM; the fully automatic path) or
``oracle`` (LiteMedSAM with boxes from the reference labels).
"""
from __future__ import annotations

import os

os.environ["OMP_NUM_THREADS"] = "1"  # before torch: one thread in this process, as in each worker
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # the local Ray instance on 127.0.0.1
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import argparse  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402


def linked_copies(root: Path, folder: str, ending: str, copies: int, out: Path) -> None:
    """``out`` with every ``<case>...<ending>`` of ``root/folder`` linked ``copies`` times as ``<case>x<k>...``."""
    out.mkdir(parents=True)
    for f in sorted((root / folder).iterdir()):
        if not f.name.endswith(ending):
            continue
        stem = f.name[: -len(ending)]
        case, channel = (stem[:-5], stem[-5:]) if folder == "imagesTr" else (stem, "")
        for k in range(copies):
            (out / f"{case}x{k}{channel}{ending}").symlink_to(f.resolve())


def same_files(one: Path, other: Path) -> bool:
    names = sorted(p.name for p in one.iterdir())
    if names != sorted(p.name for p in other.iterdir()):
        return False
    return all((one / n).read_bytes() == (other / n).read_bytes() for n in names)


def _encode(repeats: int) -> float:
    """Seconds for ``repeats`` LiteMedSAM encodings of one 400x500 slice, one thread (in a fresh process)."""
    import numpy as np
    import torch

    from autosam.sam import SamPredictor, build_sam

    torch.set_num_threads(1)
    predictor = SamPredictor(build_sam("litemedsam"), device="cpu", batch_size=1)
    slices = [np.random.default_rng(0).random((3, 400, 500), dtype=np.float32)]
    predictor.set_slices(slices)  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        predictor.set_slices(slices)
    return time.perf_counter() - start


def encoder_control(workers: list[int], repeats: int = 6) -> list[tuple[int, float]]:
    """The machine's own limit, without Ray or autosam's runner: SAM's encoder in N plain processes at once;
    returns ``(N, throughput relative to one process)``."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    rows = []
    for n in sorted(set([1, *workers])):
        with ctx.Pool(n) as pool:
            seconds = max(pool.map(_encode, [repeats] * n))
        rows.append((n, n * repeats / seconds))
    return [(n, rate / rows[0][1]) for n, rate in rows]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="autosam/sample/hc18", help="nnU-Net raw folder (dataset.json, imagesTr)")
    ap.add_argument("--copies", type=int, default=4, help="links per image (default 4: 12 hc18 cases)")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="Ray worker counts (default 1 2)")
    ap.add_argument("--verb", choices=("segment", "oracle"), default="segment")
    args = ap.parse_args()

    import torch

    from autosam import io
    from autosam.cli import main as autosam

    torch.set_num_threads(1)
    root = Path(args.data)
    info = io.load_dataset_json(root)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        images = tmp / "raw" / "imagesTs"
        linked_copies(root, "imagesTr", info.file_ending, args.copies, images)
        (tmp / "raw" / "dataset.json").symlink_to((root / "dataset.json").resolve())
        n_cases = len(io.list_cases(images, info.file_ending, info.num_channels))
        if args.verb == "segment":
            base = ["segment", "-i", str(images), "--prompter", root.name, "--device", "cpu"]
        else:
            labels = tmp / "labels"
            linked_copies(root, "labelsTr", info.file_ending, args.copies, labels)
            base = ["oracle", "-i", str(images), "-l", str(labels), "--device", "cpu"]
        variants = [("one process (no Ray)", [])] + [
            (f"Ray, {n} worker{'s' if n > 1 else ''}", ["--ray", "--workers", str(n), "--cpus-per-worker", "1"])
            for n in args.workers]
        for name, extra in variants:
            out = tmp / f"out{len(rows)}"
            start = time.perf_counter()
            code = autosam(base + ["-o", str(out)] + extra)
            seconds = time.perf_counter() - start
            if code != 0:
                raise SystemExit(f"{name}: autosam exited {code}")
            same = same_files(tmp / "out0", out)
            rows.append((name, seconds, same))
            print(f"{name}: {seconds:.1f} s for {n_cases} cases, same files as one process: {same}", flush=True)
    import ray

    start = time.perf_counter()  # what a run pays for Ray itself: starting and stopping a local instance
    ray.init(address="local", num_cpus=max(args.workers), include_dashboard=False, log_to_driver=False,
             logging_level="ERROR")
    ray.shutdown()
    overhead = time.perf_counter() - start
    single = rows[0][1]
    ray_one = next((s for name, s, _ in rows if name == "Ray, 1 worker"), None)
    print(f"\n`{args.verb}` on {n_cases} {root.name} cases ({args.copies} links per image), one torch thread per "
          f"worker, {os.cpu_count()} cores; wall time includes starting Ray and loading the models in each worker "
          f"(starting and stopping a local Ray instance alone: {overhead:.1f} s)\n")
    print("| run | wall time | s/case | speed-up over one process | over 1 Ray worker | same files |")
    print("|---|---|---|---|---|---|")
    for name, seconds, same in rows:
        over_ray = f"{ray_one / seconds:.2f}x" if ray_one and name.startswith("Ray") else "-"
        print(f"| {name} | {seconds:.1f} s | {seconds / n_cases:.2f} | {single / seconds:.2f}x | {over_ray} | "
              f"{'yes' if same else 'NO'} |")
    print("\nControl, no Ray: LiteMedSAM's encoder in N plain processes at once, one thread each\n")
    print("| processes | encoder throughput relative to 1 process |")
    print("|---|---|")
    for n, relative in encoder_control(args.workers):
        print(f"| {n} | {relative:.2f}x |")


if __name__ == "__main__":
    main()
