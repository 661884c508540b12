"""End-to-end ``autosam segment`` with SAM: the release before the speed work against the current code.

Usage:
    python scripts/benchmark_segment.py [--data ../shared/data/hippocampus] [--cases 10] [--threads 2] [--repeats 1]

Both variants run ``python -m autosam.cli segment --prompter hippocampus --prompt box+mask --fusion gated``
(the refine options given explicitly, so a change of defaults does not change the comparison) on the same
``--cases`` hippocampus cases, the first of the shipped prompter's validation split (``splits.json`` "val"; never
its training cases), each in a fresh process with ``OMP_NUM_THREADS=--threads``:

- ``before``: git commit ``--before`` (default aa69750, the release before the speed work) exported with
  ``git archive`` into the work folder and imported from there (``PYTHONPATH``), torch on the CPU;
- ``current``: this checkout, its default engine (OpenVINO on the CPU when installed; the encoder's one-time
  export is cached beforehand, outside the timing).

Wall time is the whole command (start-up, model loading, reading, writing). With ``--repeats`` the variants
alternate (before, current, before, ...) and each variant's fastest run counts. Dice per label is the mean over
the cases against ``labelsTr`` (:func:`autosam.evaluation.evaluate_folder`). Prints a markdown table last.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPLITS = ROOT / "autosam" / "prompter" / "weights" / "hippocampus" / "splits.json"
REFINE = ["--prompt", "box+mask", "--fusion", "gated", "--margin", "0mm", "--min-size", "4"]


def validation_cases(data: Path, n: int, ending: str) -> list[str]:
    """The first ``n`` cases of the shipped prompter's validation split that ``data`` holds."""
    split = json.loads(SPLITS.read_text())
    val = [c for c in split["val"] if (data / "imagesTr" / f"{c}_0000{ending}").is_file()]
    if set(val) & set(split["train"]):
        raise SystemExit(f"{SPLITS}: validation and training cases overlap")
    if len(val) < n:
        raise SystemExit(f"only {len(val)} validation cases in {data}, asked for {n}")
    return val[:n]


def image_folder(data: Path, cases: list[str], ending: str, out: Path) -> Path:
    """``out/imagesTr`` linking the chosen cases' images, with the dataset's ``dataset.json`` beside it."""
    images = out / "imagesTr"
    images.mkdir(parents=True)
    shutil.copyfile(data / "dataset.json", out / "dataset.json")
    for c in cases:
        (images / f"{c}_0000{ending}").symlink_to((data / "imagesTr" / f"{c}_0000{ending}").resolve())
    return images


def export_commit(commit: str, dest: Path) -> Path:
    """The tree of ``commit`` of this checkout, extracted into ``dest``."""
    dest.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest


def variant_env(code: Path, threads: int) -> dict:
    env = dict(os.environ, PYTHONPATH=str(code), OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    env.pop("AUTOSAM_PIPELINE", None)
    return env


def check_import(code: Path, env: dict, cwd: Path) -> None:
    """The variant's process imports autosam from ``code`` (not the editable install of this checkout)."""
    found = subprocess.run([sys.executable, "-c", "import autosam; print(autosam.__file__)"], env=env, cwd=cwd,
                           capture_output=True, text=True, check=True).stdout.strip()
    if Path(found).resolve().parent.parent != code.resolve():
        raise SystemExit(f"the variant from {code} imports autosam from {found}")


def warm_runtime(env: dict, cwd: Path) -> None:
    """The current code's encoder runtime exported once (cached), so no variant's timing includes the export."""
    code = ("import numpy as np; from autosam.sam import SamPredictor, build_sam; "
            "p = SamPredictor(build_sam('litemedsam'), device='cpu'); p.set_slices([np.zeros((1, 32, 32), 'f4')]); "
            "print(p.engine)")
    engine = subprocess.run([sys.executable, "-c", code], env=env, cwd=cwd, capture_output=True, text=True,
                            check=True).stdout.strip().splitlines()[-1]
    print(f"current code: encoder engine {engine}", file=sys.stderr)


def run_segment(images: Path, out: Path, env: dict, cwd: Path) -> float:
    cmd = [sys.executable, "-m", "autosam.cli", "segment", "-i", str(images), "-o", str(out),
           "--prompter", "hippocampus", "--device", "cpu", *REFINE]
    start = time.perf_counter()
    done = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "hippocampus")
    ap.add_argument("--cases", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--before", default="aa69750", help="commit of the release before the speed work")
    ap.add_argument("--work", type=Path, default=None, help="work folder (default: a new temporary one)")
    args = ap.parse_args()

    sys.path.insert(0, str(ROOT))
    from autosam import evaluation, io

    info = io.load_dataset_json(args.data)
    cases = validation_cases(args.data, args.cases, info.file_ending)
    work = args.work or Path(tempfile.mkdtemp(prefix="benchmark_segment_"))
    images = image_folder(args.data, cases, info.file_ending, work / "data")
    codes = {"before": export_commit(args.before, work / "before"), "current": ROOT}
    envs = {name: variant_env(code, args.threads) for name, code in codes.items()}
    for name, code in codes.items():
        check_import(code, envs[name], work)
    warm_runtime(envs["current"], work)
    print(f"{len(cases)} case(s): {', '.join(cases)}; {args.threads} thread(s); work folder {work}", file=sys.stderr)

    seconds: dict[str, list[float]] = {name: [] for name in codes}
    loads: list[float] = []
    for r in range(args.repeats):
        for name in codes:
            out = work / f"{name}-{r}"
            t = run_segment(images, out, envs[name], work)
            seconds[name].append(t)
            loads.append(os.getloadavg()[0])
            print(f"{name} run {r + 1}: {t:.1f} s, load {loads[-1]:.1f}", file=sys.stderr)

    names = {v: k for k, v in info.labels.items()}
    dice = {}
    for name in codes:
        summary = evaluation.evaluate_folder(args.data / "labelsTr", work / f"{name}-0", info)
        dice[name] = {v: evaluation.label_mean(summary, v)["Dice"] for v in info.foreground}
    best = {name: min(t) for name, t in seconds.items()}
    labels = " | ".join(f"Dice {names[v]}" for v in info.foreground)
    print(f"\n{len(cases)} hippocampus validation cases, {args.threads} thread(s), {args.repeats} run(s) per variant "
          f"(fastest counts), 1-min load average after the runs {min(loads):.1f}-{max(loads):.1f}\n")
    print(f"| variant | s total | s/case | speed-up | {labels} | Dice change |")
    print("|---|---:|---:|---:|" + "---:|" * len(info.foreground) + "---|")
    for name in codes:
        change = ", ".join(f"{dice[name][v] - dice['before'][v]:+.4f}" for v in info.foreground)
        print(f"| {name} ({args.before if name == 'before' else 'this checkout'}) | {best[name]:.1f} | "
              f"{best[name] / len(cases):.2f} | {best['before'] / best[name]:.2f}x | "
              + " | ".join(f"{dice[name][v]:.4f}" for v in info.foreground) + f" | {change} |")


if __name__ == "__main__":
    main()
