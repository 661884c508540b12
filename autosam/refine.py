"""Refine a coarse segmentation with SAM: coarse -> prompts -> SAM -> fusion -> nnU-Net-style probabilities.

One case here, and the reading of its coarse files; a whole prediction folder is
:func:`autosam.pipelines.refine.refine_folder`.

>>> from autosam import io, refine
>>> from autosam.sam import SamPredictor, build_sam
>>> predictor = SamPredictor(build_sam("litemedsam"))
>>> result = refine.refine_case(predictor, case, info, coarse_seg, coarse_probs, refine.RefineConfig())
>>> result.segmentation, result.probabilities  # (Z, Y, X) labels, (C, Z, Y, X) background first
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Optional

import numpy as np

from . import integrity, io, slicing
from .errors import AutosamError
from .fusion import AUTO, fuse, fusion_strategies, option_names, options_of, resolve
from .labels import to_distribution, to_segmentation
from .answers import SamAnswer, ask_sam
from .prompts import Margin, prompt_strategies, prompts_for_slices
from .sam import SamPredictor
from .sam.transforms import normalize_case


@dataclass
class RefineConfig:
    """How coarse masks become prompts and how SAM's answer is fused back.

    ``prompt``/``fusion`` name entries of :data:`autosam.prompts.prompt_strategies` and
    :data:`autosam.fusion.fusion_strategies`; ``margin`` (a :class:`~autosam.prompts.Margin`, mm by default) widens boxes;
    components under ``min_size`` pixels get no prompt, and at most ``max_objects`` (the largest; 0: all) per label
    and slice do; ``box_hypotheses`` and ``rebox`` (times) are SAM-side localisation levers
    (:func:`autosam.answers.ask_sam`); ``fill_gaps`` prompts a slice missing a class between two
    slices that have it; ``axis`` as in :func:`autosam.slicing.choose_axis`; ``planes`` refines a 3D volume along
    each of its three axes and averages the three fused distributions (``axis`` is then ignored; 2D images and
    volumes one voxel thick have one plane); ``fusion_options`` are the fusion's options that were set, by name
    (the record's spelling; :meth:`fusion_for` gives the fusion its typed options, :data:`autosam.fusion.fusion_options`).
    """

    # defaults: box+mask prompts; fusion auto = average on coarse probabilities (tied best on real nnU-Net
    # predictions of hippocampus, scripts/benchmark_refine.py; above gated on HC18, scripts/README.md), gated on
    # hard label maps (where an average of 0/1 and SAM ties at 0.5)
    prompt: str = "box+mask"
    fusion: str = AUTO
    margin: Margin = Margin()
    min_size: int = 4
    axis: Optional[int] = None
    fusion_options: dict = field(default_factory=dict)
    positive_points: int = 1
    negative_points: int = 1
    mask_logit: float = 8.0
    fill_gaps: bool = True
    max_objects: int = 0
    box_hypotheses: bool = False
    rebox: int = 0
    planes: bool = False

    def fusion_for(self, soft: bool) -> tuple[str, Optional[object]]:
        """The fusion strategy and its typed options for a coarse map with (``soft``) or without probabilities
        (``auto`` resolved, options of the other strategy dropped; None for a strategy without options)."""
        name = resolve(self.fusion, soft)
        kept = {k: v for k, v in self.fusion_options.items() if k in option_names(name)}
        return name, options_of(name, kept)

    def check(self) -> None:
        if self.prompt not in prompt_strategies:
            raise AutosamError(f"unknown prompt strategy {self.prompt!r}; choose one of {', '.join(prompt_strategies)}")
        if self.fusion not in fusion_strategies and self.fusion != AUTO:
            raise AutosamError(f"unknown fusion strategy {self.fusion!r}; choose one of "
                               f"{', '.join([*fusion_strategies, AUTO])}")
        counts = (self.min_size, self.positive_points, self.negative_points, self.max_objects, self.rebox)
        if not isinstance(self.margin, Margin):
            raise AutosamError(f"margin must be a Margin (a value with its unit), got {self.margin!r}")
        if self.margin.value < 0 or min(counts) < 0:
            raise AutosamError("margin, min_size, point counts, max_objects and rebox must not be negative")
        self.margin.px((1.0, 1.0))
        options_of(self.fusion, self.fusion_options)  # refuses an option the fusion does not take

    def to_dict(self) -> dict:
        """The fields, as recorded in ``autosam_run.json`` and tuned settings (the margin as ``margin`` and
        ``margin_unit``)."""
        fields = asdict(self)
        fields["margin"], fields["margin_unit"] = self.margin.value, self.margin.unit
        return fields

    @classmethod
    def from_dict(cls, fields: dict) -> "RefineConfig":
        """The config of a record's fields (:meth:`to_dict`; a margin without ``margin_unit`` is in mm)."""
        fields = dict(fields)
        unit = fields.pop("margin_unit", "mm")
        if "margin" in fields and not isinstance(fields["margin"], Margin):
            fields["margin"] = Margin(fields["margin"], unit)
        return cls(**fields)


def refine_record(config: Optional[RefineConfig]) -> dict:
    """A run record's refine keys, as ``autosam_sam.json`` writes them: ``use_sam`` (False for ``config`` None,
    "no SAM") and ``refine`` (the options; RefineConfig's defaults beside "no SAM")."""
    return {"use_sam": config is not None, "refine": (config or RefineConfig()).to_dict()}


@dataclass
class Refined:
    """``segmentation`` ``(Z, Y, X)`` label map, ``probabilities`` ``(C, Z, Y, X)`` (background first, nnU-Net
    label order), and SAM's raw answer; with ``keep=False`` both probability volumes are None (``sam`` keeps
    ``prompted``, ``iou`` and ``overlap``). Refined along three planes, ``plane_segmentations`` and ``plane_runs``
    hold each plane's label map and SAM run (without probabilities), for :mod:`autosam.qc`; else both are empty."""

    segmentation: np.ndarray
    probabilities: Optional[np.ndarray]
    sam: SamAnswer
    plane_segmentations: list = field(default_factory=list)
    plane_runs: list = field(default_factory=list)


def coarse_foreground(info: io.DatasetInfo, coarse_seg: np.ndarray, coarse_probs: Optional[np.ndarray]) -> np.ndarray:
    """Per-foreground-label coarse probabilities ``(K, Z, Y, X)``: the given softmax, else the one-hot label map.

    ``coarse_probs`` is nnU-Net's ``(C, Z, Y, X)``: background first, then the foreground labels in ascending
    order (the ignore label, if any, has no channel), as ``nnUNetv2_predict --save_probabilities`` writes it.
    """
    if coarse_probs is not None:
        check_coarse_probabilities(info, coarse_seg, coarse_probs)
        return np.ascontiguousarray(coarse_probs[1:], dtype=np.float32)
    return np.stack([(coarse_seg == v) for v in info.foreground]).astype(np.float32)


def check_coarse_probabilities(info: io.DatasetInfo, coarse_seg: np.ndarray, coarse_probs: np.ndarray) -> None:
    n = len(info.foreground) + 1
    if coarse_probs.ndim != 4 or coarse_probs.shape[0] != n or coarse_probs.shape[1:] != coarse_seg.shape:
        raise AutosamError(f"coarse probabilities of shape {coarse_probs.shape} do not fit {n} classes "
                           f"(background + {len(info.foreground)} labels) and a segmentation of shape "
                           f"{coarse_seg.shape}")


def _along(axis: int, start: int, stop: int, leading: int = 1) -> tuple:
    """Index of slices ``start:stop`` along spatial ``axis`` of an array with ``leading`` non-spatial axes."""
    index = [slice(None)] * (leading + 3)
    index[leading + axis] = slice(start, stop)
    return tuple(index)


def refine_case(
    predictor: SamPredictor,
    case: io.Case,
    info: io.DatasetInfo,
    coarse_seg: np.ndarray,
    coarse_probs: Optional[np.ndarray] = None,
    config: RefineConfig = RefineConfig(),
    keep: bool = True,
    slab: int = 32,
) -> Refined:
    """Refine one case. ``coarse_seg`` is ``(Z, Y, X)``; ``coarse_probs`` (optional) ``(C, Z, Y, X)`` softmax.

    The case is refined ``slab`` slices at a time (prompts, SAM, fusion and the label decision per slab), so
    memory stays bounded on large volumes; with ``keep=False`` no whole-case probability volume is held at all
    (what the folder verbs use unless probabilities are saved). Voxels of the ignore label (if the dataset has
    one) in ``coarse_seg`` count as background. With ``config.planes`` one whole-case distribution is summed over
    the three axes whatever ``keep``, and ``sam`` is the run along the default axis.
    """
    config.check()
    if coarse_seg.shape != case.image.shape[1:]:
        raise AutosamError(f"case {case.case_id}: coarse segmentation shape {coarse_seg.shape} differs from the "
                           f"image shape {case.image.shape[1:]}")
    if coarse_probs is not None:
        check_coarse_probabilities(info, coarse_seg, coarse_probs)
    labels, shape = info.foreground, coarse_seg.shape
    axes = slicing.plane_axes(case.spacing, shape, config.axis, config.planes)
    image = normalize_case(case.image, info.channel_names)
    along = lambda a, k: _refine_along(predictor, case, info, config, image, coarse_seg, coarse_probs, a, k, slab)  # noqa: E731
    if len(axes) == 1:
        return along(axes[0], keep)
    # three planes: the default axis first (its SAM run is the one returned), one summed distribution held
    total, first, planes, runs = None, None, [], []
    for a in axes:
        refined = along(a, True)
        first = refined.sam if first is None else first
        total = refined.probabilities if total is None else total + refined.probabilities
        planes.append(refined.segmentation)
        runs.append(replace(refined.sam, probabilities=None))
    total /= len(axes)
    sam = first if keep else replace(first, probabilities=None)
    return Refined(segmentation=to_segmentation(total, labels), probabilities=total if keep else None, sam=sam,
                   plane_segmentations=planes, plane_runs=runs)


def _refine_along(predictor, case, info, config, image, coarse_seg, coarse_probs, axis, keep, slab) -> Refined:
    """:func:`refine_case` along one ``axis``, ``slab`` slices at a time."""
    labels, shape = info.foreground, coarse_seg.shape
    n = shape[axis]
    seg = np.zeros(shape, dtype=np.int16)
    probabilities = np.zeros((len(labels) + 1, *shape), np.float32) if keep else None
    sam_probs = np.zeros((len(labels), *shape), np.float32) if keep else None
    prompted, iou = np.zeros((len(labels), n), bool), np.zeros((len(labels), n), np.float32)
    overlap = np.zeros((len(labels), 3), np.int64)
    for start in range(0, n, max(1, slab)):
        stop = min(n, start + max(1, slab))
        run, dist = _refine_slab(predictor, case, info, config, image, coarse_seg, coarse_probs, axis, start, stop)
        seg[_along(axis, start, stop, 0)] = to_segmentation(dist, labels)
        prompted[:, start:stop], iou[:, start:stop] = run.prompted, run.iou
        overlap += _overlap(run.probabilities, coarse_seg[_along(axis, start, stop, 0)], labels)
        if keep:
            probabilities[_along(axis, start, stop)] = dist
            sam_probs[_along(axis, start, stop)] = run.probabilities
    return Refined(segmentation=seg, probabilities=probabilities,
                   sam=SamAnswer(labels=list(labels), axis=axis, probabilities=sam_probs, prompted=prompted, iou=iou,
                              overlap=overlap))


def _overlap(sam_probs: np.ndarray, coarse_seg: np.ndarray, labels) -> np.ndarray:
    """Per label ``(K, 3)``: voxels of SAM's mask (sigmoid above 0.5), of the coarse mask, and of both."""
    counts = np.zeros((len(labels), 3), np.int64)
    for k, value in enumerate(labels):
        sam, coarse = sam_probs[k] > 0.5, coarse_seg == value
        counts[k] = (np.count_nonzero(sam), np.count_nonzero(coarse), np.count_nonzero(sam & coarse))
    return counts


def _refine_slab(predictor, case, info, config, image, coarse_seg, coarse_probs, axis, start, stop):
    """Slices ``start:stop`` along ``axis``: SAM's run there and the fused distribution ``(K+1, ...)``.

    Prompts are built on the slab widened by one slice on each side, so gap filling sees both neighbours, and
    only the slab's own prompts go to SAM."""
    labels, n = info.foreground, coarse_seg.shape[axis]
    lo, hi = max(0, start - 1), min(n, stop + 1)
    seg_part = coarse_seg[_along(axis, lo, hi, 0)]
    probs_part = None if coarse_probs is None else coarse_probs[_along(axis, lo, hi)]
    coarse = coarse_foreground(info, seg_part, probs_part)
    prompts = prompts_for_slices(
        slicing.to_slices(seg_part[None], axis)[:, 0], labels, strategy=config.prompt, margin=config.margin.value,
        min_size=config.min_size, prob_slices=slicing.to_slices(coarse, axis),
        spacing=slicing.in_plane_spacing(case.spacing, axis), margin_unit=config.margin.unit,
        positive_points=config.positive_points, negative_points=config.negative_points, mask_logit=config.mask_logit,
        gaps=config.fill_gaps, max_objects=config.max_objects,
    )
    own = [replace(cp, prompt=replace(cp.prompt, slice_index=cp.prompt.slice_index - (start - lo)))
           for cp in prompts if start - lo <= cp.prompt.slice_index < stop - lo]
    run = ask_sam(predictor, image[_along(axis, start, stop)], axis, own, labels,
                  box_hypotheses=config.box_hypotheses, rebox=config.rebox)
    core = coarse[_along(axis, start - lo, stop - lo)]
    fusion, options = config.fusion_for(soft=probs_part is not None)
    return run, to_distribution(fuse(core, run, fusion, options))


def find_coarse_files(coarse_dir, cases, file_ending: str) -> dict:
    """Each case's coarse segmentation ``<case><ending>`` (a missing one is an error) and its ``<case>.npz``
    probabilities when present (else None): ``{case: (seg_path, npz_path_or_None)}``."""
    segs = io.label_files(coarse_dir, cases, file_ending, what="coarse segmentation")
    return {case: (seg, seg.with_name(f"{case}.npz") if seg.with_name(f"{case}.npz").is_file() else None)
            for case, seg in segs.items()}


def read_coarse(case: io.Case, info: io.DatasetInfo, seg_path, npz_path=None, rw_class=None):
    """A case's coarse segmentation ``(Z, Y, X)`` and probabilities ``(C, Z, Y, X)`` or None, checked against the
    image: same shape and geometry, known label values, nnU-Net's npz layout."""
    seg, props = io.read_label(seg_path, rw_class, info)
    if seg.shape != case.image.shape[1:]:
        raise AutosamError(f"{seg_path}: shape {seg.shape} differs from the image's {case.image.shape[1:]}")
    io.check_same_geometry(case.properties, props, str(seg_path))
    probs = None
    if npz_path is not None:
        try:
            with np.load(npz_path) as data:
                if "probabilities" not in data:
                    raise AutosamError(f"{npz_path}: no 'probabilities' array (keys: {', '.join(data.files)})")
                probs = data["probabilities"].astype(np.float32)
        except AutosamError:
            raise
        except Exception as e:  # noqa: BLE001 - a broken file becomes one line naming it
            raise AutosamError(f"{npz_path}: cannot read probabilities: {e}") from None
        expected = (len(info.foreground) + 1, *seg.shape)
        if probs.shape != expected:
            raise AutosamError(f"{npz_path}: probabilities of shape {probs.shape}, expected {expected} "
                               f"(background + {len(info.foreground)} labels on the image grid)")
        integrity.check_probabilities(probs, npz_path)
    return seg, probs
