"""``autosam evaluate``: nnU-Net's summary.json (Dice, IoU ...) plus NSD and HD95, and a one-screen table."""
from __future__ import annotations

import argparse
from pathlib import Path

from .. import evaluation, io
from ..errors import AutosamError
from .options import add_dataset_arguments, dataset_json_from_args

HELP = "score a prediction folder against reference labels (nnU-Net summary + NSD + HD95)"


def add_parser(sub) -> None:
    p = sub.add_parser("evaluate", help=HELP, description=HELP + ". Writes nnU-Net's summary.json format with NSD "
                       "and HD95 added per case and label.")
    p.add_argument("gt_dir", help="reference label folder (<case><file_ending>)")
    p.add_argument("pred_dir", help="prediction folder (<case><file_ending>)")
    p.add_argument("-o", "--output", default=None, help="summary file (default PRED_DIR/summary.json)")
    add_dataset_arguments(p, what=" (default: the prediction folder's, else beside or in GT_DIR)")
    p.add_argument("--tolerance-mm", type=float, default=1.0, help="NSD tolerance in mm (default 1.0)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing summary file")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    gt, pred = Path(args.gt_dir), Path(args.pred_dir)
    if not pred.is_dir():
        raise AutosamError(f"prediction folder not found: {pred}")
    info = io.load_dataset_json(io.find_dataset_json(dataset_json_from_args(args), predictions=pred, labels=gt))
    output = Path(args.output) if args.output else pred / "summary.json"
    if output.suffix != ".json":
        raise AutosamError(f"{output}: the summary file must end with .json")
    if output.exists() and not args.overwrite:
        raise AutosamError(f"{output} exists; use --overwrite to replace it")
    summary = evaluation.evaluate_folder(gt, pred, info, output, tolerance_mm=args.tolerance_mm)
    print(evaluation.summary_table(summary, info))
    print(f"wrote {output}")
    return 0
