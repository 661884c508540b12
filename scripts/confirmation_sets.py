"""The confirmation sets of docs/protocol.md, regenerated from their rule (seconds; reads no image).

    python scripts/confirmation_sets.py            # writes docs/results/confirmation_{hippocampus,hc18}.txt
    python scripts/confirmation_sets.py --check    # exit 1 if the committed files differ from the rule

Every earlier use of a development case is listed below as a *source*, redrawn with the code and seed that drew
it (scripts, the study's plan, the shipped prompters' ``splits.json``, the bundled sample), in one of three kinds:

- ``used``: a model's output on the case was scored, tuned on, or looked at (test and validation cases, tuning
  cases, benchmark cases, the bundled sample);
- ``pooled``: the case's score entered only a mean over 90 or more cross-fitted maps (HC18's full-data tuning);
- ``trained``: the case only trained an earlier model (no earlier model is reused by the protocol).

Eligible subjects have no case in a ``used`` source (a subject's cases stay together). The confirmation set is
the first subjects of ``numpy.random.default_rng(20261206).permutation`` of the sorted eligible subjects, up to
``WANT`` cases (all eligible subjects if fewer). No case is eligible under the stricter rule "in no source at
all": the shipped prompters trained or validated on every development case; the script prints that count too.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from autosam import io  # noqa: E402
from autosam.splits import split_by_subject, subject_of  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
OUT = ROOT / "docs" / "results"
SEED = 20261206
WANT = {"hippocampus": 60, "hc18": 30}
PATTERN = {"hippocampus": None, "hc18": r"^([^_]+)_"}  # the study's --subject-pattern for each dataset
SAMPLE = {"hippocampus": ["hippocampus_148", "hippocampus_149", "hippocampus_165", "hippocampus_221",
                          "hippocampus_319", "hippocampus_320"], "hc18": ["719", "800", "801"]}  # HC18: subjects


def study_test(cases: list[str], pattern, exclude=()) -> list[str]:
    """The study's default test split (autosam/study/plan.py: --test-fraction 0.2, split seed 0)."""
    kept = [c for c in cases if c not in exclude and subject_of(c, pattern) not in exclude]
    return split_by_subject(kept, 0.2, 0, pattern)["val"]


def study_train(pool: list[str], pattern, size: int, seed: int = 0) -> list[str]:
    """The study's nested training subset (autosam/study/plan.py: _subject_order, _take)."""
    groups: dict[str, list[str]] = {}
    for c in pool:
        groups.setdefault(subject_of(c, pattern), []).append(c)
    names = sorted(groups)
    out: list[str] = []
    for i in np.random.default_rng(1000 + seed).permutation(len(names)):
        if len(out) >= size:
            break
        out += groups[names[i]]
    return sorted(out)


def refine_prompt_cases(cases: list[str], dataset: str, sizes: tuple) -> set:
    """scripts/refine_prompt_benchmark.py, seed 0, at the documented and the default number of cases."""
    subject = (lambda c: c.split("_")[1]) if dataset == "hippocampus" else (lambda c: c.split("_")[0])
    banned = {c.split("_")[1] for c in SAMPLE[dataset]} if dataset == "hippocampus" else set(SAMPLE[dataset])
    pool = sorted(c for c in cases if subject(c) not in banned)
    return {c for n in sizes for c in np.random.default_rng(0).choice(pool, size=n, replace=False).tolist()}


def adapt_cases(cases: list[str], dataset: str, n_test: int, n_train: int) -> tuple[list, list]:
    """scripts/benchmark_adapt.py's choose_split, seed 0 (test, train)."""
    pattern = None if dataset == "hippocampus" else r"^[^_]+"
    groups = sorted({subject_of(c, pattern) for c in cases} - set(SAMPLE[dataset]))
    test: list[str] = []
    train: list[str] = []
    for i in np.random.default_rng(0).permutation(len(groups)):
        members = [c for c in cases if subject_of(c, pattern) == groups[i]]
        if len(test) < n_test:
            test += members
        elif len(train) < n_train:
            train += members
    return test, train


def shipped(name: str) -> dict:
    return json.loads((ROOT / "autosam" / "prompter" / "weights" / name / "splits.json").read_text())


def hippocampus_sources(cases: list[str]) -> list[tuple[str, str, set]]:
    """(name, kind, cases) of every earlier use of a hippocampus case."""
    sample = SAMPLE["hippocampus"]
    test_file = (ROOT / "scripts" / "study_hippocampus_test_cases.txt").read_text().split()
    pool = [c for c in cases if c not in sample and c not in test_file]
    refine = [c for c in cases if c not in sample]
    random.Random(0).shuffle(refine)  # scripts/benchmark_refine.py, seed 0: 12 scored, 60 train nnU-Net
    refine_train = sorted(refine[12:72])
    adapt_test, adapt_train = adapt_cases(cases, "hippocampus", 10, 20)
    return [
        ("bundled sample (autosam/sample)", "used", set(sample)),
        ("scripts/study_hippocampus_test_cases.txt (every hippocampus study)", "used", set(test_file)),
        ("study default test split, all cases", "used", set(study_test(cases, None))),
        ("study default test split, sample excluded", "used", set(study_test(cases, None, sample))),
        ("shipped prompter validation split (validated, tuned; benchmark_prompter/segment/tuning)", "used",
         set(shipped("hippocampus")["val"])),
        ("study n10_s0 (cross-fitted maps tuned nnunet+tuned; prompter validation tuned)", "used",
         set(study_train(pool, None, 10))),
        ("benchmark_refine.py held-out cases and nnU-Net validation cases", "used",
         set(sorted(refine[:12])) | set(refine_train[:4])),
        ("refine_prompt_benchmark.py (4 documented, 8 default)", "used", refine_prompt_cases(cases, "hippocampus",
                                                                                           (4, 8))),
        ("benchmark_adapt.py test cases", "used", set(adapt_test)),
        ("benchmark_predict.py (timing; first 10 cases outside 4 sample cases)", "used",
         set([c for c in cases if c not in sample[:4]][:10])),
        ("shipped prompter training split", "trained", set(shipped("hippocampus")["train"])),
        ("benchmark_refine.py nnU-Net training cases", "trained", set(refine_train[4:])),
        ("benchmark_adapt.py adapter training cases", "trained", set(adapt_train)),
    ]


def hc18_sources(cases: list[str]) -> list[tuple[str, str, set]]:
    """(name, kind, cases) of every earlier use of an HC18 image."""
    pattern, sample = PATTERN["hc18"], SAMPLE["hc18"]
    test = study_test(cases, pattern, sample)
    pool = [c for c in cases if c not in test and subject_of(c, pattern) not in sample]
    adapt_test, adapt_train = adapt_cases(cases, "hc18", 10, 30)
    return [
        ("bundled sample subjects 719, 800, 801", "used", {c for c in cases if subject_of(c, pattern) in sample}),
        ("study default test split, sample excluded (every HC18 study's 25 test images)", "used", set(test)),
        ("study default test split, all images", "used", set(study_test(cases, pattern))),
        ("shipped prompter validation split", "used", set(shipped("hc18")["val"])),
        ("study n10_s0 (10 training images; 3 validated the tuned default)", "used",
         set(study_train(pool, pattern, 10))),
        ("study n92_s0 prompter validation (21 images; tuned, sign test, retune)", "used",
         set(split_by_subject(pool, 0.2, 0, pattern)["val"])),
        ("refine_prompt_benchmark.py (8 documented, 6 default)", "used", refine_prompt_cases(cases, "hc18", (6, 8))),
        ("benchmark_adapt.py test images", "used", set(adapt_test)),
        ("study n92_s0 cross-fitted fold maps (nnunet+tuned, --tune-cases 0: a mean over 92)", "pooled", set(pool)),
        ("shipped prompter training split", "trained", set(shipped("hc18")["train"])),
        ("study n92_s0 training images", "trained", set(pool)),
        ("benchmark_adapt.py adapter training images", "trained", set(adapt_train)),
    ]


def confirmation(dataset: str, data: Path) -> list[str]:
    """Print the sources and counts of ``dataset``; return its confirmation set (sorted)."""
    info = io.load_dataset_json(data / dataset)
    cases = sorted(io.list_cases(data / dataset / "imagesTr", info.file_ending, info.num_channels))
    sources = (hippocampus_sources if dataset == "hippocampus" else hc18_sources)(cases)
    pattern = PATTERN[dataset]
    print(f"{dataset}: {len(cases)} cases, {len({subject_of(c, pattern) for c in cases})} subjects")
    for name, kind, members in sources:
        print(f"  {kind:8s} {len(members):4d}  {name}")
    used = {subject_of(c, pattern) for _, kind, m in sources if kind == "used" for c in m}
    anywhere = {subject_of(c, pattern) for _, _, m in sources for c in m}
    subjects = sorted({subject_of(c, pattern) for c in cases} - used)
    eligible = [c for c in cases if subject_of(c, pattern) in set(subjects)]
    print(f"  in no source at all: {sum(subject_of(c, pattern) not in anywhere for c in cases)} cases; "
          f"in no 'used' source: {len(eligible)} cases of {len(subjects)} subjects")
    chosen: list[str] = []
    for i in np.random.default_rng(SEED).permutation(len(subjects)):
        if len(chosen) >= WANT[dataset]:
            break
        chosen += [c for c in eligible if subject_of(c, pattern) == subjects[i]]
    note = "" if len(chosen) >= WANT[dataset] else f" (fewer than {WANT[dataset]}: every eligible case)"
    print(f"  confirmation set: {len(chosen)} cases of {len({subject_of(c, pattern) for c in chosen})} "
          f"subjects{note}")
    return sorted(chosen)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=DATA, help="folder holding hippocampus/ and hc18/ (../shared/data)")
    p.add_argument("--check", action="store_true", help="compare with the committed files; write nothing")
    args = p.parse_args(argv)
    differ = False
    for dataset in ("hippocampus", "hc18"):
        text = "".join(f"{c}\n" for c in confirmation(dataset, args.data))
        path = OUT / f"confirmation_{dataset}.txt"
        if args.check:
            same = path.is_file() and path.read_text() == text
            differ |= not same
            print(f"  {path.relative_to(ROOT)}: {'matches the rule' if same else 'DIFFERS from the rule'}")
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"  wrote {path.relative_to(ROOT)}")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
