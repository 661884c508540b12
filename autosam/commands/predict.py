"""``autosam predict``: nnU-Net's prediction (softmax kept in memory) refined with SAM, written in nnU-Net's layout."""
from __future__ import annotations

import argparse
import os
import sys
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from .. import io
from ..nnunet import inference as nnunet
from ..errors import AutosamError
from ..refine import RefineConfig, refine_case
from ..runner import CaseJob, CaseOutput, CaseRunner
from ..sam import SamPredictor
from ..sam.predictor import resolve_device
from .common import (add_output_arguments, add_parallel_arguments, add_sam_arguments, output_options,
                     parallel_from_args, predictor_from_args, sam_args_record)
from .refine import add_refine_arguments, config_from_args, config_from_record, sam_overrides

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
    p.set_defaults(run=run)


@dataclass
class PredictJob(CaseJob):
    """One case of ``predict``: nnU-Net's prediction (``make_nnunet()``) refined with SAM (``make_predictor()``);
    both models are built once per process."""

    make_nnunet: Callable[[], object]
    make_predictor: Callable[[], SamPredictor]
    info: io.DatasetInfo
    config: Optional[RefineConfig]  # None: no SAM (nnU-Net's own prediction)
    nnunet_processes: int = 0  # > 0: nnU-Net's preprocessing in that many processes, as many cases ahead
    _nnunet: Any = field(default=None, init=False, repr=False)
    _sam: Any = field(default=None, init=False, repr=False)
    _pool: Any = field(default=None, init=False, repr=False)

    def nnunet(self):
        """nnU-Net's predictor, built on first use."""
        if self._nnunet is None:
            self._nnunet = self.make_nnunet()
        return self._nnunet

    def setup(self) -> None:
        self.nnunet()
        self._sam = self.make_predictor() if self.config is not None else None

    @property
    def read_ahead(self) -> int:
        return max(1, self.nnunet_processes)

    def prefetch(self, case: io.Case) -> None:
        """nnU-Net's preprocessing of the cases ahead while the current one is predicted (once nnU-Net is loaded):
        in this read-ahead thread, or handed to ``nnunet_processes`` worker processes (a future)."""
        if self._nnunet is None:
            return
        if self.nnunet_processes > 0:
            if self._pool is None:
                self._pool = nnunet.PreprocessPool(self._nnunet, self.nnunet_processes)
            case.prefetched["nnunet"] = self._pool.submit(case)
        else:
            case.prefetched["nnunet"] = nnunet.preprocess_case(self._nnunet, case)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def process(self, case: io.Case) -> CaseOutput:
        ahead = case.prefetched.pop("nnunet", None)
        if isinstance(ahead, Future):
            ahead = ahead.result()
        seg, probs = nnunet.coarse_prediction(self.nnunet(), case, ahead)
        if self.config is None:
            return CaseOutput(seg, probs if self.keep_probabilities else None)
        result = refine_case(self._sam, case, self.info, seg, probs, self.config, keep=self.keep_probabilities)
        return CaseOutput(result.segmentation, result.probabilities, coarse=seg)


def plans_reader_writer(plans: str | Path):
    """The image reader/writer class named in an nnU-Net ``plans.json`` (the model's, without loading it)."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    return PlansManager(str(plans)).image_reader_writer_class


def predict_folder(
    images_dir,
    out_dir,
    make_nnunet: Callable[[], object],
    info: io.DatasetInfo,
    make_predictor: Callable[[], SamPredictor],
    config: Optional[RefineConfig] = RefineConfig(),
    run_args: Optional[dict] = None,
    model_dir: Optional[Path] = None,
    nnunet_processes: int = 0,
    **options,
) -> list[str]:
    """nnU-Net + SAM on every pending case of ``images_dir``; writes ``out_dir``; returns the cases written.

    ``make_nnunet()`` returns nnU-Net's predictor (e.g. :func:`autosam.nnunet.inference.load_nnunet_predictor`) and
    ``make_predictor()`` the SAM predictor; both are called once per process, only if a case is pending (in a
    single process nnU-Net's before anything is written, so a broken model leaves the output folder untouched; Ray
    workers build their own, and this process reads only the reader/writer from ``plans``). ``options`` go to
    :class:`~autosam.runner.CaseRunner`; give ``plans`` (the model's plans.json) so nnU-Net's ensembling and
    postprocessing find the reader/writer and label manager in the output. ``nnunet_processes`` > 0: nnU-Net's
    preprocessing runs in that many processes, as many cases ahead (``nnUNetv2_predict -npp``; pipelined loop).
    """
    if config is not None:
        config.check()
    images = Path(images_dir)
    runner = CaseRunner(out_dir, info, inputs={"image": images, "model": model_dir}, record=run_args or {},
                        desc="predict", **options)
    cases = io.list_cases(images, info.file_ending, info.num_channels)
    job = PredictJob(make_nnunet, make_predictor, info, config, nnunet_processes)
    plans = options.get("plans")

    def prepare() -> None:  # the model's reader: the same geometry as nnU-Net's own prediction
        if runner.distributed and isinstance(plans, (str, Path)) and Path(plans).is_file():
            runner.rw_class = plans_reader_writer(plans)
        else:
            runner.rw_class = nnunet.model_reader_writer(job.nnunet())

    return runner.run(cases, job, prepare=prepare)


def recorded_settings(model: Path, folds: Sequence[str]) -> Optional[tuple[Path, dict]]:
    """``(file, settings)`` recorded by the nnU-Net AutoSAM trainer in the folds' ``autosam_sam.json``, or None."""
    from autosam import sam_settings as autosam_settings

    try:
        settings = autosam_settings.load_recorded(model, folds)
    except AutosamError as e:
        raise AutosamError(f"{e}; to predict without the recorded settings, pass --ignore-recorded") from None
    if settings is None:
        return None
    return autosam_settings.recorded_files(model, folds)[0], settings


def pipelined(config: Optional[RefineConfig], device: str, processes: int = 0) -> Optional[bool]:
    """Whether ``predict``'s loop is pipelined: False for nnU-Net alone on the CPU without ``processes``, whose
    threads take every core so that work beside them only slows them down (measured: scripts/README.md, "Predict
    loop"); otherwise None, the runner's default. ``AUTOSAM_PIPELINE`` set decides either way."""
    if (config is None and not processes and resolve_device(device).type == "cpu"
            and "AUTOSAM_PIPELINE" not in os.environ):
        return False
    return None


def run(args: argparse.Namespace) -> int:
    processes = args.nnunet_processes
    if processes is None:
        processes = GPU_PROCESSES if resolve_device(args.device).type == "cuda" else 0
    if processes < 0:
        raise AutosamError(f"--nnunet-processes must be 0 or more (got {processes})")

    model = nnunet.check_model_folder(args.model)
    info = nnunet.model_dataset_info(model)
    folds = nnunet.resolve_folds(model, args.folds, args.nnunet_checkpoint)
    recorded = None if args.ignore_recorded else recorded_settings(model, folds)
    config = config_from_args(args) if recorded is None else config_from_record(args, recorded[1])
    config.check()
    if recorded is not None and not recorded[1].get("use_sam", True) and not sam_overrides(args):
        config = None  # tuned in the trainer's validation: SAM did not pay there
    if recorded is not None:
        chosen = "no SAM (nnU-Net alone)" if config is None else f"prompt={config.prompt}, fusion={config.fusion}"
        print(f"autosam predict: using the SAM settings recorded in {recorded[0]} (options given here override "
              f"them; --ignore-recorded skips them): SAM {args.sam}"
              + "".join(f", {k}={getattr(args, k)}" for k in ("checkpoint", "adapter") if getattr(args, k))
              + f"; {chosen}", file=sys.stderr)

    def make_nnunet():
        return nnunet.load_nnunet_predictor(model, folds, args.nnunet_checkpoint, args.device,
                                            tile_step_size=args.step_size, use_mirroring=not args.disable_tta)

    record = {"verb": "predict", "model": str(model.resolve()), "folds": folds,
              "nnunet_checkpoint": args.nnunet_checkpoint, "step_size": args.step_size,
              "disable_tta": args.disable_tta, "images": str(Path(args.images)),
              "save_probabilities": args.save_probabilities, "refine": config.to_dict() if config else None,
              "recorded_settings": str(recorded[0]) if recorded else None, **sam_args_record(args)}
    parallel = parallel_from_args(args)
    written = predict_folder(args.images, args.output, make_nnunet, info, lambda: predictor_from_args(args),
                             config, **output_options(args), run_args=record, plans=model / "plans.json",
                             model_dir=model, parallel=parallel, nnunet_processes=processes,
                             pipeline=pipelined(config, args.device, processes))
    print(f"predicted and refined {len(written)} case(s) -> {args.output}")
    return 0


__all__: Sequence[str] = ["PredictJob", "predict_folder", "add_parser", "run"]
