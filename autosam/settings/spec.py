"""Which SAM (:class:`SamSpec`) and how it runs (:class:`Runtime`); ``SamSpec.predictor(runtime)`` is the one place a
SAM predictor is built."""
from __future__ import annotations

import argparse
import functools
import os
from dataclasses import asdict, dataclass
from typing import Callable, Optional

from ..errors import AutosamError
from .bounds import BOUNDS, check_option


@dataclass(frozen=True)
class Runtime:
    """How SAM runs, never a result-changing setting: ``device`` (auto, cpu, cuda, cuda:1, mps), ``engine`` for the
    image encoder (auto, torch, onnx, openvino), slices per forward pass, and torch threads (None: torch's own)."""

    device: str = "auto"
    engine: str = "auto"
    batch_size: int = 16
    threads: Optional[int] = None

    def __post_init__(self) -> None:
        check_option("batch_size", self.batch_size, "runtime")
        if self.threads is not None:
            check_option("threads", self.threads, "runtime")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "Runtime":
        """The runtime options of a verb's command line (those it has; the rest at their defaults)."""
        return cls(device=getattr(args, "device", "auto"), engine=getattr(args, "engine", "auto"),
                   batch_size=getattr(args, "batch_size", 16), threads=getattr(args, "threads", None))

    @classmethod
    def from_env(cls, device: str = "auto", env: Optional[dict] = None) -> "Runtime":
        """The runtime of the ``nnUNetv2`` trainer and hook: ``AUTOSAM_DEVICE`` (default ``device``) and
        ``AUTOSAM_BATCH_SIZE`` (default 16, parsed and checked through :data:`BOUNDS`, as ``--batch-size`` is)."""
        env = os.environ if env is None else env
        batch = env.get("AUTOSAM_BATCH_SIZE", "").strip() or "16"
        try:
            size = BOUNDS["batch_size"].parse(batch)
        except ValueError as e:
            raise AutosamError(f"environment variable AUTOSAM_BATCH_SIZE={batch!r}: {e}") from None
        return cls(device=env.get("AUTOSAM_DEVICE", "").strip() or device, batch_size=size)

    def to_record(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class SamSpec:
    """Which SAM: a backend of :data:`autosam.sam.sam_registry`, its weights file (None: the shipped ones, where a
    backend ships any) and an adapter folder written by ``autosam finetune``."""

    name: str = "litemedsam"
    checkpoint: Optional[str] = None
    adapter: Optional[str] = None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "SamSpec":
        return cls(args.sam, getattr(args, "checkpoint", None), getattr(args, "adapter", None))

    def build(self):
        """The :class:`autosam.sam.SamModel`, weights and adapter loaded, in eval mode."""
        from ..sam import build_sam

        return build_sam(self.name, checkpoint=self.checkpoint, adapter=self.adapter)

    def predictor(self, runtime: Runtime = Runtime(), cache=None, caching: bool = False, model=None):
        """The one place a predictor is built: a :class:`autosam.sam.SamPredictor`, or with ``caching`` (or a
        ``cache``) a :class:`autosam.sam.cache.CachingPredictor` that encodes each slice once. ``model``: an
        already built model of this spec (``build()``), to share one between predictors."""
        from ..sam import SamPredictor
        from ..sam.cache import CachingPredictor

        model = self.build() if model is None else model
        if caching or cache is not None:
            return CachingPredictor(model, device=runtime.device, batch_size=runtime.batch_size, cache=cache,
                                    engine=runtime.engine)
        return SamPredictor(model, device=runtime.device, batch_size=runtime.batch_size, engine=runtime.engine)

    def maker(self, runtime: Runtime = Runtime(), caching: bool = False) -> Callable[[], object]:
        """What builds this predictor later, once per process: plain data (a partial of :meth:`predictor`), so a
        job that carries it pickles to Ray workers without the command line."""
        return functools.partial(self.predictor, runtime, caching=caching)

    def to_record(self) -> dict:
        return {"sam": self.name, "checkpoint": self.checkpoint, "adapter": self.adapter}
