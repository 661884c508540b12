"""``autosam fit``: nnU-Net's own cross-validation chooses and adapts SAM, as ``nnUNetv2_find_best_configuration``
chooses a configuration.

Lives here: :class:`FitOptions` (what fit compares), :mod:`.scores` (a fold's grid scored with frozen or adapted
SAM, kept for a rerun; Ray jobs), :mod:`.adapters` (one adapter per fold on the maps outside it, and the final
one), :mod:`.quality` (the quality model ``MODEL/autosam_quality.json`` calibrated on the chosen setting's
cross-fitted maps), :mod:`.estimate` (`--dry-run`'s plan, the cost per case) and
:mod:`.stages` (the stages, the choice, the record ``MODEL/autosam_sam.json`` and the table). May import
:mod:`autosam.nnunet.folds`, :mod:`autosam.tune`, :mod:`autosam.adapt`, :mod:`autosam.settings`,
:mod:`autosam.pipelines.quality`, :mod:`autosam.qc` and below;
commands and the study import it, never the reverse.
"""
from .options import FIT_DIR, FitOptions
from .stages import fit

__all__ = ["FIT_DIR", "FitOptions", "fit"]
