"""Refine a coarse segmentation with SAM: coarse -> prompts -> SAM -> fusion -> nnU-Net-style probabilities.

>>> from autosam import io, refine
>>> from autosam.sam import SamPredictor, build_sam
>>> predictor = SamPredictor(build_sam("litemedsam"))
>>> result = refine.refine_case(predictor, case, info, coarse_seg, coarse_probs, refine.RefineConfig())
>>> result.segmentation, result.probabilities  # (Z, Y, X) labels, (C, Z, Y, X) background first
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from . import export, io, slicing
from .errors import AutosamError
from .fusion import fuse, fusion_strategies, to_distribution, to_segmentation
from .pipeline import SamRun, progress, run_sam
from .prompts import PromptOptions, prompt_strategies, prompts_for_slices
from .sam import SamPredictor
from .sam.transforms import normalize_case


@dataclass
class RefineConfig:
    """How coarse masks become prompts and how SAM's answer is fused back.

    ``prompt``/``fusion`` name entries of :data:`autosam.prompts.prompt_strategies` and
    :data:`autosam.fusion.fusion_strategies`; ``margin`` (in ``margin_unit``, ``"mm"`` or ``"px"``) widens boxes;
    components under ``min_size`` pixels get no prompt; ``fill_gaps`` prompts a slice missing a class between two
    slices that have it; ``axis`` as in :func:`autosam.slicing.choose_axis`; ``fusion_options`` go to the fusion
    function (``weight`` for average, ``min_iou``/``min_agreement`` for gated).
    """

    # defaults: the best non-oracle row of scripts/benchmark_refine.py (real nnU-Net predictions, see README)
    prompt: str = "box+mask"
    fusion: str = "gated"
    margin: float = 0.0
    min_size: int = 4
    axis: Optional[int] = None
    fusion_options: dict = field(default_factory=dict)
    margin_unit: str = "mm"
    n_positive: int = 1
    n_negative: int = 1
    mask_logit: float = 8.0
    fill_gaps: bool = True

    def check(self) -> None:
        if self.prompt not in prompt_strategies:
            raise AutosamError(f"unknown prompt strategy {self.prompt!r}; choose one of {', '.join(prompt_strategies)}")
        if self.fusion not in fusion_strategies:
            raise AutosamError(f"unknown fusion strategy {self.fusion!r}; choose one of {', '.join(fusion_strategies)}")
        if self.margin < 0 or self.min_size < 0 or self.n_positive < 0 or self.n_negative < 0:
            raise AutosamError("margin, min_size and point counts must not be negative")
        PromptOptions(margin_unit=self.margin_unit).margin_px((1.0, 1.0))

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Refined:
    """``segmentation`` ``(Z, Y, X)`` label map, ``probabilities`` ``(C, Z, Y, X)`` (background first, nnU-Net
    label order), and SAM's raw answer."""

    segmentation: np.ndarray
    probabilities: np.ndarray
    sam: SamRun


def coarse_foreground(info: io.DatasetInfo, coarse_seg: np.ndarray, coarse_probs: Optional[np.ndarray]) -> np.ndarray:
    """Per-foreground-label coarse probabilities ``(K, Z, Y, X)``: the given softmax, else the one-hot label map.

    ``coarse_probs`` is nnU-Net's ``(C, Z, Y, X)``: background first, then the foreground labels in ascending
    order (the ignore label, if any, has no channel), as ``nnUNetv2_predict --save_probabilities`` writes it.
    """
    if coarse_probs is not None:
        n = len(info.foreground) + 1
        if coarse_probs.ndim != 4 or coarse_probs.shape[0] != n or coarse_probs.shape[1:] != coarse_seg.shape:
            raise AutosamError(f"coarse probabilities of shape {coarse_probs.shape} do not fit {n} classes "
                               f"(background + {len(info.foreground)} labels) and a segmentation of shape "
                               f"{coarse_seg.shape}")
        return np.ascontiguousarray(coarse_probs[1:], dtype=np.float32)
    return np.stack([(coarse_seg == v) for v in info.foreground]).astype(np.float32)


def in_plane_spacing(spacing, axis: int) -> tuple[float, float]:
    """The (y, x) spacing of slices cut along ``axis`` of a (Z, Y, X) spacing."""
    rest = [float(s) for a, s in enumerate(spacing) if a != axis]
    return rest[0], rest[1]


def refine_case(
    predictor: SamPredictor,
    case: io.Case,
    info: io.DatasetInfo,
    coarse_seg: np.ndarray,
    coarse_probs: Optional[np.ndarray] = None,
    config: RefineConfig = RefineConfig(),
) -> Refined:
    """Refine one case. ``coarse_seg`` is ``(Z, Y, X)``; ``coarse_probs`` (optional) ``(C, Z, Y, X)`` softmax.

    Voxels of the ignore label (if the dataset has one) in ``coarse_seg`` count as background.
    """
    config.check()
    if coarse_seg.shape != case.image.shape[1:]:
        raise AutosamError(f"case {case.case_id}: coarse segmentation shape {coarse_seg.shape} differs from the "
                           f"image shape {case.image.shape[1:]}")
    labels = info.foreground
    axis = slicing.choose_axis(case.spacing, coarse_seg.shape, config.axis)
    coarse = coarse_foreground(info, coarse_seg, coarse_probs)
    label_slices = slicing.to_slices(coarse_seg[None], axis)[:, 0]
    prompts = prompts_for_slices(
        label_slices, labels, strategy=config.prompt, margin=config.margin, min_size=config.min_size,
        prob_slices=slicing.to_slices(coarse, axis), spacing=in_plane_spacing(case.spacing, axis),
        margin_unit=config.margin_unit, n_positive=config.n_positive, n_negative=config.n_negative,
        mask_logit=config.mask_logit, gaps=config.fill_gaps,
    )
    image = normalize_case(case.image, info.channel_names)
    run = run_sam(predictor, image, axis, prompts, labels)
    fused = fuse(coarse, run, config.fusion, **config.fusion_options)
    probabilities = to_distribution(fused)
    return Refined(segmentation=to_segmentation(probabilities, labels), probabilities=probabilities, sam=run)


def find_coarse_files(coarse_dir, cases, file_ending: str) -> dict:
    """Each case's coarse segmentation ``<case><ending>`` (a missing one is an error) and its ``<case>.npz``
    probabilities when present (else None): ``{case: (seg_path, npz_path_or_None)}``."""
    segs = io.label_files(coarse_dir, cases, file_ending, what="coarse segmentation")
    return {case: (seg, seg.with_name(f"{case}.npz") if seg.with_name(f"{case}.npz").is_file() else None)
            for case, seg in segs.items()}


def read_coarse(case: io.Case, info: io.DatasetInfo, seg_path, npz_path=None, rw_class=None):
    """A case's coarse segmentation ``(Z, Y, X)`` and probabilities ``(C, Z, Y, X)`` or None, checked against the
    image: same shape and geometry, known label values, nnU-Net's npz layout."""
    seg, props = io.read_label(seg_path, rw_class)
    if seg.shape != case.image.shape[1:]:
        raise AutosamError(f"{seg_path}: shape {seg.shape} differs from the image's {case.image.shape[1:]}")
    io.check_same_geometry(case.properties, props, str(seg_path))
    known = [0, *info.foreground] + ([info.ignore_label] if info.ignore_label is not None else [])
    unknown = np.setdiff1d(np.unique(seg), known)
    if unknown.size:
        raise AutosamError(f"{seg_path}: label value(s) {unknown.tolist()} not in {info.path}")
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
    return seg, probs


def refine_folder(
    images_dir,
    coarse_dir,
    out_dir,
    info: io.DatasetInfo,
    make_predictor: Callable[[], SamPredictor],
    config: RefineConfig = RefineConfig(),
    save_probabilities: bool = False,
    overwrite: bool = False,
    run_args: Optional[dict] = None,
) -> list[str]:
    """Refine every case of ``images_dir`` with the coarse predictions in ``coarse_dir``; write ``out_dir``.

    ``make_predictor()`` is called once, when the first pending case has been read and checked. Finished cases are skipped unless
    ``overwrite``; returns the cases written.
    """
    config.check()
    images, coarse, out = Path(images_dir), Path(coarse_dir), Path(out_dir)
    if out.resolve() in (coarse.resolve(), images.resolve()):
        raise AutosamError(f"output folder {out} must differ from the image and coarse folders")
    if save_probabilities:
        export.check_probability_layout(info)
    cases = io.list_cases(images, info.file_ending, info.num_channels)
    sources = find_coarse_files(coarse, list(cases), info.file_ending)
    plans = coarse / "plans.json"
    record = {"verb": "refine", "images": str(images), "coarse": str(coarse), "dataset_json": str(info.path),
              "save_probabilities": save_probabilities, "refine": config.to_dict(), **(run_args or {})}
    export.prepare_folder(out, info, record, plans if plans.is_file() else None)
    todo = export.pending_cases(list(cases), out, info.file_ending, save_probabilities, overwrite)
    predictor = None
    rw = io.reader_writer(info.file_ending)
    for case_id in progress(todo, "refine"):
        case = io.read_case(case_id, cases[case_id], rw)
        seg, probs = read_coarse(case, info, *sources[case_id], rw_class=rw)
        predictor = predictor or make_predictor()  # built after the first case's inputs are known to be sound
        result = refine_case(predictor, case, info, seg, probs, config)
        export.write_case(out, case_id, result.segmentation, case.properties, info,
                          result.probabilities if save_probabilities else None, rw)
    return todo
