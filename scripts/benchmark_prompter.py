#!/usr/bin/env python
"""Benchmark: fully automatic segmentation with the shipped prompters (no nnU-Net model), CPU.

Not a test. For each dataset (default hippocampus and hc18 of --data), the first --cases cases of the shipped
prompter's own validation split (``autosam/prompter/weights/<name>/splits.json``: never trained on, never the
bundled sample or its subjects) are segmented by

- the prompter alone (its coarse map, as ``autosam segment --no-sam``),
- prompter + LiteMedSAM with box prompts, once per fusion strategy (as ``autosam segment --fusion F``),
- LiteMedSAM with boxes from the reference labels (the oracle ceiling, as ``autosam oracle``),

and scored with Dice and NSD (1 mm tolerance, :func:`autosam.evaluation.case_metrics`). The SAM encoder's
embeddings are shared between the runs of a case (the encoder never sees the prompt); each run is charged the
encoder time of the slices it prompts as if it had run alone, so seconds per case are those of a standalone run
(wall clock on the machine that runs it; noisy on a shared CPU). Per-case results are kept in --work, so an
interrupted run resumes; the markdown table is printed at the end and written to --work/table.md.

    OMP_NUM_THREADS=1 python scripts/benchmark_prompter.py --work /tmp/autosam_bench_prompter
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from autosam import evaluation, io
from autosam.fusion import fusion_strategies
from autosam.oracle import segment_case_from_labels
from autosam.progress import progress
from autosam.prompter import Prompter
from autosam.prompter.infer import WEIGHTS_ROOT
from autosam.refine import RefineConfig, refine_case
from autosam.sam import build_sam
from autosam.sam.cache import CachingPredictor

#: the development data beside the checkout (../shared/data), as CI and the README use it
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


class Charged:
    """Seconds of one run with the encoder charged per requested slice at its measured cost, cached or not."""

    def __init__(self, predictor: CachingPredictor) -> None:
        self.stats = predictor.cache.stats

    def __enter__(self):
        self.t0, self.spent, self.charged = time.perf_counter(), self.stats.encode_seconds, self.stats.charged_seconds
        return self

    def __exit__(self, *exc):
        wall = time.perf_counter() - self.t0
        self.seconds = wall - (self.stats.encode_seconds - self.spent) + (self.stats.charged_seconds - self.charged)


def score(ref: np.ndarray, seg: np.ndarray, spacing, info: io.DatasetInfo) -> dict:
    m = evaluation.case_metrics(ref, seg, spacing, info.foreground, tolerance_mm=1.0, ignore_label=info.ignore_label)
    return {str(v): {"Dice": m[v]["Dice"], "NSD": m[v]["NSD"]} for v in info.foreground}


def run_case(prompter: Prompter, predictor: CachingPredictor, case: io.Case, ref: np.ndarray,
             info: io.DatasetInfo, fusions: list[str]) -> dict:
    predictor.clear()
    out = {}
    t0 = time.perf_counter()
    seg, probs = prompter.coarse(case)
    t_prompter = time.perf_counter() - t0
    out["prompter alone"] = {"seconds": t_prompter, "metrics": score(ref, seg, case.spacing, info)}
    for fusion in fusions:
        with Charged(predictor) as c:
            result = refine_case(predictor, case, info, seg, probs, RefineConfig(fusion=fusion))
        out[f"prompter + SAM ({fusion})"] = {"seconds": t_prompter + c.seconds,
                                             "metrics": score(ref, result.segmentation, case.spacing, info)}
    with Charged(predictor) as c:
        oracle = segment_case_from_labels(predictor, case, ref, info)
    out["label boxes + SAM (oracle)"] = {"seconds": c.seconds, "metrics": score(ref, oracle, case.spacing, info)}
    return out


def _mean(values) -> float:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(finite)) if finite else math.nan


def table(results: dict, infos: dict) -> str:
    rows = ["| dataset | method | cases | Dice per label | mean Dice | mean NSD@1mm | s/case (CPU) |",
            "|---|---|---|---|---|---|---|"]
    for name, per_case in results.items():
        info = infos[name]
        labels = {str(v): k for k, v in info.labels.items()}
        methods = list(next(iter(per_case.values())).keys()) if per_case else []
        for method in methods:
            runs = [c[method] for c in per_case.values()]
            dice = {v: _mean([r["metrics"][v]["Dice"] for r in runs]) for v in labels if v != "0"}
            nsd = {v: _mean([r["metrics"][v]["NSD"] for r in runs]) for v in dice}
            per_label = ", ".join(f"{labels[v]} {d:.3f}" for v, d in dice.items())
            rows.append(f"| {name} | {method} | {len(runs)} | {per_label} | {_mean(dice.values()):.3f} | "
                        f"{_mean(nsd.values()):.3f} | {_mean([r['seconds'] for r in runs]):.1f} |")
    return "\n".join(rows)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("names", nargs="*", default=["hippocampus", "hc18"], help="shipped prompters / datasets")
    p.add_argument("--data", default=str(DATA), help="folder with the development datasets")
    p.add_argument("--cases", type=int, default=10, help="held-out cases per dataset (default 10)")
    p.add_argument("--fusions", nargs="+", default=list(fusion_strategies), help="fusion strategies to compare")
    p.add_argument("--work", default="autosam_bench_prompter", help="results (resumable)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    store = work / "results.json"
    results = json.loads(store.read_text()) if store.is_file() else {}
    predictor = CachingPredictor(build_sam("litemedsam"), device="cpu")
    infos = {}
    for name in args.names:
        dataset = Path(args.data) / name
        info = infos[name] = io.load_dataset_json(dataset)
        prompter = Prompter.load(WEIGHTS_ROOT / name)
        prompter.check_dataset(info)
        held_out = json.loads((WEIGHTS_ROOT / name / "splits.json").read_text())["val"][: args.cases]
        files = io.list_cases(dataset / "imagesTr", info.file_ending, info.num_channels)
        done = results.setdefault(name, {})
        for case_id in progress([c for c in held_out if c not in done], name):
            case = io.read_case(case_id, files[case_id])
            ref = io.read_label(dataset / "labelsTr" / f"{case_id}{info.file_ending}")[0]
            done[case_id] = run_case(prompter, predictor, case, ref, info, args.fusions)
            io.write_json(results, store)
    text = table({n: results[n] for n in args.names}, infos)
    (work / "table.md").write_text(text + "\n")
    print(f"\nFully automatic segmentation, CPU ({torch.get_num_threads()} thread(s)), held-out cases of "
          f"{', '.join(args.names)} (prompter validation split), LiteMedSAM, box prompts:\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
