"""``autosam oracle``: SAM with boxes taken from reference labels (the ceiling for automatic prompts)."""
from __future__ import annotations

import argparse
from pathlib import Path

from .. import io
from ..pipelines.oracle import oracle_folder
from .common import (add_parallel_arguments, add_sam_arguments, parallel_from_args, predictor_maker,
                     sam_args_record)
from .options import Margin, add_dataset_arguments, add_margin_argument, dataset_json_from_args, resolve_margin

HELP = "segment with boxes taken from reference labels (the upper bound of automatic prompting)"


def add_parser(sub) -> None:
    p = sub.add_parser("oracle", help=HELP, description=HELP)
    p.add_argument("-i", "--images", required=True, help="nnU-Net image folder (imagesTr/imagesTs layout)")
    p.add_argument("-l", "--labels", required=True, help="reference label folder (<case><file_ending>)")
    p.add_argument("-o", "--output", required=True, help="output folder (nnU-Net prediction layout)")
    add_dataset_arguments(p, what=" (default: the one beside the image folder, or beside the label folder)")
    add_margin_argument(p, default=Margin(0.0, "mm"))
    p.add_argument("--overwrite", action="store_true", help="redo cases whose output already exists")
    add_sam_arguments(p)
    add_parallel_arguments(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    images, labels = Path(args.images), Path(args.labels)
    margin = resolve_margin(args)
    parallel = parallel_from_args(args)
    info = io.load_dataset_json(io.find_dataset_json(dataset_json_from_args(args), images=images, labels=labels))
    record = {"verb": "oracle", "images": str(images), "labels": str(labels), "margin": str(margin),
              **sam_args_record(args)}
    oracle_folder(images, labels, args.output, info, predictor_maker(args), args.axis, margin.value,
                  args.overwrite, record, parallel, margin_unit=margin.unit)
    print(f"wrote {args.output}")
    return 0
