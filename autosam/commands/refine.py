"""``autosam refine``: SAM prompted from a coarse nnU-Net-style prediction folder, fused back, nnU-Net layout out."""
from __future__ import annotations

import argparse
from pathlib import Path

from .. import io
from ..errors import AutosamError
from ..pipelines.refine import refine_folder
from ..settings.model import Settings
from .common import (add_output_arguments, add_parallel_arguments, add_qc_arguments, add_refine_arguments,
                     add_sam_arguments, output_options, parallel_from_args, quality_from_args, sam_args_record)
from .options import add_dataset_arguments, dataset_json_from_args

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
    add_qc_arguments(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    images, coarse = Path(args.images), Path(args.coarse)
    if not coarse.is_dir():
        raise AutosamError(f"coarse folder not found: {coarse}")
    info = io.load_dataset_json(io.find_dataset_json(dataset_json_from_args(args), predictions=coarse,
                                                     images=images))
    settings = Settings.from_args(args)
    parallel = parallel_from_args(args)
    qc = quality_from_args(args, info)
    written = refine_folder(images, coarse, args.output, info, settings.maker(), settings.refine,
                            **output_options(args), run_args=sam_args_record(args, settings), parallel=parallel,
                            qc=qc)
    print(f"refined {len(written)} case(s) -> {args.output}")
    return 0
