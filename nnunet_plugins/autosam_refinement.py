"""Refine nnU-Net predictions (``<case><ending>`` + ``<case>.npz`` probabilities) with SAM, case by case.

Shared by the trainers' final validation and by the ``nnUNetv2_predict`` hook. Reading and checking the coarse
files (:func:`autosam.refine.read_coarse`), refining (:func:`autosam.refine.refine_case`) and the loop over cases
(:class:`autosam.runner.CaseRunner`: lock, guard, atomic writes in nnU-Net's layout) are autosam's own.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Optional


def refine_cases(
    unrefined: str | os.PathLike,
    output: str | os.PathLike,
    images: dict[str, list[str]],
    dataset_json: str | os.PathLike,
    settings: dict,
    predictor,
    cases: Optional[list[str]] = None,
    save_probabilities: bool = False,
    log: Callable[[str], None] = print,
    inputs: Optional[dict] = None,
) -> list[str]:
    """Refine ``cases`` (default: every ``<case><ending>`` in ``unrefined``) into ``output``; return them.

    ``images`` maps case id -> its raw channel files (as nnU-Net lists them); ``predictor`` is a
    :class:`autosam.sam.SamPredictor`; ``settings`` a record of :mod:`autosam.sam_settings`; ``inputs`` names the
    folders the output must stay out of (raw images, model). Runs through autosam's case runner (lock, guard,
    atomic writes); every given case is redone.
    """
    from autosam import io
    from autosam.errors import AutosamError
    from autosam.refine import read_coarse, refine_case
    from autosam.runner import CaseOutput, CaseRunner
    from autosam.sam_settings import refine_config

    unrefined, output = Path(unrefined), Path(output)
    info = io.load_dataset_json(dataset_json)
    ending = info.file_ending
    if cases is None:
        cases = sorted(f.name[: -len(ending)] for f in unrefined.iterdir()
                       if f.name.endswith(ending) and not f.name.startswith("."))
    for case_id in cases:
        if case_id not in images:
            raise AutosamError(f"{unrefined / (case_id + ending)}: no raw image found for case {case_id}")
        if not (unrefined / f"{case_id}.npz").is_file():
            raise AutosamError(f"{unrefined / (case_id + '.npz')} is missing: SAM refinement needs nnU-Net's "
                               "probabilities")
    config = refine_config(settings)
    rw = io.reader_writer(ending)
    runner = CaseRunner(output, info, inputs=inputs or {}, record=None, save_probabilities=save_probabilities,
                        overwrite=True, desc="SAM refinement", rw_class=rw)

    def process(case: io.Case) -> CaseOutput:
        coarse_seg, coarse_probs = read_coarse(case, info, unrefined / f"{case.case_id}{ending}",
                                               unrefined / f"{case.case_id}.npz", rw)
        refined = refine_case(predictor, case, info, coarse_seg, coarse_probs, config, keep=save_probabilities)
        changed = int((refined.segmentation != coarse_seg).sum())
        log(f"SAM refined {case.case_id}: {int(refined.sam.prompted.any(axis=0).sum())} prompted slice(s), "
            f"{changed} voxel(s) changed")
        return CaseOutput(refined.segmentation, refined.probabilities, coarse=coarse_seg)

    output.mkdir(parents=True, exist_ok=True)
    runner.run({c: images[c] for c in cases}, process)
    return list(cases)


def drop_probabilities(folder: str | os.PathLike, cases: list[str]) -> None:
    """Remove ``<case>.npz`` / ``<case>.pkl`` of ``cases`` from ``folder`` (when the user did not ask for them)."""
    for case_id in cases:
        for suffix in (".npz", ".pkl"):
            (Path(folder) / f"{case_id}{suffix}").unlink(missing_ok=True)
