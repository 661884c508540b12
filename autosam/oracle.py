"""The oracle: SAM prompted from reference labels, the ceiling of automatic prompting."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Type

import numpy as np

from . import io, slicing
from .errors import AutosamError
from .labels import labels_from_probabilities
from .prompts import ClassPrompt, prompts_for_slices
from .sam import SamPredictor
from .sam.transforms import normalize_case
from .runner import CaseJob, CaseOutput, CaseRunner, Parallel
from .sam_run import run_sam


def oracle_prompts(label: np.ndarray, axis: int, labels: Sequence[int], margin: float = 0.0,
                   strategy: str = "box", margin_unit: str = "px",
                   spacing: Sequence[float] = (1.0, 1.0)) -> list[ClassPrompt]:
    """Prompts taken from a reference label map ``(Z, Y, X)`` sliced along ``axis`` (``spacing`` in-plane, for mm)."""
    return prompts_for_slices(slicing.to_slices(label[None], axis)[:, 0], labels, strategy=strategy, margin=margin,
                              margin_unit=margin_unit, spacing=spacing)


def segment_case_from_labels(
    predictor: SamPredictor,
    case: io.Case,
    label: np.ndarray,
    info: io.DatasetInfo,
    axis: Optional[int] = None,
    margin: float = 0.0,
    margin_unit: str = "px",
) -> np.ndarray:
    """SAM with boxes taken from ``label`` -> a label map with the case's shape."""
    if label.shape != case.image.shape[1:]:
        raise AutosamError(f"case {case.case_id}: label shape {label.shape} differs from image shape "
                           f"{case.image.shape[1:]}")
    axis = slicing.choose_axis(case.spacing, label.shape, axis)
    image = normalize_case(case.image, info.channel_names)
    spacing = slicing.in_plane_spacing(case.spacing, axis)
    prompts = oracle_prompts(label, axis, info.foreground, margin, margin_unit=margin_unit, spacing=spacing)
    run = run_sam(predictor, image, axis, prompts, info.foreground)
    return labels_from_probabilities(run.probabilities, info.foreground)


@dataclass
class OracleJob(CaseJob):
    """One case of the oracle: its reference label's boxes prompt SAM (built once per process by
    ``make_predictor()``)."""

    labels: dict[str, Path]
    info: io.DatasetInfo
    make_predictor: Callable[[], Any]
    axis: Optional[int] = None
    margin: float = 0.0
    margin_unit: str = "px"
    rw: Optional[Type] = None
    _sam: Any = field(default=None, init=False, repr=False)

    def setup(self) -> None:
        self._sam = self.make_predictor()

    def process(self, case: io.Case) -> CaseOutput:
        label, props = io.read_label(self.labels[case.case_id], self.rw, self.info)
        io.check_same_geometry(case.properties, props, f"label {self.labels[case.case_id]}")
        return CaseOutput(segment_case_from_labels(self._sam, case, label, self.info, axis=self.axis,
                                                   margin=self.margin, margin_unit=self.margin_unit))


def oracle_folder(images, labels, output, info: io.DatasetInfo, make_predictor, axis=None,
                  margin: float = 0.0, overwrite=False, run_args=None,
                  parallel: Optional[Parallel] = None, margin_unit: str = "px") -> list[str]:
    """Run the oracle on every case of ``images``; returns the cases written. ``make_predictor()`` is called once
    per process, when the first pending case has been read; ``margin`` in ``margin_unit`` (px, mm or box);
    ``parallel`` (:class:`~autosam.runner.Parallel`) splits the cases into parts or runs them on Ray workers."""
    runner = CaseRunner(output, info, inputs={"image": images, "label": labels}, record=run_args or {},
                        overwrite=overwrite, desc="oracle", parallel=parallel)
    cases = io.list_cases(images, info.file_ending, info.num_channels)
    label_paths = io.label_files(labels, list(cases), info.file_ending)
    job = OracleJob(label_paths, info, make_predictor, axis, margin, margin_unit,
                    io.reader_writer(info.file_ending))
    return runner.run(cases, job)
