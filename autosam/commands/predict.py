"""``autosam predict``: nnU-Net's prediction (softmax kept in memory) refined with SAM, written in nnU-Net's layout."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, Optional, Sequence

from .. import export, io, nnunet
from ..errors import AutosamError
from ..pipeline import progress
from ..refine import RefineConfig, refine_case
from ..sam import SamPredictor
from .common import add_sam_arguments, predictor_from_args, sam_args_record
from .refine import add_refine_arguments, config_from_args, config_from_record

HELP = "predict with a trained nnU-Net model and refine its output with SAM"


def add_parser(sub) -> None:
    p = sub.add_parser("predict", help=HELP, description=HELP + ". MODEL is nnU-Net's "
                       "nnUNet_results/DatasetXXX_Name/Trainer__Plans__configuration folder; nnU-Net's softmax goes "
                       "to SAM in memory (no intermediate files). The output folder has nnU-Net's layout, so "
                       "nnUNetv2_evaluate_folder, nnUNetv2_ensemble and nnUNetv2_apply_postprocessing read it.")
    p.add_argument("-m", "--model", required=True, help="trained nnU-Net model folder (Trainer__Plans__configuration)")
    p.add_argument("-i", "--images", required=True, help="image folder (<case>_0000<file_ending> ...)")
    p.add_argument("-o", "--output", required=True, help="output folder (nnU-Net prediction layout)")
    p.add_argument("-f", "--folds", nargs="+", default=None,
                   help="folds to ensemble (numbers or 'all'; default: every fold with the checkpoint)")
    p.add_argument("-chk", "--nnunet-checkpoint", default="checkpoint_final.pth",
                   help="checkpoint file name inside each fold folder (default checkpoint_final.pth)")
    p.add_argument("--step-size", type=float, default=0.5,
                   help="nnU-Net sliding-window step as a fraction of the patch (default 0.5)")
    p.add_argument("--disable-tta", action="store_true", help="no mirroring test-time augmentation in nnU-Net")
    add_refine_arguments(p, coarse="nnU-Net")
    p.add_argument("--ignore-recorded", action="store_true",
                   help="a model trained with nnUNetTrainerAutoSAM recorded its SAM settings (backend, adapter, "
                        "prompts, fusion) in fold_X/autosam_sam.json; they are used unless given here or this is set")
    p.add_argument("--save-probabilities", action="store_true",
                   help="also write <case>.npz (key 'probabilities') and <case>.pkl, as nnU-Net does")
    p.add_argument("--overwrite", action="store_true", help="redo cases whose output already exists")
    add_sam_arguments(p)
    p.set_defaults(run=run)


def predict_folder(
    images_dir,
    out_dir,
    make_nnunet: Callable[[], object],
    info: io.DatasetInfo,
    make_predictor: Callable[[], SamPredictor],
    config: RefineConfig = RefineConfig(),
    save_probabilities: bool = False,
    overwrite: bool = False,
    run_args: Optional[dict] = None,
    plans: Optional[Path] = None,
) -> list[str]:
    """nnU-Net + SAM on every pending case of ``images_dir``; writes ``out_dir``; returns the cases written.

    ``make_nnunet()`` returns nnU-Net's predictor (e.g. :func:`autosam.nnunet.load_nnunet_predictor`) and
    ``make_predictor()`` the SAM predictor; both are called once, only if a case is pending. ``plans`` (the model's
    plans.json) is copied to the output so nnU-Net's ensembling and postprocessing find the reader/writer and label
    manager. Nothing is written when every case is finished already.
    """
    config.check()
    images, out = Path(images_dir), Path(out_dir)
    if out.exists() and out.resolve() == images.resolve():
        raise AutosamError(f"output folder {out} must differ from the image folder")
    if save_probabilities:
        export.check_probability_layout(info)
    cases = io.list_cases(images, info.file_ending, info.num_channels)
    todo = export.pending_cases(list(cases), out, info.file_ending, save_probabilities, overwrite)
    if not todo:
        return []
    nnunet_predictor = make_nnunet()  # a broken model fails here, before the output folder is touched
    rw = nnunet.model_reader_writer(nnunet_predictor)
    export.prepare_folder(out, info, run_args or {}, plans)
    sam = None
    for case_id in progress(todo, "predict"):
        case = io.read_case(case_id, cases[case_id], rw)
        seg, probs = nnunet.coarse_prediction(nnunet_predictor, case)
        sam = sam or make_predictor()
        result = refine_case(sam, case, info, seg, probs, config)
        export.write_case(out, case_id, result.segmentation, case.properties, info,
                          result.probabilities if save_probabilities else None, rw)
    return todo


def recorded_settings(model: Path, folds: Sequence[str]) -> Optional[tuple[Path, dict]]:
    """``(file, settings)`` recorded by the nnU-Net AutoSAM trainer in the folds' ``autosam_sam.json``, or None."""
    from nnunet_plugins import autosam_settings

    try:
        settings = autosam_settings.load_recorded(model, folds)
    except AutosamError as e:
        raise AutosamError(f"{e}; to predict without the recorded settings, pass --ignore-recorded") from None
    if settings is None:
        return None
    return autosam_settings.recorded_files(model, folds)[0], settings


def run(args: argparse.Namespace) -> int:
    model = nnunet.check_model_folder(args.model)
    info = nnunet.model_dataset_info(model)
    folds = nnunet.resolve_folds(model, args.folds, args.nnunet_checkpoint)
    recorded = None if args.ignore_recorded else recorded_settings(model, folds)
    config = config_from_args(args) if recorded is None else config_from_record(args, recorded[1])
    config.check()
    if recorded is not None:
        print(f"autosam predict: using the SAM settings recorded in {recorded[0]} (options given here override "
              f"them; --ignore-recorded skips them): SAM {args.sam}"
              + "".join(f", {k}={getattr(args, k)}" for k in ("checkpoint", "adapter") if getattr(args, k))
              + f"; prompt={config.prompt}, fusion={config.fusion}", file=sys.stderr)

    def make_nnunet():
        return nnunet.load_nnunet_predictor(model, folds, args.nnunet_checkpoint, args.device,
                                            tile_step_size=args.step_size, use_mirroring=not args.disable_tta)

    record = {"verb": "predict", "model": str(model.resolve()), "folds": folds,
              "nnunet_checkpoint": args.nnunet_checkpoint, "step_size": args.step_size,
              "disable_tta": args.disable_tta, "images": str(Path(args.images)),
              "save_probabilities": args.save_probabilities, "refine": config.to_dict(),
              "recorded_settings": str(recorded[0]) if recorded else None, **sam_args_record(args)}
    written = predict_folder(args.images, args.output, make_nnunet, info, lambda: predictor_from_args(args), config,
                             save_probabilities=args.save_probabilities, overwrite=args.overwrite,
                             run_args=record, plans=model / "plans.json")
    print(f"predicted and refined {len(written)} case(s) -> {args.output}")
    return 0


__all__: Sequence[str] = ["predict_folder", "add_parser", "run"]
