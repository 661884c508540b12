"""3D cases as stacks of 2D slices along one axis (2D images are one slice)."""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from .errors import AutosamError


def choose_axis(spacing: Sequence[float], shape: Sequence[int], axis: Optional[int] = None) -> int:
    """The spatial axis (0, 1 or 2 of ``(Z, Y, X)``) to slice along.

    Default: the axis with the coarsest spacing (ties go to the axis with fewest voxels, then the first);
    2D images read by nnU-Net have ``Z == 1`` and a dummy spacing of 999, so they are one slice on axis 0.
    """
    if axis is not None:
        if axis not in (0, 1, 2):
            raise AutosamError(f"slice axis must be 0, 1 or 2 (of Z, Y, X), got {axis}")
        return axis
    if len(shape) != 3 or len(spacing) != 3:
        raise AutosamError(f"expected a 3D (Z, Y, X) grid, got shape {tuple(shape)}")
    if shape[0] == 1:
        return 0
    coarsest = max(spacing)
    candidates = [a for a in range(3) if np.isclose(spacing[a], coarsest, rtol=1e-3)]
    return min(candidates, key=lambda a: (shape[a], a))


def plane_axes(spacing: Sequence[float], shape: Sequence[int], axis: Optional[int] = None,
               planes: bool = False) -> list[int]:
    """The axes a case is refined along: :func:`choose_axis`'s, or with ``planes`` on a volume more than one voxel
    thick along every axis, all three with that one first (``axis`` is then ignored)."""
    first = choose_axis(spacing, shape, None if planes else axis)
    if not planes or min(shape) == 1:
        return [first]
    return [first, *(a for a in (0, 1, 2) if a != first)]


def to_slices(volume: np.ndarray, axis: int) -> np.ndarray:
    """``(C, Z, Y, X)`` -> ``(S, C, h, w)`` slices along spatial ``axis`` (a view when possible)."""
    return np.moveaxis(volume, axis + 1, 0)


def from_slices(slices: np.ndarray, axis: int) -> np.ndarray:
    """Inverse of :func:`to_slices`: ``(S, C, h, w)`` -> ``(C, Z, Y, X)``."""
    return np.moveaxis(slices, 0, axis + 1)


def in_plane_spacing(spacing: Sequence[float], axis: int) -> tuple[float, float]:
    """The (y, x) spacing of slices cut along ``axis`` of a (Z, Y, X) spacing."""
    rest = [float(s) for a, s in enumerate(spacing) if a != axis]
    return rest[0], rest[1]
