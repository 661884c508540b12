"""One command-line vocabulary for every verb: datasets, margins with units, exclusions, subjects.

* ``-d/--dataset DIR`` is always an nnU-Net raw dataset folder; ``--dataset-json FILE`` is the file itself.
* ``--margin`` carries its unit: ``2mm``, ``3px`` or ``0.1box`` (a fraction of the box side); a bare number is
  refused.
* ``--exclude`` takes case ids (or subjects), comma-separated or one per line in a file.
* ``--subject-pattern`` is the regex of :mod:`autosam.splits`.
"""
from __future__ import annotations

import argparse
import math
import contextlib
import os
import re
from pathlib import Path
from typing import Iterator, Optional, Sequence

from ..errors import AutosamError
from ..prompts import MARGIN_UNITS, Margin

_MARGIN = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(mm|px|box)\s*$")


def margin_type(text: str) -> Margin:
    """argparse type: ``2mm``/``3px``/``0.1box`` -> :class:`Margin`; anything else, a bare number included, is
    refused at parse time with one line."""
    m = _MARGIN.match(str(text))
    if m is None:
        raise argparse.ArgumentTypeError(f"{text!r}: give a number with its unit, e.g. 2mm, 3px or 0.1box")
    value = float(m.group(1))
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r}: the margin must be finite")
    return Margin(value, m.group(2))


def add_margin_argument(parser, default: Margin, allowed: Sequence[str] = MARGIN_UNITS, help_extra: str = "") -> None:
    """``--margin`` with its unit; read it back with :func:`resolve_margin`."""
    units = ", ".join(f"N{u}" for u in allowed)
    parser.add_argument("--margin", type=margin_type, default=default,
                        help=f"box margin with its unit ({units}; default {default}){help_extra}")


def resolve_margin(args: argparse.Namespace, allowed: Sequence[str] = MARGIN_UNITS) -> Margin:
    """The :class:`Margin` of ``args.margin``, checked: a unit this verb takes, not negative."""
    margin = args.margin
    if margin.unit not in allowed:
        raise AutosamError(f"--margin {margin}: this verb takes a margin in " + " or ".join(allowed))
    if margin.value < 0:
        raise AutosamError(f"--margin {margin}: must not be negative")
    return margin


def add_dataset_arguments(parser, required: bool = False, what: str = "") -> None:
    """``-d/--dataset DIR`` (nnU-Net raw dataset folder) and ``--dataset-json FILE``."""
    parser.add_argument("-d", "--dataset", required=required, default=None,
                        help="nnU-Net raw dataset folder (dataset.json, imagesTr, labelsTr)" + what)
    if not required:
        parser.add_argument("--dataset-json", default=None, help="the dataset.json file itself" + what)


def dataset_json_from_args(args: argparse.Namespace) -> Optional[Path]:
    """The dataset.json the options name: ``--dataset-json``, else ``DIR/dataset.json`` of ``-d``, else None."""
    given_json, dataset = getattr(args, "dataset_json", None), getattr(args, "dataset", None)
    if given_json and dataset:
        raise AutosamError("give -d/--dataset (a folder) or --dataset-json (a file), not both")
    if given_json:
        path = Path(given_json)
        if path.is_dir():
            raise AutosamError(f"--dataset-json {path} is a folder; give the file, or the folder with -d")
        return path
    if dataset:
        path = Path(dataset)
        if path.is_file():
            raise AutosamError(f"-d {path} is a file; -d takes an nnU-Net raw dataset folder (give the file with "
                               "--dataset-json)")
        if not path.is_dir():
            raise AutosamError(f"dataset folder not found: {path}")
        return path / "dataset.json"
    return None


def dataset_folder(args: argparse.Namespace) -> Path:
    """``-d`` of the verbs that read a whole raw dataset (imagesTr, labelsTr): checked to be a folder."""
    path = Path(args.dataset)
    if not path.is_dir():
        raise AutosamError(f"dataset folder not found: {path} (-d takes an nnU-Net raw dataset folder)")
    return path


def add_exclude_argument(parser, what: str = "cases to leave out") -> None:
    """``--exclude``; read it back with :func:`excluded_cases`."""
    parser.add_argument("--exclude", nargs="*", default=[],
                        help=f"{what}: case ids or subjects, space- or comma-separated, or a file with one per line")


def excluded_cases(args: argparse.Namespace) -> list[str]:
    """The ids of ``--exclude`` (files read, commas split)."""
    out: list[str] = []
    for value in args.exclude or []:
        out.extend(read_case_list(value))
    return out


def read_case_list(value: Optional[str]) -> list[str]:
    """``a,b,c`` or a file with one case id per line (``#`` comments allowed)."""
    if not value:
        return []
    path = Path(value)
    if path.is_file():
        lines = [line.split("#")[0].strip() for line in path.read_text().splitlines()]
        return [line for line in lines if line]
    if "/" in value or value.endswith(".txt"):
        raise AutosamError(f"case list file not found: {value}")
    return [c.strip() for c in value.split(",") if c.strip()]


def add_subject_argument(parser) -> None:
    """``--subject-pattern``; read it back with :func:`subject_pattern`."""
    parser.add_argument("--subject-pattern", default=None,
                        help="regex that finds a case's subject in its id (its first group, else the whole match), "
                             "e.g. '^([^_]+)_'; splits and --exclude keep a subject's cases together")


def subject_pattern(args: argparse.Namespace) -> Optional[str]:
    """``--subject-pattern`` (None when not given)."""
    return args.subject_pattern


@contextlib.contextmanager
def exclusive_output(output: str | os.PathLike, inputs: dict) -> Iterator[Path]:
    """A model folder a training verb writes: checked to lie outside every input folder, created, and locked for
    the run (:class:`autosam.runner.FolderLock`: a second run into it fails at once naming the first)."""
    from ..runner import FolderLock, guard_output

    out = Path(output)
    guard_output(out, inputs)
    if out.exists() and not out.is_dir():
        raise AutosamError(f"output {out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    with FolderLock(out, "train"):
        yield out
