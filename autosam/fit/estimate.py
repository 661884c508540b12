"""fit's plan and rough time (``--dry-run``), and what the chosen configuration costs per case (measured)."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

from .. import io
from ..nnunet.folds import CrossValidation
from ..refine import refine_case, read_coarse
from ..sam.predictor import resolve_device
from ..settings import Runtime, SamSpec
from ..tune import TuneResult
from .options import FitOptions

#: Rough seconds per encoded slice (LiteMedSAM): 2 CPU threads (OpenVINO about 1.9 slices/s, torch 0.5 to 0.9),
#: and a GPU (measured on an H200: 395 slices/s batched, 94 in a loop).
SECONDS_PER_SLICE = {"cpu": 0.6, "gpu": 0.01}
#: Rough seconds per adapter training sample (decoder adapter, cached embeddings; 2 CPU threads).
SECONDS_PER_SAMPLE = {"cpu": 0.15, "gpu": 0.005}


def _slices(shape: tuple, planes: bool) -> int:
    """Slices a case of ``shape`` is encoded along (every axis with ``planes`` on a 3D case)."""
    if len(shape) == 2 or min(shape) == 1:
        return 1
    return sum(shape) if planes else min(shape)


def describe_plan(cv: CrossValidation, picked: dict, opts: FitOptions, runtime: Runtime) -> str:
    """What fit would do, and a rough time (``--dry-run``; nothing is written)."""
    grid = opts.grid()
    planes = any(c.use_sam and c.config.planes for c in grid)
    n = sum(map(len, picked.values()))
    shape = io.read_case(cv.cases[0], cv.images[cv.cases[0]]).image.shape[1:]  # the first case stands for all
    slices = _slices(shape, planes) * n
    auto_cpu = runtime.device == "auto" and resolve_device("auto").type != "cuda"
    kind = "cpu" if runtime.device == "cpu" or auto_cpu else "gpu"
    seconds = slices * SECONDS_PER_SLICE[kind] * 1.3  # decoder and fusions: about a third more
    lines = [f"fit {cv.model}: {len(cv.folds)} fold(s), {len(cv.cases)} cross-fitted case(s), {n} scored",
             f"  1. frozen SAM: {len(grid)} candidates on {n} case(s), about {slices} encoded slice(s)"]
    if not opts.frozen:
        samples = _slices(shape, opts.adapt_planes) * len(cv.cases) * opts.adapt_epochs
        train = samples * SECONDS_PER_SAMPLE[kind] * (len(cv.folds) - 1)
        seconds += train * 1.2 + slices * SECONDS_PER_SLICE[kind] * 0.3
        lines.append(f"  2. {len(cv.folds)} fold adapters ({opts.adapt}, {opts.adapt_epochs} epoch(s)), each scored "
                     "on its fold's cases; the final adapter if an adapted candidate wins")
    lines.append(f"  then: the choice (no SAM unless a candidate gains {opts.min_gain}) -> "
                 f"{cv.model / 'autosam_sam.json'}")
    lines.append(f"  rough time on {kind}: {seconds / 60:.0f} min")
    return "\n".join(lines)


def cost_per_case(cv: CrossValidation, result: TuneResult, sam: SamSpec, adapter: Optional[Path],
                  runtime: Runtime) -> float:
    """Seconds SAM takes on one case with the chosen configuration (the first scored case, nothing cached)."""
    case_id = result.cases[0]
    spec = SamSpec(sam.name, sam.checkpoint, str(adapter) if adapter else None)
    predictor = spec.predictor(runtime)
    case = io.read_case(case_id, cv.images[case_id])
    seg, probs = read_coarse(case, cv.info, *cv.maps[case_id])
    start = time.perf_counter()
    refine_case(predictor, case, cv.info, seg, probs, result.best.config)
    return time.perf_counter() - start
