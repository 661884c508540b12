"""``autosam predict``: nnU-Net's prediction (softmax kept in memory) refined with SAM, written in nnU-Net's layout."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional, Sequence

from ..nnunet import inference as nnunet
from ..errors import AutosamError
from ..qc import QUALITY_FILE
from ..pipelines.predict import pipelined, predict_folder
from ..sam.predictor import resolve_device
from ..settings import recorded_files
from ..settings.model import Settings, load_recorded
from .common import (NO_SAM_QC, add_output_arguments, add_parallel_arguments, add_qc_arguments,
                     add_refine_arguments, add_sam_arguments, output_options, parallel_from_args, quality_from_args,
                     sam_args_record, sam_overrides)
from ..progress import notice

#: ``--nnunet-processes`` on a GPU unless given: nnUNetv2_predict's default ``-npp``.
GPU_PROCESSES = 3
HELP = "predict with a trained nnU-Net model and refine its output with SAM"


def add_parser(sub) -> None:
    p = sub.add_parser("predict", help=HELP, description=HELP + ". MODEL is nnU-Net's "
                       "nnUNet_results/DatasetXXX_Name/Trainer__Plans__configuration folder; nnU-Net's softmax goes "
                       "to SAM in memory (no intermediate files). The output folder has nnU-Net's layout, so "
                       "nnUNetv2_evaluate_folder, nnUNetv2_ensemble and nnUNetv2_apply_postprocessing read it.")
    p.add_argument("-m", "--model", required=True, help="trained nnU-Net model folder (Trainer__Plans__configuration)")
    p.add_argument("-i", "--images", required=True, help="image folder (<case>_0000<file_ending> ...)")
    p.add_argument("-o", "--output", required=True, help="output folder (nnU-Net prediction layout)")
    p.add_argument("-f", "--folds", nargs="+", default=None,
                   help="folds to ensemble (numbers or 'all'; default: every fold with the checkpoint)")
    p.add_argument("-chk", "--nnunet-checkpoint", default="checkpoint_final.pth",
                   help="checkpoint file name inside each fold folder (default checkpoint_final.pth)")
    p.add_argument("--step-size", type=float, default=0.5,
                   help="nnU-Net sliding-window step as a fraction of the patch (default 0.5)")
    p.add_argument("--disable-tta", action="store_true", help="no mirroring test-time augmentation in nnU-Net")
    p.add_argument("-npp", "--nnunet-processes", type=int, default=None, metavar="N",
                   help="processes for nnU-Net's preprocessing, reading as many cases ahead, as nnUNetv2_predict "
                        f"-npp (default {GPU_PROCESSES} on a GPU; 0 on the CPU, where the network takes every core "
                        "and the next case is preprocessed in a thread)")
    add_refine_arguments(p, coarse="nnU-Net")
    p.add_argument("--ignore-recorded", action="store_true",
                   help="a model trained with nnUNetTrainerAutoSAM recorded its SAM settings (backend, adapter, "
                        "prompts, fusion) in fold_X/autosam_sam.json; they are used unless given here or this is set")
    add_output_arguments(p)
    add_sam_arguments(p)
    add_parallel_arguments(p)
    add_qc_arguments(p, no_sam=";" + NO_SAM_QC.format(what="nnU-Net"),
                     default_model=f" (default: MODEL/{QUALITY_FILE} when it exists, which also switches --qc on)")
    p.set_defaults(run=run)


def recorded_settings(model: Path, folds: Sequence[str]) -> Optional[tuple[Path, Settings]]:
    """``(file, settings)`` recorded by the nnU-Net AutoSAM trainer in the folds' ``autosam_sam.json`` (or by
    ``autosam fit`` in the model folder), or None."""
    try:
        settings = load_recorded(model, folds)
    except AutosamError as e:
        raise AutosamError(f"{e}; to predict without the recorded settings, pass --ignore-recorded") from None
    if settings is None:
        return None
    return recorded_files(model, folds)[0], settings


def nnunet_processes(args: argparse.Namespace) -> int:
    """``--nnunet-processes`` (checked at parse time); unless given, :data:`GPU_PROCESSES` on a GPU and 0 on the
    CPU."""
    if args.nnunet_processes is not None:
        return args.nnunet_processes
    return GPU_PROCESSES if resolve_device(args.device).type == "cuda" else 0


def choose_configuration(args: argparse.Namespace, model: Path,
                         folds: Sequence[str]) -> tuple[Settings, Optional[Path]]:
    """SAM's settings (``refine`` None: nnU-Net alone) and the settings file they were read from (None: the command
    line): the folds' recorded settings unless ``--ignore-recorded``, with the options given here winning. Says on
    stderr which recorded settings are used."""
    recorded = None if args.ignore_recorded else recorded_settings(model, folds)
    settings = Settings.from_args(args) if recorded is None else recorded[1].merged(args)
    settings.config().check()
    if recorded is None:
        return settings, None
    if sam_overrides(args):  # given SAM options switch SAM on where the validation chose "no SAM"
        settings = settings.with_sam(True)
    config = settings.refine
    chosen = "no SAM (nnU-Net alone)" if config is None else f"prompt={config.prompt}, fusion={config.fusion}"
    notice(f"autosam predict: using the SAM settings recorded in {recorded[0]} (options given here override "
          f"them; --ignore-recorded skips them): SAM {settings.sam.name}"
          + "".join(f", {k}={getattr(settings.sam, k)}" for k in ("checkpoint", "adapter") if getattr(settings.sam, k))
           + f"; {chosen}")
    return settings, recorded[0]


def run(args: argparse.Namespace) -> int:
    processes = nnunet_processes(args)
    model = nnunet.check_model_folder(args.model)
    info = nnunet.model_dataset_info(model)
    folds = nnunet.resolve_folds(model, args.folds, args.nnunet_checkpoint)
    settings, recorded = choose_configuration(args, model, folds)
    config = settings.refine
    # fit's quality model was calibrated on fit's recorded choice: not the default when that record is ignored
    qc = quality_from_args(args, info, default=None if args.ignore_recorded else model / QUALITY_FILE)
    if qc is not None and qc.model is not None and not args.quality_model:
        notice(f"autosam predict: quality control with the quality model {model / QUALITY_FILE} (--qc on; "
               "--quality-model picks another)")

    def make_nnunet():
        return nnunet.load_nnunet_predictor(model, folds, args.nnunet_checkpoint, args.device,
                                            tile_step_size=args.step_size, use_mirroring=not args.disable_tta)

    record = {"verb": "predict", "model": str(model.resolve()), "folds": folds,
              "nnunet_checkpoint": args.nnunet_checkpoint, "step_size": args.step_size,
              "disable_tta": args.disable_tta, "images": str(Path(args.images)),
              "save_probabilities": args.save_probabilities,
              "recorded_settings": str(recorded) if recorded else None, **sam_args_record(args, settings)}
    parallel = parallel_from_args(args)
    written = predict_folder(args.images, args.output, make_nnunet, info, settings.maker(),
                             config, **output_options(args), run_args=record, plans=model / "plans.json",
                             model_dir=model, parallel=parallel, nnunet_processes=processes,
                             pipeline=pipelined(config if qc is None else settings.config(), args.device, processes),
                             qc=qc)
    print(f"predicted and refined {len(written)} case(s) -> {args.output}")
    return 0
