"""Whether the study's nnU-Net baseline has converged: nnU-Net's validation Dice at the study's schedule (E epochs)
and at 2E, per training size, on fold 0 of the run's cross-validation (cases that fold never trained on). The
headline should use a schedule where doubling adds less than :data:`CONVERGED` (half a Dice point)."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Optional

from .. import io
from ..nnunet.train import Schedule, train_nnunet

#: Doubling the epochs adds less than this mean Dice: the baseline has converged.
CONVERGED = 0.005
RECORD = "convergence.json"


def validation_dice(model: Path, fold: str = "0") -> Optional[float]:
    """nnU-Net's own mean foreground Dice of a fold's validation (``summary.json``; None when there is none)."""
    fold_dir = model / f"fold_{fold}"
    for name in ("validation_unrefined", "validation"):
        path = fold_dir / name / "summary.json"
        if path.is_file():
            return float(json.loads(path.read_text())["foreground_mean"]["Dice"])
    return None


def measure(dataset: Path, run: dict, cv_model: Optional[Path], work: Path, dataset_id: int, schedule: Schedule,
            split: list, out: Path) -> dict:
    """Fold 0 of ``split`` at E (``cv_model``'s, or trained in ``work/convergence_e``) and at 2E (trained in
    ``work/convergence_2e``), kept in ``out``."""
    if out.is_file():
        return json.loads(out.read_text())
    fold0 = replace(schedule, fold="0")
    if cv_model is None:
        cv_model = train_nnunet(dataset, run["cases"], work / "convergence_e", dataset_id, fold0, split=split)
    doubled = replace(fold0, epochs=2 * schedule.epochs)
    model = train_nnunet(dataset, run["cases"], work / "convergence_2e", dataset_id, doubled, split=split)
    at_e, at_2e = validation_dice(cv_model), validation_dice(model)
    record = {"size": run["size"], "repeat": run.get("repeat", 0), "epochs": schedule.epochs,
              "iterations": schedule.iterations, "dice_e": at_e, "dice_2e": at_2e,
              "gain": None if at_e is None or at_2e is None else round(at_2e - at_e, 5)}
    io.write_json(record, out)
    return record


def convergence_lines(folder: Path) -> list[str]:
    """The ``baseline_convergence`` section of summary.md, from every run's kept record (none: no lines)."""
    records = [json.loads(p.read_text()) for p in sorted(folder.glob(f"models/*/{RECORD}"))]
    if not records:
        return []
    lines = ["## baseline_convergence", "",
             "nnU-Net's validation Dice (fold 0 of the run's cross-validation) at the study's schedule E and at 2E; "
             f"converged when doubling adds less than {CONVERGED}.", "",
             "| train size | repeat | E (epochs x iterations) | Dice at E | Dice at 2E | gain | converged |",
             "|---|---|---|---|---|---|---|"]
    for r in sorted(records, key=lambda r: (r["size"], r["repeat"])):
        gain = r["gain"]
        verdict = "n/a" if gain is None else ("yes" if gain < CONVERGED else "**no**")
        fmt = (lambda v: "n/a" if v is None else f"{v:.4f}")
        lines.append(f"| {r['size']} | {r['repeat']} | {r['epochs']} x {r['iterations']} | {fmt(r['dice_e'])} | "
                     f"{fmt(r['dice_2e'])} | {fmt(gain)} | {verdict} |")
    return lines + [""]
