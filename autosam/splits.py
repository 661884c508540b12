"""Subjects and splits: one rule for every verb that keeps a subject's cases together.

A case's subject is what ``--subject-pattern`` (a regular expression, searched with :func:`re.search`) finds in
its id: the first group when the pattern has one, else the whole match; a case it does not match is its own
subject. ``'^([^_]+)_'`` and ``'^[^_]+'`` both give ``800`` for ``800_HC``.
"""
from __future__ import annotations

import re
from functools import lru_cache
from typing import Optional, Sequence

import numpy as np

from .errors import AutosamError


@lru_cache(maxsize=32)
def _compile(pattern: str) -> re.Pattern:
    try:
        return re.compile(pattern)
    except re.error as e:
        raise AutosamError(f"--subject-pattern {pattern!r} is not a valid regular expression: {e}") from None


def subject_of(case: str, pattern: Optional[str]) -> str:
    """The subject id of ``case`` under ``pattern`` (rule in the module doc)."""
    if not pattern:
        return case
    m = _compile(pattern).search(case)
    if m is None:
        return case
    return m.group(1) if m.re.groups and m.group(1) is not None else m.group(0)


def split_by_subject(cases: Sequence[str], val_fraction: float, seed: int,
                     subject_pattern: Optional[str] = None) -> dict:
    """Deterministic train/validation split by subject (all cases of a subject land on the same side).

    ``round(val_fraction * subjects)`` subjects (at least one, and at least one left to train on, when
    ``val_fraction > 0`` and there are two or more subjects) are drawn with ``seed``.
    """
    if not 0 <= val_fraction < 1:
        raise AutosamError(f"validation fraction must be in [0, 1), got {val_fraction}")
    subjects = sorted({subject_of(c, subject_pattern) for c in cases})
    order = [subjects[i] for i in np.random.default_rng(seed).permutation(len(subjects))]
    n_val = int(round(val_fraction * len(subjects)))
    if val_fraction > 0 and len(subjects) > 1:
        n_val = min(max(1, n_val), len(subjects) - 1)
    else:
        n_val = 0
    val_subjects = set(order[:n_val])
    return {
        "train": sorted(c for c in cases if subject_of(c, subject_pattern) not in val_subjects),
        "val": sorted(c for c in cases if subject_of(c, subject_pattern) in val_subjects),
        "val_fraction": val_fraction, "seed": seed, "subject_pattern": subject_pattern,
    }
