"""Scores of a prediction folder against a reference folder, through nnU-Net's own evaluation."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from . import io
from .errors import AutosamError


def nnunet_summary(
    gt_dir: str | os.PathLike,
    pred_dir: str | os.PathLike,
    info: io.DatasetInfo,
    output_file: Optional[str | os.PathLike] = None,
    num_processes: int = 2,
) -> dict:
    """nnU-Net's ``summary.json`` content (Dice, IoU, ... per case and label) for the cases in ``pred_dir``."""
    from nnunetv2.evaluation.evaluate_predictions import compute_metrics_on_folder

    pred = Path(pred_dir)
    if not any(f.name.endswith(info.file_ending) and not f.name.startswith(".") for f in pred.iterdir()):
        raise AutosamError(f"no {info.file_ending} predictions in {pred}")
    for f in pred.iterdir():
        if f.name.endswith(info.file_ending) and not f.name.startswith(".") and not (Path(gt_dir) / f.name).is_file():
            raise AutosamError(f"prediction {f.name} has no reference file in {gt_dir}")
    rw = io.reader_writer(info.file_ending)
    return compute_metrics_on_folder(
        str(gt_dir), str(pred), None if output_file is None else str(output_file), rw(), info.file_ending,
        info.foreground, ignore_label=info.ignore_label, num_processes=num_processes,
    )


def dice_table(summary: dict, info: io.DatasetInfo) -> str:
    """Per-label mean Dice of an nnU-Net summary as a small text table."""
    names = {v: k for k, v in info.labels.items()}
    rows = [f"{'label':<14}{'Dice':>8}"]
    for value in info.foreground:
        rows.append(f"{names[value]:<14}{summary['mean'][value]['Dice']:>8.4f}")
    rows.append(f"{'mean':<14}{summary['foreground_mean']['Dice']:>8.4f}")
    return "\n".join(rows)
