"""nnU-Net trainers with SAM refinement built in: ``nnUNetTrainerAutoSAM`` and ``nnUNetTrainerAutoSAM_Short``.

Training is nnU-Net's, unchanged. The final validation keeps nnU-Net's own predictions in
``fold_X/validation_unrefined/`` (with their ``summary.json``), refines every case from the network's probabilities
with SAM and writes the refined cases and their ``summary.json`` to ``fold_X/validation/``
(``validation/summary_unrefined.json`` is a copy of the unrefined summary). The SAM settings used are recorded in
``fold_X/autosam_sam.json``; ``nnUNetv2_predict -tr nnUNetTrainerAutoSAM`` refines with them (see
:mod:`nnunet_plugins.autosam_predict_hook`). SAM options: see :mod:`autosam.settings.model`.
"""
from __future__ import annotations

import os
import shutil
import sys

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_plugins.short_schedule import ShortSchedule, honour_omp_threads

VALIDATION = "validation"
UNREFINED = "validation_unrefined"


def refuse_regions(dataset_json: dict, trainer_name: str) -> None:
    """Region-based training (labels given as lists of values) cannot be refined per label: refuse it."""
    regions = [k for k, v in dataset_json.get("labels", {}).items() if isinstance(v, (list, tuple))]
    if regions:
        raise RuntimeError(
            f"{trainer_name}: dataset.json defines region-based labels ({', '.join(regions)}); SAM refinement needs "
            f"one integer value per label. Train this dataset with nnUNetTrainer instead.")


class nnUNetTrainerAutoSAM(nnUNetTrainer):
    """Standard nnU-Net training; final validation and ``nnUNetv2_predict`` refine the network's output with SAM."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        refuse_regions(dataset_json, self.__class__.__name__)
        super().__init__(plans, configuration, fold, dataset_json, device)

    @staticmethod
    def build_network_architecture(plans_manager, configuration_manager, num_input_channels: int,
                                   num_output_channels: int, enable_deep_supervision: bool = True):
        """nnU-Net's network; when ``nnUNetv2_predict`` asks for it, SAM refinement is hooked into that run."""
        network = nnUNetTrainer.build_network_architecture(plans_manager, configuration_manager, num_input_channels,
                                                           num_output_channels, enable_deep_supervision)
        _hook_prediction(sys._getframe(1))
        return network

    # -- settings --------------------------------------------------------------------------------------------
    def _sam_settings(self):
        from autosam.settings.model import Settings

        return Settings.resolve(self.preprocessed_dataset_folder_base)

    def on_train_start(self):
        from autosam.nnunet.validation import trainer_grid

        settings = self._sam_settings()  # bad AUTOSAM_* values fail now, not after training
        trainer_grid(settings)
        super().on_train_start()
        if self.local_rank == 0:
            self.print_to_log_file(f"autosam: validation will refine with {settings.describe()}")

    # -- validation ------------------------------------------------------------------------------------------
    def perform_actual_validation(self, save_probabilities: bool = False):
        """nnU-Net's validation (kept in ``validation_unrefined``), then SAM refinement into ``validation``."""
        from dataclasses import replace

        from autosam.settings import SETTINGS_FILE, Runtime, read_json

        settings = self._sam_settings() if self.local_rank == 0 else None
        super().perform_actual_validation(save_probabilities=True)
        if self.local_rank != 0:
            return
        validation = os.path.join(self.output_folder, VALIDATION)
        unrefined = os.path.join(self.output_folder, UNREFINED)
        if os.path.isdir(unrefined):
            shutil.rmtree(unrefined)
        os.replace(validation, unrefined)
        os.makedirs(validation)
        for stale in ("summary_unrefined.json", SETTINGS_FILE):  # left by an earlier validation
            if os.path.isfile(os.path.join(unrefined, stale)):
                os.remove(os.path.join(unrefined, stale))
        from autosam.io import atomic_output

        with atomic_output(os.path.join(validation, "summary_unrefined.json")) as tmp:
            shutil.copyfile(os.path.join(unrefined, "summary.json"), tmp)

        settings = self._tune(unrefined, replace(settings, runtime=Runtime.from_env(str(self.device))))
        self.print_to_log_file(f"autosam: the validation cases with {settings.describe()} "
                               f"on {settings.runtime.device}", also_print_to_console=True)
        if settings.use_sam:
            cases = self._refine_validation(unrefined, validation, settings, save_probabilities)
        else:
            from autosam.nnunet.validation import copy_unrefined

            cases = copy_unrefined(unrefined, validation, self.dataset_json["file_ending"], save_probabilities)
        settings.write(self.output_folder, by=f"{self.__class__.__name__} validation", runtime=True)
        if not save_probabilities:
            from autosam.nnunet.refinement import drop_probabilities

            drop_probabilities(unrefined, cases)
        refined = self._summarise(validation)
        self.print_to_log_file("Mean Validation Dice, nnU-Net alone: ",
                               read_json(os.path.join(unrefined, "summary.json"))
                               ["foreground_mean"]["Dice"], also_print_to_console=True)
        self.print_to_log_file("Mean Validation Dice, SAM-refined: ", refined["foreground_mean"]["Dice"],
                               also_print_to_console=True)

    def _tune(self, unrefined: str, settings):
        """SAM's configuration (or no SAM) chosen on this fold's validation cases, unless set explicitly
        (:func:`autosam.nnunet.validation.tune_validation`)."""
        from autosam.nnunet.validation import tune_validation

        return tune_validation(unrefined, settings, self.preprocessed_dataset_folder_base, self._raw_images,
                               os.path.join(self.output_folder_base, "dataset.json"),
                               self.plans_manager.image_reader_writer_class,
                               log=lambda msg: self.print_to_log_file(msg, also_print_to_console=True))

    def _refine_validation(self, unrefined: str, validation: str, settings, save_probabilities: bool) -> list[str]:
        from autosam.nnunet.refinement import refine_cases

        sam = settings.predictor()
        return refine_cases(unrefined, validation, self._raw_images(), os.path.join(self.output_folder_base,
                             "dataset.json"), settings, sam, save_probabilities=save_probabilities,
                             log=lambda msg: self.print_to_log_file(f"autosam: {msg}"))

    def _raw_images(self) -> dict[str, list[str]]:
        """Case id -> raw image files of the training set (``$nnUNet_raw/<dataset>``, as nnU-Net lists them)."""
        from nnunetv2.paths import nnUNet_raw
        from nnunetv2.utilities.utils import get_filenames_of_train_images_and_targets

        from autosam.errors import AutosamError

        if not nnUNet_raw.is_set():
            raise AutosamError("nnUNet_raw is not set: SAM refinement of the validation reads the raw training "
                               "images. Set it and rerun the validation (nnUNetv2_train ... --val)")
        folder = os.path.join(str(nnUNet_raw), self.plans_manager.dataset_name)
        if not os.path.isdir(folder):
            raise AutosamError(f"{folder} not found: SAM refinement of the validation reads the raw training "
                               "images from there; rerun with nnUNetv2_train ... --val once it exists")
        dataset = get_filenames_of_train_images_and_targets(folder, self.dataset_json)
        return {case: entry["images"] for case, entry in dataset.items()}

    def _summarise(self, validation: str) -> dict:
        """nnU-Net's metrics of the refined cases into ``validation/summary.json`` (as nnU-Net's validation does)."""
        from nnunetv2.configuration import default_num_processes
        from nnunetv2.evaluation.evaluate_predictions import compute_metrics_on_folder

        lm = self.label_manager
        n_cases = sum(f.endswith(self.dataset_json["file_ending"]) for f in os.listdir(validation))
        return compute_metrics_on_folder(
            os.path.join(self.preprocessed_dataset_folder_base, "gt_segmentations"), validation,
            os.path.join(validation, "summary.json"), self.plans_manager.image_reader_writer_class(),
            self.dataset_json["file_ending"], lm.foreground_labels, lm.ignore_label, chill=True,
            num_processes=max(1, min(default_num_processes, n_cases)))


def _hook_prediction(caller, short: bool = False) -> None:
    from nnunet_plugins.autosam_predict_hook import attach_from_caller

    if attach_from_caller(caller) and short and caller.f_locals["self"].device.type == "cpu":
        honour_omp_threads()


class nnUNetTrainerAutoSAM_Short(ShortSchedule, nnUNetTrainerAutoSAM):
    """nnUNetTrainerAutoSAM with the environment-configured short schedule of ``nnUNetTrainer_autosam_Short``."""

    @staticmethod
    def build_network_architecture(plans_manager, configuration_manager, num_input_channels: int,
                                   num_output_channels: int, enable_deep_supervision: bool = True):
        network = nnUNetTrainer.build_network_architecture(plans_manager, configuration_manager, num_input_channels,
                                                           num_output_channels, enable_deep_supervision)
        _hook_prediction(sys._getframe(1), short=True)
        return network
