"""nnU-Net's prediction refined with SAM in memory (no intermediate files): the library side of ``autosam predict``.

:func:`predict_folder` runs a trained nnU-Net model (its softmax kept in memory) and then SAM on every pending
case of an image folder, and writes nnU-Net's layout; :class:`PredictJob` is its one case.
"""
from __future__ import annotations

import os
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from .. import io
from ..nnunet import inference as nnunet
from ..refine import RefineConfig, refine_case, refine_record
from ..runner import CaseJob, CaseOutput, CaseRunner
from ..sam import SamPredictor
from ..sam.predictor import resolve_device
from .quality import QualityControl, case_quality, finish_quality


@dataclass
class PredictJob(CaseJob):
    """One case of ``predict``: nnU-Net's prediction (``make_nnunet()``) refined with SAM (``make_predictor()``);
    both models are built once per process."""

    make_nnunet: Callable[[], object]
    make_predictor: Callable[[], SamPredictor]
    info: io.DatasetInfo
    config: Optional[RefineConfig]  # None: no SAM (nnU-Net's own prediction)
    nnunet_processes: int = 0  # > 0: nnU-Net's preprocessing in that many processes, as many cases ahead
    qc: Optional[QualityControl] = None  # each case's quality signals (SAM runs for them even with "no SAM")
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
        self._sam = self.make_predictor() if self.config is not None or self.qc is not None else None

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
        result = None if self.config is None else refine_case(self._sam, case, self.info, seg, probs, self.config,
                                                              keep=self.keep_probabilities)
        quality = None if self.qc is None else case_quality(self._sam, case, self.info, seg, probs, result,
                                                            self.qc.volume_stats)
        if result is None:
            return CaseOutput(seg, probs if self.keep_probabilities else None, quality=quality)
        return CaseOutput(result.segmentation, result.probabilities, coarse=seg, quality=quality)


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
    qc: Optional[QualityControl] = None,
    **options,
) -> list[str]:
    """nnU-Net + SAM on every pending case of ``images_dir``; writes ``out_dir``; returns the cases written.

    ``make_nnunet()`` returns nnU-Net's predictor (e.g. :func:`autosam.nnunet.load_nnunet_predictor`) and
    ``make_predictor()`` the SAM predictor; both are called once per process, only if a case is pending (in a
    single process nnU-Net's before anything is written, so a broken model leaves the output folder untouched; Ray
    workers build their own, and this process reads only the reader/writer from ``plans``). ``options`` go to
    :class:`~autosam.runner.CaseRunner`; give ``plans`` (the model's plans.json) so nnU-Net's ensembling and
    postprocessing find the reader/writer and label manager in the output. ``nnunet_processes`` > 0: nnU-Net's
    preprocessing runs in that many processes, as many cases ahead (``nnUNetv2_predict -npp``; pipelined loop).
    ``qc``: each case's label-free quality signals beside it and ``quality.csv`` at the end (with "no SAM", SAM
    runs with the default settings for the signals alone; the output stays nnU-Net's map).
    """
    if config is not None:
        config.check()
    images = Path(images_dir)
    record = {**refine_record(config), **(run_args or {}), **(qc.record() if qc else {})}
    runner = CaseRunner(out_dir, info, inputs={"image": images, "model": model_dir}, record=record,
                        desc="predict", **options)
    cases = io.list_cases(images, info.file_ending, info.num_channels)
    job = PredictJob(make_nnunet, make_predictor, info, config, nnunet_processes, qc)
    plans = options.get("plans")

    def prepare() -> None:  # the model's reader: the same geometry as nnU-Net's own prediction
        if runner.distributed and isinstance(plans, (str, Path)) and Path(plans).is_file():
            runner.rw_class = plans_reader_writer(plans)
        else:
            runner.rw_class = nnunet.model_reader_writer(job.nnunet())

    written = runner.run(cases, job, prepare=prepare)
    if qc is not None:
        finish_quality(out_dir, info, qc)
    return written


def pipelined(config: Optional[RefineConfig], device: str, processes: int = 0) -> Optional[bool]:
    """Whether ``predict``'s loop is pipelined: False for nnU-Net alone on the CPU without ``processes``, whose
    threads take every core so that work beside them only slows them down (measured: scripts/README.md, "Predict
    loop"); otherwise None, the runner's default. ``AUTOSAM_PIPELINE`` set decides either way."""
    if (config is None and not processes and resolve_device(device).type == "cpu"
            and "AUTOSAM_PIPELINE" not in os.environ):
        return False
    return None
