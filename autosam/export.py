"""Prediction folders in nnU-Net's layout, written atomically (through :mod:`autosam.runner`).

A folder holds, per case, ``<case><file_ending>`` (nnU-Net's writer, the input geometry) and, with probabilities,
``<case>.npz`` (key ``probabilities``, ``(C, *shape as nnU-Net reads the image)`` float32, background first) and
``<case>.pkl`` (the nnU-Net properties of the image); once per folder ``dataset.json``, ``plans.json`` and
``autosam_run.json``. That is what ``nnUNetv2_ensemble`` (npz + pkl + plans.json + dataset.json) and
``nnUNetv2_apply_postprocessing`` / ``nnUNetv2_determine_postprocessing`` (segmentations + plans.json +
dataset.json) read.
"""
from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path
from typing import Optional, Type

import numpy as np

from . import io
from .errors import AutosamError

RUN_FILE = "autosam_run.json"


def minimal_plans(info: io.DatasetInfo, rw_class: Optional[Type] = None) -> dict:
    """The parts of an nnU-Net ``plans.json`` that ensembling and postprocessing read (reader/writer, label
    manager), for folders whose coarse source had no plans of its own."""
    rw_class = rw_class or io.reader_writer(info.file_ending)
    return {
        "dataset_name": str(info.raw.get("name", info.path.parent.name)),
        "plans_name": "autosam_minimal_plans",
        "image_reader_writer": rw_class.__name__,
        "label_manager": "LabelManager",
        "transpose_forward": [0, 1, 2],
        "transpose_backward": [0, 1, 2],
        "configurations": {},
        "autosam_note": "written by autosam: only the reader/writer and label manager are meaningful",
    }


def _copy_atomic(src: Path, dst: Path) -> None:
    with io.atomic_output(dst) as tmp:
        shutil.copyfile(src, tmp)


def prepare_folder(
    out_dir: str | os.PathLike,
    info: io.DatasetInfo,
    run_args: dict,
    plans: Optional[str | os.PathLike | dict] = None,
) -> Path:
    """Create ``out_dir`` with ``dataset.json``, ``plans.json`` and ``autosam_run.json``; clear stale temp files.

    ``plans`` is a plans.json path or dict (e.g. the coarse folder's or the model's); without it a minimal one
    is written; ``run_args`` replace the record of a previous run (:func:`changed_settings` tells the difference
    first).
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise AutosamError(f"output {out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    clear_temporary(out)
    _copy_atomic(info.path, out / "dataset.json")
    if isinstance(plans, dict):
        io.write_json(plans, out / "plans.json")
    elif plans is not None and Path(plans).is_file():
        if Path(plans).resolve() != (out / "plans.json").resolve():
            _copy_atomic(Path(plans), out / "plans.json")
    else:
        io.write_json(minimal_plans(info), out / "plans.json")
    io.write_json(run_args, out / RUN_FILE)
    return out


def changed_settings(out_dir: str | os.PathLike, run_args: dict) -> list[str]:
    """The keys in which ``run_args`` differ from the run recorded in ``out_dir``, sections dotted
    (``refine.fusion``; empty: the same, or no readable record)."""
    try:
        old = json.loads((Path(out_dir) / RUN_FILE).read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return []
    if not isinstance(old, dict):
        return []
    old, new = _flat(old), _flat(json.loads(json.dumps(run_args, default=str)))
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


def _flat(record: dict, prefix: str = "") -> dict:
    """``record`` with nested sections spelled out (``refine.fusion``, ``runtime.device``)."""
    out = {}
    for key, value in record.items():
        if isinstance(value, dict) and value:
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def clear_temporary(out_dir: str | os.PathLike, names: Optional[set[str]] = None) -> None:
    """Remove the temporary files an interrupted run left in ``out_dir`` (call it only while holding the folder's
    lock, :class:`autosam.runner.FolderLock`, so no running writer loses its files); with ``names``, only those of
    the files named there (e.g. a killed worker's cases)."""
    for stale in Path(out_dir).glob(".tmp*"):
        if names is None or io.temporary_target(stale) in names:
            stale.unlink(missing_ok=True)


def case_files(out_dir: str | os.PathLike, case_id: str, file_ending: str, probabilities: bool) -> list[Path]:
    """The files a finished case has in ``out_dir``."""
    out = Path(out_dir)
    files = [out / f"{case_id}{file_ending}"]
    if probabilities:
        files += [out / f"{case_id}.npz", out / f"{case_id}.pkl"]
    return files


def check_probability_layout(info: io.DatasetInfo) -> None:
    """nnU-Net turns probabilities into labels by argmax over channels, so labels must be 0, 1, ..., K."""
    if info.foreground != list(range(1, len(info.foreground) + 1)):
        raise AutosamError(f"{info.path}: labels {info.foreground} are not consecutive from 1; nnU-Net-style "
                           f"probability files need labels 0..K (drop --save-probabilities or renumber)")


def write_probabilities(probabilities: np.ndarray, properties: dict, out_dir: str | os.PathLike, case_id: str) -> None:
    """``<case>.npz`` (key ``probabilities``, float32) and ``<case>.pkl`` (properties), each atomically."""
    out = Path(out_dir)
    with io.atomic_output(out / f"{case_id}.npz") as tmp:
        np.savez_compressed(tmp, probabilities=np.asarray(probabilities, dtype=np.float32))
    with io.atomic_output(out / f"{case_id}.pkl") as tmp:
        with open(tmp, "wb") as f:
            pickle.dump(properties, f)


def write_case(
    out_dir: str | os.PathLike,
    case_id: str,
    segmentation: np.ndarray,
    properties: dict,
    info: io.DatasetInfo,
    probabilities: Optional[np.ndarray] = None,
    rw_class: Optional[Type] = None,
) -> list[Path]:
    """Write one case: probabilities first (if given), the segmentation last; returns the files written.

    ``segmentation`` is ``(Z, Y, X)`` (or ``(Y, X)`` for 2D) on the image grid; ``probabilities``
    ``(C, Z, Y, X)`` background first; ``properties`` the image's nnU-Net properties (geometry).
    """
    seg = np.asarray(segmentation)
    seg = seg[None] if seg.ndim == 2 else seg
    if probabilities is not None:
        check_probability_layout(info)
        if probabilities.shape != (len(info.foreground) + 1, *seg.shape):
            raise AutosamError(f"case {case_id}: probabilities {probabilities.shape} do not fit "
                               f"{len(info.foreground) + 1} classes and segmentation {seg.shape}")
        write_probabilities(probabilities, properties, out_dir, case_id)
    values = np.asarray([0, *info.foreground], dtype=seg.dtype)
    if not np.isin(seg, values).all():
        raise AutosamError(f"case {case_id}: segmentation holds values outside the dataset's labels {values.tolist()}")
    io.write_seg(seg, Path(out_dir) / f"{case_id}{info.file_ending}", properties, rw_class)
    return case_files(out_dir, case_id, info.file_ending, probabilities is not None)
