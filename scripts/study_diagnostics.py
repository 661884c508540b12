"""What the diagnostics of an ``autosam study`` share (``diagnose_box_gap.py``, ``diagnose_planes.py``): their
options, and the pieces of the study they read (its test cases, nnU-Net predictions, adapter and embedding cache)."""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from autosam import io
from autosam.sam.cache import EmbeddingCache


@dataclass
class StudyParts:
    """One study run as a diagnostic reads it."""

    data: Path  # the study's dataset (dataset.json, labelsTr)
    info: io.DatasetInfo
    nnunet: Path  # nnU-Net's test predictions (label maps and probabilities)
    adapter: Path  # the run's adapter folder
    cache: EmbeddingCache  # the study's embedding cache
    cases: list  # (case id, image files) of the test cases

    def reference(self, case_id: str):
        return io.read_label(self.data / "labelsTr" / f"{case_id}{self.info.file_ending}")[0]


def study_parts(doc: str) -> StudyParts:
    """Parse the diagnostic's command line (described by ``doc``) and open the study run it names."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--study", type=Path, required=True, help="an autosam study folder (test_images, predictions)")
    ap.add_argument("--data", type=Path, required=True, help="the study's dataset (dataset.json, labelsTr)")
    ap.add_argument("--run", default="n10_s0", help="the study run whose nnU-Net and adapter are used")
    ap.add_argument("--max-cases", type=int, default=0, help="only the first N test cases (0: all)")
    args = ap.parse_args()
    info = io.load_dataset_json(args.data)
    cases = sorted(io.list_cases(args.study / "test_images", info.file_ending, info.num_channels).items())
    return StudyParts(args.data, info, args.study / "predictions" / args.run / "nnunet",
                      args.study / "models" / args.run / "adapter", EmbeddingCache(args.study / "embedding_cache"),
                      cases[: args.max_cases or None])
