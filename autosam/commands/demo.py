"""``autosam demo``: the whole loop on the sample shipped inside the package, with Dice per label."""
from __future__ import annotations

import argparse
from pathlib import Path

from .. import evaluation, io
from ..sample import SAMPLE_NAMES, sample_dataset
from .common import add_sam_arguments, predictor_from_args, sam_args_record
from .oracle import oracle_folder

HELP = "run SAM on the bundled sample (boxes from its labels) and print Dice per label"


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help=HELP, description=HELP)
    p.add_argument("-o", "--output", default="autosam_demo", help="output folder (default ./autosam_demo)")
    p.add_argument("--sample", nargs="+", default=list(SAMPLE_NAMES), choices=SAMPLE_NAMES,
                   help="which sample datasets (default: all)")
    p.add_argument("--max-cases", type=int, default=2, help="cases per sample dataset (default 2; 0 = all)")
    p.add_argument("--overwrite", action="store_true", help="redo cases whose output already exists")
    add_sam_arguments(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    predictor = predictor_from_args(args)
    for name in args.sample:
        root = sample_dataset(name)
        info = io.load_dataset_json(root)
        cases = io.list_cases(root / "imagesTr", info.file_ending, info.num_channels)
        chosen = sorted(cases)[: args.max_cases or None]
        images = Path(args.output) / name / "imagesTs"  # the chosen subset, linked, so the run stays resumable
        images.mkdir(parents=True, exist_ok=True)
        for case in chosen:
            for f in cases[case]:
                link = images / f.name
                if not link.exists():
                    link.symlink_to(f.resolve())
        out = Path(args.output) / name / "prediction"
        record = {"verb": "demo", "sample": name, "cases": chosen, **sam_args_record(args)}
        oracle_folder(images, root / "labelsTr", out, info, predictor, args.axis, 0.0, args.overwrite, record)
        summary = evaluation.nnunet_summary(root / "labelsTr", out, info, out / "summary.json")
        print(f"\n{name}: LiteMedSAM with label boxes ({len(chosen)} case(s)) -> {out}"
              if args.sam == "litemedsam" else f"\n{name}: {args.sam} with label boxes -> {out}")
        print(evaluation.dice_table(summary, info))
    return 0
