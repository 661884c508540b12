"""nnU-Net as the coarse step: load a trained model folder and predict one case in memory.

The model folder is nnU-Net's ``nnUNet_results/DatasetXXX_Name/<Trainer>__<Plans>__<configuration>``. Prediction
goes through nnU-Net's own :class:`nnUNetPredictor` (preprocessing, sliding window, fold ensembling, resampling back
to the original geometry), so the coarse result is the one ``nnUNetv2_predict`` would write, but its softmax stays
in memory for the refinement step.
"""
from __future__ import annotations

import copy
import json
import os
from concurrent.futures import Future
from pathlib import Path
from typing import Optional, Sequence, Type

import numpy as np
import torch

from .. import io
from ..errors import AutosamError
from ..sam.predictor import resolve_device
from .env import ensure_ext_trainer_env


def check_model_folder(model_folder: str | os.PathLike) -> Path:
    """The model folder, checked for nnU-Net's ``plans.json``, ``dataset.json`` and at least one ``fold_*``."""
    folder = Path(model_folder)
    if not folder.is_dir():
        raise AutosamError(f"nnU-Net model folder not found: {folder}")
    for name in ("plans.json", "dataset.json"):
        if not (folder / name).is_file():
            raise AutosamError(f"{folder}: not an nnU-Net model folder ({name} is missing; expected "
                               "nnUNet_results/DatasetXXX_Name/Trainer__Plans__configuration)")
        try:
            content = json.loads((folder / name).read_text())
        except (OSError, ValueError) as e:
            raise AutosamError(f"{folder / name}: not valid JSON ({e})") from None
        if not isinstance(content, dict):
            raise AutosamError(f"{folder / name}: expected a JSON object")
    if not any(p.is_dir() and p.name.startswith("fold_") for p in folder.iterdir()):
        raise AutosamError(f"{folder}: no fold_* folders; train a fold first (nnUNetv2_train)")
    return folder


def available_folds(model_folder: str | os.PathLike, checkpoint: str = "checkpoint_final.pth") -> list[str]:
    """Folds (``"0"``, ``"1"``, ..., ``"all"``) whose folder holds ``checkpoint``, in nnU-Net's sort order."""
    folder = Path(model_folder)
    found = [p.name[len("fold_"):] for p in folder.iterdir()
             if p.is_dir() and p.name.startswith("fold_") and (p / checkpoint).is_file()]
    return sorted(found, key=lambda f: (f == "all", int(f) if f.isdigit() else 0))


def resolve_folds(model_folder: str | os.PathLike, folds: Optional[Sequence[str | int]],
                  checkpoint: str = "checkpoint_final.pth") -> list[str]:
    """The folds to use: ``folds`` as given (each checked), or every numbered fold that has ``checkpoint``."""
    folder = Path(model_folder)
    if not folds:
        numbered = [f for f in available_folds(folder, checkpoint) if f != "all"]
        chosen = numbered or available_folds(folder, checkpoint)
        if not chosen:
            raise AutosamError(f"{folder}: no fold_* folder holds {checkpoint} (training unfinished? "
                               "pick another checkpoint with -chk)")
        return chosen
    out = []
    for f in folds:
        f = str(f)
        if f != "all" and not f.isdigit():
            raise AutosamError(f"fold must be a number or 'all', got {f!r}")
        if not (folder / f"fold_{f}").is_dir():
            have = sorted(p.name for p in folder.iterdir() if p.is_dir() and p.name.startswith("fold_"))
            raise AutosamError(f"{folder}: fold_{f} not found (have: {', '.join(have) or 'none'})")
        if not (folder / f"fold_{f}" / checkpoint).is_file():
            raise AutosamError(f"{folder / f'fold_{f}' / checkpoint} not found (training unfinished? "
                               "pick another checkpoint with -chk)")
        out.append(f)
    return out


def load_nnunet_predictor(
    model_folder: str | os.PathLike,
    folds: Optional[Sequence[str | int]] = None,
    checkpoint: str = "checkpoint_final.pth",
    device: str = "auto",
    tile_step_size: float = 0.5,
    use_mirroring: bool = True,
):
    """nnU-Net's ``nnUNetPredictor`` initialised from a trained model folder (trainers in ``nnunet_plugins`` found).

    ``folds`` default: every numbered fold with ``checkpoint``; several folds are ensembled by nnU-Net.
    """
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    folder = check_model_folder(model_folder)
    chosen = resolve_folds(folder, folds, checkpoint)
    ensure_ext_trainer_env()
    dev = resolve_device(device)
    predictor = nnUNetPredictor(tile_step_size=tile_step_size, use_gaussian=True, use_mirroring=use_mirroring,
                                perform_everything_on_device=dev.type == "cuda", device=dev, verbose=False,
                                verbose_preprocessing=False, allow_tqdm=False)
    try:
        predictor.initialize_from_trained_model_folder(
            str(folder), tuple(int(f) if f.isdigit() else f for f in chosen), checkpoint_name=checkpoint)
    except AutosamError:
        raise
    except Exception as e:  # noqa: BLE001 - a broken model folder is one line naming it, never a traceback
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        if isinstance(e, RuntimeError) and ("Unable to find" in first or "trainer" in first.lower()):
            raise AutosamError(f"{folder}: nnU-Net cannot find the trainer class of this model ({first}); put its "
                               "module on nnUNet_extTrainer") from None
        raise AutosamError(f"{folder}: cannot load the model (folds {', '.join(chosen)}, checkpoint {checkpoint}): "
                           f"{type(e).__name__}: {first}") from None
    if getattr(predictor.configuration_manager, "previous_stage_name", None):
        raise AutosamError(f"{folder}: a cascade stage needs the previous stage's segmentation; predict with "
                           "nnUNetv2_predict (-prev_stage_predictions) and refine that folder with 'autosam refine'")
    return predictor


def model_dataset_info(model_folder: str | os.PathLike) -> io.DatasetInfo:
    """The ``dataset.json`` nnU-Net stored with the model (labels, channels, file ending)."""
    return io.load_dataset_json(Path(model_folder) / "dataset.json")


def model_reader_writer(predictor) -> Type:
    """The image reader/writer class the model was planned with (read inputs with it for identical geometry)."""
    return predictor.plans_manager.image_reader_writer_class


def preprocess_case(predictor, case: io.Case) -> tuple[np.ndarray, dict]:
    """nnU-Net's preprocessing of one case (crop, normalise, resample to the plans' spacing): ``(data, properties)``
    as the network reads them. Needs only the predictor's plans, not its network, so it may run beside the network
    working on the case before: in the case runner's read-ahead thread, or in :class:`PreprocessPool`'s processes
    (see ``PredictJob``)."""
    check_channels(predictor, case)
    return preprocess_image(case.image, case.properties, *_plans(predictor))


def check_channels(predictor, case: io.Case) -> None:
    expected = len(predictor.dataset_json["channel_names"])
    if case.image.shape[0] != expected:
        raise AutosamError(f"case {case.case_id}: {case.image.shape[0]} channel(s), the model expects {expected}")


def _plans(predictor) -> tuple:
    """What nnU-Net's preprocessing reads of a predictor (all picklable: nnU-Net ships the same to its workers)."""
    return predictor.plans_manager, predictor.configuration_manager, predictor.dataset_json


def preprocess_image(image: np.ndarray, properties: dict, plans_manager, configuration_manager,
                     dataset_json: dict) -> tuple[np.ndarray, dict]:
    """:func:`preprocess_case` on an image ``(C, Z, Y, X)`` and its reader's properties (left unchanged)."""
    properties = copy.deepcopy(properties)  # nnU-Net's preprocessing adds keys to the dict it is given
    preprocessor = configuration_manager.preprocessor_class(verbose=False)
    data, _, properties = preprocessor.run_case_npy(np.array(image, dtype=np.float32, copy=True), None, properties,
                                                    plans_manager, configuration_manager, dataset_json)
    return data, properties


def _worker_start() -> None:
    torch.set_num_threads(1)  # one core per process, as nnUNetv2_predict's preprocessing workers


class PreprocessPool:
    """nnU-Net's preprocessing in ``processes`` worker processes, as ``nnUNetv2_predict -npp`` runs it: each
    :meth:`submit` returns a future of :func:`preprocess_case`'s answer. Workers are spawned (no fork of a process
    that holds torch and SAM threads) and start on the first case."""

    def __init__(self, predictor, processes: int) -> None:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        self.predictor = predictor
        self._plans = _plans(predictor)
        self._pool = ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn"),
                                         initializer=_worker_start)

    def submit(self, case: io.Case) -> Future:
        check_channels(self.predictor, case)
        return self._pool.submit(preprocess_image, case.image, case.properties, *self._plans)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def coarse_prediction(predictor, case: io.Case,
                      preprocessed: Optional[tuple[np.ndarray, dict]] = None) -> tuple[np.ndarray, np.ndarray]:
    """nnU-Net's prediction of one case in the case's own geometry, without touching the disk.

    Returns ``(segmentation (Z, Y, X) int16, probabilities (C, Z, Y, X) float32)``: the softmax over nnU-Net's
    label channels (background first), resampled and un-cropped exactly as ``nnUNetv2_predict
    --save_probabilities`` writes them. ``case.image`` must be read with :func:`model_reader_writer`'s class.
    ``preprocessed``: :func:`preprocess_case`'s answer for this case when it was computed ahead (else computed here).
    """
    from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape

    data, properties = preprocessed if preprocessed is not None else preprocess_case(predictor, case)
    logits = predictor.predict_logits_from_preprocessed_data(torch.from_numpy(data)).cpu()
    seg, probs = convert_predicted_logits_to_segmentation_with_correct_shape(
        logits, predictor.plans_manager, predictor.configuration_manager, predictor.label_manager, properties,
        return_probabilities=True, num_threads_torch=max(1, torch.get_num_threads()))
    seg, probs = np.asarray(seg).astype(np.int16), np.asarray(probs, dtype=np.float32)
    if seg.shape != case.image.shape[1:] or probs.shape[1:] != seg.shape:
        raise AutosamError(f"case {case.case_id}: nnU-Net returned shape {probs.shape} for an image of shape "
                           f"{case.image.shape}")
    return seg, probs
