"""glibc's allocator and torch on the CPU: the default against no fresh ``mmap`` for large tensors, side by side.

glibc serves every allocation above its mmap threshold (at most 32 MB) with a fresh ``mmap`` and gives it back
on ``free``, so a tensor of that size is page-faulted in again each time it is made (a LiteMedSAM activation of
256 x 256 x 256 float32 is 64 MB). ``MALLOC_MMAP_MAX_=0`` serves them from the heap instead, and
``MALLOC_TRIM_THRESHOLD_`` keeps up to that much freed memory for the next tensor.

Each workload runs in a fresh process per variant, in the order A B B A; each variant's better run counts:

- ``encoder``: LiteMedSAM's image encoder in torch eager (``--engine torch``), batch 1, slices/s (best of 3);
- ``prompter``: ``autosam train-prompter`` on the bundled hippocampus sample, 1 epoch x 20 batches, wall seconds;
- ``nnunet``: nnU-Net 3d_fullres with autosam's short CPU trainer on 4 sample cases, 2 epochs x 10 iterations;
  nnU-Net's own "Epoch time" of the second epoch (the first pays start-up).

Peak RSS is the process's (``nnunet``: its largest child, nnU-Net's training process).

    python scripts/benchmark_allocator.py --threads 2 [--workloads encoder prompter nnunet]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: variant -> environment added to the child's
VARIANTS = {"glibc default": {}, "no mmap": {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(1 << 30)}}


def child(workload: str, threads: int) -> dict:
    """One workload in this (fresh) process: its figure and this process's peak RSS (GB)."""
    import torch

    torch.set_num_threads(threads)
    sys.path.insert(0, str(ROOT))
    from autosam.sample import sample_dataset

    sample = sample_dataset("hippocampus")
    if workload == "encoder":
        from autosam.sam.registry import build_sam

        model = build_sam("litemedsam").eval()
        x = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(0))
        times = []
        with torch.inference_mode():
            model.embed(x)
            for _ in range(3):
                start = time.perf_counter()
                model.embed(x)
                times.append(time.perf_counter() - start)
        figure, rss = 1 / min(times), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    elif workload == "prompter":
        from autosam.cli import main

        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            code = main(["train-prompter", "-d", str(sample), "-o", str(Path(tmp) / "p"), "--epochs", "1",
                         "--iterations", "20", "--no-tune", "--device", "cpu"])
            figure = time.perf_counter() - start
        if code != 0:
            raise SystemExit(f"train-prompter failed ({code})")
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    else:
        from autosam.nnunet.train import Schedule, train_nnunet

        cases = sorted(f.name[: -len(".nii.gz")] for f in (sample / "labelsTr").iterdir())[:4]
        with tempfile.TemporaryDirectory() as tmp:
            model = train_nnunet(sample, cases, Path(tmp), 951, Schedule(
                configuration="3d_fullres", epochs=2, iterations=10, val_iterations=1, threads=threads),
                log=lambda line: None, name="Alloc")
            text = "".join(p.read_text() for p in (model / "fold_all").glob("training_log_*.txt"))
        epochs = [float(t) for t in re.findall(r"Epoch time: ([0-9.]+) s", text)]
        if len(epochs) < 2:
            raise SystemExit("nnU-Net's log holds no second epoch time")
        figure, rss = epochs[1], resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {"figure": figure, "rss_gb": rss / 1024 ** 2}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workloads", nargs="+", default=["encoder", "prompter", "nnunet"],
                    choices=["encoder", "prompter", "nnunet"])
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.threads)))
        return

    names = list(VARIANTS)
    rows = []
    for workload in args.workloads:
        runs: dict[str, list[dict]] = {n: [] for n in names}
        for name in names + names[::-1]:
            env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads),
                       **VARIANTS[name])
            done = subprocess.run([sys.executable, __file__, "--child", workload, "--threads", str(args.threads)],
                                  env=env, capture_output=True, text=True)
            if done.returncode != 0:
                raise SystemExit(f"{workload} ({name}) failed:\n{done.stderr[-2000:]}")
            runs[name].append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(f"{workload} {name}: {runs[name][-1]}, load {os.getloadavg()[0]:.1f}", file=sys.stderr, flush=True)
        higher = workload == "encoder"  # slices/s: higher is better; seconds: lower is better
        best = {n: (max if higher else min)(r["figure"] for r in runs[n]) for n in names}
        for n in names:
            gain = best[n] / best[names[0]] if higher else best[names[0]] / best[n]
            rows.append((workload, n, best[n], gain, max(r["rss_gb"] for r in runs[n])))
    units = {"encoder": "slices/s", "prompter": "s (1 epoch x 20 batches)", "nnunet": "s per epoch (10 iterations)"}
    print(f"\n{args.threads} threads, CPU, 1-minute load at the end {os.getloadavg()[0]:.1f}\n")
    print("| workload | figure | allocator | value | speed-up | peak RSS (GB) |")
    print("|---|---|---|---:|---:|---:|")
    for workload, n, value, gain, rss in rows:
        print(f"| {workload} | {units[workload]} | {n} | {value:.2f} | {gain:.2f}x | {rss:.2f} |")


if __name__ == "__main__":
    main()
