"""The oracle: SAM prompted from reference labels, the ceiling of automatic prompting.

One case here; a whole folder is :func:`autosam.pipelines.oracle.oracle_folder`.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from . import io, slicing
from .errors import AutosamError
from .labels import labels_from_probabilities
from .prompts import ClassPrompt, prompts_for_slices
from .sam import SamPredictor
from .sam.transforms import normalize_case
from .answers import ask_sam


def oracle_prompts(label: np.ndarray, axis: int, labels: Sequence[int], margin: float = 0.0,
                   strategy: str = "box", margin_unit: str = "mm",
                   spacing: Sequence[float] = (1.0, 1.0)) -> list[ClassPrompt]:
    """Prompts taken from a reference label map ``(Z, Y, X)`` sliced along ``axis`` (``spacing`` in-plane, for mm)."""
    return prompts_for_slices(slicing.to_slices(label[None], axis)[:, 0], labels, strategy=strategy, margin=margin,
                              margin_unit=margin_unit, spacing=spacing)


def segment_case_from_labels(
    predictor: SamPredictor,
    case: io.Case,
    label: np.ndarray,
    info: io.DatasetInfo,
    axis: Optional[int] = None,
    margin: float = 0.0,
    margin_unit: str = "mm",
) -> np.ndarray:
    """SAM with boxes taken from ``label`` -> a label map with the case's shape."""
    if label.shape != case.image.shape[1:]:
        raise AutosamError(f"case {case.case_id}: label shape {label.shape} differs from image shape "
                           f"{case.image.shape[1:]}")
    axis = slicing.choose_axis(case.spacing, label.shape, axis)
    image = normalize_case(case.image, info.channel_names)
    spacing = slicing.in_plane_spacing(case.spacing, axis)
    prompts = oracle_prompts(label, axis, info.foreground, margin, margin_unit=margin_unit, spacing=spacing)
    run = ask_sam(predictor, image, axis, prompts, info.foreground)
    return labels_from_probabilities(run.probabilities, info.foreground)
