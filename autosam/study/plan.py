"""A study's plan (per repeat its test cases, and per size the nested training subsets), the check that a resumed
study keeps its dataset and test cases, and the rough time estimate of ``--dry-run``."""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .. import io
from ..errors import AutosamError
from ..splits import split_by_subject, subject_of
from .options import StudyOptions


def make_plan(dataset: Path, opts: StudyOptions) -> dict:
    """Per repeat its test cases and, per size, the nested training subset (a subject's cases stay together).

    Repeat ``r`` draws its test split by subject with ``split_seed + r`` (``--test-cases``: the same test cases in
    every repeat), its subset order with ``1000 + r``, and seeds its models with ``r`` (nnU-Net with ``r + 1``). Run
    ``n<size>_s<r>``; ``plan["test"]`` is repeat 0's test cases, each run carries its own (``test``)."""
    info = io.load_dataset_json(dataset)
    cases = sorted(io.list_cases(dataset / "imagesTr", info.file_ending, info.num_channels))
    io.label_files(dataset / "labelsTr", cases, info.file_ending)
    excluded = set(opts.exclude)
    cases = [c for c in cases if c not in excluded and subject_of(c, opts.subject_pattern) not in excluded]
    if opts.test_cases is not None:
        missing = [c for c in opts.test_cases if c not in cases]
        if missing:
            raise AutosamError(f"test case {missing[0]} is not in {dataset / 'imagesTr'}")
    runs, tests = [], []
    for repeat in range(opts.repeats):
        test = _test_cases(cases, opts, repeat)
        tests.append(test)
        test_subjects = {subject_of(c, opts.subject_pattern) for c in test}
        pool = [c for c in cases if subject_of(c, opts.subject_pattern) not in test_subjects]
        sizes = [len(pool) if str(s) == "all" else int(s) for s in opts.train_sizes]
        too_big = [s for s in sizes if s > len(pool)]
        if too_big:
            raise AutosamError(f"train size {too_big[0]} is larger than the {len(pool)} case(s) left after the "
                               f"{len(test)} test case(s) of {dataset}" + (f" (repeat {repeat})" if repeat else ""))
        order = _subject_order(pool, opts.subject_pattern, repeat)
        for size in sorted(set(sizes)):
            runs.append({"name": f"n{size}_s{repeat}", "size": size, "seed": repeat, "cases": _take(order, size),
                         "repeat": repeat, "test": test})
    return {"dataset": str(dataset), "test": tests[0], "runs": runs, "options": asdict(opts)}


def _test_cases(cases: Sequence[str], opts: StudyOptions, repeat: int) -> list[str]:
    """A repeat's test cases: ``--test-cases``, else its own split by subject (seed ``split_seed + repeat``)."""
    if opts.test_cases is not None:
        return sorted(opts.test_cases)
    return split_by_subject(cases, opts.test_fraction, opts.split_seed + repeat, opts.subject_pattern)["val"]


def _subject_order(pool: Sequence[str], pattern: Optional[str], seed: int) -> list[list[str]]:
    groups: dict[str, list[str]] = {}
    for c in pool:
        groups.setdefault(subject_of(c, pattern), []).append(c)
    names = sorted(groups)
    return [groups[names[i]] for i in np.random.default_rng(1000 + seed).permutation(len(names))]


def _take(order: list[list[str]], size: int) -> list[str]:
    """The first subjects of ``order`` up to ``size`` cases (nested: a larger size extends a smaller one)."""
    out: list[str] = []
    for group in order:
        if len(out) >= size:
            break
        out += group
    return sorted(out)


def check_plan(study: Path, plan: dict) -> dict:
    """A new study's plan, or the stored one when it matches (same dataset, and each kept run's test cases; new runs
    added). A study made with several ``--seeds`` before ``--repeats`` (one test split and one nnU-Net seed for
    every seed) is refused."""
    path = study / "plan.json"
    if not path.is_file():
        return plan
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise AutosamError(f"{path}: cannot read the study plan ({e}); delete it to start over") from None
    if not _same_dataset(str(old.get("dataset", "")), plan["dataset"]):
        raise AutosamError(f"{study} holds a study of another dataset ({old.get('dataset')}); use another study "
                           "folder")
    if old.get("test") != plan["test"]:
        raise AutosamError(f"{study} holds a study of other test cases; use another study folder")
    kept = {r.get("name"): r for r in old.get("runs", []) if isinstance(r, dict)}
    if any("repeat" not in r and r.get("seed", 0) != 0 for r in kept.values()):
        raise AutosamError(f"{study} holds a study made with --seeds before --repeats (one test split and one "
                           "nnU-Net seed for every seed); use another study folder")
    for run in plan["runs"]:
        if run["name"] in kept and kept[run["name"]].get("test", old["test"]) != run["test"]:
            raise AutosamError(f"{study} holds a study of other test cases (repeat {run['repeat']}); use another "
                               "study folder")
    return plan


def _same_dataset(a: str, b: str) -> bool:
    """Whether two spellings of a dataset folder name the same one: the same folder where both are found from
    here (a study may be resumed from another working directory), else the same folder name."""
    pa, pb = Path(a), Path(b)
    if pa.is_dir() and pb.is_dir():
        return pa.resolve() == pb.resolve()
    return pa.name == pb.name


def estimate_seconds(plan: dict, info: io.DatasetInfo, slices_per_case: float, gpu: bool) -> dict[str, float]:
    """A rough time per step (CPU: ~0.6 s per SAM slice with OpenVINO, ~0.25 s per slice of the 2d nnU-Net with its
    mirroring; GPU: ~25-100x less)."""
    o = plan["options"]
    opts = StudyOptions(**o)
    sam = (0.006 if gpu else 0.6) * slices_per_case
    n_test = sum(len(r["test"]) for r in plan["runs"]) / max(1, len(plan["runs"]))  # test cases per run
    distinct = len({c for r in plan["runs"] for c in r["test"]}) or len(plan["test"])
    methods = o["methods"]
    adapts = opts.adapts()
    from_nnunet = adapts and opts.adapt_source == "nnunet"
    fold_adapters = (opts.adapt_folds - 1) if opts.fold_adapters() else 0  # each on (folds - 1) / folds of the cases
    nnunet = o["nnunet_epochs"] * (o["nnunet_iterations"] + 5) * (0.3 if gpu else 1.0) + 60
    per_run = {
        "prompter": o["prompter_epochs"] * o["prompter_iterations"] * (0.01 if gpu else 0.15)
        if opts.needs_prompter() else 0,
        # the default axis twice (frozen and adapted SAM), and on 3D the two other planes of the planes candidates
        "tuning": o["tune_cases"] * sam * (4 if slices_per_case > 1 else 2) if "tuned" in methods else 0,
        "tuning nnU-Net's default (nnunet+tuned)": 0,  # below: --tune-cases 0 tunes on every case of the run
        "adapter": ((0 if from_nnunet else o["adapt_folds"]) + 1 + fold_adapters) * o["prompter_epochs"]
        * o["prompter_iterations"] * (0.01 if gpu else 0.1) * (3 if opts.adapt_planes and slices_per_case > 1 else 1)
        if adapts else 0,
        "nnunet": nnunet if any(m.startswith("nnunet") for m in methods) else 0,
        "nnU-Net folds": o["adapt_folds"] * nnunet if opts.needs_nnunet_folds() else 0,
        "inference": n_test * 0.2 * len(methods),
    }
    steps = {k: v * len(plan["runs"]) for k, v in per_run.items()}
    if "nnunet+tuned" in methods:
        steps["tuning nnU-Net's default (nnunet+tuned)"] = sum(
            min(o["tune_cases"] or len(r["cases"]), len(r["cases"])) for r in plan["runs"]) * sam * (
            4 if slices_per_case > 1 else 2)
    if "nnunet-planes" in methods:  # the 2d nnU-Net along two more axes: the training cases (weight), then the test
        steps["nnunet-planes (nnU-Net along two more axes)"] = sum(
            len(r["cases"]) + len(r["test"]) for r in plan["runs"]) * 2 * slices_per_case * (0.01 if gpu else 0.25)
    if opts.convergence and "nnunet" in methods:  # fold 0 at 2E (and at E without the cross-validation), per size
        once = len({r["size"] for r in plan["runs"]})
        steps["nnU-Net at twice the epochs (baseline_convergence)"] = once * nnunet * (2 if opts.needs_nnunet_folds()
                                                                                          else 3)
    steps["SAM encoder (test cases, cached once)"] = distinct * sam
    return steps
