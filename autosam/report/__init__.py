"""Pictures of segmentations: one overlay PNG per case, and an HTML report of a whole prediction folder.

:mod:`~autosam.report.overlay` picks a case's representative slices and draws their contours (``--overlays``);
:mod:`~autosam.report.build` finds a report's inputs, scores and draws every case and writes the page;
:mod:`~autosam.report.plots` draws the summary plots; :mod:`~autosam.report.quality` reads a prediction folder's
``quality.csv`` (predicted Dice and flags, ordering, agreement with true Dice); :mod:`~autosam.report.html` renders
the self-contained page (:mod:`~autosam.report.cells` its numbers, :mod:`~autosam.report.quality_html` its quality
parts), with its style sheet and script from the package data files ``report.css`` and ``report.js``. Plotting needs
matplotlib (``pip install 'autosam[report]'``), imported inside the functions only, so importing this package does
not. The report may import the engine and the case-level modules below it (:mod:`autosam.io`,
:mod:`autosam.slicing`, :mod:`autosam.evaluation`, :mod:`autosam.qc`'s table, :mod:`autosam.sam`'s transforms,
:mod:`autosam.errors`, :mod:`autosam.progress`), never the runners, models or commands above it.
"""
from .build import CaseReport, Report, build_report, changed_share, sort_worst_first
from .html import render_html
from .overlay import (COLOURS, INSTALL_HINT, LINESTYLES, render_case, representative_slices, require_matplotlib,
                      write_overlay)
from .plots import quality_scatter, summary_plots
from .quality import CaseQuality, agreement, flagged, load_quality, quality_pairs, sort_predicted_worst_first

__all__ = ["COLOURS", "INSTALL_HINT", "LINESTYLES", "CaseQuality", "CaseReport", "Report", "agreement", "build_report",
           "changed_share", "flagged", "load_quality", "quality_pairs", "quality_scatter", "render_case", "render_html",
           "representative_slices", "require_matplotlib", "sort_predicted_worst_first", "sort_worst_first",
           "summary_plots", "write_overlay"]
