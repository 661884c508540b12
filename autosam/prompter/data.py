"""Training data for the prompter: cases -> normalised 2D slices on a small canvas, and augmented batches.

Preprocessing is the SAM path's own: :func:`autosam.sam.transforms.normalize_case` for intensities,
:func:`autosam.slicing.choose_axis`/``to_slices`` for slicing, and the SAM canvas geometry (longest side resized to
``input_size``, zero padding at the bottom and right) so a prompter map lines up with SAM's canvas.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .. import io, slicing
from ..errors import AutosamError
from ..progress import progress
from ..sam import transforms as T

#: Value of pixels excluded from the loss (the dataset's ignore label).
IGNORE = -1


def image_canvas(slices: np.ndarray, size: int) -> torch.Tensor:
    """Normalised slices ``(S, C, h, w)`` in ``[0, 1]`` -> ``(S, C, size, size)``, SAM's canvas geometry."""
    s, c = slices.shape[:2]
    per_channel = T.to_canvas([sl[ch : ch + 1] for sl in slices for ch in range(c)], size)[:, 0]
    return per_channel.reshape(s, c, size, size)


def label_canvas(label_slices: np.ndarray, size: int, ignore_label: Optional[int] = None) -> torch.Tensor:
    """Label slices ``(S, h, w)`` -> ``(S, size, size)`` int64 (nearest resize, padding is background)."""
    lab = torch.as_tensor(np.asarray(label_slices, dtype=np.int64))
    if ignore_label is not None:
        lab = torch.where(lab == ignore_label, torch.full_like(lab, IGNORE), lab)
    h, w = T.resized_shape(lab.shape[-2:], size)
    out = torch.zeros((lab.shape[0], size, size), dtype=torch.int64)
    out[:, :h, :w] = F.interpolate(lab[:, None].float(), size=(h, w), mode="nearest-exact")[:, 0].long()
    return out


def case_slices(case: io.Case, channel_names: Sequence[str], axis: Optional[int] = None) -> tuple[np.ndarray, int]:
    """A case's normalised slices ``(S, C, h, w)`` and the slice axis (the SAM path's rule unless ``axis``)."""
    image = T.normalize_case(case.image, channel_names)
    axis = slicing.choose_axis(case.spacing, image.shape[1:], axis)
    return np.ascontiguousarray(slicing.to_slices(image, axis)), axis


def to_class_index(label_slices: np.ndarray, labels: Sequence[int]) -> np.ndarray:
    """Label values -> class index (0 background, k for the k-th foreground label); others stay as they are."""
    out = np.zeros_like(label_slices, dtype=np.int64)
    for k, v in enumerate(labels, start=1):
        out[label_slices == v] = k
    return out


@dataclass
class SliceSet:
    """Canvases ``images`` ``(N, C, S, S)`` float32, ``labels`` ``(N, S, S)`` int64 class indices, and the case
    and slice index each came from."""

    images: torch.Tensor
    labels: torch.Tensor
    cases: list[str]
    slice_index: list[int]

    def __len__(self) -> int:
        return len(self.cases)

    def subset(self, idx: Sequence[int]) -> "SliceSet":
        idx = list(idx)
        return SliceSet(self.images[idx], self.labels[idx], [self.cases[i] for i in idx],
                        [self.slice_index[i] for i in idx])


def load_slices(
    dataset_dir: str | Path,
    cases: Sequence[str],
    info: io.DatasetInfo,
    input_size: int,
    axis: Optional[int] = None,
    empty_fraction: float = 0.2,
    seed: int = 0,
    progress_desc: Optional[str] = None,
) -> SliceSet:
    """Read ``cases`` of a raw dataset and keep every slice with foreground plus a share of empty ones.

    ``empty_fraction`` is the number of empty slices kept per case relative to its foreground slices
    (at least one per case when it has any), chosen with a fixed seed.
    """
    root = Path(dataset_dir)
    all_files = io.list_cases(root / "imagesTr", info.file_ending, info.num_channels)
    missing = [c for c in cases if c not in all_files]
    if missing:
        raise AutosamError(f"{root / 'imagesTr'}: case {missing[0]} not found")
    labels = io.label_files(root / "labelsTr", list(cases), info.file_ending)
    rw = io.reader_writer(info.file_ending)
    rng = np.random.default_rng(seed)
    images, targets, names, where = [], [], [], []
    iterator = progress(list(cases), progress_desc) if progress_desc else cases
    for case_id in iterator:
        case = io.read_case(case_id, all_files[case_id], rw)
        seg, props = io.read_label(labels[case_id], rw, info)
        if seg.shape != case.image.shape[1:]:
            raise AutosamError(f"{labels[case_id]}: label shape {seg.shape} differs from image shape "
                               f"{case.image.shape[1:]}")
        slices, ax = case_slices(case, info.channel_names, axis)
        seg_slices = slicing.to_slices(seg[None], ax)[:, 0]
        fg = np.array([np.isin(s, info.foreground).any() for s in seg_slices])
        keep = list(np.flatnonzero(fg))
        empty = np.flatnonzero(~fg)
        n_empty = min(len(empty), max(1 if len(empty) else 0, int(round(empty_fraction * len(keep)))))
        keep = sorted(keep + list(rng.choice(empty, n_empty, replace=False)) if n_empty else keep)
        if not keep:
            continue
        images.append(image_canvas(slices[keep], input_size))
        cls = to_class_index(seg_slices[keep], info.foreground)
        if info.ignore_label is not None:
            cls[seg_slices[keep] == info.ignore_label] = IGNORE
        targets.append(label_canvas(cls, input_size))
        names += [case_id] * len(keep)
        where += [int(k) for k in keep]
    if not images:
        raise AutosamError(f"{root}: no slices to train on in the {len(cases)} chosen case(s)")
    return SliceSet(torch.cat(images), torch.cat(targets), names, where)


def augmenter(input_size: int, mirror: bool = False, spatial: bool = True):
    """batchgenerators transforms for 2D canvases: rotation/scaling, optional mirroring, intensity changes."""
    from batchgenerators.transforms.abstract_transforms import Compose
    from batchgenerators.transforms.color_transforms import (BrightnessMultiplicativeTransform,
                                                             ContrastAugmentationTransform, GammaTransform)
    from batchgenerators.transforms.noise_transforms import GaussianNoiseTransform
    from batchgenerators.transforms.spatial_transforms import MirrorTransform, SpatialTransform

    transforms = []
    if spatial:
        transforms.append(SpatialTransform(
            (input_size, input_size), patch_center_dist_from_border=None, do_elastic_deform=False,
            do_rotation=True, angle_x=(-np.pi / 9, np.pi / 9), do_scale=True, scale=(0.8, 1.2),
            border_mode_data="constant", border_cval_data=0, order_data=1, border_mode_seg="constant",
            border_cval_seg=0, order_seg=0, random_crop=False, p_rot_per_sample=0.3, p_scale_per_sample=0.3,
        ))
    if mirror and spatial:
        transforms.append(MirrorTransform(axes=(0, 1)))
    transforms += [
        BrightnessMultiplicativeTransform((0.8, 1.2), per_channel=True, p_per_sample=0.3),
        ContrastAugmentationTransform((0.8, 1.2), preserve_range=True, per_channel=True, p_per_sample=0.3),
        GammaTransform((0.8, 1.25), retain_stats=True, per_channel=True, p_per_sample=0.2),
        GaussianNoiseTransform((0, 0.005), p_per_sample=0.1),
    ]
    return Compose(transforms)


def batches(data: SliceSet, batch_size: int, transform, rng: np.random.Generator) -> Iterator[tuple]:
    """Endless augmented batches ``(images, labels, indices)`` drawn with ``rng`` (uniformly over slices)."""
    while True:
        idx = rng.integers(0, len(data), size=batch_size)
        d = {"data": data.images[idx].numpy().copy(), "seg": data.labels[idx, None].numpy().astype(np.float32)}
        if transform is not None:
            d = transform(**d)
        images = torch.as_tensor(np.ascontiguousarray(d["data"]), dtype=torch.float32).clamp_(0, 1)
        labels = torch.as_tensor(np.ascontiguousarray(d["seg"][:, 0])).round().long()
        yield images, labels, idx
