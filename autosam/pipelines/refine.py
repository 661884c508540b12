"""Refine an nnU-Net-style prediction folder with SAM: the library side of ``autosam refine`` (and the study).

One case at a time is :func:`autosam.refine.refine_case`; this module reads each case's coarse files
(:func:`autosam.refine.read_coarse`) and runs the folder through :class:`autosam.runner.CaseRunner`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

from .. import io
from ..refine import RefineConfig, find_coarse_files, read_coarse, refine_case, refine_record
from ..runner import CaseOutput, CaseRunner, FunctionJob
from ..sam import SamPredictor
from .quality import QualityControl, case_quality, finish_quality


def refine_folder(
    images_dir,
    coarse_dir,
    out_dir,
    info: io.DatasetInfo,
    make_predictor: Callable[[], SamPredictor],
    config: RefineConfig = RefineConfig(),
    run_args: Optional[dict] = None,
    qc: Optional[QualityControl] = None,
    **options,
) -> list[str]:
    """Refine every case of ``images_dir`` with the coarse predictions in ``coarse_dir``; write ``out_dir``.

    ``make_predictor()`` is called once per process, when the first pending case has been read; returns the cases
    written. ``options`` go to :class:`~autosam.runner.CaseRunner` (``save_probabilities``, ``overwrite``,
    ``overlays``, ``parallel``: parts of the cases, or Ray workers, which get ``make_predictor`` with the job).
    ``qc`` (:class:`~autosam.pipelines.quality.QualityControl`): each case's label-free quality signals
    (:mod:`autosam.qc`) are written beside it and ``quality.csv`` at the end, with the calibrated model's estimate
    (without one, an uncalibrated rank score) and flag threshold.
    """
    config.check()
    images, coarse = Path(images_dir), Path(coarse_dir)
    record = {"verb": "refine", "images": str(images), "coarse": str(coarse), "dataset_json": str(info.path),
              "save_probabilities": bool(options.get("save_probabilities")), **refine_record(config),
              **(run_args or {})}
    record.update(qc.record() if qc else {})
    plans = coarse / "plans.json"
    runner = CaseRunner(out_dir, info, inputs={"image": images, "coarse": coarse}, record=record,
                        plans=plans if plans.is_file() else None, desc="refine", **options)
    cases = io.list_cases(images, info.file_ending, info.num_channels)
    sources = find_coarse_files(coarse, list(cases), info.file_ending)
    rw = io.reader_writer(info.file_ending)
    keep = bool(options.get("save_probabilities"))  # whole-case probability volumes only when they are written

    def process(sam: SamPredictor, case: io.Case) -> CaseOutput:
        seg, probs = read_coarse(case, info, *sources[case.case_id], rw_class=rw)
        result = refine_case(sam, case, info, seg, probs, config, keep=keep)
        quality = case_quality(sam, case, info, seg, probs, result, qc.volume_stats) if qc else None
        return CaseOutput(result.segmentation, result.probabilities, coarse=seg, quality=quality)

    written = runner.run(cases, FunctionJob(make_predictor, process), inputs=sources)
    if qc is not None:
        finish_quality(out_dir, info, qc)
    return written
