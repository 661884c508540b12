"""SAM refinement inside ``nnUNetv2_predict -tr nnUNetTrainerAutoSAM`` without changing nnU-Net's files.

nnunetv2 2.8's predictor uses the trainer class for one thing only: it calls the static
``build_network_architecture`` from ``nnUNetPredictor.initialize_from_trained_model_folder``. The autosam trainers
use that call to find the predictor (the caller's ``self``) and wrap *that instance's* ``predict_from_files`` and
``predict_from_files_sequential``: nnU-Net predicts into ``<output>/unrefined/`` (with probabilities), then each
case is refined with the SAM settings recorded in ``fold_X/autosam_sam.json`` and written to ``<output>/``
(:mod:`autosam.nnunet.refinement`; this module is the glue to nnU-Net's predictor). No class or module of nnU-Net
is modified; a predictor built any other way is left alone (with a warning).
"""
from __future__ import annotations

import functools
import inspect
import os
import sys
from types import FrameType, MethodType
from typing import Optional

_ATTACHED = "_autosam_refinement"


def attach_from_caller(frame: Optional[FrameType]) -> bool:
    """Hook SAM refinement into the nnUNetPredictor whose model loading called ``build_network_architecture``."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    predictor = frame.f_locals.get("self") if frame is not None else None
    if isinstance(predictor, nnUNetTrainer):
        return False  # a trainer building its own network for training or validation
    trainer_name = str(frame.f_locals.get("trainer_name", "autosam trainer")) if frame is not None else "trainer"
    if frame is None or frame.f_code.co_name != "initialize_from_trained_model_folder" \
            or not isinstance(predictor, nnUNetPredictor):
        print(f"autosam: {trainer_name}: network built outside nnUNetPredictor.initialize_from_trained_model_folder;"
              " SAM refinement NOT applied (use nnUNetv2_predict, or autosam predict)", file=sys.stderr)
        return False
    if getattr(predictor, _ATTACHED, None) is not None:
        return True
    model_folder = frame.f_locals.get("model_training_output_dir")
    folds = frame.f_locals.get("use_folds") or []
    attach(predictor, str(model_folder), list(folds), trainer_name)
    return True


def attach(predictor, model_folder: str, folds: list, trainer_name: str) -> None:
    """Wrap ``predictor.predict_from_files(_sequential)`` so that their outputs are SAM-refined."""
    from autosam.nnunet.refinement import prediction_settings

    settings = prediction_settings(model_folder, folds)
    state = {"settings": settings, "model_folder": model_folder, "trainer": trainer_name}
    setattr(predictor, _ATTACHED, state)
    for name in ("predict_from_files", "predict_from_files_sequential"):
        original = getattr(predictor, name)
        setattr(predictor, name, MethodType(_wrapper(original), predictor))
    print(f"autosam: {trainer_name}: predictions will be refined with {settings.describe()}",
          file=sys.stderr)


def _wrapper(original):
    """A function to bind to the predictor in place of ``original`` (a bound method), with its signature: nnU-Net
    records the arguments of ``predict_from_files`` by inspecting its signature."""
    signature = inspect.signature(original)

    @functools.wraps(original.__func__)
    def predict_and_refine(self, *args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        return _predict_and_refine(self, original, dict(bound.arguments))

    return predict_and_refine


def _case_lists(predictor, source, part_id: int, num_parts: int) -> tuple[list[str], list[list[str]]]:
    """Case ids and channel files, listed and split into parts exactly as nnU-Net does."""
    from nnunetv2.utilities.utils import create_lists_from_splitted_dataset_folder

    ending = predictor.dataset_json["file_ending"]
    lists = create_lists_from_splitted_dataset_folder(source, ending) if isinstance(source, str) else list(source)
    lists = lists[part_id::num_parts]
    cases = [os.path.basename(files[0])[: -(len(ending) + 5)] for files in lists]
    return cases, lists


def _predict_and_refine(predictor, original, arguments: dict):
    from autosam.nnunet import refinement

    source = arguments["list_of_lists_or_source_folder"]
    target = arguments["output_folder_or_list_of_truncated_output_files"]
    if target is None:
        print("autosam: predictions returned in memory are NOT SAM-refined (give an output folder)", file=sys.stderr)
        return original(**arguments)
    if not predictor.__dict__[_ATTACHED]["settings"].use_sam:
        print("autosam: the recorded default is 'no SAM' (tuned on the validation cases): nnU-Net's own prediction",
              file=sys.stderr)
        return original(**arguments)
    part_id, num_parts = arguments.get("part_id", 0), arguments.get("num_parts", 1)
    cases, lists = _case_lists(predictor, source, part_id, num_parts)
    if isinstance(target, str):
        refined = [os.path.join(target, c) for c in cases]
    else:
        refined = list(target)[part_id::num_parts]
    ending = predictor.dataset_json["file_ending"]
    keep_probabilities = bool(arguments["save_probabilities"])
    todo = [i for i, t in enumerate(refined)
            if arguments["overwrite"] or not refinement.is_done(t, ending, keep_probabilities)]
    state = predictor.__dict__[_ATTACHED]
    out_dirs = sorted({os.path.dirname(t) or os.curdir for t in refined})
    for folder in out_dirs:
        refinement.prepare_output(folder, _inputs(source, state), predictor.dataset_json,
                                  predictor.plans_manager.plans, state["settings"],
                                  by=f"nnUNetv2_predict -tr {state['trainer']}, model {state['model_folder']}")
    if not todo:
        return None
    unrefined = [refinement.unrefined_name(refined[i]) for i in todo]
    arguments.update(list_of_lists_or_source_folder=[lists[i] for i in todo],
                     output_folder_or_list_of_truncated_output_files=unrefined, save_probabilities=True)
    if "num_parts" in arguments:
        arguments.update(num_parts=1, part_id=0)
    result = original(**arguments)

    refinement.refine_predictions([(u, refined[i], lists[i]) for i, u in zip(todo, unrefined)], state["settings"],
                                  state["model_folder"], str(predictor.device), keep_probabilities,
                                  _inputs(source, state), log=lambda msg: print(f"autosam: {msg}", file=sys.stderr))
    return result


def _inputs(source, state: dict) -> dict:
    """The folders nnU-Net's prediction reads (the output must stay out of them): images and the model."""
    if isinstance(source, str):
        folders = {"image": source}
    else:
        folders = {f"image {i}": d for i, d in enumerate(sorted({os.path.dirname(f[0]) for f in source}))}
    return {**folders, "model": state["model_folder"]}
