"""``autosam segment``: fully automatic segmentation: a trained prompter's coarse map -> SAM -> nnU-Net layout."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import AutosamError
from ..pipelines.segment import images_info, segment_folder
from ..settings.model import Settings
from .common import (NO_SAM_QC, add_output_arguments, add_parallel_arguments, add_qc_arguments,
                     add_refine_arguments, add_sam_arguments, output_options, parallel_from_args, quality_from_args,
                     sam_args_record, sam_overrides)
from .options import add_dataset_arguments, dataset_json_from_args
from ..progress import notice

HELP = "segment images fully automatically: a learned prompter prompts SAM (no nnU-Net model needed)"


def add_parser(sub) -> None:
    from ..prompter import shipped_prompters

    shipped = ", ".join(shipped_prompters()) or "none"
    p = sub.add_parser("segment", help=HELP, description=HELP + ". Output as in 'autosam refine'.")
    p.add_argument("-i", "--images", required=True, help="nnU-Net image folder (<case>_0000<file_ending> ...)")
    p.add_argument("-o", "--output", required=True, help="output folder (nnU-Net prediction layout)")
    p.add_argument("--prompter", required=True,
                   help=f"folder written by 'autosam train-prompter', or a shipped prompter ({shipped})")
    add_dataset_arguments(p, what=" of the images (default: the one beside the image folder, else the "
                                  "prompter's); its channels and labels must match the prompter's")
    p.add_argument("--no-sam", action="store_true",
                   help="write the prompter's own coarse segmentation (no SAM)")
    p.add_argument("--use-sam", action="store_true",
                   help="refine with SAM even where the prompter's tuned default is 'no SAM' (prompt and fusion "
                        "options given here also turn SAM on)")
    add_refine_arguments(p, coarse="prompter's")
    add_output_arguments(p)
    add_sam_arguments(p)
    add_parallel_arguments(p)
    add_qc_arguments(p, no_sam=";" + NO_SAM_QC.format(what="prompter's") + " (also with --no-sam)")
    p.set_defaults(run=run)


def choose_configuration(args: argparse.Namespace, prompter) -> tuple[Settings, str]:
    """SAM's settings (``refine`` None: no SAM) and where they came from: ``--no-sam``; else the prompter's tuned
    ``autosam_sam.json`` (see :mod:`autosam.prompter.tuning`) with the options given here winning; else the
    built-in defaults."""
    from ..prompter.tuning import recorded_default

    if args.no_sam:
        if args.use_sam:
            raise AutosamError("--no-sam and --use-sam exclude each other")
        return Settings.from_args(args, check=False).with_sam(False), "command line (--no-sam)"
    recorded, source = recorded_default(prompter, getattr(args, "adapter", None))
    if recorded is None:
        return Settings.from_args(args), source
    settings = recorded.merged(args)
    overrides = sam_overrides(args, extra=("sam", "adapter"))
    if overrides:
        source += "; command line: " + ", ".join("--" + o.replace("_", "-") for o in overrides)
    if args.use_sam or overrides:
        settings = settings.with_sam(True)
    return settings, source


def run(args: argparse.Namespace) -> int:
    from ..prompter import Prompter
    from ..sam import resolve_device

    parallel = parallel_from_args(args)
    prompter = Prompter.load(args.prompter, device="cpu" if parallel.distributed else str(resolve_device(args.device)))
    images = Path(args.images)
    info = images_info(images, prompter, dataset_json_from_args(args))
    settings, source = choose_configuration(args, prompter)
    config = settings.refine
    qc = quality_from_args(args, info)
    if args.no_sam and prompter.mode == "embedding":
        notice("note: an embedding-mode prompter always runs SAM's decoder; --no-sam skips only the box refinement")
    what = "no SAM (the prompter's map)" if config is None else f"SAM {config.prompt}/{config.fusion}"
    run_args = {**sam_args_record(args, settings), "configuration_source": source}
    written = segment_folder(images, args.output, prompter, info, settings.maker(), config,
                             **output_options(args), run_args=run_args, device=args.device, parallel=parallel,
                             announce=f"configuration: {what}; from {source}", qc=qc)
    print(f"segmented {len(written)} case(s) -> {args.output}")
    return 0
