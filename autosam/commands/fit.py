"""``autosam fit``: nnU-Net's cross-validation chooses (and adapts) SAM for a trained model (:mod:`autosam.fit`)."""
from __future__ import annotations

import argparse

from ..fit import FitOptions, fit
from ..settings import Runtime, SamSpec
from .common import add_parallel_arguments, add_sam_arguments, parallel_from_args

HELP = "choose (and adapt) SAM on a trained nnU-Net model's cross-validation, recorded for predict"
DESCRIPTION = (
    f"{HELP}, as nnUNetv2_find_best_configuration chooses a configuration. It reads every fold's validation "
    "probabilities (nnUNetv2_train ... --npz) and the raw training cases ($nnUNet_raw), scores no SAM and the tuning "
    "grid with frozen SAM and with one adapter per fold (trained on the maps outside the fold), keeps no SAM unless "
    "SAM gains --min-gain, and writes MODEL/autosam_sam.json, which autosam predict, nnUNetv2_predict -tr "
    "nnUNetTrainerAutoSAM and the trainer's validation read. A rerun resumes."
)


def add_parser(sub) -> None:
    d = FitOptions()
    p = sub.add_parser("fit", help=HELP, description=DESCRIPTION)
    p.add_argument("-m", "--model", default=None, help="trained nnU-Net model folder (Trainer__Plans__configuration)")
    p.add_argument("-d", "--dataset", default=None, help="dataset name or id, as nnU-Net's verbs (with -c)")
    p.add_argument("-c", "--configuration", default=None, help="nnU-Net configuration (with -d)")
    p.add_argument("-tr", "--trainer", default="nnUNetTrainer", help="nnU-Net trainer (default nnUNetTrainer)")
    p.add_argument("-p", "--plans", default="nnUNetPlans", help="nnU-Net plans (default nnUNetPlans)")
    p.add_argument("-f", "--folds", nargs="+", default=None, help="folds (default: every numbered fold)")
    p.add_argument("--frozen", action="store_true", help="frozen SAM only: no adapters (minutes, not an hour)")
    p.add_argument("--max-cases", type=int, default=d.max_cases,
                   help="cross-fitted cases scored, round-robin over the folds (default 0: all)")
    p.add_argument("--min-gain", type=float, default=d.min_gain,
                   help=f"mean Dice a SAM candidate must add over nnU-Net alone (default {d.min_gain})")
    p.add_argument("--sign-test", type=float, default=None, metavar="P",
                   help="also require SAM to be better on significantly more cases than worse (sign test, p <= P)")
    p.add_argument("--max-objects", type=int, default=d.max_objects,
                   help="components prompted per label and slice in the grid (default 0: the grid's pair, all and 1)")
    p.add_argument("--small-grid", action="store_true", help="leave out box hypotheses and three-plane candidates")
    a = p.add_argument_group("fold adapters (the study's recipe)")
    a.add_argument("--adapt", default=d.adapt, choices=("decoder", "lora", "desam"), help="adapter kind (decoder)")
    a.add_argument("--adapt-epochs", type=int, default=d.adapt_epochs, help=f"epochs (default {d.adapt_epochs})")
    a.add_argument("--adapt-iterations", type=int, default=d.adapt_iterations,
                   help="steps per epoch (default 0: one pass over the samples)")
    a.add_argument("--seed", type=int, default=d.seed, help="adapter training seed (default 0)")
    add_sam_arguments(p, adapter=False, axis=False)
    add_parallel_arguments(p, parts=False)  # each fold's scoring is one Ray task
    p.add_argument("--dry-run", action="store_true", help="print the plan and a rough time, write nothing")
    p.set_defaults(run=run)


def model_folder(args: argparse.Namespace):
    """``-m``, or ``-d``/``-c`` (with ``-tr``/``-p``) found under ``$nnUNet_results`` as nnU-Net's verbs find it."""
    from ..errors import AutosamError
    from ..nnunet.folds import model_folder_of

    if args.model and (args.dataset or args.configuration):
        raise AutosamError("give the model as -m MODEL_FOLDER or as -d DATASET -c CONFIGURATION, not both")
    if args.model:
        return args.model
    if not (args.dataset and args.configuration):
        raise AutosamError("give the model as -m MODEL_FOLDER, or as -d DATASET -c CONFIGURATION [-tr] [-p]")
    return model_folder_of(args.dataset, args.configuration, args.trainer, args.plans)


def run(args: argparse.Namespace) -> int:
    opts = FitOptions(frozen=args.frozen, max_cases=args.max_cases, min_gain=args.min_gain, sign_test=args.sign_test,
                      max_objects=args.max_objects, small_grid=args.small_grid, adapt=args.adapt,
                      adapt_epochs=args.adapt_epochs, adapt_iterations=args.adapt_iterations, seed=args.seed)
    fit(model_folder(args), opts, SamSpec.from_args(args), Runtime.from_args(args), folds=args.folds,
        dry_run=args.dry_run, parallel=parallel_from_args(args))
    return 0
