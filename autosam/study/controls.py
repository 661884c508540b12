"""The study's SAM-free controls, which a SAM method must beat before it is said to pay.

* ``nnunet-folds``: the ensemble of nnU-Net's cross-validation folds (the models ``nnunet+tuned`` already trains),
  averaged as ``nnUNetv2_predict -f 0 1 2`` averages them.
* ``nnunet+prompter``: nnU-Net's probabilities averaged with the prompter's, nnU-Net's weight chosen from
  :data:`WEIGHTS` on the prompter's validation cases, with nnU-Net's cross-fitted maps of them, so neither model
  trained on a case the weight is chosen on (ties: the larger nnU-Net weight).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from .. import io
from ..evaluation import finite_mean
from ..labels import to_segmentation
from ..progress import progress
from ..refine import read_coarse
from ..tune import case_dice

#: nnU-Net's weights tried for ``nnunet+prompter`` (1.0: nnU-Net alone; 0.0: the prompter alone).
WEIGHTS = (1.0, 0.75, 0.5, 0.25, 0.0)


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
        for w in WEIGHTS:
            scores[w].append(case_dice(to_segmentation(w * nn + (1 - w) * pr, info.foreground), reference,
                                       info.foreground))
    means = {w: finite_mean(v) for w, v in scores.items()}
    best = max(WEIGHTS, key=lambda w: (means[w], w))
    return best, {str(w): round(m, 5) for w, m in means.items()}


def blend_folder(images: Path, nnunet: Path, out: Path, prompter, sam, weight: float, info: io.DatasetInfo) -> Path:
    """Every case of ``images``: nnU-Net's probabilities (``nnunet``) averaged with the prompter's at ``weight``,
    written to ``out`` (cases already there are kept)."""
    out.mkdir(parents=True, exist_ok=True)
    rw = io.reader_writer(info.file_ending)
    for c, files in progress(list(io.list_cases(images, info.file_ending, info.num_channels).items()),
                             "nnunet+prompter"):
        target = out / f"{c}{info.file_ending}"
        if target.is_file():
            continue
        case = io.read_case(c, files, rw)
        dist = weight * _nnunet_probabilities(case, info, nnunet) + (1 - weight) * _prompter_probabilities(
            prompter, sam, case)
        io.write_seg(to_segmentation(dist, info.foreground), target, case.properties, rw)
    return out
