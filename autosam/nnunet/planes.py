"""A 2d nnU-Net along each axis of a volume: the three-plane view of the SAM-free control ``nnunet-planes``.

A 2d nnU-Net slices a volume ``(C, Z, Y, X)`` along its first axis. To slice along Y (or X) the case is transposed
so that axis comes first, its spacing permuted with it, predicted by nnU-Net's own predictor
(:func:`.inference.coarse_prediction`: preprocessing, sliding window, mirroring, resampling back), and the
probabilities are transposed back to the case's own geometry. The views are then averaged: the native axis with
weight ``w``, each other axis with ``(1 - w) / 2`` (``w = 1``: the native prediction exactly).

>>> others = other_axes(nnunet_probabilities(predictor), case)   # [along Y, along X], each (C, Z, Y, X)
>>> probabilities = average(native, others, 0.5)
"""
from __future__ import annotations

import copy
from typing import Callable, Sequence

import numpy as np

from .. import io
from .inference import coarse_prediction

#: Each view as the order of the case's spatial axes ``(Z, Y, X)``: the native one, then Y first, then X first.
ORDERS = ((0, 1, 2), (1, 0, 2), (2, 0, 1))


def transpose_case(case: io.Case, order: Sequence[int]) -> io.Case:
    """``case`` with its spatial axes in ``order`` (the first is the slicing axis) and its spacing permuted with
    them; the case itself is left unchanged."""
    properties = copy.deepcopy(case.properties)
    properties["spacing"] = [case.properties["spacing"][a] for a in order]
    image = np.ascontiguousarray(case.image.transpose(0, *(1 + a for a in order)))
    return io.Case(case.case_id, image, properties, case.files)


def restore(probabilities: np.ndarray, order: Sequence[int]) -> np.ndarray:
    """Probabilities ``(C, ...)`` of a case transposed with ``order``, back in the case's own axis order."""
    return np.ascontiguousarray(probabilities.transpose(0, *(1 + a for a in np.argsort(order))))


def other_axes(predict: Callable[[io.Case], np.ndarray], case: io.Case) -> list[np.ndarray]:
    """``predict``'s probabilities ``(C, Z, Y, X)`` of ``case`` sliced along Y and along X, in the case's geometry."""
    return [restore(predict(transpose_case(case, order)), order) for order in ORDERS[1:]]


def average(native: np.ndarray, others: Sequence[np.ndarray], weight: float) -> np.ndarray:
    """The native axis's probabilities with ``weight``, each of the two other axes' with ``(1 - weight) / 2``."""
    if weight == 1.0:
        return native
    return weight * native + (1.0 - weight) / 2 * (others[0] + others[1])


def nnunet_probabilities(predictor) -> Callable[[io.Case], np.ndarray]:
    """nnU-Net's probabilities of a case (read with the model's reader), as :func:`other_axes` asks them."""
    return lambda case: coarse_prediction(predictor, case)[1]


__all__ = ["ORDERS", "average", "nnunet_probabilities", "other_axes", "restore", "transpose_case"]
