"""Label-free quality control in the folder pipelines: each case's signals from the SAM run that refinement already
made (or, where the settings say "no SAM", from one SAM pass with the default settings for the signals alone, the
output staying the coarse map), and the folder's ``quality.csv`` assembled at the end of a run.

``quality.csv`` is rebuilt from every finished case's ``<case>.quality.json`` under a lock of its own
(``.autosam.quality.lock``), so parts of a split run (``--num-parts``) that finish together leave the table of all
finished cases: whoever assembles last sees every case the others wrote.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Optional

import numpy as np

from .. import io
from ..qc import QualityModel, refined_signals, without_signals, write_quality_csv
from ..refine import RefineConfig, refine_case
from ..runner import FolderLock
from ..progress import notice

TABLE_LOCK = ".autosam.quality.lock"


@dataclass
class QualityControl:
    """What ``--qc`` asks of a folder run: the calibrated ``model`` (None: the uncalibrated rank score) and the
    flag threshold (None: the model's, else the worst tenth of the folder)."""

    model: Optional[QualityModel] = None
    flag_below: Optional[float] = None

    @property
    def volume_stats(self) -> Optional[dict]:
        """The training labels' volume statistics the model holds (None without one)."""
        return self.model.volume_stats if self.model is not None else None

    def record(self) -> dict:
        """The run record's key (only present when QC is on, so runs without it resume unchanged)."""
        return {"qc": True}


def case_quality(sam, case: io.Case, info: io.DatasetInfo, coarse_seg: np.ndarray, coarse_probs: Optional[np.ndarray],
                 refined: Any = None, volume_stats: Optional[dict] = None) -> list[dict]:
    """A case's signal rows: from ``refined`` (the :class:`autosam.refine.Refined` of the case's own SAM run), or,
    without one ("no SAM"), from SAM with the default :class:`~autosam.refine.RefineConfig` while the final map
    stays ``coarse_seg``."""
    if refined is None:
        refined = refine_case(sam, case, info, coarse_seg, coarse_probs, RefineConfig(), keep=False)
        refined = replace(refined, segmentation=coarse_seg)
    return refined_signals(case.case_id, info, coarse_seg, coarse_probs, refined, case.spacing, volume_stats)


def finish_quality(out_dir, info: io.DatasetInfo, qc: QualityControl) -> Path:
    """Assemble ``out_dir``'s ``quality.csv`` under its lock from every finished case's signals; says on stderr
    which finished cases have none (refined without QC)."""
    out = Path(out_dir)
    lock = FolderLock(out, "quality", name=TABLE_LOCK).wait()
    try:
        path = write_quality_csv(out, info.file_ending, qc.model, qc.flag_below)
    finally:
        lock.release()
    missing = without_signals(out, info.file_ending)
    if missing:
        notice(f"note: {len(missing)} case(s) in {out} have no quality signals (refined without QC) and are "
               f"not in quality.csv; --overwrite redoes them")
    return path
