"""``autosam report``: one HTML page to look at a prediction folder, worst cases first."""
from __future__ import annotations

import argparse
import math
from pathlib import Path

from .. import report
from ..errors import AutosamError
from .options import add_dataset_arguments, dataset_json_from_args

HELP = "write an HTML report of a prediction folder: overlays, scores per case (worst first), summary plots"


def add_parser(sub) -> None:
    p = sub.add_parser("report", help=HELP, description=HELP + ". Needs matplotlib (pip install 'autosam[report]'). "
                       "Images are embedded in the page, so the one file can be moved or shared.")
    p.add_argument("pred_dir", metavar="PRED", help="prediction folder (<case><file_ending>; refined with --coarse)")
    p.add_argument("-o", "--output", default=None, help="HTML file to write (default PRED/report.html)")
    p.add_argument("--gt", default=None, metavar="LABELS",
                   help="reference label folder: adds Dice, NSD and HD95 per case and label, worst case first")
    p.add_argument("--coarse", default=None, metavar="COARSE",
                   help="coarse prediction folder SAM refined: its contours, its scores, the share SAM changed")
    p.add_argument("-i", "--images", default=None,
                   help="image folder (<case>_0000<file_ending> ...); default: imagesXx beside a labelsXx --gt, "
                        "else contours on black")
    add_dataset_arguments(p, what=" (default: PRED's, else COARSE's, else beside or in -i, else beside or in --gt)")
    p.add_argument("--tolerance-mm", type=float, default=1.0, help="NSD tolerance in mm (default 1.0)")
    p.add_argument("--axis", type=int, default=None, choices=(0, 1, 2),
                   help="slice 3D volumes along this axis of (Z, Y, X); default: the coarsest-spacing axis")
    p.add_argument("--title", default=None, help="page title (default: 'autosam report: <PRED folder name>')")
    p.add_argument("--overwrite", action="store_true", help="replace an existing report file")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    report.require_matplotlib()
    pred = Path(args.pred_dir)
    output = Path(args.output) if args.output else pred / "report.html"
    if output.exists() and not args.overwrite:
        raise AutosamError(f"{output} exists; use --overwrite to replace it")
    result = report.build_report(pred, output, gt_dir=args.gt, coarse_dir=args.coarse, images_dir=args.images,
                                 dataset_json=dataset_json_from_args(args), tolerance_mm=args.tolerance_mm, axis=args.axis,
                                 title=args.title)
    worst = result.worst
    detail = ""
    if worst is not None and result.has_reference and not math.isnan(worst.mean_dice):
        detail = f"; worst: {worst.case_id} (mean Dice {worst.mean_dice:.3f})"
    elif worst is not None and result.has_quality and worst.quality is not None:
        detail = f"; worst predicted: {worst.case_id} (predicted Dice {worst.quality.mean_predicted:.3f})"
    elif worst is not None and result.has_coarse:
        detail = f"; most changed: {worst.case_id} ({100 * worst.changed['all']:.1f}% of the foreground)"
    print(f"wrote {output} ({len(result.cases)} case{'s' if len(result.cases) != 1 else ''}{detail})")
    return 0
