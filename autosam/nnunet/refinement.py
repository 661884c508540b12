"""SAM refinement of nnU-Net's outputs (``<case><ending>`` + ``<case>.npz`` probabilities), case by case.

Shared by the trainers' final validation (:mod:`nnunet_plugins.autosam_trainers`) and by the ``nnUNetv2_predict``
hook (:mod:`nnunet_plugins.autosam_predict_hook`), which keep only the glue to nnU-Net's classes. Reading and
checking the coarse files (:func:`autosam.refine.read_coarse`), refining (:func:`autosam.refine.refine_case`) and the
loop over cases (:class:`autosam.runner.CaseRunner`: lock, guard, atomic writes in nnU-Net's layout) are autosam's
own. The hook predicts into ``<output>/unrefined/`` (:data:`UNREFINED`) and refines into ``<output>/``.
"""
from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Callable, Optional, Sequence

from .. import io
from ..errors import AutosamError
from ..refine import read_coarse, refine_case
from ..runner import CaseOutput, CaseRunner, guard_output
from ..settings import SETTINGS_FILE, Runtime, recorded_files
from ..settings.model import Settings, environment, load_recorded
from ..progress import notice

#: Sub-folder of a prediction's output folder that holds nnU-Net's own (unrefined) predictions.
UNREFINED = "unrefined"


def refine_cases(
    unrefined: str | os.PathLike,
    output: str | os.PathLike,
    images: dict[str, list[str]],
    dataset_json: str | os.PathLike,
    settings: Settings,
    predictor,
    cases: Optional[list[str]] = None,
    save_probabilities: bool = False,
    log: Callable[[str], None] = print,
    inputs: Optional[dict] = None,
) -> list[str]:
    """Refine ``cases`` (default: every ``<case><ending>`` in ``unrefined``) into ``output``; return them.

    ``images`` maps case id -> its raw channel files (as nnU-Net lists them); ``predictor`` is a
    :class:`autosam.sam.SamPredictor`; ``settings`` the SAM settings (SAM on); ``inputs`` names the
    folders the output must stay out of (raw images, model). Runs through autosam's case runner (lock, guard,
    atomic writes); every given case is redone.
    """
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
    config = settings.config()
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


# -- nnUNetv2_predict -------------------------------------------------------------------------------------------
def prediction_settings(model_folder: str, folds: list) -> Settings:
    """The SAM settings ``autosam fit`` recorded in ``model_folder``, else those recorded at validation in its fold
    folders, else the ``AUTOSAM_*`` environment / defaults (one line on stderr either way when something is not
    used)."""
    settings = load_recorded(model_folder, folds)
    if settings is None:
        settings = Settings.resolve()
        notice(f"autosam: no {SETTINGS_FILE} in {model_folder} or its fold folders; "
               f"using the AUTOSAM_* environment / defaults")
    else:
        ignored = sorted(set(environment()))
        if ignored:
            notice(f"autosam: AUTOSAM_* setting(s) {', '.join(ignored)} ignored: prediction uses the recorded "
                   f"settings ({recorded_files(model_folder, folds)[0]})")
    return settings


def unrefined_name(truncated: str) -> str:
    """Where nnU-Net predicts the case whose refined output is ``truncated`` (an output name without ending)."""
    return os.path.join(os.path.dirname(truncated) or os.curdir, UNREFINED, os.path.basename(truncated))


def is_done(truncated: str, ending: str, with_probabilities: bool) -> bool:
    """Whether the refined output ``truncated`` is written (with its ``.npz`` when probabilities are kept)."""
    done = os.path.isfile(truncated + ending)
    return done and (not with_probabilities or os.path.isfile(truncated + ".npz"))


def prepare_output(folder: str, inputs: dict, dataset_json: dict, plans: dict, settings: Settings, by: str) -> None:
    """dataset.json, plans.json and the SAM settings in the refined output folder (as nnU-Net's folders have),
    written atomically, after checking that the folder lies outside every input folder."""
    guard_output(folder, inputs)
    os.makedirs(os.path.join(folder, UNREFINED), exist_ok=True)
    io.write_json(dataset_json, os.path.join(folder, "dataset.json"))
    io.write_json(plans, os.path.join(folder, "plans.json"))
    settings.write(folder, by=by)


def refine_predictions(outputs: Sequence[tuple[str, str, list[str]]], settings: Settings, model_folder: str,
                       device: str, save_probabilities: bool, inputs: dict,
                       log: Callable[[str], None] = print) -> None:
    """Refine nnU-Net's predictions with SAM on ``device``: each of ``outputs`` is ``(unrefined, refined,
    images)``, a case's unrefined and refined output names (without ending) and its raw channel files. Cases are
    refined folder by folder; their probabilities in the unrefined folder are dropped unless kept."""
    settings = replace(settings, runtime=Runtime.from_env(device))
    sam = settings.predictor()
    dataset_json = os.path.join(model_folder, "dataset.json")
    by_folder: dict[tuple[str, str], dict[str, list[str]]] = {}
    for unrefined, refined, images in outputs:
        folders = (os.path.dirname(unrefined), os.path.dirname(refined) or os.curdir)
        by_folder.setdefault(folders, {})[os.path.basename(refined)] = images
    for (unrefined_dir, out_dir), images in by_folder.items():
        names = list(images)
        refine_cases(unrefined_dir, out_dir, images, dataset_json, settings, sam, cases=names,
                     save_probabilities=save_probabilities, log=log, inputs=inputs)
        if not save_probabilities:
            drop_probabilities(unrefined_dir, names)
