"""``autosam oracle``: SAM with boxes taken from reference labels (the ceiling for automatic prompts)."""
from __future__ import annotations

import argparse
from pathlib import Path

from .. import export, io, pipeline
from ..errors import AutosamError
from .common import add_sam_arguments, predictor_from_args, sam_args_record

HELP = "segment with boxes taken from reference labels (the upper bound of automatic prompting)"


def add_parser(sub) -> None:
    p = sub.add_parser("oracle", help=HELP, description=HELP)
    p.add_argument("-i", "--images", required=True, help="nnU-Net image folder (imagesTr/imagesTs layout)")
    p.add_argument("-l", "--labels", required=True, help="reference label folder (<case><file_ending>)")
    p.add_argument("-o", "--output", required=True, help="output folder (nnU-Net prediction layout)")
    p.add_argument("-d", "--dataset-json", default=None,
                   help="dataset.json (default: the one beside the image folder, or in the label folder)")
    p.add_argument("--margin", type=float, default=0.0, help="box margin in pixels (default 0)")
    p.add_argument("--overwrite", action="store_true", help="redo cases whose output already exists")
    add_sam_arguments(p)
    p.set_defaults(run=run)


def find_dataset_json(images: Path, *others: Path) -> Path:
    """dataset.json beside the image folder (raw layout), else in one of ``others``."""
    for folder in (images.parent, images, *others):
        if (folder / "dataset.json").is_file():
            return folder / "dataset.json"
    raise AutosamError(f"dataset.json not found beside {images}; pass it with -d")


def oracle_folder(images, labels, output, info: io.DatasetInfo, predictor, axis=None, margin=0.0,
                  overwrite=False, run_args=None) -> list[str]:
    """Run the oracle on every case of ``images``; returns the cases written."""
    cases = io.list_cases(images, info.file_ending, info.num_channels)
    label_paths = io.label_files(labels, list(cases), info.file_ending)
    out = export.prepare_folder(output, info, run_args or {})
    rw = io.reader_writer(info.file_ending)

    def segment(case: io.Case):
        label, props = io.read_label(label_paths[case.case_id], rw)
        io.check_same_geometry(case.properties, props, f"label {label_paths[case.case_id]}")
        return pipeline.segment_case_from_labels(predictor, case, label, info, axis=axis, margin=margin)

    return pipeline.for_each_case(cases, out, info, segment, overwrite=overwrite, desc="oracle")


def run(args: argparse.Namespace) -> int:
    images, labels = Path(args.images), Path(args.labels)
    info = io.load_dataset_json(args.dataset_json or find_dataset_json(images, labels))
    predictor = predictor_from_args(args)
    record = {"verb": "oracle", "images": str(images), "labels": str(labels), "margin": args.margin,
              **sam_args_record(args)}
    oracle_folder(images, labels, args.output, info, predictor, args.axis, args.margin, args.overwrite, record)
    print(f"wrote {args.output}")
    return 0
