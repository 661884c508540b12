"""Tune a prompter's SAM default on its own validation cases and record it in the prompter folder.

``autosam train-prompter`` calls :func:`tune_prompter` after training; ``autosam tune`` calls it for an existing
prompter (a shipped one, or with an adapter). The record is ``autosam_sam.json`` (written and read by
:class:`autosam.settings.model.Settings`): whether SAM runs at all, and if so with which prompts and fusion; ``autosam
segment`` uses it unless options on the command line say otherwise.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Optional, Sequence

from .. import io
from ..errors import AutosamError
from ..progress import notice, progress
from ..settings import SETTINGS_FILE, SamSpec
from ..settings.model import Settings
from ..tune import MIN_GAIN, Candidate, TuneCase, TuneResult, candidates, tune
from .infer import Prompter

#: Validation cases tuned on by default (the first ones of the prompter's split).
MAX_CASES = 10


def validation_cases(prompter: Prompter) -> list[str]:
    """The prompter's held-out cases (``splits.json`` "val"): it never trained on them."""
    path = Path(prompter.folder) / "splits.json"
    try:
        return list(json.loads(path.read_text())["val"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise AutosamError(f"{path}: cannot read the prompter's validation cases ({e})") from None


def load_items(prompter: Prompter, dataset_dir: Path, cases: Sequence[str], sam_model=None,
               info: Optional[io.DatasetInfo] = None) -> list[TuneCase]:
    """Each case's image, reference label and the prompter's coarse map (``sam_model`` for embedding mode);
    ``info``: the dataset's, when the caller has read it."""
    info = info or io.load_dataset_json(dataset_dir)
    files = io.list_cases(dataset_dir / "imagesTr", info.file_ending, info.num_channels)
    missing = [c for c in cases if c not in files]
    if missing:
        raise AutosamError(f"{dataset_dir / 'imagesTr'}: validation case {missing[0]} not found")
    labels = io.label_files(dataset_dir / "labelsTr", list(cases), info.file_ending)
    items = []
    for c in progress(list(cases), "coarse"):
        case = io.read_case(c, files[c])
        seg, probs = prompter.coarse(case, sam=sam_model)
        items.append(TuneCase(case, io.read_label(labels[c], info=info)[0], seg, probs))
    return items


def tune_prompter(prompter: Prompter, dataset_dir: str | Path, make_predictor: Callable, *,
                  cases: Optional[Sequence[str]] = None, max_cases: int = MAX_CASES, min_gain: float = MIN_GAIN,
                  sam: SamSpec = SamSpec(), output: Optional[str | Path] = None,
                  grid: Optional[Sequence[Candidate]] = None,
                  log: Callable[[str], None] = notice,
                  sign_test: Optional[float] = None) -> Optional[TuneResult]:
    """Tune on ``cases`` (default: the prompter's validation split, at most ``max_cases``) over ``grid`` (default
    :func:`autosam.tune.candidates`) and write the winner to ``output`` (default ``<prompter>/autosam_sam.json``).
    Returns None when there is nothing to tune on."""
    dataset_dir = Path(dataset_dir)
    chosen = list(cases) if cases is not None else validation_cases(prompter)
    chosen = chosen[: max_cases or None]
    if not chosen:
        log("note: no validation cases, so no SAM default was tuned (segment will use the built-in one)")
        return None
    info = io.load_dataset_json(dataset_dir)
    prompter.check_dataset(info)
    predictor = make_predictor()
    items = load_items(prompter, dataset_dir, chosen, predictor.model if prompter.mode == "embedding" else None, info)
    result = tune(predictor, items, info, grid or candidates(), min_gain=min_gain, sign_test=sign_test)
    target = Path(output) if output is not None else Path(prompter.folder) / SETTINGS_FILE
    Settings.from_tuning(result, sam).write(target.parent, by="autosam tune", name=target.name)
    log(f"tuned on {len(chosen)} validation case(s): {result.best.name} (mean Dice "
        f"{result.mean(result.best.name):.4f}; prompter alone {result.mean('no SAM'):.4f}) -> {target}")
    return result


def recorded_default(prompter: Prompter, adapter: Optional[str | Path] = None) -> tuple[Optional[Settings], str]:
    """The tuned settings (``autosam_sam.json``, checked) of the adapter folder when it has one (``autosam tune
    --adapter`` writes it there), else of the prompter, and a line saying where they come from; None and "built-in
    defaults" when neither has a record."""
    path = Path(adapter) / SETTINGS_FILE if adapter else None
    if path is None or not path.is_file():
        path = Path(prompter.folder) / SETTINGS_FILE if prompter.folder else None
    if path is None or not path.is_file():
        return None, "built-in defaults (the prompter has no tuned autosam_sam.json)"
    settings = Settings.from_record(path)
    tuned = settings.tuning or {}
    cases = tuned.get("validation_cases")
    return settings, f"tuned: {path} ({tuned.get('chosen', 'recorded')}" + (
        f", on {len(cases)} validation case(s))" if cases else ")")
