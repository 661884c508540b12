"""Train the prompters shipped with autosam (``--prompter hippocampus``, ``--prompter hc18``) on the development data.

CPU only, about one core each: ``OMP_NUM_THREADS=1 python scripts/train_prompters.py``. The bundled sample cases
(and, for HC18, every other image of the same subjects) are excluded from training and validation; after training
the prompter's own Dice on the bundled sample is recorded in its ``config.json`` (``sample``), which
``tests/test_prompter.py`` recomputes. The model folders (with checkpoints, resumable) go to ``--work``; the
shipped files (config.json, model.pt, dataset.json, splits.json) are copied to ``autosam/prompter/weights/<name>``.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

from autosam import io
from autosam.prompter.infer import WEIGHTS_ROOT, Prompter
from autosam.prompter.train import TrainOptions, train_prompter
from autosam.sample import sample_dataset
from autosam.splits import subject_of

#: the development data beside the checkout (../shared/data), as CI and the README use it
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

HC18_SUBJECT = r"^([^_]+)_"
#: Per shipped prompter: the development dataset and the training settings (sized for ~15 min on one CPU core).
RECIPES = {
    "hippocampus": dict(data="hippocampus", subject_pattern=None, input_size=64, epochs=12, iterations=50,
                        batch_size=16, mirror=False),
    "hc18": dict(data="hc18", subject_pattern=HC18_SUBJECT, input_size=64, epochs=12, iterations=50,
                 batch_size=16, mirror=True),
}


def sample_exclusions(name: str, dataset_dir: Path, pattern: str | None) -> list[str]:
    """Cases of the development data that are bundled sample cases or share a subject with one."""
    sample = sample_dataset(name)
    info = io.load_dataset_json(sample)
    sample_cases = io.list_cases(sample / "imagesTr", info.file_ending, info.num_channels)
    subjects = {subject_of(c, pattern) for c in sample_cases}
    dev = io.list_cases(dataset_dir / "imagesTr", info.file_ending, info.num_channels)
    return sorted(c for c in dev if subject_of(c, pattern) in subjects)


def sample_score(prompter: Prompter, name: str) -> dict:
    """The prompter's own Dice per bundled sample case and label (and the means) on the bundled sample."""
    from autosam.labels import dice_per_label

    sample = sample_dataset(name)
    info = io.load_dataset_json(sample)
    cases = io.list_cases(sample / "imagesTr", info.file_ending, info.num_channels)
    names = {v: k for k, v in info.labels.items()}
    per_case = {}
    for case_id, files in cases.items():
        seg = prompter.coarse(io.read_case(case_id, files))[0]
        ref = io.read_label(sample / "labelsTr" / f"{case_id}{info.file_ending}")[0]
        per_case[case_id] = {names[v]: d for v, d in zip(info.foreground, dice_per_label(seg, ref, info.foreground))}
    means = {names[v]: float(np.nanmean([per_case[c][names[v]] for c in per_case])) for v in info.foreground}
    return {"dataset": f"autosam.sample:{name}", "dice": means, "mean": float(np.mean(list(means.values()))),
            "per_case": per_case}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("names", nargs="*", default=list(RECIPES), help=f"which prompters (default: {' '.join(RECIPES)})")
    p.add_argument("--data", default=str(DATA), help="folder with the development datasets")
    p.add_argument("--work", default="prompter_runs", help="model folders with checkpoints (resumable)")
    p.add_argument("--epochs", type=int, default=None, help="override the recipe's epochs")
    p.add_argument("--no-ship", action="store_true", help="do not copy the result into autosam/prompter/weights")
    args = p.parse_args()
    for name in args.names:
        if name not in RECIPES:
            p.error(f"unknown prompter {name!r}; choose from {', '.join(RECIPES)}")
    torch.set_num_threads(1)
    for name in args.names:
        recipe = dict(RECIPES[name])
        dataset_dir = Path(args.data) / recipe.pop("data")
        excluded = sample_exclusions(name, dataset_dir, recipe["subject_pattern"])
        opts = TrainOptions(exclude_cases=excluded, **recipe)
        if args.epochs:
            opts.epochs = args.epochs
        model_dir = Path(args.work) / name
        print(f"== {name}: {dataset_dir} -> {model_dir} (excluding {len(excluded)} sample case(s): "
              f"{', '.join(excluded)})", file=sys.stderr)
        t0 = time.time()
        config = train_prompter(dataset_dir, model_dir, opts)
        minutes = (time.time() - t0) / 60
        prompter = Prompter.load(model_dir)
        config["sample"] = sample_score(prompter, name)
        config["training"]["minutes"] = round(minutes, 1)
        config["training"]["command"] = "OMP_NUM_THREADS=1 python scripts/train_prompters.py " + name
        io.write_json(config, model_dir / "config.json")
        if not args.no_ship:
            target = WEIGHTS_ROOT / name
            target.mkdir(parents=True, exist_ok=True)
            for f in ("config.json", "model.pt", "dataset.json", "splits.json"):
                shutil.copyfile(model_dir / f, target / f)
        val = config["validation"]["dice"]
        print(json.dumps({"prompter": name, "minutes": round(minutes, 1), "validation": val,
                          "sample": {k: config["sample"][k] for k in ("dice", "mean")}}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
