"""The SAM settings record on disk: ``autosam_sam.json`` (:data:`SETTINGS_FILE`), which files prediction reads
(:func:`recorded_files`), reading one (:func:`read_json`) and writing one (:func:`write_record`).

The record's shape: ``sam``, ``checkpoint``, ``adapter`` (:data:`MODEL_KEYS`), ``use_sam``, ``refine`` (the fields of
:class:`autosam.refine.RefineConfig`), ``tuning`` (what was compared and chosen, when tuned), and for information
only, dropped on reading (:data:`INFO_KEYS`): ``runtime``, ``recorded_by``, ``source`` and ``fit``.
:class:`autosam.settings.model.Settings` reads and writes it.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

from ..errors import AutosamError

SETTINGS_FILE = "autosam_sam.json"
#: Keys of a settings record besides the refine config.
MODEL_KEYS = ("sam", "checkpoint", "adapter")
#: Recorded for information only, and dropped on reading.
INFO_KEYS = ("runtime", "recorded_by", "source", "fit")


def read_json(path: str | os.PathLike) -> dict:
    """A settings JSON object (``AutosamError`` naming the file if it is not one)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise AutosamError(f"{path}: cannot read SAM settings: {e}") from None
    if not isinstance(data, dict):
        raise AutosamError(f"{path}: SAM settings must be a JSON object")
    return data


def write_record(data: dict, folder: str | os.PathLike, by: str = "", name: str = SETTINGS_FILE) -> Path:
    """Write the record ``data`` as ``folder/name``, with ``recorded_by`` (``by`` and the autosam version)."""
    from .. import __version__
    from ..io import write_json

    path = Path(folder) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json({**data, "recorded_by": f"{by} (autosam {__version__})".strip()}, path)
    return path


def recorded_files(model_folder: str | os.PathLike, folds: Sequence) -> list[Path]:
    """The settings files prediction reads: ``MODEL/autosam_sam.json`` (``autosam fit``'s choice) when there,
    else the folds' ``fold_X/autosam_sam.json`` that exist, in the order of ``folds``."""
    fitted = Path(model_folder) / SETTINGS_FILE
    if fitted.is_file():
        return [fitted]
    paths = (Path(model_folder) / f"fold_{fold}" / SETTINGS_FILE for fold in folds)
    return [path for path in paths if path.is_file()]
