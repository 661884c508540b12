"""``autosam segment``: fully automatic segmentation: a trained prompter's coarse map -> SAM -> nnU-Net layout."""
from __future__ import annotations

import argparse
import copy
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from .. import io
from ..errors import AutosamError
from ..refine import RefineConfig, refine_case
from ..runner import CaseJob, CaseOutput, CaseRunner
from .common import (add_output_arguments, add_parallel_arguments, add_sam_arguments, output_options,
                     parallel_from_args, predictor_from_args, sam_args_record)
from .options import add_dataset_arguments, dataset_json_from_args
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
    add_dataset_arguments(p, what=" of the images (default: the one beside the image folder, else the "
                                  "prompter's); its channels and labels must match the prompter's")
    p.add_argument("--no-sam", action="store_true",
                   help="write the prompter's own coarse segmentation (no SAM)")
    add_refine_arguments(p, coarse="prompter's")
    add_output_arguments(p)
    add_sam_arguments(p)
    add_parallel_arguments(p)
    p.set_defaults(run=run)


def images_info(images: Path, prompter, dataset_json: Optional[Path] = None) -> io.DatasetInfo:
    """The images' dataset.json (given, beside or in the folder) checked against the prompter, else the prompter's."""
    try:
        path = io.find_dataset_json(dataset_json, images=images)
    except AutosamError:
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


@dataclass
class SegmentJob(CaseJob):
    """One case of ``segment``: the prompter's coarse map, refined with SAM unless ``config`` is None (SAM built once
    per process by ``make_predictor()``, and only when used). ``coarse`` also returns the prompter's own map as the
    extra output ``coarse``. The prompter travels to a worker on the CPU and is moved to ``device`` there (default:
    the best one the worker has)."""

    prompter: Any
    info: io.DatasetInfo
    make_predictor: Callable[[], Any]
    config: Optional[RefineConfig] = None
    coarse: bool = False
    device: Optional[str] = None
    _sam: Any = field(default=None, init=False, repr=False)

    @property
    def uses_sam(self) -> bool:
        return self.config is not None or self.prompter.mode == "embedding"

    def setup(self) -> None:
        if self.__dict__.get("_shipped"):
            from ..sam import resolve_device

            device = resolve_device(self.device or "auto")
            self.prompter.net.to(device)
            self.prompter.device = device
        self._sam = self.make_predictor() if self.uses_sam else None

    def process(self, case: io.Case) -> CaseOutput:
        seg, probs = self.prompter.coarse(case, sam=self._sam.model if self.uses_sam else None)
        extra = {"coarse": (seg, probs)} if self.coarse else {}
        if self.config is None:
            return CaseOutput(seg, probs, coarse=None, extra=extra)
        result = refine_case(self._sam, case, self.info, seg, probs, self.config, keep=self.keep_probabilities)
        return CaseOutput(result.segmentation, result.probabilities, coarse=seg, extra=extra)

    def __getstate__(self) -> dict:
        import torch

        state = super().__getstate__()
        prompter = self.prompter
        if prompter.device.type != "cpu":  # a worker may have no such device: it moves the prompter in setup
            prompter = copy.copy(prompter)
            prompter.net = copy.deepcopy(self.prompter.net).cpu()
            prompter.device = torch.device("cpu")
        return {**state, "prompter": prompter, "_shipped": True}


def segment_folder(
    images_dir,
    out_dir,
    prompter,
    info: io.DatasetInfo,
    make_predictor: Callable,
    config: Optional[RefineConfig] = None,
    run_args: Optional[dict] = None,
    coarse_dir=None,
    device: Optional[str] = None,
    **options,
) -> list[str]:
    """Segment every pending case of ``images_dir`` into ``out_dir``; returns the cases written.

    ``config`` None writes the prompter's own map; otherwise it is refined with SAM (``make_predictor()`` is
    called once per process, when first needed). ``coarse_dir``, if given, also receives the prompter's own map.
    ``device`` is where Ray workers put the prompter (default: their best device). ``options`` go to
    :class:`~autosam.runner.CaseRunner` (``save_probabilities``, ``overwrite``, ``overlays``, ``parallel``).
    """
    images = Path(images_dir)
    if config is not None:
        config.check()
    name = prompter.folder.name if prompter.folder else "prompter"
    record = {"verb": "segment", "images": str(images), "dataset_json": str(info.path),
              "prompter": str(prompter.folder), "prompter_mode": prompter.mode,
              "save_probabilities": bool(options.get("save_probabilities")),
              "refine": config.to_dict() if config is not None else None, **(run_args or {})}
    runner = CaseRunner(out_dir, info, inputs={"image": images, "prompter": prompter.folder}, record=record,
                        desc="segment", extra_outputs={"coarse": coarse_dir} if coarse_dir is not None else None,
                        **options)
    check_channel_files(images, info, name)
    cases = io.list_cases(images, info.file_ending, info.num_channels)
    job = SegmentJob(prompter, info, make_predictor, config, coarse=coarse_dir is not None, device=device)
    return runner.run(cases, job)


def run(args: argparse.Namespace) -> int:
    from ..prompter import Prompter
    from ..sam import resolve_device

    parallel = parallel_from_args(args)
    prompter = Prompter.load(args.prompter, device="cpu" if parallel.distributed else str(resolve_device(args.device)))
    images = Path(args.images)
    info = images_info(images, prompter, dataset_json_from_args(args))
    config = None if args.no_sam else config_from_args(args)
    if args.no_sam and prompter.mode == "embedding":
        print("note: an embedding-mode prompter always runs SAM's decoder; --no-sam skips only the box refinement",
              file=sys.stderr)
    written = segment_folder(images, args.output, prompter, info, lambda: predictor_from_args(args), config,
                             **output_options(args), run_args=sam_args_record(args), device=args.device,
                             parallel=parallel)
    print(f"segmented {len(written)} case(s) -> {args.output}")
    return 0
