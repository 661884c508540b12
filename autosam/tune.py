"""Choose how (and whether) SAM refines a coarse source, on validation cases, as nnU-Net's
``find_best_configuration`` chooses among its configurations.

Every candidate is scored on the same held-out cases with their reference labels: "no SAM" (the coarse map
alone) and SAM with each prompt strategy and fusion of :func:`candidates`. SAM runs once per case and prompt
strategy, the encoder once per slice and the decoder once per distinct prompt; the fusions are cheap. The winner is
the best mean Dice, but a SAM candidate must beat "no SAM" by ``min_gain``, so the chosen default is never below
the coarse map on the validation cases, and SAM's cost is paid only where it helped. With ``sign_test`` P it must
also be better on significantly more cases than it is worse (a one-sided sign test, p <= P; per-case differences
within :data:`TIE` are ties), so a mean lifted by a few badly failed coarse maps does not choose SAM.

>>> result = tune(predictor, items, info)           # items: TuneCase(case, reference, coarse_seg, coarse_probs)
>>> result.best.use_sam, result.best.config         # False, None  or  True, RefineConfig(...)
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from . import io, slicing
from .errors import AutosamError
from .fusion import fuse
from .evaluation import finite_mean
from .labels import dice_per_label, to_distribution, to_segmentation
from .progress import progress
from .refine import RefineConfig, coarse_foreground, read_coarse, refine_case
from .sam.cache import CachingPredictor

#: A SAM candidate must beat the coarse map's mean validation Dice by this much to be chosen (default).
MIN_GAIN = 0.005
#: Per-case Dice differences within this are ties for the sign test (neither better nor worse).
TIE = 0.001
NO_SAM = "no SAM"


@dataclass
class Candidate:
    """One configuration: ``config`` None means "no SAM" (the coarse map as it is)."""

    config: Optional[RefineConfig] = None

    @property
    def use_sam(self) -> bool:
        return self.config is not None

    @property
    def name(self) -> str:
        if self.config is None:
            return NO_SAM
        opts = "".join(f" {k}={v}" for k, v in sorted(self.config.fusion_options.items()))
        c = self.config
        extra = (f" max_objects={c.max_objects}" if c.max_objects else "") + (
            " box_hypotheses" if c.box_hypotheses else "") + (f" rebox={c.rebox}" if c.rebox else "") + (
            " planes" if c.planes else "")
        return f"{c.prompt}/{c.fusion}{opts}{extra}"

    def to_dict(self) -> dict:
        return {"name": self.name, "use_sam": self.use_sam,
                "refine": self.config.to_dict() if self.config is not None else None}


@dataclass
class TuneCase:
    """A validation case: the image, its reference label map and the coarse source's map (and softmax, if any)."""

    case: io.Case
    reference: np.ndarray
    coarse_seg: np.ndarray
    coarse_probs: Optional[np.ndarray] = None


@dataclass
class TuneResult:
    """Every candidate's per-case mean Dice (rows in ``cases`` order), the coarse map's, and the winner."""

    cases: list[str]
    scores: dict[str, list[float]]
    candidates: dict[str, Candidate]
    best: Candidate
    min_gain: float = MIN_GAIN
    base: dict = field(default_factory=dict)
    sign_test: Optional[float] = None

    def mean(self, name: str) -> float:
        return finite_mean(self.scores[name])

    def ranking(self) -> list[tuple[str, float]]:
        return sorted(((n, self.mean(n)) for n in self.scores), key=lambda x: -x[1] if math.isfinite(x[1]) else 0)

    def to_dict(self) -> dict:
        """The record kept beside the model: what was compared on which cases, and what won."""
        return {"chosen": self.best.name, "chosen_mean_dice": self.mean(self.best.name),
                "no_sam_mean_dice": self.mean(NO_SAM), "min_gain": self.min_gain, "sign_test": self.sign_test,
                "chosen_better_worse": list(wins_losses(self.scores[self.best.name], self.scores[NO_SAM])),
                "best_sam": self.best_sam(),
                **({"without_sign_test": self.mean_rule().name} if self.sign_test is not None else {}),
                "validation_cases": self.cases,
                "candidates": {n: round(m, 5) for n, m in self.ranking()}, **self.base}

    def mean_rule(self) -> Candidate:
        """The winner by the mean gain alone (what a result tuned with the sign test would have chosen without)."""
        return choose(self.scores, self.candidates, self.min_gain)

    def best_sam(self) -> Optional[dict]:
        """The SAM candidate with the best mean, chosen or not: its mean and its cases better and worse than "no
        SAM" with the sign test's p (None: no SAM candidate was scored)."""
        ranked = [(n, m) for n, m in self.ranking() if n != NO_SAM and math.isfinite(m)]
        if not ranked:
            return None
        name, m = ranked[0]
        wins, losses = wins_losses(self.scores[name], self.scores[NO_SAM])
        return {"name": name, "mean_dice": round(m, 5), "better": wins, "worse": losses,
                "sign_test_p": round(sign_test_p(wins, losses), 5)}


def coarse_items(cases: Sequence[str], images: dict, references: dict, coarse: str | Path, info: io.DatasetInfo,
                 rw_class=None) -> list[TuneCase]:
    """Validation cases whose coarse maps are in an nnU-Net prediction folder ``coarse`` (``CASE<ending>``, and
    ``CASE.npz`` with the probabilities where there is one); ``images``: case -> image files, ``references``: case
    -> reference label file."""
    items = []
    for c in progress(list(cases), "coarse"):
        case = io.read_case(c, [Path(f) for f in images[c]], rw_class)
        npz = Path(coarse) / f"{c}.npz"
        seg, probs = read_coarse(case, info, Path(coarse) / f"{c}{info.file_ending}", npz if npz.is_file() else None,
                                 rw_class)
        items.append(TuneCase(case, io.read_label(references[c], rw_class, info)[0], seg, probs))
    return items


def candidates(base: RefineConfig = RefineConfig(), prompts: Sequence[str] = ("box", "box+mask"),
               min_ious: Sequence[float] = (0.5, 0.7, 0.8, 0.9),
               min_agreements: Sequence[float] = (0.3, 0.5, 0.7),
               weights: Sequence[float] = (0.3, 0.5, 0.7), max_objects: Sequence[int] = (0, 1),
               levers: Sequence[tuple[bool, int]] = ((False, 0), (True, 0)), planes: bool = True) -> list[Candidate]:
    """The default grid: "no SAM", and per prompt strategy, object limit (0: every component prompted; 1: only
    the largest per label and slice) and localisation lever (``(box_hypotheses, rebox)`` pairs: none, and three
    box scales picked by SAM's IoU; re-boxing, ``(False, 1)``, is left out by default: it never helped in the
    studies of scripts/README.md) every fusion (gated over IoU and agreement thresholds, average over SAM's
    weight). ``planes`` adds, per prompt strategy, ``replace`` and ``average`` at each weight on all three planes of
    a 3D case (:class:`~autosam.refine.RefineConfig` ``planes``, with the first object limit; :func:`tune` drops
    them when every case is 2D). ``base`` gives the fields the grid does not vary (margin, axis, ...)."""
    out = [Candidate(None)]
    for prompt, limit, (hyp, rebox) in ((p, m, lv) for p in prompts for m in max_objects for lv in levers):
        b = replace(base, prompt=prompt, max_objects=limit, box_hypotheses=hyp, rebox=rebox, fusion_options={})
        out += [Candidate(replace(b, fusion=f)) for f in ("replace", "union", "intersection")]
        out += [Candidate(replace(b, fusion="average", fusion_options={"weight": w})) for w in weights]
        out += [Candidate(replace(b, fusion="gated", fusion_options={"min_iou": i, "min_agreement": a}))
                for i in min_ious for a in min_agreements]
    if planes and not base.planes:
        for prompt in prompts:
            b = replace(base, prompt=prompt, max_objects=max_objects[0], box_hypotheses=False, rebox=0, planes=True,
                        fusion_options={})
            out.append(Candidate(replace(b, fusion="replace")))
            out += [Candidate(replace(b, fusion="average", fusion_options={"weight": w})) for w in weights]
    return out


def grid(max_objects: int = 0, small: bool = False, base: RefineConfig = RefineConfig()) -> list[Candidate]:
    """The grid fit, the study and the trainer score: :func:`candidates` around ``base`` with an object limit (0:
    the default pair); ``small`` leaves out the box hypotheses (three boxes per object) and the three-plane
    candidates (each case encoded along every axis), a quarter of the decoder calls and a third of the encoder's."""
    limits = {"max_objects": (max_objects,)} if max_objects else {}
    return candidates(base, **limits, **({"levers": ((False, 0),), "planes": False} if small else {}))


def case_dice(seg: np.ndarray, ref: np.ndarray, labels: Sequence[int]) -> float:
    """Mean over labels of Dice (labels empty in both left out; NaN if all are)."""
    return finite_mean(dice_per_label(seg, ref, labels))


def _prompt_key(config: RefineConfig) -> tuple:
    """The fields that change what SAM is asked (not how its answer is fused)."""
    d = config.to_dict()
    return tuple(sorted((k, str(v)) for k, v in d.items() if k not in ("fusion", "fusion_options")))


def tune(predictor, items: Sequence[TuneCase], info: io.DatasetInfo,
         grid: Optional[Sequence[Candidate]] = None, min_gain: float = MIN_GAIN, remember: bool = True,
         sign_test: Optional[float] = None) -> TuneResult:
    """Score every candidate of ``grid`` (default :func:`candidates`) on ``items``; the winner as the module says.
    ``remember``: the decoder answers a prompt asked again within a case from memory (False: decode every time,
    for measuring what the memory saves)."""
    if not items:
        raise AutosamError("no validation cases to tune on")
    grid = list(grid or candidates())
    if all(len(_axes(item, RefineConfig(planes=True))) == 1 for item in items):  # a 2D image has one plane
        grid = [c for c in grid if not (c.use_sam and c.config.planes)]
    if not any(not c.use_sam for c in grid):
        grid.insert(0, Candidate(None))
    labels = info.foreground
    scores: dict[str, list[float]] = {c.name: [] for c in grid}
    groups: dict[tuple, list[Candidate]] = {}
    for c in grid:
        if c.use_sam:
            groups.setdefault(_prompt_key(c.config), []).append(c)
    sam = predictor if isinstance(predictor, CachingPredictor) else CachingPredictor.like(predictor)
    for item in progress(items, "tune"):
        scores[NO_SAM].append(case_dice(item.coarse_seg, item.reference, labels))
        coarse = coarse_foreground(info, item.coarse_seg, item.coarse_probs)
        # a prompt shared by several groups (box scale 1, largest object) is decoded once
        with sam.remembering_decodes() if remember else contextlib.nullcontext():
            for group in groups.values():
                first = replace(group[0].config, fusion="replace", fusion_options={})
                runs = [refine_case(sam, item.case, info, item.coarse_seg, item.coarse_probs, config, keep=True).sam
                        for config in _one_per_axis(first, item)]
                fusions = [c.config.fusion_for(soft=item.coarse_probs is not None) for c in group]
                for c, (fusion, options) in zip(group, fusions):  # as refine_case: each plane fused, averaged
                    dist = sum(to_distribution(fuse(coarse, run, fusion, options)) for run in runs) / len(runs)
                    scores[c.name].append(case_dice(to_segmentation(dist, labels), item.reference, labels))
        if sam.cache.folder is None:
            sam.clear()  # an in-memory cache serves one case's prompt strategies, then is freed
    by_name = {c.name: c for c in grid}
    return TuneResult(cases=[i.case.case_id for i in items], scores=scores, candidates=by_name,
                      best=choose(scores, by_name, min_gain, sign_test), min_gain=min_gain, sign_test=sign_test)


def combine(results: Sequence[TuneResult], min_gain: float = MIN_GAIN,
            sign_test: Optional[float] = None) -> TuneResult:
    """One grid's results on disjoint cases (cross-validation folds, each scored with its own model) as one, the
    winner chosen on all their cases."""
    if not results:
        raise AutosamError("no validation cases to tune on")
    names = list(results[0].scores)
    scores = {n: [v for r in results for v in r.scores[n]] for n in names}
    by_name = results[0].candidates
    return TuneResult(cases=[c for r in results for c in r.cases], scores=scores, candidates=by_name,
                      best=choose(scores, by_name, min_gain, sign_test), min_gain=min_gain, sign_test=sign_test)


def _axes(item: TuneCase, config: RefineConfig) -> list[int]:
    """The axes :func:`autosam.refine.refine_case` slices ``item`` along with ``config``."""
    return slicing.plane_axes(item.case.spacing, item.coarse_seg.shape, config.axis, config.planes)


def _one_per_axis(config: RefineConfig, item: TuneCase) -> list[RefineConfig]:
    """``config`` itself, or with ``planes`` on a 3D case, one config per axis in refine_case's order (their runs
    are fused and averaged as :func:`autosam.refine.refine_case` does)."""
    axes = _axes(item, config)
    return [config] if len(axes) == 1 else [replace(config, planes=False, axis=a) for a in axes]


def wins_losses(values: Sequence[float], base: Sequence[float]) -> tuple[int, int]:
    """Cases where ``values`` beat ``base`` and where they lose, by more than :data:`TIE` (case by case)."""
    diffs = [v - b for v, b in zip(values, base) if math.isfinite(v) and math.isfinite(b)]
    return sum(d > TIE for d in diffs), sum(d < -TIE for d in diffs)


def check_sign_test(p: Optional[float]) -> None:
    """A ``--sign-test`` level is a p-value in (0, 1] (None: no sign test)."""
    if p is not None and not 0 < p <= 1:
        raise AutosamError(f"--sign-test must be a p-value in (0, 1], got {p}")


def sign_test_p(wins: int, losses: int) -> float:
    """One-sided sign test: the chance of ``wins`` or more better cases of ``wins + losses`` if better and worse
    were equally likely (1.0 with no case either way)."""
    from scipy.stats import binomtest

    n = wins + losses
    return float(binomtest(wins, n, 0.5, alternative="greater").pvalue) if n else 1.0


def choose(scores: dict[str, list[float]], by_name: dict[str, Candidate], min_gain: float = MIN_GAIN,
           sign_test: Optional[float] = None) -> Candidate:
    """The best mean; "no SAM" unless a SAM candidate beats it by ``min_gain`` and, with ``sign_test`` P, is better
    on significantly more cases than worse (p <= P) (ties: the grid's order)."""
    base = finite_mean(scores[NO_SAM])
    best_name, best = NO_SAM, base if math.isfinite(base) else -math.inf
    for name, values in scores.items():
        m = finite_mean(values)
        if name != NO_SAM and math.isfinite(m) and m >= best + (min_gain if best_name == NO_SAM else 1e-9) and (
                sign_test is None or sign_test_p(*wins_losses(values, scores[NO_SAM])) <= sign_test):
            best_name, best = name, m
    return by_name[best_name]
