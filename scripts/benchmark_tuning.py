"""Tuning's cost: the grid with and without re-boxing, and with and without the decoder remembering prompts.

Usage:
    python scripts/benchmark_tuning.py [--data ../shared/data/hippocampus] [--prompter hippocampus] [--cases 2]

The shipped prompter's coarse maps of the first ``--cases`` cases of its validation split (never its training
cases) are tuned three ways, in this order, in one process:

- ``before``: the grid of the last release (prompt x object limit x lever none/hypotheses/rebox x fusion, 217
  candidates), every group asking SAM afresh (the decoder memory switched off);
- ``grid``: today's grid (no re-boxing, 145 candidates), decoder memory off;
- ``current``: today's grid with the decoder memory (``CachingPredictor.remembering_decodes``), as ``tune`` runs.

Embeddings come from an on-disk cache filled before the timing, so the three rows time the decoder and fusion
only. Each row's scores are checked: ``grid`` and ``current`` must agree candidate by candidate. Prints a markdown
table last.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from autosam import io  # noqa: E402
from autosam.prompter import Prompter  # noqa: E402
from autosam.prompter.tuning import load_items, validation_cases  # noqa: E402
from autosam.sam import build_sam  # noqa: E402
from autosam.sam.cache import CachingPredictor, EmbeddingCache  # noqa: E402
from autosam.sam.predictor import SamPredictor  # noqa: E402
from autosam.tune import candidates, tune  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "hippocampus"))
    ap.add_argument("--prompter", default="hippocampus")
    ap.add_argument("--cases", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data = Path(args.data)
    prompter = Prompter.load(args.prompter)
    info = io.load_dataset_json(data)
    cases = validation_cases(prompter)[: args.cases]
    items = load_items(prompter, data, cases, None, info)
    decoded = {"n": 0}
    plain_predict = SamPredictor.predict

    def counting(self, prompts, *a, **k):  # counts the prompts that reach the decoder
        decoded["n"] += len(prompts)
        return plain_predict(self, prompts, *a, **k)

    SamPredictor.predict = counting
    with tempfile.TemporaryDirectory() as tmp:
        sam = CachingPredictor(build_sam("litemedsam"), device="cpu", cache=EmbeddingCache(tmp))
        warm = candidates(prompts=("box",), max_objects=(1,), levers=((False, 0),))[:2]  # no SAM, box/replace
        tune(sam, items, info, warm)  # fills the embedding cache: the rows below time decoding and fusion
        variants = {"before": (candidates(levers=((False, 0), (True, 0), (False, 1))), False),
                    "grid": (candidates(), False), "current": (candidates(), True)}
        rows, scores = [], {}
        for name, (grid, memory) in variants.items():
            decoded["n"] = 0
            start = time.perf_counter()
            result = tune(sam, items, info, grid, remember=memory)
            seconds = time.perf_counter() - start
            scores[name] = result.scores
            rows.append((name, len(grid), memory, decoded["n"], seconds, result.best.name,
                         result.mean(result.best.name)))
            print(f"{name}: {seconds:.1f} s, {decoded['n']} prompts decoded, chose {result.best.name}", flush=True)
    same = all(scores["grid"][k] == scores["current"][k] for k in scores["grid"])
    print(f"\n{Path(prompter.folder).name} prompter, {len(items)} validation case(s) of {data}: {', '.join(cases)}; "
          f"{args.threads} threads, CPU. grid and current scores identical: {same}\n")
    print("| variant | candidates | decoder memory | prompts decoded | seconds | x before | chosen | mean Dice |")
    print("|---|---|---|---|---|---|---|---|")
    for name, n, memory, count, seconds, best, dice in rows:
        print(f"| {name} | {n} | {'yes' if memory else 'no'} | {count} | {seconds:.1f} | "
              f"{rows[0][4] / seconds:.2f} | {best} | {dice:.4f} |")
    if not same:
        raise SystemExit("the decoder memory changed a score")


if __name__ == "__main__":
    main()
