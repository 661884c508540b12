"""The study's SAM-free controls, which a SAM method must beat before it is said to pay.

* ``nnunet-folds``: the ensemble of nnU-Net's cross-validation folds (the models ``nnunet+tuned`` already trains),
  averaged as ``nnUNetv2_predict -f 0 1 2`` averages them.
* ``nnunet+prompter``: nnU-Net's probabilities averaged with the prompter's, nnU-Net's weight chosen from
  :data:`WEIGHTS` on the prompter's validation cases, with nnU-Net's cross-fitted maps of them, so neither model
  trained on a case the weight is chosen on (ties: the larger nnU-Net weight).
* ``nnunet-planes``: the 2d nnU-Net along each axis of a volume (:mod:`autosam.nnunet.planes`), the native axis
  weighted ``w`` and each other ``(1 - w) / 2``, ``w`` chosen from :data:`PLANE_WEIGHTS` on nnU-Net's cross-fitted
  maps of the run's training cases, as ``nnunet+tuned`` is (ties: the larger ``w``; 1.0 is nnU-Net alone).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .. import io
from ..evaluation import finite_mean
from ..labels import to_segmentation
from ..nnunet.folds import CrossValidation
from ..nnunet.inference import load_nnunet_predictor, model_reader_writer
from ..nnunet.planes import average, nnunet_probabilities, other_axes
from ..progress import progress
from ..refine import read_coarse
from ..tune import case_dice

#: nnU-Net's weights tried for ``nnunet+prompter`` (1.0: nnU-Net alone; 0.0: the prompter alone).
WEIGHTS = (1.0, 0.75, 0.5, 0.25, 0.0)
#: The native axis's weights tried for ``nnunet-planes`` (1.0: nnU-Net along its own axis alone; 1/3: all equal).
PLANE_WEIGHTS = (1.0, 0.75, 0.5, 1 / 3)


def _prompter_probabilities(prompter, sam, case: io.Case) -> np.ndarray:
    return prompter.coarse(case, sam=sam)[1]


def _nnunet_probabilities(case: io.Case, info: io.DatasetInfo, folder: Path) -> np.ndarray:
    return read_coarse(case, info, folder / f"{case.case_id}{info.file_ending}", folder / f"{case.case_id}.npz")[1]


def blend_weight(prompter, sam, cases: Sequence[str], files: dict, labels: Path, maps: Path,
                 info: io.DatasetInfo) -> tuple[float, dict]:
    """nnU-Net's weight in the average with the prompter, chosen on ``cases`` (nnU-Net's maps of them in
    ``maps``), and every weight's mean Dice there."""
    scores: dict[float, list[float]] = {w: [] for w in WEIGHTS}
    references = io.label_files(labels, list(cases), info.file_ending)
    for c in progress(list(cases), "nnunet+prompter weight"):
        case = io.read_case(c, files[c])
        reference = io.read_label(references[c], None, info)[0]
        nn, pr = _nnunet_probabilities(case, info, maps), _prompter_probabilities(prompter, sam, case)
        _score(scores, lambda w: w * nn + (1 - w) * pr, reference, info.foreground)
    return choose(scores)


def _score(scores: dict, blend: Callable[[float], np.ndarray], reference: np.ndarray, labels: Sequence[int]) -> None:
    """Append one case's Dice of ``blend(w)`` to ``scores[w]``, for every weight ``w``."""
    for w, values in scores.items():
        values.append(case_dice(to_segmentation(blend(w), labels), reference, labels))


def choose(scores: dict) -> tuple[float, dict]:
    """The weight of the best mean Dice in ``scores`` (weight -> per-case Dice; ties: the larger weight, so the
    plainer model wins a tie), and every weight's mean (rounded, keyed by the weight as text, for the record)."""
    means = {w: finite_mean(v) for w, v in scores.items()}
    best = max(means, key=lambda w: (means[w], w))
    return best, {str(w): round(m, 5) for w, m in means.items()}


def blend_folder(images: Path, nnunet: Path, out: Path, prompter, sam, weight: float, info: io.DatasetInfo) -> Path:
    """Every case of ``images``: nnU-Net's probabilities (``nnunet``) averaged with the prompter's at ``weight``,
    written to ``out`` (cases already there are kept)."""
    rw = io.reader_writer(info.file_ending)
    for c, files in progress(pending_cases(images, out, info), "nnunet+prompter"):
        case = io.read_case(c, files, rw)
        dist = weight * _nnunet_probabilities(case, info, nnunet) + (1 - weight) * _prompter_probabilities(
            prompter, sam, case)
        io.write_seg(to_segmentation(dist, info.foreground), out / f"{c}{info.file_ending}", case.properties, rw)
    return out


def pending_cases(images: Path, out: Path, info: io.DatasetInfo) -> list[tuple[str, list]]:
    """The cases of ``images`` (id, files) not yet written to ``out`` (made here): a control resumes where it
    stopped."""
    out.mkdir(parents=True, exist_ok=True)
    return [(c, files) for c, files in io.list_cases(images, info.file_ending, info.num_channels).items()
            if not (out / f"{c}{info.file_ending}").is_file()]


def planes_weight(cv: CrossValidation, device: str) -> tuple[float, dict]:
    """The native axis's weight for ``nnunet-planes``, chosen on nnU-Net's cross-fitted maps of ``cv``'s cases: each
    fold model predicts the cases it left out along the two other axes, its validation maps are the native axis;
    and every weight's mean Dice there."""
    scores: dict[float, list[float]] = {w: [] for w in PLANE_WEIGHTS}
    for fold, cases in cv.folds.items():
        predictor = load_nnunet_predictor(cv.model, folds=[fold], device=device)
        predict, rw = nnunet_probabilities(predictor), model_reader_writer(predictor)
        for c in progress(cases, f"nnunet-planes weight (fold {fold})"):
            case = io.read_case(c, cv.images[c], rw)
            reference = io.read_label(cv.labels[c], None, cv.info)[0]
            native, others = read_coarse(case, cv.info, *cv.maps[c])[1], other_axes(predict, case)
            _score(scores, lambda w: average(native, others, w), reference, cv.info.foreground)
    return choose(scores)


def planes_folder(images: Path, nnunet: Path, model: Path, fold: str, out: Path, weight: float,
                  info: io.DatasetInfo, device: str) -> Path:
    """Every case of ``images``: nnU-Net's probabilities (``nnunet``, its predictions of them) averaged at ``weight``
    with those of ``model`` (fold ``fold``) along the two other axes, written to ``out`` (cases already there are
    kept; with weight 1 no other axis is predicted)."""
    todo = pending_cases(images, out, info)
    if not todo:
        return out
    predictor = load_nnunet_predictor(model, folds=[fold], device=device) if weight < 1 else None
    rw = model_reader_writer(predictor) if predictor else io.reader_writer(info.file_ending)
    for c, files in progress(todo, "nnunet-planes"):
        case = io.read_case(c, files, rw)
        native = _nnunet_probabilities(case, info, nnunet)
        others = other_axes(nnunet_probabilities(predictor), case) if predictor else []
        io.write_seg(to_segmentation(average(native, others, weight), info.foreground), out / f"{c}{info.file_ending}",
                     case.properties, rw)
    return out
