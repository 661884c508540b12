"""Training material from an nnU-Net raw dataset: the cases to use (split by subject in :mod:`autosam.splits`), the
labelled slices of each case, and one sample per (slice, label, connected component)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np
from scipy import ndimage

from .. import io, slicing
from ..errors import AutosamError
from ..prompts import components, prompts_for_slices
from ..sam.transforms import normalize_case
from ..splits import subject_of


@dataclass
class TrainSlice:
    """One labelled 2D slice: ``image`` ``(C, h, w)`` in ``[0, 1]`` (dropped once embedded) and ``label`` ``(h, w)``."""

    case: str
    axis: int
    index: int
    label: np.ndarray
    image: Optional[np.ndarray] = None

    @property
    def hw(self) -> tuple[int, int]:
        return int(self.label.shape[0]), int(self.label.shape[1])


@dataclass
class Sample:
    """One training target: a connected component of ``label`` on slice ``slice`` (an index into the slice list).

    An automatic sample also has ``box``: the prompt an automatic coarse map gave, ``mask`` then being the
    reference it should yield (empty for a false positive), and with ``box+mask`` prompts ``prompt_mask``, the
    coarse probabilities as SAM's mask-prompt logits (slice-sized); a label sample's prompt is drawn from ``mask``.
    """

    slice: int
    label: int
    mask: np.ndarray = field(repr=False)
    box: Optional[np.ndarray] = None
    prompt_mask: Optional[np.ndarray] = field(default=None, repr=False)


def select_cases(all_cases: Iterable[str], include: Optional[Sequence[str]] = None, exclude: Sequence[str] = (),
                 max_cases: int = 0, seed: int = 0, subject_pattern: Optional[str] = None) -> list[str]:
    """Cases to use: ``include`` (default all) minus ``exclude`` (case ids, or subjects under ``subject_pattern``,
    see :mod:`autosam.splits`), then at most ``max_cases`` of them drawn by a seeded shuffle (0 = all)."""
    all_cases = sorted(all_cases)
    chosen = list(all_cases) if include is None else list(include)
    unknown = [c for c in chosen if c not in all_cases]
    if unknown:
        raise AutosamError(f"case {unknown[0]} is not in the dataset")
    excluded = set(exclude)
    chosen = [c for c in chosen if c not in excluded and subject_of(c, subject_pattern) not in excluded]
    if max_cases and len(chosen) > max_cases:
        pick = np.random.default_rng(seed).permutation(len(chosen))[:max_cases]
        chosen = [chosen[i] for i in sorted(pick)]
    if not chosen:
        raise AutosamError("no cases left to train on")
    return sorted(chosen)


def labelled_slices(label: np.ndarray, axis: int, max_slices: int = 0) -> list[int]:
    """Indices along ``axis`` of the slices holding foreground; at most ``max_slices``, evenly spread (0 = all)."""
    fg = np.nonzero(slicing.to_slices((label > 0)[None], axis)[:, 0].reshape(label.shape[axis], -1).any(1))[0]
    return _spread([int(i) for i in fg], max_slices)


def _spread(indices: list[int], n: int) -> list[int]:
    """At most ``n`` of the sorted ``indices``, evenly spread (0 = all)."""
    if not n or len(indices) <= n:
        return indices
    return [indices[i] for i in np.unique(np.linspace(0, len(indices) - 1, n).round().astype(int))]


def _read_case(case: str, files: list[Path], label_path: Path, info: io.DatasetInfo, axis: Optional[int],
               planes: bool = False) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """A case's normalised image ``(C, Z, Y, X)``, label volume and the axes to cut slices along
    (:func:`autosam.slicing.plane_axes`: the chosen one, or with ``planes`` all three of a volume)."""
    rw = io.reader_writer(info.file_ending)
    image = io.read_case(case, files, rw)
    label, props = io.read_label(label_path, rw, info)
    if label.shape != image.image.shape[1:]:
        raise AutosamError(f"{label_path}: shape {label.shape} differs from the image's {image.image.shape[1:]}")
    io.check_same_geometry(image.properties, props, f"label {label_path}")
    axes = slicing.plane_axes(image.spacing, label.shape, axis, planes)
    return normalize_case(image.image, info.channel_names), label, axes


def read_training_case(
    case: str, files: list[Path], label_path: Path, info: io.DatasetInfo, axis: Optional[int], max_slices: int,
    planes: bool = False,
) -> list[TrainSlice]:
    """Read and normalise one case and return its labelled slices (images kept); with ``planes``, those along
    each of a volume's three axes (at most ``max_slices`` per axis)."""
    norm, label, axes = _read_case(case, files, label_path, info, axis, planes)
    out = []
    for ax in axes:
        images, labels = slicing.to_slices(norm, ax), slicing.to_slices(label[None], ax)[:, 0]
        out += [TrainSlice(case, ax, i, np.ascontiguousarray(labels[i]), np.ascontiguousarray(images[i]))
                for i in labelled_slices(label, ax, max_slices)]
    return out


#: How automatic prompts are made from a coarse map: refine's defaults (box per component of at least 4 pixels,
#: no margin, gaps between slices filled), boxes only (adapters trained before ``box+mask`` record this).
AUTO_PROMPTS = {"strategy": "box", "margin": 0.0, "min_size": 4, "gaps": True}
#: The prompt kinds automatic samples can have: boxes, or boxes with the coarse probabilities as mask prompt.
AUTO_PROMPT_KINDS = ("box", "box+mask")
#: The default kind: refine's built-in prompt strategy, so the adapter learns the prompts it is given.
AUTO_PROMPT = "box+mask"


def auto_prompts(kind: str = AUTO_PROMPT) -> dict:
    """:data:`AUTO_PROMPTS` with the prompt strategy ``kind`` (one of :data:`AUTO_PROMPT_KINDS`)."""
    if kind not in AUTO_PROMPT_KINDS:
        raise AutosamError(f"automatic prompts {kind!r}: choose one of {', '.join(AUTO_PROMPT_KINDS)}")
    return {**AUTO_PROMPTS, "strategy": kind}


def read_auto_case(
    case: str, files: list[Path], label_path: Path, info: io.DatasetInfo, axis: Optional[int], max_slices: int,
    coarse: np.ndarray, probabilities: Optional[np.ndarray] = None, prompts: Optional[dict] = None,
    planes: bool = False,
) -> tuple[list[TrainSlice], list[Sample]]:
    """Labelled slices plus the slices an automatic ``coarse`` label map prompts (at most ``max_slices`` of each,
    evenly spread; 0 = all), and the automatic samples (``slice`` indexes the returned list); with ``planes``,
    along each of a volume's three axes, as ``refine --planes`` prompts it.

    ``prompts`` (default :data:`AUTO_PROMPTS`) says how prompts are made; ``box+mask`` mask prompts come from the
    coarse ``probabilities`` ``(K+1, *shape)`` (background first, nnU-Net's layout), or from the label map itself
    when there are none, as refine makes them."""
    prompts = dict(prompts or AUTO_PROMPTS)
    norm, label, axes = _read_case(case, files, label_path, info, axis, planes)
    if coarse.shape != label.shape:
        raise AutosamError(f"case {case}: coarse map of shape {coarse.shape} differs from the label's {label.shape}")
    fg_probs = probabilities[1:] if "mask" in prompts["strategy"] and probabilities is not None else None
    if fg_probs is not None and fg_probs.shape[1:] != label.shape:
        raise AutosamError(f"case {case}: coarse probabilities of shape {fg_probs.shape[1:]} differ from "
                           f"the label's {label.shape}")
    slices: list[TrainSlice] = []
    samples: list[Sample] = []
    for ax in axes:
        images, labels = slicing.to_slices(norm, ax), slicing.to_slices(label[None], ax)[:, 0]
        made = prompts_for_slices(slicing.to_slices(coarse[None], ax)[:, 0], info.foreground,
                                  prob_slices=None if fg_probs is None else slicing.to_slices(fg_probs, ax),
                                  **prompts)
        prompted = _spread(sorted({p.prompt.slice_index for p in made}), max_slices)
        chosen = sorted(set(labelled_slices(label, ax, max_slices)) | set(prompted))
        where = {s: len(slices) + k for k, s in enumerate(chosen)}
        slices += [TrainSlice(case, ax, i, np.ascontiguousarray(labels[i]), np.ascontiguousarray(images[i]))
                   for i in chosen]
        samples += [Sample(where[p.prompt.slice_index], p.label,
                           box_target(labels[p.prompt.slice_index] == p.label, p.prompt.box), p.prompt.box,
                           p.prompt.mask)
                    for p in made if p.prompt.slice_index in where]
    return slices, samples


def box_target(reference: np.ndarray, box: np.ndarray) -> np.ndarray:
    """What a box prompt should yield: the components of the binary ``reference`` that reach into ``box``
    (whole, also beyond the box); empty when none does (a false-positive prompt)."""
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    lab, n = ndimage.label(reference, structure=np.ones((3, 3), dtype=bool))
    hit = np.unique(lab[y0 : y1 + 1, x0 : x1 + 1])
    return np.isin(lab, hit[hit > 0])


def make_samples(slices: Sequence[TrainSlice], labels: Sequence[int], min_size: int = 4) -> list[Sample]:
    """One sample per connected component (of at least ``min_size`` pixels) of every label on every slice."""
    out = []
    for s, sl in enumerate(slices):
        for value in labels:
            for comp in components(sl.label == value, min_size):
                out.append(Sample(s, int(value), comp))
    return out
