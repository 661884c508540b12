"""Preprocessing shared by SAM inference and training: intensity, geometry, and their inverse.

Everything here is pure numpy/torch (no SimpleITK, no nnU-Net) so the SAM engine stays light.

Conventions:
- an image slice is ``(C, H, W)`` float, already intensity-normalised to ``[0, 1]``;
- coordinates are ``(x, y)`` in pixels of the original slice, boxes are ``(x0, y0, x1, y1)``;
- a backend works on a square canvas of ``image_size`` pixels: the slice's longest side is resized to
  ``image_size`` and the rest is zero-padded at the bottom and right.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

#: nnU-Net channel names treated as CT (Hounsfield units): a fixed window instead of percentiles.
CT_NAMES = ("ct",)
#: Default CT window (soft tissue, level 40, width 400), as used by MedSAM.
CT_WINDOW = (-160.0, 240.0)
#: Percentiles used to clip every other modality before min-max scaling.
PERCENTILES = (0.5, 99.5)


def is_ct(channel_name: str) -> bool:
    """True if an nnU-Net channel name denotes CT (``"CT"``, ``"ct"``, ``"CT_arterial"`` ...)."""
    return channel_name.strip().lower().split("_")[0] in CT_NAMES


def normalize_intensity(
    volume: np.ndarray,
    channel_name: str,
    ct_window: tuple[float, float] = CT_WINDOW,
    percentiles: tuple[float, float] = PERCENTILES,
) -> np.ndarray:
    """Map one channel of a whole case to ``[0, 1]`` float32.

    CT is clipped to a fixed window; any other modality is clipped to the case's percentiles
    (computed over the whole volume, so every slice of a case gets the same mapping).
    """
    volume = np.asarray(volume, dtype=np.float32)
    if is_ct(channel_name):
        lo, hi = ct_window
    else:
        finite = volume[np.isfinite(volume)]
        if finite.size == 0:
            return np.zeros_like(volume)
        lo, hi = (float(v) for v in np.percentile(finite, percentiles))
    if hi <= lo:
        return np.zeros_like(volume)
    out = np.clip(volume, lo, hi)  # one new array, then in place: large volumes are not copied again
    out -= lo
    out /= hi - lo
    return np.nan_to_num(out, nan=0.0, copy=False)


def normalize_case(image: np.ndarray, channel_names: Sequence[str]) -> np.ndarray:
    """Normalise a ``(C, ...)`` case channel by channel according to its nnU-Net channel names."""
    if len(channel_names) != image.shape[0]:
        raise ValueError(f"image has {image.shape[0]} channels but {len(channel_names)} channel names were given")
    return np.stack([normalize_intensity(image[c], name) for c, name in enumerate(channel_names)])


def to_three_channels(image: np.ndarray) -> np.ndarray:
    """``(C, H, W)`` or ``(H, W)`` -> ``(3, H, W)``: one channel is repeated, more are cycled (c0, c1, c0 ...)."""
    if image.ndim == 2:
        image = image[None]
    c = image.shape[0]
    return image[[i % c for i in range(3)]]


def resized_shape(hw: Sequence[int], image_size: int) -> tuple[int, int]:
    """Size of a slice after its longest side is resized to ``image_size``."""
    h, w = int(hw[0]), int(hw[1])
    scale = image_size / max(h, w)
    return max(1, int(round(h * scale))), max(1, int(round(w * scale)))


def to_canvas(images: Sequence[np.ndarray] | torch.Tensor, image_size: int) -> torch.Tensor:
    """Slices ``(C, H, W)`` in ``[0, 1]`` -> a ``(B, 3, S, S)`` float tensor: resize longest side, pad.

    Slices of a batch may have different sizes; each is resized and padded independently.
    """
    out = torch.zeros((len(images), 3, image_size, image_size), dtype=torch.float32)
    for i, img in enumerate(images):
        t = torch.as_tensor(to_three_channels(np.asarray(img, dtype=np.float32)))
        h, w = resized_shape(t.shape[-2:], image_size)
        if (h, w) != tuple(t.shape[-2:]):
            t = F.interpolate(t[None], size=(h, w), mode="bilinear", align_corners=False, antialias=True)[0]
        out[i, :, :h, :w] = t.clamp(0, 1)
    return out


def scale_coords(coords: np.ndarray, hw: Sequence[int], image_size: int) -> np.ndarray:
    """Map ``(..., 2)`` x/y pixel coordinates (or ``(..., 4)`` boxes) of a slice onto the canvas."""
    h, w = resized_shape(hw, image_size)
    coords = np.asarray(coords, dtype=np.float32).copy()
    coords[..., 0::2] *= w / hw[1]
    coords[..., 1::2] *= h / hw[0]
    return coords


def mask_to_canvas(mask: np.ndarray, image_size: int, low_res: int, fill: float = 0.0) -> torch.Tensor:
    """A slice-sized map ``(H, W)`` -> ``(1, low_res, low_res)`` on the padded canvas (SAM's mask prompt grid).

    ``fill`` is the value of the padding (use a large negative value for logits).
    """
    t = torch.as_tensor(np.asarray(mask, dtype=np.float32))[None, None]
    h, w = resized_shape(t.shape[-2:], image_size)
    canvas = torch.full((1, 1, image_size, image_size), fill, dtype=torch.float32)
    canvas[..., :h, :w] = F.interpolate(t, size=(h, w), mode="bilinear", align_corners=False)
    return F.interpolate(canvas, size=(low_res, low_res), mode="bilinear", align_corners=False)[0]


def logits_to_slice(low_res_logits: torch.Tensor, hw: Sequence[int], image_size: int) -> torch.Tensor:
    """Decoder logits ``(B, M, l, l)`` on the canvas -> ``(B, M, H, W)`` at the slice's original size."""
    h, w = resized_shape(hw, image_size)
    x = F.interpolate(low_res_logits.float(), size=(image_size, image_size), mode="bilinear", align_corners=False)
    x = x[..., :h, :w]
    return F.interpolate(x, size=(int(hw[0]), int(hw[1])), mode="bilinear", align_corners=False)
