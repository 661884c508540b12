"""The oracle over a folder: SAM prompted from each case's reference label (the library side of ``autosam oracle``,
the demo and the study). One case is :func:`autosam.oracle.segment_case_from_labels`."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Type

from .. import io
from ..oracle import segment_case_from_labels
from ..runner import CaseJob, CaseOutput, CaseRunner, Parallel


@dataclass
class OracleJob(CaseJob):
    """One case of the oracle: its reference label's boxes prompt SAM (built once per process by
    ``make_predictor()``)."""

    labels: dict[str, Path]
    info: io.DatasetInfo
    make_predictor: Callable[[], Any]
    axis: Optional[int] = None
    margin: float = 0.0
    margin_unit: str = "mm"
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
                  parallel: Optional[Parallel] = None, margin_unit: str = "mm") -> list[str]:
    """Run the oracle on every case of ``images``; returns the cases written. ``make_predictor()`` is called once
    per process, when the first pending case has been read; ``margin`` in ``margin_unit`` (px, mm or box);
    ``parallel`` (:class:`~autosam.runner.Parallel`) splits the cases into parts or runs them on Ray workers."""
    runner = CaseRunner(output, info, inputs={"image": images, "label": labels}, record=run_args or {},
                        overwrite=overwrite, desc="oracle", parallel=parallel)
    cases = io.list_cases(images, info.file_ending, info.num_channels)
    label_paths = io.label_files(labels, list(cases), info.file_ending)
    job = OracleJob(label_paths, info, make_predictor, axis, margin, margin_unit,
                    io.reader_writer(info.file_ending))
    return runner.run(cases, job, inputs={c: [p] for c, p in label_paths.items()})
