"""``autosam refine``: SAM prompted from a coarse nnU-Net-style prediction folder, fused back, nnU-Net layout out."""
from __future__ import annotations

import argparse
from pathlib import Path

from .. import io
from ..errors import AutosamError
from ..fusion import fusion_strategies
from ..prompts import prompt_strategies
from ..refine import RefineConfig, refine_folder
from .common import add_sam_arguments, predictor_from_args, sam_args_record

HELP = "refine a coarse (nnU-Net) prediction folder with SAM"


def add_parser(sub) -> None:
    p = sub.add_parser("refine", help=HELP, description=HELP + ". COARSE needs <case><file_ending> label maps and a "
                       "dataset.json; <case>.npz probabilities (nnUNetv2_predict --save_probabilities) and "
                       "plans.json are used when present.")
    p.add_argument("-i", "--images", required=True, help="nnU-Net image folder (<case>_0000<file_ending> ...)")
    p.add_argument("-c", "--coarse", required=True, help="coarse prediction folder (nnU-Net output or hand-made)")
    p.add_argument("-o", "--output", required=True, help="output folder (nnU-Net prediction layout)")
    p.add_argument("-d", "--dataset-json", default=None,
                   help="dataset.json (default: the coarse folder's, else the one beside the image folder)")
    add_refine_arguments(p)
    p.add_argument("--save-probabilities", action="store_true",
                   help="also write <case>.npz (key 'probabilities') and <case>.pkl, as nnU-Net does")
    p.add_argument("--overwrite", action="store_true", help="redo cases whose output already exists")
    add_sam_arguments(p)
    p.set_defaults(run=run)


def add_refine_arguments(parser: argparse.ArgumentParser, coarse: str = "coarse") -> None:
    """The prompt and fusion options of :class:`RefineConfig` (shared by the verbs that refine with SAM);
    read them back with :func:`config_from_args`. ``coarse`` names the coarse source in the help texts."""
    d = RefineConfig()
    g = parser.add_argument_group("prompts and fusion")
    g.add_argument("--prompt", default=d.prompt, choices=list(prompt_strategies),
                   help=f"prompt strategy (default {d.prompt})")
    g.add_argument("--fusion", default=d.fusion, choices=list(fusion_strategies),
                   help=f"how SAM's answer is fused with the {coarse} map (default {d.fusion})")
    g.add_argument("--margin", type=float, default=d.margin, help=f"box margin (default {d.margin:g})")
    g.add_argument("--margin-unit", default=d.margin_unit, choices=("mm", "px"),
                   help=f"unit of --margin (default {d.margin_unit}; uses the case spacing)")
    g.add_argument("--min-size", type=int, default=d.min_size,
                   help=f"components smaller than this many pixels get no prompt (default {d.min_size})")
    g.add_argument("--positive-points", type=int, default=d.n_positive,
                   help=f"positive points per component for point strategies (default {d.n_positive})")
    g.add_argument("--negative-points", type=int, default=d.n_negative,
                   help=f"negative points per component for point strategies (default {d.n_negative})")
    g.add_argument("--no-fill-gaps", action="store_true",
                   help="do not prompt a slice that misses a class present on both neighbouring slices")
    g.add_argument("--weight", type=float, default=None, help="SAM's weight for --fusion average (default 0.5)")
    g.add_argument("--min-iou", type=float, default=None, help="SAM's predicted IoU needed by --fusion gated (0.8)")
    g.add_argument("--min-agreement", type=float, default=None,
                   help=f"Dice with the {coarse} slice needed by --fusion gated (default 0.5)")


def find_dataset_json(coarse: Path, images: Path) -> Path:
    """The coarse folder's dataset.json, else the one beside (or in) the image folder."""
    for folder in (coarse, images.parent, images):
        if (folder / "dataset.json").is_file():
            return folder / "dataset.json"
    raise AutosamError(f"dataset.json not found in the coarse folder {coarse} nor beside {images}; pass it with -d")


def config_from_args(args: argparse.Namespace) -> RefineConfig:
    """The :class:`RefineConfig` of options added by :func:`add_refine_arguments` (and ``--axis``)."""
    options = {k: v for k, v in (("weight", args.weight), ("min_iou", args.min_iou),
                                 ("min_agreement", args.min_agreement)) if v is not None}
    return RefineConfig(prompt=args.prompt, fusion=args.fusion, margin=args.margin, margin_unit=args.margin_unit,
                        min_size=args.min_size, axis=args.axis, fusion_options=options,
                        n_positive=args.positive_points, n_negative=args.negative_points,
                        fill_gaps=not args.no_fill_gaps)


#: options of :func:`add_refine_arguments` -> the :class:`RefineConfig` field each sets
REFINE_FIELDS = {"prompt": "prompt", "fusion": "fusion", "margin": "margin", "margin_unit": "margin_unit",
                 "min_size": "min_size", "axis": "axis", "positive_points": "n_positive",
                 "negative_points": "n_negative", "no_fill_gaps": "fill_gaps"}
SAM_MODEL_OPTIONS = ("sam", "checkpoint", "adapter")


def config_from_record(args: argparse.Namespace, recorded: dict) -> RefineConfig:
    """The recorded SAM settings (``autosam_sam.json`` of an nnU-Net AutoSAM trainer: backend, checkpoint, adapter
    and refine fields), overridden by the options the command line gave (``args.given``, set by
    :func:`autosam.cli.main`; without it every option counts as given). Sets ``args.sam/checkpoint/adapter``."""
    given = getattr(args, "given", None)
    if given is None:
        return config_from_args(args)
    cli = config_from_args(args).to_dict()
    fields = dict(recorded["refine"])
    for option, name in REFINE_FIELDS.items():
        if option in given:
            fields[name] = cli[name]
    options = dict(fields.get("fusion_options") or {})
    options.update({k: getattr(args, k) for k in ("weight", "min_iou", "min_agreement") if k in given})
    fields["fusion_options"] = options
    for key in SAM_MODEL_OPTIONS:
        if key not in given:
            setattr(args, key, recorded.get(key))
    return RefineConfig(**fields)


def run(args: argparse.Namespace) -> int:
    images, coarse = Path(args.images), Path(args.coarse)
    if not coarse.is_dir():
        raise AutosamError(f"coarse folder not found: {coarse}")
    info = io.load_dataset_json(args.dataset_json or find_dataset_json(coarse, images))
    config = config_from_args(args)
    written = refine_folder(images, coarse, args.output, info, lambda: predictor_from_args(args), config,
                            save_probabilities=args.save_probabilities, overwrite=args.overwrite,
                            run_args=sam_args_record(args))
    print(f"refined {len(written)} case(s) -> {args.output}")
    return 0
