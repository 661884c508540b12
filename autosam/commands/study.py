"""``autosam study``: every method on the same held-out test cases, for several training sizes and repeats."""
from __future__ import annotations

import argparse
from pathlib import Path

from .. import io
from ..adapt.data import AUTO_PROMPT_KINDS
from ..errors import AutosamError
from ..sam.engines import ENGINES
from ..sample import sample_dataset
from ..study import (ADAPT_SOURCES, DEFAULT_METHODS, LEVERS, METHODS, VARIABLE, StudyOptions, estimate_seconds,
                     make_plan, quick_options, run_study)
from . import options

HELP = ("compare SAM pipelines with the prompter alone and nnU-Net on your dataset, for several numbers of "
        "training cases and repeats (results.csv, stats.csv, summary.md, learning_curve.png)")


def add_parser(sub) -> None:
    d = StudyOptions()
    p = sub.add_parser("study", help=HELP, description=HELP + ". Test cases are fixed first, by subject; no model "
                       "trains or tunes on them. Everything is kept in STUDY_DIR, so a rerun resumes.")
    p.add_argument("-d", "--dataset", default=None,
                   help="nnU-Net raw dataset folder (imagesTr, labelsTr, dataset.json); with --quick: default the "
                        "bundled hippocampus sample")
    p.add_argument("-o", "--output", required=True, metavar="STUDY_DIR", help="study folder (created; resumable)")
    p.add_argument("--test-cases", nargs="+", default=None,
                   help="test case ids, or a file with one per line (default: --test-fraction of the subjects)")
    p.add_argument("--test-fraction", type=float, default=d.test_fraction,
                   help=f"share of subjects held out for testing (default {d.test_fraction})")
    options.add_subject_argument(p)
    options.add_exclude_argument(p, what="cases never used (not trained, tuned or tested on)")
    p.add_argument("--train-sizes", nargs="+", default=d.train_sizes,
                   help="training cases per run, nested subsets ('all': every non-test case; default 5 10 20 all)")
    p.add_argument("--repeats", "--seeds", type=int, default=d.repeats, metavar="K", dest="repeats",
                   help="repeats, each with its own test split by subject (the same test cases with --test-cases), "
                        "training subsets and seeds for every model, nnU-Net included (default %(default)s; "
                        "--seeds is its older name)")
    p.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS), metavar="METHOD",
                   help="methods to score (default all but nnunet+tuned, which trains --adapt-folds more nnU-Nets, "
                   "and with --adapt-source nnunet as many adapters): " + ", ".join(METHODS) + "; a variant of "
                   + ", ".join(VARIABLE) + " adds /FUSION[+LEVER...] with levers " + ", ".join(LEVERS)
                   + " (e.g. prompter+sam-adapted/replace+rebox)")
    p.add_argument("--baseline", default=d.baseline, metavar="METHOD",
                   help="the method every other is compared with, pair by pair, in summary.md and stats.csv (mean "
                        "difference, 95%% bootstrap CI, wins/losses/ties, Wilcoxon p; default %(default)s, else the "
                        "first method run)")
    p.add_argument("--adapt", default=d.adapt, choices=("decoder", "lora", "desam", "none"),
                   help="SAM adaptation for the '-adapted' methods and the tuned default (default decoder)")
    add_schedule_arguments(p.add_argument_group("schedules (CPU-sized defaults; on a GPU raise them)"), d)
    p.add_argument("--quick", action="store_true",
                   help="a few-minute smoke run (bundled sample, tiny schedules; options given here still win)")
    p.add_argument("--dry-run", action="store_true", help="print the plan and a rough time estimate, run nothing")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, auto ...")
    p.add_argument("--engine", default="auto", choices=ENGINES, help="SAM encoder runtime (default auto)")
    p.set_defaults(run=run)


def add_schedule_arguments(s, d: StudyOptions) -> None:
    """The schedules of the models a study trains and tunes, and how the adapter learns (defaults: ``d``)."""
    s.add_argument("--prompter-epochs", type=int, default=d.prompter_epochs,
                   help="prompter training epochs (default %(default)s)")
    s.add_argument("--prompter-iterations", type=int, default=d.prompter_iterations,
                   help="prompter batches per epoch (default %(default)s)")
    s.add_argument("--adapt-epochs", type=int, default=d.adapt_epochs,
                   help="adapter training epochs (default %(default)s)")
    s.add_argument("--adapt-iterations", type=int, default=d.adapt_iterations,
                   help="steps per adapter epoch (default 0: one pass over the samples)")
    s.add_argument("--adapt-folds", type=int, default=d.adapt_folds,
                   help="folds (prompters or nnU-Nets) for cross-fitted adapter prompts (default %(default)s)")
    s.add_argument("--adapt-source", default=d.adapt_source, choices=ADAPT_SOURCES,
                   help="whose cross-fitted maps prompt the adapter: the prompter's (default) or nnU-Net's "
                        "(--adapt-folds nnU-Nets with the study's nnU-Net schedule, each predicting the cases it "
                        "left out)")
    s.add_argument("--adapt-prompt", default=d.adapt_prompt, choices=AUTO_PROMPT_KINDS,
                   help="what the adapter is given on the cross-fitted prompts: box+mask (the box and the prompter's "
                        "probabilities as mask prompt; finetune --auto-prompt; default) or box (the box alone)")
    s.add_argument("--adapt-planes", action="store_true",
                   help="train the adapter on the slices of all three axes of each volume (finetune --planes), "
                        "not only along the default axis")
    s.add_argument("--tune-cases", type=int, default=d.tune_cases,
                   help="validation cases the SAM default is tuned on (default %(default)s)")
    s.add_argument("--sign-test", type=float, default=d.sign_test, metavar="P",
                   help="the tuned defaults also require SAM to be better on significantly more validation cases "
                        "than worse (one-sided sign test, p <= P; default: mean gain only)")
    s.add_argument("--max-objects", type=int, default=d.max_objects,
                   help="components prompted per label and slice in every prompted SAM method and in tuning (default "
                        "0: all; --quick: 1, the largest)")
    s.add_argument("--nnunet-trainer", default=None,
                   help="nnU-Net trainer (default: autosam's short CPU schedule, nnUNetTrainer_autosam_Short with "
                        "--nnunet-epochs/--nnunet-iterations; on a GPU give nnUNetTrainer for nnU-Net's own)")
    s.add_argument("--nnunet-configuration", default=None, help="nnU-Net configuration (default: 2d for 2D data, "
                                                                "else 3d_fullres)")
    s.add_argument("--nnunet-spacing", type=float, nargs="+", default=None, metavar="S",
                   help="nnU-Net target spacing, three numbers in nnU-Net's axis order (2D images: 999 first), as "
                        "nnUNetv2_plan_and_preprocess -overwrite_target_spacing, under their own plans name "
                        "(default: nnU-Net's own plans)")
    s.add_argument("--nnunet-epochs", type=int, default=d.nnunet_epochs, help="nnU-Net epochs (default %(default)s)")
    s.add_argument("--convergence", action=argparse.BooleanOptionalAction, default=d.convergence,
                   help="with the nnunet method, train fold 0 at the schedule and at twice its epochs, for "
                        "summary.md's baseline_convergence (default on; off with --quick)")
    s.add_argument("--nnunet-iterations", type=int, default=d.nnunet_iterations,
                   help="nnU-Net iterations per epoch (default %(default)s)")


#: command-line option -> StudyOptions field
FIELDS = {"test_fraction": "test_fraction", "train_sizes": "train_sizes", "repeats": "repeats", "methods": "methods",
          "baseline": "baseline",
          "prompter_epochs": "prompter_epochs", "prompter_iterations": "prompter_iterations",
          "adapt_epochs": "adapt_epochs", "adapt_iterations": "adapt_iterations", "adapt_folds": "adapt_folds",
          "adapt_prompt": "adapt_prompt", "adapt_source": "adapt_source", "adapt_planes": "adapt_planes",
          "tune_cases": "tune_cases", "sign_test": "sign_test", "max_objects": "max_objects",
          "nnunet_trainer": "nnunet_trainer", "nnunet_configuration": "nnunet_configuration",
          "nnunet_spacing": "nnunet_spacing",
          "nnunet_epochs": "nnunet_epochs", "nnunet_iterations": "nnunet_iterations", "device": "device",
          "engine": "engine", "convergence": "convergence"}


def study_options(args: argparse.Namespace):
    """:class:`StudyOptions` from the command line (``--quick`` presets, options given explicitly win)."""
    opts = quick_options() if args.quick else StudyOptions()
    given = getattr(args, "given", None)
    for option, name in FIELDS.items():
        if not args.quick or given is None or option in given:
            setattr(opts, name, getattr(args, option))
    if not args.quick or given is None or "adapt" in given:
        opts.adapt = None if args.adapt == "none" else args.adapt
    if opts.adapt is None and "methods" not in (given or set()):
        opts.methods = [m for m in opts.methods if "-adapted" not in m]
    opts.subject_pattern = options.subject_pattern(args)
    opts.exclude = options.excluded_cases(args)
    opts.test_cases = read_case_list(args.test_cases) if args.test_cases else None
    return opts


def read_case_list(values: list[str]) -> list[str]:
    """Case ids given directly, or read from a file (one per line) when a single existing file is given."""
    if len(values) == 1 and Path(values[0]).is_file():
        try:
            return [line.strip() for line in Path(values[0]).read_text().splitlines() if line.strip()]
        except (OSError, UnicodeDecodeError) as e:
            raise AutosamError(f"{values[0]}: cannot read test cases ({e})") from None
    return [c for v in values for c in v.split(",") if c]


def run(args: argparse.Namespace) -> int:
    if args.dataset is None and not args.quick:
        raise AutosamError("-d/--dataset is required (or --quick for the bundled sample)")
    dataset = Path(args.dataset) if args.dataset else sample_dataset("hippocampus")
    if not dataset.is_dir():
        raise AutosamError(f"dataset folder not found: {dataset} (-d takes an nnU-Net raw dataset folder)")
    opts = study_options(args)
    opts.check(dataset)
    plan = make_plan(dataset, opts)  # every check on the input happens before anything is written
    if args.dry_run:
        print_plan(plan, io.load_dataset_json(dataset), opts)
        return 0
    with options.exclusive_output(args.output, {"dataset": dataset}):
        run_study(dataset, args.output, opts, plan=plan)
    print((Path(args.output) / "summary.md").read_text())
    print(f"wrote {Path(args.output) / 'results.csv'}, stats.csv, summary.md and learning_curve.png")
    return 0


def print_plan(plan: dict, info, opts) -> None:
    print(f"test cases: {len(plan['test'])} ({', '.join(plan['test'][:5])}{' ...' if len(plan['test']) > 5 else ''})")
    for r in plan["runs"]:
        own = f", repeat {r['repeat']}'s own {len(r['test'])} test case(s)" if r["test"] != plan["test"] else ""
        print(f"run {r['name']}: {r['size']} training case(s){own}")
    print("methods: " + ", ".join(opts.methods))
    steps = estimate_seconds(plan, info, 35.0 if info.file_ending != ".png" else 1.0, opts.device.startswith("cuda"))
    for step, seconds in steps.items():
        if seconds:  # steps the methods do not need are left out
            print(f"  {step}: ~{seconds / 60:.0f} min")
    print(f"estimated total: ~{sum(steps.values()) / 60:.0f} min (rough; {opts.device})")
