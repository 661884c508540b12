"""Automatic prompts for adaptation: the coarse maps a prompter (or a folder of coarse predictions) gives on the
training cases, cross-fitted so no case is prompted by a prompter that trained on it.

``--prompts-from prompter:DIR`` (a prompter folder or a shipped name): when the prompter's ``splits.json``
"train" list holds some of the cases, ``folds`` fold prompters are trained with the prompter's recorded options
(``exclude_cases`` extended by the fold's held-out cases; split by subject) in ``WORK/prompt_folds/fold_i``, and
each case is prompted by the fold that left it out; otherwise the prompter is used as it is.
``--prompts-from coarse:FOLDER``: ``<case><file_ending>`` label maps (and ``<case>.npz`` when present) that the
user vouches were not trained on the cases. What was done is written to ``WORK/prompts_from.json``.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from .. import io
from ..errors import AutosamError
from ..progress import notice
from ..splits import subject_of

#: The record of where each case's prompts came from (in the adapter folder).
RECORD = "prompts_from.json"
#: Folder of the fold prompters (in the adapter folder).
FOLDS_DIR = "prompt_folds"
KINDS = ("prompter", "coarse")

Coarse = dict[str, tuple[np.ndarray, Optional[np.ndarray]]]
Log = Callable[[str], None]


@dataclass
class PromptSource:
    """``kind`` ``prompter`` or ``coarse`` and the ``path`` (or shipped prompter name) after the colon."""

    kind: str
    path: str

    def __str__(self) -> str:
        return f"{self.kind}:{self.path}"


def parse_source(text: str) -> PromptSource:
    """``prompter:DIR|NAME`` or ``coarse:FOLDER`` -> :class:`PromptSource` (anything else: one-line error)."""
    kind, sep, path = str(text).partition(":")
    if not sep or kind not in KINDS or not path:
        raise AutosamError(f"--prompts-from {text}: give prompter:DIR (a prompter folder or shipped name) or "
                           f"coarse:FOLDER (coarse predictions of the training cases)")
    return PromptSource(kind, path)


def check_source(source: PromptSource, info: io.DatasetInfo) -> None:
    """Refuse a missing folder, or a prompter whose channels or labels differ from the dataset's."""
    if source.kind == "coarse":
        if not Path(source.path).is_dir():
            raise AutosamError(f"--prompts-from {source}: coarse folder not found: {source.path}")
        return
    from ..prompter.infer import Prompter

    try:
        Prompter.load(source.path).check_dataset(info)
    except AutosamError as e:
        raise AutosamError(f"--prompts-from {source}: {e}") from None


def fold_assignment(cases: Sequence[str], folds: int, seed: int = 0,
                    subject_pattern: Optional[str] = None) -> list[list[str]]:
    """The held-out cases of each fold: subjects shuffled by ``seed`` and dealt round-robin (a subject's cases stay
    in one fold); fewer folds when there are fewer subjects. Needs at least two subjects."""
    subjects = sorted({subject_of(c, subject_pattern) for c in cases})
    if folds < 2:
        raise AutosamError(f"--folds must be at least 2, got {folds}")
    if len(subjects) < 2:
        raise AutosamError("cross-fitting prompters needs at least two subjects among the training cases")
    order = [subjects[i] for i in np.random.default_rng(seed).permutation(len(subjects))]
    k = min(folds, len(subjects))
    held = [set(order[i::k]) for i in range(k)]
    return [sorted(c for c in cases if subject_of(c, subject_pattern) in h) for h in held]


def _fold_options(prompter_config: dict, held_out: Sequence[str], epochs: Optional[int], device: str):
    """The prompter's recorded training options with the fold's held-out cases excluded too."""
    from ..prompter.train import TrainOptions

    recorded = (prompter_config.get("training") or {}).get("options")
    if not isinstance(recorded, dict):
        raise AutosamError("the prompter's config.json records no training options; cross-fitting needs them")
    known = {f.name for f in fields(TrainOptions)}
    opts = TrainOptions(**{k: v for k, v in recorded.items() if k in known})
    opts.exclude_cases = sorted(set(opts.exclude_cases) | set(held_out))
    opts.device = device
    if epochs:
        opts.epochs = int(epochs)
    return opts


def _trained(folder: Path, opts) -> bool:
    """True when ``folder`` holds a finished prompter trained with ``opts`` (epochs and exclusions)."""
    from ..prompter.infer import CONFIG, WEIGHTS

    try:
        config = json.loads((folder / CONFIG).read_text())
    except (OSError, json.JSONDecodeError):
        return False
    old = config.get("training", {}).get("options", {})
    return ((folder / WEIGHTS).is_file() and "validation" in config and old.get("epochs") == opts.epochs
            and sorted(old.get("exclude_cases", [])) == opts.exclude_cases)


def _train_fold(dataset_dir: Path, folder: Path, opts, log: Log) -> None:
    """Train (resume, or reuse) one fold prompter; a folder trained with other options is replaced."""
    from ..prompter.train import train_prompter

    if _trained(folder, opts):
        log(f"reusing fold prompter {folder}")
        return
    try:
        train_prompter(dataset_dir, folder, opts, log=log)
    except AutosamError as e:
        if "trained with other settings" not in str(e):
            raise
        shutil.rmtree(folder)
        train_prompter(dataset_dir, folder, opts, log=log)


def _prompt_cases(dataset_dir: Path, info: io.DatasetInfo, prompter_dir: str | Path, cases: Sequence[str],
                  device: str, probabilities: bool) -> Coarse:
    """Coarse ``(seg, probs or None)`` of each case by one prompter."""
    from ..prompter.infer import Prompter
    from ..sam import build_sam, resolve_device

    dev = str(resolve_device(device))
    prompter = Prompter.load(prompter_dir, device=dev)
    prompter.check_dataset(info)
    sam = build_sam(prompter.config["sam"]["name"]).to(dev).eval() if prompter.mode == "embedding" else None
    files = io.list_cases(dataset_dir / "imagesTr", info.file_ending, info.num_channels)
    out: Coarse = {}
    for case in cases:
        seg, probs = prompter.coarse(io.read_case(case, files[case]), sam=sam)
        out[case] = (seg, probs if probabilities else None)
    return out


def _split_record(folder: Path) -> dict:
    from ..prompter.train import SPLITS

    path = folder / SPLITS
    split = json.loads(path.read_text()) if path.is_file() else {}
    return {"trained_on": split.get("train", []), "validated_on": split.get("val", [])}


def crossfit_coarse(
    dataset_dir: str | Path, cases: Sequence[str], prompter_dir: str | Path, work_dir: str | Path, folds: int = 3,
    subject_pattern: Optional[str] = None, epochs: Optional[int] = None, device: str = "cpu", seed: int = 0,
    probabilities: bool = True, log: Log = notice,
) -> Coarse:
    """Coarse ``(seg, probs)`` of each of ``cases`` by a prompter that never trained on it (module doc).

    Fold prompters go to ``work_dir/prompt_folds/fold_i`` (reused or resumed when there); the record of which
    prompter trained on which cases and prompted which goes to ``work_dir/prompts_from.json``.
    """
    from ..prompter.infer import read_config, resolve_prompter

    dataset_dir, work_dir = Path(dataset_dir), Path(work_dir)
    info = io.load_dataset_json(dataset_dir)
    source = resolve_prompter(prompter_dir)
    config = read_config(source)
    seen = set(_split_record(source)["trained_on"]) & set(cases)
    record = {"source": f"prompter:{prompter_dir}", "prompter": str(source.resolve()), "cases": sorted(cases)}
    if not seen:
        log(f"prompts from prompter {prompter_dir} as it is: it trained on none of the {len(cases)} case(s)")
        coarse = _prompt_cases(dataset_dir, info, source, cases, device, probabilities)
        record.update(use="direct", folds=[{"folder": str(source.resolve()), **_split_record(source),
                                            "prompted": sorted(cases)}])
        _write_record(record, work_dir)
        return coarse
    held = fold_assignment(cases, folds, seed, subject_pattern)
    log(f"prompter {prompter_dir} trained on {len(seen)} of the {len(cases)} case(s): cross-fitting {len(held)} "
        f"fold prompters in {work_dir / FOLDS_DIR}, each case prompted by the fold that left it out")
    coarse, rows = {}, []
    for i, part in enumerate(held):
        folder = work_dir / FOLDS_DIR / f"fold_{i}"
        opts = _fold_options(config, part, epochs, device)
        _train_fold(dataset_dir, folder, opts, log)
        coarse.update(_prompt_cases(dataset_dir, info, folder, part, device, probabilities))
        rows.append({"folder": str(folder.relative_to(work_dir)), **_split_record(folder), "prompted": part,
                     "epochs": opts.epochs})
    record.update(use="crossfit", subject_pattern=subject_pattern, folds=rows)
    _write_record(record, work_dir)
    return coarse


def coarse_from_folder(dataset_dir: str | Path, cases: Sequence[str], folder: str | Path, work_dir: str | Path,
                       probabilities: bool = True) -> Coarse:
    """Each case's coarse ``(seg, probs or None)`` from ``folder`` (checked against the image; a missing case
    file is a one-line error naming it); the source is recorded in ``work_dir/prompts_from.json``."""
    from ..refine import find_coarse_files, read_coarse

    dataset_dir = Path(dataset_dir)
    info = io.load_dataset_json(dataset_dir)
    sources = find_coarse_files(Path(folder), list(cases), info.file_ending)
    files = io.list_cases(dataset_dir / "imagesTr", info.file_ending, info.num_channels)
    rw = io.reader_writer(info.file_ending)
    out: Coarse = {}
    for case in cases:
        seg, probs = read_coarse(io.read_case(case, files[case], rw), info, *sources[case], rw_class=rw)
        out[case] = (seg, probs if probabilities else None)
    _write_record({"source": f"coarse:{folder}", "folder": str(Path(folder).resolve()), "use": "coarse",
                   "note": "coarse predictions given by the user, who vouches they were not trained on these cases",
                   "cases": sorted(cases)}, Path(work_dir))
    return out


def check_coarse_files(source: PromptSource, cases: Sequence[str], info: io.DatasetInfo) -> None:
    """``coarse:FOLDER``: every case has its ``<case><file_ending>`` there (else one line naming it)."""
    if source.kind == "coarse":
        io.label_files(Path(source.path), list(cases), info.file_ending, what="coarse segmentation")


def automatic_coarse(source: PromptSource, dataset_dir: str | Path, cases: Sequence[str], work_dir: str | Path,
                     folds: int = 3, subject_pattern: Optional[str] = None, epochs: Optional[int] = None,
                     device: str = "cpu", seed: int = 0, log: Log = notice, probabilities: bool = False) -> Coarse:
    """The coarse label maps of ``cases`` from ``source`` (probabilities dropped unless ``probabilities``):
    :func:`crossfit_coarse` or :func:`coarse_from_folder`."""
    if source.kind == "coarse":
        log(f"prompts from the coarse predictions in {source.path} (not checked for training overlap)")
        return coarse_from_folder(dataset_dir, cases, source.path, work_dir, probabilities=probabilities)
    return crossfit_coarse(dataset_dir, cases, source.path, work_dir, folds, subject_pattern, epochs, device, seed,
                           probabilities=probabilities, log=log)


def read_record(work_dir: str | Path) -> dict:
    """The ``prompts_from.json`` of an adapter folder."""
    return json.loads((Path(work_dir) / RECORD).read_text())


def _write_record(record: dict, work_dir: Path) -> None:
    work_dir.mkdir(parents=True, exist_ok=True)
    io.write_json(record, work_dir / RECORD)


__all__ = ["PromptSource", "parse_source", "check_source", "fold_assignment", "crossfit_coarse",
           "coarse_from_folder", "automatic_coarse", "check_coarse_files", "read_record"]
