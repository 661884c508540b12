"""``autosam segment``: fully automatic segmentation: a trained prompter's coarse map -> SAM -> nnU-Net layout."""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Callable, Optional

from .. import export, io
from ..errors import AutosamError
from ..pipeline import progress
from ..refine import RefineConfig, refine_case
from .common import add_sam_arguments, predictor_from_args, sam_args_record
from .refine import add_refine_arguments, config_from_args

HELP = "segment images fully automatically: a learned prompter prompts SAM (no nnU-Net model needed)"


def add_parser(sub) -> None:
    from ..prompter import shipped_prompters

    shipped = ", ".join(shipped_prompters()) or "none"
    p = sub.add_parser("segment", help=HELP, description=HELP + ". Output as in 'autosam refine'.")
    p.add_argument("-i", "--images", required=True, help="nnU-Net image folder (<case>_0000<file_ending> ...)")
    p.add_argument("-o", "--output", required=True, help="output folder (nnU-Net prediction layout)")
    p.add_argument("--prompter", required=True,
                   help=f"folder written by 'autosam train-prompter', or a shipped prompter ({shipped})")
    p.add_argument("-d", "--dataset-json", default=None,
                   help="dataset.json of the images (default: the one beside the image folder, else the prompter's); "
                        "its channels and labels must match the prompter's")
    p.add_argument("--no-sam", action="store_true",
                   help="write the prompter's own coarse segmentation (no SAM)")
    add_refine_arguments(p, coarse="prompter's")
    p.add_argument("--save-probabilities", action="store_true",
                   help="also write <case>.npz (key 'probabilities') and <case>.pkl, as nnU-Net does")
    p.add_argument("--overwrite", action="store_true", help="redo cases whose output already exists")
    add_sam_arguments(p)
    p.set_defaults(run=run)


def images_info(images: Path, prompter, dataset_json: Optional[str] = None) -> io.DatasetInfo:
    """The images' dataset.json (given, beside or in the folder) checked against the prompter, else the prompter's."""
    path = Path(dataset_json) if dataset_json else next(
        (f / "dataset.json" for f in (images.parent, images) if (f / "dataset.json").is_file()), None)
    if path is None:
        return prompter.dataset_info()
    info = io.load_dataset_json(path)
    prompter.check_dataset(info)
    return info


def check_channel_files(images: Path, info: io.DatasetInfo, prompter_name: str) -> None:
    """Refuse image files with more or fewer channels than the prompter takes, with the prompter named."""
    if not images.is_dir():
        raise AutosamError(f"image folder not found: {images}")
    pattern = re.compile(r"^(.+)_(\d{4})" + re.escape(info.file_ending) + "$")
    channels: dict[str, set[int]] = {}
    for f in images.iterdir():
        m = pattern.match(f.name)
        if m:
            channels.setdefault(m.group(1), set()).add(int(m.group(2)))
    for case, found in sorted(channels.items()):
        if len(found) != info.num_channels:
            raise AutosamError(f"{images}: case {case} has {len(found)} channel file(s), but prompter "
                               f"{prompter_name!r} takes {info.num_channels} ({', '.join(info.channel_names)})")


def segment_folder(
    images_dir,
    out_dir,
    prompter,
    info: io.DatasetInfo,
    make_predictor: Callable,
    config: Optional[RefineConfig] = None,
    save_probabilities: bool = False,
    overwrite: bool = False,
    run_args: Optional[dict] = None,
    coarse_dir=None,
) -> list[str]:
    """Segment every pending case of ``images_dir`` into ``out_dir``; returns the cases written.

    ``config`` None writes the prompter's own map; otherwise it is refined with SAM (``make_predictor()`` is
    called once, when first needed). ``coarse_dir``, if given, also receives the prompter's own map.
    """
    images, out = Path(images_dir), Path(out_dir)
    if out.resolve() == images.resolve():
        raise AutosamError(f"output folder {out} must differ from the image folder")
    if save_probabilities:
        export.check_probability_layout(info)
    if config is not None:
        config.check()
    name = prompter.folder.name if prompter.folder else "prompter"
    check_channel_files(images, info, name)
    cases = io.list_cases(images, info.file_ending, info.num_channels)
    record = {"verb": "segment", "images": str(images), "dataset_json": str(info.path),
              "prompter": str(prompter.folder), "prompter_mode": prompter.mode,
              "save_probabilities": save_probabilities,
              "refine": config.to_dict() if config is not None else None, **(run_args or {})}
    export.prepare_folder(out, info, record)
    if coarse_dir is not None:
        export.prepare_folder(coarse_dir, info, {**record, "refine": None})
    todo = export.pending_cases(list(cases), out, info.file_ending, save_probabilities, overwrite)
    predictor = None
    rw = io.reader_writer(info.file_ending)
    for case_id in progress(todo, "segment"):
        case = io.read_case(case_id, cases[case_id], rw)
        if predictor is None and (config is not None or prompter.mode == "embedding"):
            predictor = make_predictor()
        seg, probs = prompter.coarse(case, sam=predictor.model if predictor is not None else None)
        if coarse_dir is not None:
            export.write_case(coarse_dir, case_id, seg, case.properties, info,
                              probs if save_probabilities else None, rw)
        if config is not None:
            result = refine_case(predictor, case, info, seg, probs, config)
            seg, probs = result.segmentation, result.probabilities
        export.write_case(out, case_id, seg, case.properties, info, probs if save_probabilities else None, rw)
    return todo


def run(args: argparse.Namespace) -> int:
    from ..prompter import Prompter
    from ..sam import resolve_device

    prompter = Prompter.load(args.prompter, device=str(resolve_device(args.device)))
    images = Path(args.images)
    info = images_info(images, prompter, args.dataset_json)
    config = None if args.no_sam else config_from_args(args)
    if args.no_sam and prompter.mode == "embedding":
        print("note: an embedding-mode prompter always runs SAM's decoder; --no-sam skips only the box refinement",
              file=sys.stderr)
    written = segment_folder(images, args.output, prompter, info, lambda: predictor_from_args(args), config,
                             save_probabilities=args.save_probabilities, overwrite=args.overwrite,
                             run_args=sam_args_record(args))
    print(f"segmented {len(written)} case(s) -> {args.output}")
    return 0
