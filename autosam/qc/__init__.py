"""Label-free quality control: which cases a person should check, without reference labels.

:mod:`.signals` computes per case and foreground label the signals (agreement between the coarse map, SAM's mask,
the final mask and the planes; SAM's predicted IoU; the coarse map's uncertainty near its boundary; volume,
components and emptiness against the training labels) from arrays that refinement already holds, so SAM never
runs twice; :mod:`.model` turns them into a predicted Dice (:class:`QualityModel`, ridge least squares stored as
``autosam_quality.json``; without one, an uncalibrated rank score); :mod:`.table` writes each case's signals
atomically beside its outputs and assembles the folder's ``quality.csv``.

The package may import :mod:`autosam.io`, :mod:`autosam.errors`, numpy and scipy only: it sits below the runner,
refinement and the pipelines (which call it) and the report (which reads its table); a
:class:`autosam.refine.Refined` result is read, never imported.
"""
from .model import QUALITY_FILE, QualityModel, dataset_name, rank_score
from .signals import SIGNALS, case_signals, dice, label_volumes, reference_volumes, refined_signals, \
    volume_statistics
from .table import CASE_SUFFIX, TABLE_FILE, read_case_rows, read_quality_csv, score_rows, without_signals, \
    write_case_rows, write_quality_csv

__all__ = ["QUALITY_FILE", "QualityModel", "dataset_name", "rank_score", "SIGNALS", "case_signals", "dice",
           "label_volumes", "reference_volumes", "refined_signals", "volume_statistics", "CASE_SUFFIX",
           "TABLE_FILE", "read_case_rows", "read_quality_csv", "score_rows", "without_signals", "write_case_rows",
           "write_quality_csv"]
