"""The one table of option constraints (:data:`BOUNDS`) that the command line, the environment and the records
validate through, and the argparse types built from it."""
from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from typing import Callable, Optional, Union

from ..errors import AutosamError

Number = Union[int, float]


@dataclass(frozen=True)
class Bound:
    """What a numeric option accepts: ``kind`` (int or float), finite, within ``[low, high]`` (an end is left out
    where ``open_low``/``open_high``; ``None``: no bound on that side)."""

    kind: type = float
    low: Optional[float] = None
    high: Optional[float] = None
    open_low: bool = False
    open_high: bool = False

    def describe(self) -> str:
        kind = "an integer" if self.kind is int else "a number"
        if self.low is not None and self.high is not None:
            left, right = "(" if self.open_low else "[", ")" if self.open_high else "]"
            return f"{kind} in {left}{self.low:g}, {self.high:g}{right}"
        if self.low is not None:
            return f"{kind} {'>' if self.open_low else '>='} {self.low:g}"
        if self.high is not None:
            return f"{kind} {'<' if self.open_high else '<='} {self.high:g}"
        return kind if self.kind is int else "a finite number"

    def accepts(self, value: Number) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return False
        if self.kind is int and value != int(value):
            return False
        if self.low is not None and (value <= self.low if self.open_low else value < self.low):
            return False
        return not (self.high is not None and (value >= self.high if self.open_high else value > self.high))

    def parse(self, text: str) -> Number:
        """``text`` as this bound's kind; ``ValueError`` naming what is expected."""
        try:
            value: Number = int(text) if self.kind is int else float(text)
        except (TypeError, ValueError):
            raise ValueError(f"{text!r}: expected {self.describe()}") from None
        if not self.accepts(value):
            raise ValueError(f"{text!r}: expected {self.describe()}")
        return value


POSITIVE_INT = Bound(int, 1)
COUNT = Bound(int, 0)
UNIT = Bound(float, 0.0, 1.0)
POSITIVE = Bound(float, 0.0, open_low=True)
NON_NEGATIVE = Bound(float, 0.0)

FOLDS = Bound(int, 2)
FRACTION = Bound(float, 0.0, 1.0, open_high=True)

#: Option (its field name: the command line's destination, the record's key, ``AUTOSAM_<NAME>``) -> what it accepts.
#: The command line (every int or float option of every verb, :func:`bind_bounds`), the environment and the records
#: all check through this one table.
BOUNDS: dict[str, Bound] = {
    # runtime and parallel runs
    "batch_size": POSITIVE_INT, "threads": POSITIVE_INT, "workers": POSITIVE_INT, "cpus_per_worker": POSITIVE,
    "gpus_per_worker": NON_NEGATIVE, "num_parts": POSITIVE_INT, "part_id": COUNT, "nnunet_processes": COUNT,
    "step_size": Bound(float, 0.0, 1.0, open_low=True),
    # refine
    "min_size": COUNT, "max_objects": COUNT, "positive_points": COUNT, "negative_points": COUNT,
    "rebox": COUNT, "mask_logit": Bound(float),
    "weight": UNIT, "min_iou": UNIT, "min_agreement": UNIT,
    # label-free quality control
    "flag_below": UNIT,
    # evaluation, tuning and the study
    "tolerance_mm": NON_NEGATIVE, "min_gain": NON_NEGATIVE, "sign_test": Bound(float, 0.0, 1.0, open_low=True),
    "tune_cases": COUNT, "max_cases": COUNT, "repeats": POSITIVE_INT,
    "test_fraction": Bound(float, 0.0, 1.0, open_low=True, open_high=True),
    "prompter_epochs": POSITIVE_INT, "prompter_iterations": POSITIVE_INT, "adapt_epochs": POSITIVE_INT,
    "adapt_iterations": COUNT, "adapt_folds": FOLDS, "nnunet_epochs": POSITIVE_INT,
    "nnunet_iterations": POSITIVE_INT, "nnunet_spacing": POSITIVE,
    # training
    "lr": POSITIVE, "decoder_lr": POSITIVE, "lora_alpha": POSITIVE, "epochs": POSITIVE_INT, "fold_epochs": POSITIVE_INT,
    "iterations": COUNT, "seed": COUNT, "base": POSITIVE_INT, "depth": POSITIVE_INT, "input_size": COUNT,
    "val_fraction": FRACTION, "rank": POSITIVE_INT, "folds": FOLDS, "jitter": NON_NEGATIVE, "max_points": COUNT,
    "max_slices": COUNT, "max_embedding_slices": COUNT,
}


def bind_bounds(parser: argparse.ArgumentParser) -> None:
    """Give every int or float option of ``parser`` (choices excepted) the check of its :data:`BOUNDS` entry, and
    ``--device`` :func:`device_type`.

    A numeric option with no entry is a ``KeyError``: every option has a declared range."""
    for action in parser._actions:
        if action.type in (int, float) and action.choices is None:
            action.type = option_type(action.dest)
        elif action.dest == "device":
            action.type = device_type


def option_type(name: str) -> Callable[[str], Number]:
    """argparse ``type=`` for option ``name``: parses and checks it through :data:`BOUNDS`, so a bad value is a
    one-line parse error naming the option as the user typed it."""
    bound = BOUNDS[name]

    def parse(text: str) -> Number:
        try:
            return bound.parse(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    parse.__name__ = name  # argparse names the type in its messages
    return parse


DEVICES = ("auto", "cpu", "cuda", "mps")


def device_type(text: str) -> str:
    """argparse ``type=`` for ``--device``: auto, cpu, cuda, cuda:N or mps (whether it is present is checked when
    the predictor is built, with one line)."""
    kind, _, index = str(text).partition(":")
    if kind not in DEVICES or (index and (kind != "cuda" or not index.isdigit())):
        raise argparse.ArgumentTypeError(f"{text!r}: expected auto, cpu, cuda, cuda:N or mps")
    return str(text)


def check_option(name: str, value: Number, source: str) -> Number:
    """``value`` of option ``name`` checked through :data:`BOUNDS` (``AutosamError`` naming ``source``)."""
    bound = BOUNDS[name]
    if not bound.accepts(value):
        raise AutosamError(f"{source}: {name} = {value!r}: expected {bound.describe()}")
    return value
