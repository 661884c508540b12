"""fit's adapters: one per fold, trained on the cross-fitted maps of the cases outside that fold (so it is scored
only on cases it never saw), and the final one on every map. Each folder records the options it was trained with
(``autosam_fit.json``); a rerun resumes one with the same options and refuses one trained with others."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from .. import io
from ..adapt.config import read_config
from ..errors import AutosamError
from ..nnunet.folds import CrossValidation
from ..progress import notice
from ..settings import Runtime, SamSpec
from .options import FitOptions

RECORD = "autosam_fit.json"
ADAPTERS_DIR = "adapters"
MAPS_DIR = "maps"  # under fit's work folder: every cross-fitted map, linked (:func:`autosam.nnunet.folds.link_maps`)


def wanted(opts: FitOptions, sam: SamSpec, cases: Sequence[str]) -> dict:
    return {**opts.adapter_record(), "sam": sam.name, "checkpoint": sam.checkpoint, "cases": sorted(cases)}


def check_kept(folder: Path, want: dict) -> bool:
    """Whether ``folder`` holds an adapter fit started with ``want`` (False: none yet); one trained with other
    options is refused in one line (nothing written)."""
    path = folder / RECORD
    if not path.is_file():
        if folder.exists() and any(folder.iterdir()):
            raise AutosamError(f"{folder}: holds files fit did not write; move them away and rerun")
        return False
    try:
        have = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise AutosamError(f"{path}: cannot read ({e}); remove {folder} and rerun") from None
    differ = [k for k in want if have.get(k) != want[k]]
    if differ:
        k = differ[0]
        raise AutosamError(f"{folder}: this adapter was trained with another {k} ({have.get(k)!r}, now "
                           f"{want[k]!r}); rerun with the same options, or remove {folder}")
    return True


def train_adapter(cv: CrossValidation, folder: Path, cases: Sequence[str], opts: FitOptions, sam: SamSpec,
                  runtime: Runtime, maps: Path, cache: Path, log=notice) -> Path:
    """Train (resume, or keep) the adapter in ``folder`` on ``cases``' cross-fitted maps, the study's recipe."""
    from ..adapt.train import finetune

    want = wanted(opts, sam, cases)
    kept = check_kept(folder, want)
    if kept and (folder / "adapter_config.json").is_file() and read_config(folder).epoch >= opts.adapt_epochs:
        return folder
    resume = kept and (folder / "train_state.pt").is_file()
    folder.mkdir(parents=True, exist_ok=True)
    io.write_json(want, folder / RECORD)
    log(f"fit: adapting SAM ({opts.adapt}, {opts.adapt_prompt} prompts"
        + (", every plane" if opts.adapt_planes else "") + f") on the cross-fitted maps of {len(cases)} case(s)"
        + (" (resumed)" if resume else ""))
    finetune(cv.raw, folder, base=sam.name, checkpoint=sam.checkpoint, method=opts.adapt, epochs=opts.adapt_epochs,
             val_fraction=0.0, iterations_per_epoch=opts.adapt_iterations, cases=list(cases), seed=opts.seed,
             device=runtime.device, resume=resume, overwrite=not resume, prompts_from=f"coarse:{maps}",
             auto_prompt=opts.adapt_prompt, planes=opts.adapt_planes, cache_dir=cache, log=log)
    return folder


def fold_folder(work: Path, fold: str) -> Path:
    return work / ADAPTERS_DIR / f"fold_{fold}"


def outside(cv: CrossValidation, fold: str) -> list[str]:
    """The cases a fold's adapter trains on: every cross-validated case outside the fold."""
    return [c for c in cv.cases if c not in cv.folds[fold]]
