"""A short, CPU-sized nnU-Net schedule, for tests and clearly labelled CPU benchmarks.

Settings come from environment variables (read when the trainer is built, so nnU-Net's own commands honour them):
``AUTOSAM_NNUNET_EPOCHS`` (default 2), ``AUTOSAM_NNUNET_ITERATIONS`` (train iterations per epoch, default 5),
``AUTOSAM_NNUNET_VAL_ITERATIONS`` (default 2), ``AUTOSAM_NNUNET_BATCH`` (batch size; default: the plans') and
``AUTOSAM_NNUNET_SEED`` (seeds python, numpy and torch for repeatable CPU runs; default: unseeded, as nnU-Net).
On CPU, a set ``OMP_NUM_THREADS`` is honoured (nnU-Net's ``-device cpu`` would otherwise take every core).
"""
from __future__ import annotations

import os
import random

import numpy as np
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        number = int(value)
    except ValueError:
        raise ValueError(f"environment variable {name} must be a positive integer, got {value!r}") from None
    if number < 1:
        raise ValueError(f"environment variable {name} must be a positive integer, got {value!r}")
    return number


def honour_omp_threads() -> None:
    """Limit torch's CPU threads to ``OMP_NUM_THREADS`` when that variable is set."""
    if os.environ.get("OMP_NUM_THREADS", "").strip():
        torch.set_num_threads(_env_int("OMP_NUM_THREADS", torch.get_num_threads()))


class ShortSchedule:
    """Mixin (put it before an nnUNetTrainer subclass) that applies the environment-configured short schedule."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        if os.environ.get("AUTOSAM_NNUNET_SEED", "").strip():
            seed = _env_int("AUTOSAM_NNUNET_SEED", 1)
            random.seed(seed)
            np.random.seed(seed)
            torch.manual_seed(seed)
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = _env_int("AUTOSAM_NNUNET_EPOCHS", 2)
        self.num_iterations_per_epoch = _env_int("AUTOSAM_NNUNET_ITERATIONS", 5)
        self.num_val_iterations_per_epoch = _env_int("AUTOSAM_NNUNET_VAL_ITERATIONS", 2)
        if self.device.type == "cpu":
            honour_omp_threads()

    def _set_batch_size_and_oversample(self):
        super()._set_batch_size_and_oversample()
        if not self.is_ddp and os.environ.get("AUTOSAM_NNUNET_BATCH", "").strip():
            self.batch_size = _env_int("AUTOSAM_NNUNET_BATCH", self.batch_size)


class nnUNetTrainer_autosam_Short(ShortSchedule, nnUNetTrainer):
    """nnUNetTrainer with a few epochs of a few iterations (and optionally a small batch); no SAM."""
