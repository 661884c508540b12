"""``autosam tune``: choose (and record) a prompter's SAM default on labelled validation cases."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import AutosamError
from ..settings import SamSpec
from . import options
from .common import add_sam_arguments, predictor_maker

HELP = "choose whether and how SAM refines a prompter's maps, on validation cases; recorded for 'autosam segment'"


def add_parser(sub) -> None:
    p = sub.add_parser("tune", help=HELP, description=HELP + ". Candidates: no SAM, and each prompt strategy (box, "
                       "box+mask), object limit (all components or the largest) and localisation lever (none or box "
                       "hypotheses) with each fusion (replace, union, intersection, gated over IoU and agreement "
                       "thresholds, average over weights), and on 3D cases replace and average over weights on all "
                       "three planes. A SAM candidate "
                       "must beat the prompter alone by --min-gain mean Dice to be chosen.")
    p.add_argument("--prompter", required=True, help="prompter folder or shipped prompter name")
    options.add_dataset_arguments(p, required=True)
    p.add_argument("--cases", nargs="+", default=None,
                   help="validation case ids (default: the prompter's own validation split, splits.json 'val')")
    p.add_argument("--max-cases", type=int, default=10, help="use at most N of them (default 10; 0 = all)")
    p.add_argument("--min-gain", type=float, default=0.005,
                   help="mean Dice a SAM candidate must add over the prompter alone (default 0.005)")
    p.add_argument("-o", "--output", default=None,
                   help="settings file to write (default ADAPTER/autosam_sam.json with --adapter, else "
                        "PROMPTER/autosam_sam.json; segment reads both, the adapter's first)")
    p.add_argument("--sign-test", type=float, default=None, metavar="P",
                   help="also require a SAM candidate to be better than the prompter alone on significantly more "
                        "validation cases than worse (one-sided sign test, p <= P; default: mean gain only)")
    add_sam_arguments(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..prompter import Prompter
    from ..prompter.infer import WEIGHTS_ROOT, resolve_prompter
    from ..prompter.tuning import tune_prompter
    from ..sam import resolve_device

    dataset = options.dataset_folder(args)
    output = Path(args.output) if args.output else (Path(args.adapter) / "autosam_sam.json" if args.adapter else None)
    if output is not None and output.is_dir():
        raise AutosamError(f"{output} is a folder; give a file name for --output")
    if output is None and resolve_prompter(args.prompter).resolve().is_relative_to(WEIGHTS_ROOT.resolve()):
        raise AutosamError(f"prompter {args.prompter!r} ships with autosam and its record is never overwritten; tune "
                           "a copy of its folder, or give -o FILE")
    prompter = Prompter.load(args.prompter, device=str(resolve_device(args.device)))
    result = tune_prompter(prompter, dataset, predictor_maker(args, caching=True), cases=args.cases,
                           max_cases=args.max_cases, min_gain=args.min_gain,
                           sam=SamSpec(args.sam, args.checkpoint, args.adapter), output=output,
                           sign_test=args.sign_test)
    if result is None:
        return 1
    for name, mean in result.ranking()[:5]:
        print(f"{mean:.4f}  {name}")
    print(f"chosen: {result.best.name}")
    return 0
