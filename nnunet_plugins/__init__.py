"""nnU-Net trainers that nnU-Net finds through the ``nnUNet_extTrainer`` environment variable.

``eval "$(autosam nnunet-env)"`` points the variable here. nnU-Net imports every module of this folder as a
top-level module while it searches for a ``-tr`` name, so modules here import each other absolutely
(``nnunet_plugins.x``) and import autosam lazily. They hold only the glue to nnU-Net's classes; the SAM
refinement and tuning they run live in :mod:`autosam.nnunet` (``refinement``, ``validation``).

* ``nnUNetTrainerAutoSAM``, ``nnUNetTrainerAutoSAM_Short`` (:mod:`.autosam_trainers`): SAM refinement in the final
  validation and in ``nnUNetv2_predict``; settings in :mod:`autosam.settings.model`.
* ``nnUNetTrainer_autosam_Short`` (:mod:`.short_schedule`): plain nnU-Net with an environment-configured schedule.
"""
