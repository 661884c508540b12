"""The report of a prediction folder: its inputs found, each case read, scored and drawn, the page written.

:func:`build_report` finds the dataset.json, the cases and their reference, coarse and image files, makes a
:class:`CaseReport` per case (scores with a reference, the share SAM changed with a coarse map, the overlay),
orders them worst first (:func:`sort_worst_first`) and writes the HTML page atomically.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .. import io
from ..errors import AutosamError
from ..evaluation import case_metrics, finite_mean
from ..progress import progress
from ..slicing import choose_axis
from .html import render_html
from .overlay import label_names, render_case, require_matplotlib
from .plots import quality_scatter, summary_plots
from .quality import CaseQuality, load_quality, quality_summary, sort_predicted_worst_first


@dataclass
class CaseReport:
    """What the report shows of one case."""

    case_id: str
    png: bytes
    slices: list[tuple[str, int]]
    metrics: Optional[dict[int, dict]] = None  # per label: Dice, NSD, HD95 ... of the prediction (with --gt)
    coarse_metrics: Optional[dict[int, dict]] = None  # the same of the coarse map (with --gt and --coarse)
    changed: Optional[dict] = None  # with --coarse: share of voxels SAM changed, per label and "all"
    empty: list[str] = field(default_factory=list)  # "reference" / "prediction" when that map has no foreground
    depth: int = 1  # number of slices along the axis shown
    quality: Optional[CaseQuality] = None  # the prediction folder's quality.csv rows of this case, if any

    @property
    def mean_dice(self) -> float:
        """Mean Dice over labels (labels empty in both maps skipped); NaN if no label has a score."""
        return finite_mean([m["Dice"] for m in self.metrics.values()]) if self.metrics else math.nan

    @property
    def mean_coarse_dice(self) -> float:
        return finite_mean([m["Dice"] for m in self.coarse_metrics.values()]) if self.coarse_metrics else math.nan


@dataclass
class Report:
    """A built report: the cases in the page's order (worst first) and the label names."""

    path: Path
    cases: list[CaseReport]
    labels: dict[int, str]
    has_reference: bool
    has_coarse: bool
    calibrated: Optional[bool] = None  # with a quality.csv: whether its predicted Dice is calibrated (else None)

    @property
    def has_quality(self) -> bool:
        return self.calibrated is not None

    @property
    def worst(self) -> Optional[CaseReport]:
        return self.cases[0] if self.cases else None


def changed_share(segmentation: np.ndarray, coarse: np.ndarray, labels: Sequence[int]) -> dict:
    """Share of voxels whose label SAM changed: per label, of the voxels that label holds in either map
    (``1 - IoU``); under ``"all"``, of the voxels in the foreground of either map. 0 where both maps are empty."""
    out: dict = {}
    for value in labels:
        a, b = segmentation == value, coarse == value
        union = int((a | b).sum())
        out[int(value)] = float((a ^ b).sum() / union) if union else 0.0
    fg = np.isin(segmentation, labels) | np.isin(coarse, labels)
    out["all"] = float(((segmentation != coarse) & fg).sum() / fg.sum()) if fg.any() else 0.0
    return out


def sort_worst_first(cases: list[CaseReport]) -> list[CaseReport]:
    """With scores: lowest mean Dice first (then lowest mean NSD; cases without any score last). Without scores
    but with a coarse map: most changed first. Otherwise by case id."""
    def key(c: CaseReport):
        if c.metrics is not None:
            dice = c.mean_dice
            nsd = finite_mean([m["NSD"] for m in c.metrics.values()])
            return (math.isnan(dice), 0.0 if math.isnan(dice) else dice, 0.0 if math.isnan(nsd) else nsd, c.case_id)
        if c.changed is not None:
            return (False, -c.changed["all"], 0.0, c.case_id)
        return (False, 0.0, 0.0, c.case_id)

    return sorted(cases, key=key)


def _find_dataset_json(given, pred: Path, gt: Optional[Path], coarse: Optional[Path], images: Optional[Path]
                       ) -> Path:
    """:func:`autosam.io.find_dataset_json`, with the coarse folder's when the prediction folder has none."""
    predictions = pred
    if given is None and not (pred / "dataset.json").is_file() and coarse is not None \
            and (coarse / "dataset.json").is_file():
        predictions = coarse
    return io.find_dataset_json(given, predictions=predictions, images=images, labels=gt)


def _images_beside(gt: Path, cases: list[str], info: io.DatasetInfo) -> Optional[Path]:
    """``imagesXx`` beside a ``labelsXx`` reference folder when it holds every case (else None)."""
    if not gt.name.startswith("labels"):
        return None
    folder = gt.parent / ("images" + gt.name[len("labels"):])
    if not folder.is_dir():
        return None
    try:
        found = io.list_cases(folder, info.file_ending, info.num_channels)
    except AutosamError:
        return None
    return folder if all(c in found for c in cases) else None


@dataclass
class _Inputs:
    """The folders a report reads and each case's files in them (reference, coarse and image files: empty
    mappings where that folder is not given)."""

    pred: Path
    gt: Optional[Path]
    coarse: Optional[Path]
    images: Optional[Path]
    info: io.DatasetInfo
    rw: type
    cases: list[str]
    ref_files: dict[str, Path]
    coarse_files: dict[str, Path]
    image_files: dict[str, list[Path]]


def _check_arguments(pred: Path, output: Path, tolerance_mm: float) -> None:
    """Raise :class:`AutosamError` for a missing prediction folder, a report name not ending in .html or a
    negative tolerance."""
    if not pred.is_dir():
        raise AutosamError(f"prediction folder not found: {pred}")
    if output.suffix.lower() not in (".html", ".htm"):
        raise AutosamError(f"{output}: the report file must end with .html")
    if tolerance_mm < 0:
        raise AutosamError(f"tolerance must be >= 0 mm, got {tolerance_mm}")


def _prediction_cases(pred: Path, file_ending: str) -> list[str]:
    """The sorted case ids of the ``<case><file_ending>`` files in ``pred`` (at least one)."""
    cases = sorted(f.name[: -len(file_ending)] for f in pred.iterdir()
                   if f.is_file() and f.name.endswith(file_ending) and not f.name.startswith("."))
    if not cases:
        raise AutosamError(f"no {file_ending} predictions in {pred}")
    return cases


def _image_files(images: Path, cases: list[str], info: io.DatasetInfo) -> dict[str, list[Path]]:
    """Each case's channel files in ``images``; a case without them is an error."""
    found = io.list_cases(images, info.file_ending, info.num_channels)
    missing = [c for c in cases if c not in found]
    if missing:
        raise AutosamError(f"prediction {missing[0]}{info.file_ending} has no image in {images}")
    return {c: found[c] for c in cases}


def _gather_inputs(pred: Path, gt: Optional[Path], coarse: Optional[Path], images: Optional[Path], dataset_json,
                   log) -> _Inputs:
    """Find the dataset.json, the cases and their files; the images default to ``imagesXx`` beside the reference."""
    info = io.load_dataset_json(_find_dataset_json(dataset_json, pred, gt, coarse, images))
    rw = io.reader_writer(info.file_ending)
    cases = _prediction_cases(pred, info.file_ending)
    ref_files = io.label_files(gt, cases, info.file_ending, "reference") if gt is not None else {}
    coarse_files = io.label_files(coarse, cases, info.file_ending, "coarse segmentation") if coarse else {}
    if images is None and gt is not None:
        images = _images_beside(gt, cases, info)
        if images is not None:
            log(f"images: {images} (beside the reference; pass -i to choose)")
    image_files = _image_files(images, cases, info) if images is not None else {}
    return _Inputs(pred, gt, coarse, images, info, rw, cases, ref_files, coarse_files, image_files)


def _read_matching(path: Path, what: str, shape: tuple[int, ...], props: dict, inputs: _Inputs) -> np.ndarray:
    """A label map that must have the prediction's shape and geometry, and only dataset.json's label values."""
    m, p = io.read_label(path, inputs.rw, inputs.info)
    if m.shape != shape:
        raise AutosamError(f"{path}: shape {m.shape} differs from the prediction's {shape}")
    io.check_same_geometry(props, p, f"{path} ({what})")
    return m


def _read_image(inputs: _Inputs, case: str, shape: tuple[int, ...]) -> Optional[np.ndarray]:
    """The case's ``(C, Z, Y, X)`` image (None without an image folder); it must have the prediction's shape."""
    if inputs.images is None:
        return None
    c = io.read_case(case, inputs.image_files[case], inputs.rw)
    if c.image.shape[1:] != shape:
        raise AutosamError(f"{inputs.image_files[case][0]}: image shape {c.image.shape[1:]} differs from the "
                           f"prediction's {shape}")
    return c.image


def _case_report(inputs: _Inputs, case: str, tolerance_mm: float, axis: Optional[int]) -> CaseReport:
    """Read one case, score it (with a reference), measure what SAM changed (with a coarse map) and draw it."""
    info, labels = inputs.info, inputs.info.foreground
    seg, props = io.read_label(inputs.pred / f"{case}{info.file_ending}", inputs.rw, info)
    spacing = [float(s) for s in props["spacing"]]
    ref = (_read_matching(inputs.ref_files[case], "reference", seg.shape, props, inputs)
           if inputs.gt is not None else None)
    crs = (_read_matching(inputs.coarse_files[case], "coarse segmentation", seg.shape, props, inputs)
           if inputs.coarse is not None else None)
    image = _read_image(inputs, case, seg.shape)
    metrics = coarse_metrics = changed = None
    if ref is not None:
        metrics = case_metrics(ref, seg, spacing, labels, tolerance_mm, info.ignore_label)
        if crs is not None:
            coarse_metrics = case_metrics(ref, crs, spacing, labels, tolerance_mm, info.ignore_label)
    if crs is not None:
        changed = changed_share(seg, crs, labels)
    png, picks = render_case(image, seg, info.labels, coarse=crs, reference=ref, spacing=spacing, axis=axis,
                             channel_names=info.channel_names, ignore_label=info.ignore_label)
    empty = [what for what, m in (("reference", ref), ("prediction", seg), ("coarse", crs))
             if m is not None and not np.isin(m, labels).any()]
    depth = 1 if seg.shape[0] == 1 else seg.shape[choose_axis(spacing, seg.shape, axis)]
    return CaseReport(case, png, picks, metrics, coarse_metrics, changed, empty, depth)


def _calibrated(quality: Optional[dict[str, CaseQuality]]) -> Optional[bool]:
    """Whether every estimate of a quality table is calibrated (None without a table)."""
    return None if quality is None else all(q.calibrated for q in quality.values())


def build_report(
    pred_dir: str | os.PathLike,
    output: str | os.PathLike,
    *,
    gt_dir: Optional[str | os.PathLike] = None,
    coarse_dir: Optional[str | os.PathLike] = None,
    images_dir: Optional[str | os.PathLike] = None,
    dataset_json: Optional[str | os.PathLike] = None,
    tolerance_mm: float = 1.0,
    axis: Optional[int] = None,
    title: Optional[str] = None,
    log=print,
) -> Report:
    """Write the HTML report of the predictions ``<case><file_ending>`` in ``pred_dir`` to ``output`` (atomically).

    ``gt_dir`` adds Dice, NSD and HD95 per case and label (cases ordered worst first), ``coarse_dir`` the coarse
    contours, the coarse scores and the share of voxels SAM changed, ``images_dir`` the images under the contours
    (default: ``imagesXx`` beside a ``labelsXx`` reference folder when there is one, else a black background).
    A ``quality.csv`` in ``pred_dir`` (:mod:`autosam.qc`) adds each case's predicted Dice and flag (without
    ``gt_dir``, cases ordered worst predicted first; with it, predicted against true Dice); one that does not fit
    the folder is one line through ``log`` and left out.
    """
    require_matplotlib()
    pred = Path(pred_dir)
    gt = Path(gt_dir) if gt_dir is not None else None
    coarse = Path(coarse_dir) if coarse_dir is not None else None
    images = Path(images_dir) if images_dir is not None else None
    output = Path(output)
    _check_arguments(pred, output, tolerance_mm)
    inputs = _gather_inputs(pred, gt, coarse, images, dataset_json, log)
    quality = load_quality(pred, inputs.cases, inputs.info.foreground, log)
    cases = [_case_report(inputs, case, tolerance_mm, axis) for case in progress(inputs.cases, "report")]
    for c in cases:
        c.quality = quality.get(c.case_id) if quality is not None else None
    order = sort_predicted_worst_first if quality is not None and gt is None else sort_worst_first
    report = Report(output, order(cases), label_names(inputs.info.labels), gt is not None, coarse is not None,
                    _calibrated(quality))
    if report.has_quality:
        log(quality_summary(report.cases, report.calibrated))
    page = render_html(report, summary_plots(report), title=title, tolerance_mm=tolerance_mm,
                       sources={"prediction": pred, "reference": gt, "coarse": coarse, "images": inputs.images},
                       has_images=inputs.images is not None, scatter=quality_scatter(report))
    output.parent.mkdir(parents=True, exist_ok=True)
    with io.atomic_output(output) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return report
