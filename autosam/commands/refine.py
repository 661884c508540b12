"""``autosam refine``: SAM prompted from a coarse nnU-Net-style prediction folder, fused back, nnU-Net layout out."""
from __future__ import annotations

import argparse
from dataclasses import asdict
from pathlib import Path

from .. import io
from ..errors import AutosamError
from ..fusion import AUTO, fusion_strategies
from ..prompts import prompt_strategies
from ..refine import FUSION_OPTIONS as TAKES, RefineConfig, refine_folder
from .common import (add_output_arguments, add_parallel_arguments, add_sam_arguments, output_options,
                     parallel_from_args, predictor_from_args, sam_args_record)
from .options import Margin, add_dataset_arguments, add_margin_argument, dataset_json_from_args, resolve_margin

HELP = "refine a coarse (nnU-Net) prediction folder with SAM"


def add_parser(sub) -> None:
    p = sub.add_parser("refine", help=HELP, description=HELP + ". COARSE needs <case><file_ending> label maps and a "
                       "dataset.json; <case>.npz probabilities (nnUNetv2_predict --save_probabilities) and "
                       "plans.json are used when present.")
    p.add_argument("-i", "--images", required=True, help="nnU-Net image folder (<case>_0000<file_ending> ...)")
    p.add_argument("-c", "--coarse", required=True, help="coarse prediction folder (nnU-Net output or hand-made)")
    p.add_argument("-o", "--output", required=True, help="output folder (nnU-Net prediction layout)")
    add_dataset_arguments(p, what=" (default: the coarse folder's, else the one beside the image folder)")
    add_refine_arguments(p)
    add_output_arguments(p)
    add_sam_arguments(p)
    add_parallel_arguments(p)
    p.set_defaults(run=run)


def add_refine_arguments(parser: argparse.ArgumentParser, coarse: str = "coarse") -> None:
    """The prompt and fusion options of :class:`RefineConfig` (shared by the verbs that refine with SAM);
    read them back with :func:`config_from_args`. ``coarse`` names the coarse source in the help texts."""
    d = RefineConfig()
    g = parser.add_argument_group("prompts and fusion")
    g.add_argument("--prompt", default=d.prompt, choices=list(prompt_strategies),
                   help=f"prompt strategy (default {d.prompt})")
    g.add_argument("--fusion", default=d.fusion, choices=[*fusion_strategies, AUTO],
                   help=f"how SAM's answer is fused with the {coarse} map (default {d.fusion}: average where the "
                        f"{coarse} map has probabilities, gated on a hard label map)")
    add_margin_argument(g, default=Margin(d.margin, d.margin_unit), unit_option=True,
                        help_extra="; mm uses the case spacing")
    g.add_argument("--min-size", type=int, default=d.min_size,
                   help=f"components smaller than this many pixels get no prompt (default {d.min_size})")
    g.add_argument("--positive-points", type=int, default=d.n_positive,
                   help=f"positive points per component for point strategies (default {d.n_positive})")
    g.add_argument("--negative-points", type=int, default=d.n_negative,
                   help=f"negative points per component for point strategies (default {d.n_negative})")
    g.add_argument("--max-objects", type=int, default=d.max_objects,
                   help="prompt at most this many components per label and slice, the largest (default 0: all)")
    g.add_argument("--box-hypotheses", action="store_true",
                   help="decode each box at three scales and keep the mask SAM rates highest (predicted IoU)")
    g.add_argument("--rebox", type=int, default=d.rebox,
                   help="redraw each box around SAM's own mask and decode again, this many times (default 0)")
    g.add_argument("--planes", action="store_true",
                   help="refine 3D volumes along each of their three axes and average the three results (three "
                        "times SAM's cost; for near-isotropic volumes; not with --axis)")
    g.add_argument("--no-fill-gaps", action="store_true",
                   help="do not prompt a slice that misses a class present on both neighbouring slices")
    g.add_argument("--weight", type=float, default=None, help="SAM's weight for --fusion average (default 0.5)")
    g.add_argument("--min-iou", type=float, default=None, help="SAM's predicted IoU needed by --fusion gated (0.8)")
    g.add_argument("--min-agreement", type=float, default=None,
                   help=f"Dice with the {coarse} slice needed by --fusion gated (default 0.5)")


#: fusion options -> the strategy that uses them, for messages (what each strategy takes, ``auto`` included:
#: ``refine.FUSION_OPTIONS``)
FUSION_OPTIONS = {"weight": "average", "min_iou": "gated", "min_agreement": "gated"}


def check_applicable(args: argparse.Namespace, prompt: str, fusion: str) -> None:
    """Refuse options given on the command line that the chosen prompt strategy or fusion would ignore."""
    given = getattr(args, "given", None)
    given = set(vars(args)) if given is None else given
    for option, strategy in FUSION_OPTIONS.items():
        if option in given and getattr(args, option) is not None and option not in TAKES.get(fusion, ()):
            raise AutosamError(f"--{option.replace('_', '-')} applies to --fusion {strategy} only (fusion is "
                               f"{fusion})")
    if "axis" in given and getattr(args, "axis", None) is not None and getattr(args, "planes", False):
        raise AutosamError("--axis does not apply with --planes (every axis is refined); give one of them")
    for option in ("positive_points", "negative_points"):
        if option in given and "points" not in prompt:
            raise AutosamError(f"--{option.replace('_', '-')} applies to prompt strategies with points "
                               f"(box+points, box+points+mask, points); the prompt strategy is {prompt}")


def config_from_args(args: argparse.Namespace, check: bool = True) -> RefineConfig:
    """The :class:`RefineConfig` of options added by :func:`add_refine_arguments` (and ``--axis``); ``check``
    refuses options that the chosen strategies would ignore."""
    if check:
        check_applicable(args, args.prompt, args.fusion)
    margin = resolve_margin(args, old_unit=getattr(args, "margin_unit", None) or "mm")
    options = {k: v for k, v in (("weight", args.weight), ("min_iou", args.min_iou),
                                 ("min_agreement", args.min_agreement)) if v is not None}
    return RefineConfig(prompt=args.prompt, fusion=args.fusion, margin=margin.value, margin_unit=margin.unit,
                        min_size=args.min_size, axis=args.axis, fusion_options=options,
                        n_positive=args.positive_points, n_negative=args.negative_points,
                        fill_gaps=not args.no_fill_gaps, max_objects=args.max_objects,
                        box_hypotheses=args.box_hypotheses, rebox=args.rebox, planes=args.planes)


#: options of :func:`add_refine_arguments` -> the :class:`RefineConfig` field each sets
REFINE_FIELDS = {"prompt": "prompt", "fusion": "fusion", "margin": "margin", "margin_unit": "margin_unit",
                 "min_size": "min_size", "axis": "axis", "positive_points": "n_positive",
                 "negative_points": "n_negative", "no_fill_gaps": "fill_gaps", "max_objects": "max_objects",
                 "box_hypotheses": "box_hypotheses", "rebox": "rebox", "planes": "planes"}
SAM_MODEL_OPTIONS = ("sam", "checkpoint", "adapter")


def config_from_record(args: argparse.Namespace, recorded: dict) -> RefineConfig:
    """The recorded SAM settings (``autosam_sam.json`` of an nnU-Net AutoSAM trainer: backend, checkpoint, adapter
    and refine fields), overridden by the options the command line gave (``args.given``, set by
    :func:`autosam.cli.main`; without it every option counts as given). Sets ``args.sam/checkpoint/adapter``."""
    given = getattr(args, "given", None)
    if given is None:
        return config_from_args(args)
    cli = asdict(config_from_args(args, check=False))
    fields = dict(recorded["refine"])
    for option, name in REFINE_FIELDS.items():
        if option in given:
            fields[name] = cli[name]
    if "margin" in given:  # a margin carries its unit
        fields["margin_unit"] = cli["margin_unit"]
    check_applicable(args, fields["prompt"], fields["fusion"])
    applicable = TAKES.get(fields["fusion"], ())
    options = {k: v for k, v in (fields.get("fusion_options") or {}).items() if k in applicable}
    options.update({k: getattr(args, k) for k in ("weight", "min_iou", "min_agreement") if k in given})
    fields["fusion_options"] = options
    for key in SAM_MODEL_OPTIONS:
        if key not in given:
            setattr(args, key, recorded.get(key))
    return RefineConfig(**fields)


def sam_overrides(args: argparse.Namespace, extra: tuple = ()) -> list[str]:
    """The SAM options (refine fields, fusion options, and ``extra``) given on the command line, sorted: given
    ones win over a recorded configuration, and any of them switches SAM on where "no SAM" was recorded."""
    given = getattr(args, "given", None) or set()
    return sorted(o for o in given if o in REFINE_FIELDS or o in FUSION_OPTIONS or o in extra)


def run(args: argparse.Namespace) -> int:
    images, coarse = Path(args.images), Path(args.coarse)
    if not coarse.is_dir():
        raise AutosamError(f"coarse folder not found: {coarse}")
    info = io.load_dataset_json(io.find_dataset_json(dataset_json_from_args(args), predictions=coarse,
                                                     images=images))
    config = config_from_args(args)
    parallel = parallel_from_args(args)
    written = refine_folder(images, coarse, args.output, info, lambda: predictor_from_args(args), config,
                            **output_options(args), run_args=sam_args_record(args), parallel=parallel)
    print(f"refined {len(written)} case(s) -> {args.output}")
    return 0
