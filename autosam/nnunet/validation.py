"""The SAM step of the autosam trainers' final validation, apart from nnU-Net's classes.

:func:`tune_validation` chooses SAM's configuration (or no SAM) on a fold's validation cases, :func:`copy_unrefined`
makes nnU-Net's own validation output the output when "no SAM" won. The trainer in
:mod:`nnunet_plugins.autosam_trainers` calls them with what it knows of its fold.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import replace
from typing import Callable, Mapping, Optional, Type

from .. import io
from ..settings import SETTINGS_FILE, SamSpec, read_json
from ..settings.model import Settings, environment, parse_env


def tune_validation(unrefined: str, settings: Settings, preprocessed: str,
                    raw_images: Callable[[], dict[str, list[str]]], dataset_json: str, rw_class: Type,
                    log: Callable[[str], None]) -> Settings:
    """Choose SAM's configuration (or no SAM) on this fold's validation cases (:mod:`autosam.tune`), unless the
    prompt or fusion was set explicitly (``AUTOSAM_*`` or ``autosam_sam.json`` in ``preprocessed``, the dataset's
    preprocessed folder) or ``AUTOSAM_TUNE=0``; then ``settings`` unchanged.

    ``unrefined``: nnU-Net's validation output (with probabilities); ``raw_images``: case id -> raw image files,
    asked only when tuning; ``dataset_json``, ``rw_class``: the model's dataset.json file and image
    reader/writer."""
    from ..prompter.tuning import MAX_CASES
    from ..tune import tune

    explicit = set(environment()) & {"prompt", "fusion", "fusion_options"}
    plans_file = os.path.join(preprocessed, SETTINGS_FILE)
    if os.environ.get("AUTOSAM_TUNE", "1").strip() == "0" or explicit or os.path.isfile(plans_file):
        return settings
    fitted = fitted_settings(os.path.dirname(os.path.abspath(dataset_json)), unrefined, log)
    if fitted is not None:
        return replace(fitted, runtime=settings.runtime)
    info = io.load_dataset_json(dataset_json)
    items = _tune_cases(unrefined, int(os.environ.get("AUTOSAM_TUNE_CASES", MAX_CASES)), preprocessed, raw_images,
                        info, rw_class)
    sam = settings.predictor(caching=True)
    result = tune(sam, items, info, trainer_grid(settings))
    log(f"autosam: tuned on {len(items)} validation case(s): {result.best.name} (mean Dice "
        f"{result.mean(result.best.name):.4f}; nnU-Net alone {result.mean('no SAM'):.4f})")
    return Settings.from_tuning(result, settings.sam, settings.runtime)


def trainer_grid(settings: Settings, env: Optional[Mapping] = None) -> list:
    """The candidates the validation scores (:func:`autosam.tune.grid` around ``settings``' options);
    ``AUTOSAM_SMALL_GRID=1`` leaves out the box hypotheses and the three-plane candidates, as ``fit --small-grid``
    does."""
    from ..tune import grid

    raw = (os.environ if env is None else env).get("AUTOSAM_SMALL_GRID", "").strip()
    return grid(small=bool(raw) and parse_env("AUTOSAM_SMALL_GRID", raw, False), base=settings.config())


def fitted_settings(model_folder: str, unrefined: str, log: Callable[[str], None]) -> Optional[Settings]:
    """``autosam fit``'s choice (``MODEL/autosam_sam.json``) for this fold's validation, with the fold's own
    adapter where the adapted SAM won (the final adapter trained on this fold's cases too); None: no fit."""
    path = os.path.join(model_folder, SETTINGS_FILE)
    if not os.path.isfile(path):
        return None
    settings = Settings.from_record(path)
    fold = os.path.basename(os.path.dirname(os.path.abspath(unrefined)))[len("fold_"):]
    adapters = ((read_json(path).get("fit") or {}).get("adapted") or {}).get("fold_adapters") or {}
    if settings.sam.adapter and fold in adapters:
        sam = settings.sam
        settings = replace(settings, sam=SamSpec(sam.name, sam.checkpoint, os.path.join(model_folder, adapters[fold])))
    log(f"autosam: using autosam fit's choice ({path}): {settings.describe()}")
    return settings.checked()


def _tune_cases(unrefined: str, limit: int, preprocessed: str, raw_images: Callable[[], dict[str, list[str]]],
                info: io.DatasetInfo, rw_class: Type) -> list:
    from ..tune import coarse_items

    ending = info.file_ending
    gt = os.path.join(preprocessed, "gt_segmentations")
    cases = sorted(f[: -len(ending)] for f in os.listdir(unrefined) if f.endswith(ending))[: max(1, limit)]
    return coarse_items(cases, raw_images(), {c: os.path.join(gt, c + ending) for c in cases}, unrefined, info,
                        rw_class)


def copy_unrefined(unrefined: str, validation: str, ending: str, save_probabilities: bool) -> list[str]:
    """"No SAM" won: nnU-Net's own validation output is the validation output; returns the cases."""
    cases = sorted(f[: -len(ending)] for f in os.listdir(unrefined) if f.endswith(ending))
    for c in cases:
        names = [c + ending] + ([c + ".npz", c + ".pkl"] if save_probabilities else [])
        for name in names:
            if os.path.isfile(os.path.join(unrefined, name)):
                shutil.copyfile(os.path.join(unrefined, name), os.path.join(validation, name))
    return cases

