"""Segment a folder with a prompter: its coarse map, refined with SAM unless the configuration is "no SAM".

The library side of ``autosam segment`` (and of the demo and the study): one :class:`SegmentJob` per case
through :class:`autosam.runner.CaseRunner`.
"""
from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from .. import io
from ..errors import AutosamError
from ..progress import notice
from ..refine import RefineConfig, refine_case, refine_record
from ..runner import CaseJob, CaseOutput, CaseRunner
from .quality import QualityControl, case_quality, finish_quality


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
    qc: Optional[QualityControl] = None  # each case's quality signals (SAM runs for them even with "no SAM")
    _sam: Any = field(default=None, init=False, repr=False)

    @property
    def uses_sam(self) -> bool:
        return self.config is not None or self.prompter.mode == "embedding"

    @property
    def shares_embeddings(self) -> bool:
        """An embedding-mode prompter and SAM's refinement encode the same slices: once, kept for the case."""
        return self.config is not None and self.prompter.mode == "embedding"

    def setup(self) -> None:
        if self.__dict__.get("_shipped"):
            from ..sam import resolve_device

            device = resolve_device(self.device or "auto")
            self.prompter.net.to(device)
            self.prompter.device = device
        self._sam = self.make_predictor() if self.uses_sam or self.qc is not None else None
        if self.shares_embeddings:
            from ..sam.cache import CachingPredictor

            self._sam = CachingPredictor.like(self._sam)

    def process(self, case: io.Case) -> CaseOutput:
        sam = self._sam if self.shares_embeddings else self._sam.model if self.uses_sam else None
        try:
            seg, probs = self.prompter.coarse(case, sam=sam)
            extra = {"coarse": (seg, probs)} if self.coarse else {}
            result = None if self.config is None else refine_case(self._sam, case, self.info, seg, probs,
                                                                  self.config, keep=self.keep_probabilities)
            quality = None if self.qc is None else case_quality(self._sam, case, self.info, seg, probs, result,
                                                                self.qc.volume_stats)
            if result is None:
                return CaseOutput(seg, probs, coarse=None, extra=extra, quality=quality)
            return CaseOutput(result.segmentation, result.probabilities, coarse=seg, extra=extra, quality=quality)
        finally:
            if self.shares_embeddings:
                self._sam.clear()  # this case's embeddings (4 MiB a slice for LiteMedSAM) go with it

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
    announce: Optional[str] = None,
    qc: Optional[QualityControl] = None,
    **options,
) -> list[str]:
    """Segment every pending case of ``images_dir`` into ``out_dir``; returns the cases written.

    ``config`` None writes the prompter's own map; otherwise it is refined with SAM (``make_predictor()`` is
    called once per process, when first needed). ``coarse_dir``, if given, also receives the prompter's own map.
    ``device`` is where Ray workers put the prompter (default: their best device). ``options`` go to
    :class:`~autosam.runner.CaseRunner` (``save_probabilities``, ``overwrite``, ``overlays``, ``parallel``).
    ``qc``: each case's label-free quality signals beside it and ``quality.csv`` at the end (with "no SAM", SAM
    runs with the default settings for the signals alone; the output stays the prompter's map).
    """
    images = Path(images_dir)
    if config is not None:
        config.check()
    name = prompter.folder.name if prompter.folder else "prompter"
    record = {"verb": "segment", "images": str(images), "dataset_json": str(info.path),
              "prompter": str(prompter.folder), "prompter_mode": prompter.mode,
              "save_probabilities": bool(options.get("save_probabilities")),
              **refine_record(config), **(run_args or {}),
              **(qc.record() if qc else {})}
    runner = CaseRunner(out_dir, info, inputs={"image": images, "prompter": prompter.folder}, record=record,
                        desc="segment", extra_outputs={"coarse": coarse_dir} if coarse_dir is not None else None,
                        **options)
    check_channel_files(images, info, name)
    cases = io.list_cases(images, info.file_ending, info.num_channels)
    job = SegmentJob(prompter, info, make_predictor, config, coarse=coarse_dir is not None, device=device, qc=qc)
    # said once every input file passed the preflight: a run refused there prints only its error line
    written = runner.run(cases, job, prepare=(lambda: notice(announce)) if announce else None)
    if qc is not None:
        finish_quality(out_dir, info, qc)
    return written
