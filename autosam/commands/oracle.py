"""``autosam oracle``: SAM with boxes taken from reference labels (the ceiling for automatic prompts)."""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Type

from .. import io
from ..oracle import segment_case_from_labels
from ..runner import CaseJob, CaseOutput, CaseRunner, Parallel
from .common import (add_parallel_arguments, add_sam_arguments, parallel_from_args, predictor_from_args,
                     sam_args_record)
from .options import Margin, add_dataset_arguments, add_margin_argument, dataset_json_from_args, resolve_margin

HELP = "segment with boxes taken from reference labels (the upper bound of automatic prompting)"


def add_parser(sub) -> None:
    p = sub.add_parser("oracle", help=HELP, description=HELP)
    p.add_argument("-i", "--images", required=True, help="nnU-Net image folder (imagesTr/imagesTs layout)")
    p.add_argument("-l", "--labels", required=True, help="reference label folder (<case><file_ending>)")
    p.add_argument("-o", "--output", required=True, help="output folder (nnU-Net prediction layout)")
    add_dataset_arguments(p, what=" (default: the one beside the image folder, or beside the label folder)")
    add_margin_argument(p, default=Margin(0.0, "px"))
    p.add_argument("--overwrite", action="store_true", help="redo cases whose output already exists")
    add_sam_arguments(p)
    add_parallel_arguments(p)
    p.set_defaults(run=run)


@dataclass
class OracleJob(CaseJob):
    """One case of the oracle: its reference label's boxes prompt SAM (built once per process by
    ``make_predictor()``)."""

    labels: dict[str, Path]
    info: io.DatasetInfo
    make_predictor: Callable[[], Any]
    axis: Optional[int] = None
    margin: Margin = Margin(0.0, "px")
    rw: Optional[Type] = None
    _sam: Any = field(default=None, init=False, repr=False)

    def setup(self) -> None:
        self._sam = self.make_predictor()

    def process(self, case: io.Case) -> CaseOutput:
        label, props = io.read_label(self.labels[case.case_id], self.rw)
        io.check_same_geometry(case.properties, props, f"label {self.labels[case.case_id]}")
        return CaseOutput(segment_case_from_labels(self._sam, case, label, self.info, axis=self.axis,
                                                   margin=self.margin.value, margin_unit=self.margin.unit))


def oracle_folder(images, labels, output, info: io.DatasetInfo, make_predictor, axis=None,
                  margin: Margin | float = 0.0, overwrite=False, run_args=None,
                  parallel: Optional[Parallel] = None) -> list[str]:
    """Run the oracle on every case of ``images``; returns the cases written. ``make_predictor()`` is called once
    per process, when the first pending case has been read; ``margin`` is a :class:`Margin` (a number: pixels);
    ``parallel`` (:class:`~autosam.runner.Parallel`) splits the cases into parts or runs them on Ray workers."""
    margin = margin if isinstance(margin, Margin) else Margin(float(margin), "px")
    runner = CaseRunner(output, info, inputs={"image": images, "label": labels}, record=run_args or {},
                        overwrite=overwrite, desc="oracle", parallel=parallel)
    cases = io.list_cases(images, info.file_ending, info.num_channels)
    label_paths = io.label_files(labels, list(cases), info.file_ending)
    job = OracleJob(label_paths, info, make_predictor, axis, margin, io.reader_writer(info.file_ending))
    return runner.run(cases, job)


def run(args: argparse.Namespace) -> int:
    images, labels = Path(args.images), Path(args.labels)
    margin = resolve_margin(args, old_unit="px")
    parallel = parallel_from_args(args)
    info = io.load_dataset_json(io.find_dataset_json(dataset_json_from_args(args), images=images, labels=labels))
    record = {"verb": "oracle", "images": str(images), "labels": str(labels), "margin": str(margin),
              **sam_args_record(args)}
    oracle_folder(images, labels, args.output, info, lambda: predictor_from_args(args), args.axis, margin,
                  args.overwrite, record, parallel)
    print(f"wrote {args.output}")
    return 0
