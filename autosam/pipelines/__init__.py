"""Folder-level pipelines: every pending case of an image folder through one method, written in nnU-Net's layout.

One module per pipeline, each a plain function over a :class:`~autosam.runner.CaseJob` (resume, locking, Ray and
parts come from :class:`~autosam.runner.CaseRunner`): :mod:`~autosam.pipelines.refine` (SAM on a coarse
prediction folder), :mod:`~autosam.pipelines.oracle` (SAM on boxes from reference labels),
:mod:`~autosam.pipelines.segment` (a trained prompter, optionally + SAM) and :mod:`~autosam.pipelines.predict`
(an nnU-Net model + SAM in memory); :mod:`~autosam.pipelines.quality` gives refine, segment and predict their
label-free quality control (``--qc``: each case's signals, the folder's ``quality.csv``). The verbs in
:mod:`autosam.commands`, the demo and the study call them.

They may import the case-level layers below them (:mod:`autosam.refine`, :mod:`autosam.oracle`, the runner, the
engine, io, nnU-Net's wrapper), never the models that train (prompter, adapt, settings.model), the study or the
commands: a prompter or a SAM predictor comes in as an object or a factory.
"""
from .oracle import OracleJob, oracle_folder
from .predict import PredictJob, predict_folder
from .refine import refine_folder
from .segment import SegmentJob, segment_folder

__all__ = ["OracleJob", "PredictJob", "SegmentJob", "oracle_folder", "predict_folder", "refine_folder",
           "segment_folder"]
