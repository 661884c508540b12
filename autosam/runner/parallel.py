"""How a run spreads its cases over processes (:class:`Parallel`): parts of a split run, Ray workers and what each
one is given, checked with one-line errors."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

from ..errors import AutosamError


@dataclass(frozen=True)
class Parallel:
    """How a run spreads its cases over processes.

    ``num_parts``/``part_id``: this run does every ``num_parts``-th case of the sorted case list, from ``part_id``
    (nnU-Net's split: parts started at any time cover every case exactly once). ``ray``: ``None`` for no Ray
    (unless ``workers`` > 1: then a local instance), ``"local"`` for a new local Ray instance on this machine's
    cores, or a cluster address (``auto``, ``HOST:6379``, ``ray://HOST:10001``). ``workers``: actors to start
    (default: 1 without Ray, else as many as the cluster's CPUs and GPUs hold at ``cpus_per_worker`` and
    ``gpus_per_worker`` each; fractions allowed). ``retries``: Ray's retries of a case whose worker died.
    ``keep_going``: a single-process run lists failed cases at the end instead of stopping at the first (a
    distributed run always does).
    """

    ray: Optional[str] = None
    workers: Optional[int] = None
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    num_parts: int = 1
    part_id: int = 0
    keep_going: bool = False
    retries: int = 2

    LOCAL = "local"

    @property
    def distributed(self) -> bool:
        """Cases run as Ray tasks (``ray`` given, or more than one worker)."""
        return self.ray is not None or (self.workers or 1) > 1

    @property
    def local(self) -> bool:
        """Ray, if used, is a new local instance (no address given)."""
        return self.ray in (None, "", self.LOCAL)

    def check(self) -> None:
        if self.num_parts < 1:
            raise AutosamError(f"--num-parts must be at least 1 (got {self.num_parts})")
        if not 0 <= self.part_id < self.num_parts:
            raise AutosamError(f"--part-id must be 0 to {self.num_parts - 1} for --num-parts {self.num_parts} "
                               f"(got {self.part_id})")
        if self.workers is not None and self.workers < 1:
            raise AutosamError(f"--workers must be at least 1 (got {self.workers})")
        if not self.cpus_per_worker > 0:
            raise AutosamError(f"--cpus-per-worker must be above 0 (got {self.cpus_per_worker:g})")
        if not self.gpus_per_worker >= 0:
            raise AutosamError(f"--gpus-per-worker must be 0 or more (got {self.gpus_per_worker:g})")
        if self.retries < 0:
            raise AutosamError(f"retries must be 0 or more (got {self.retries})")

    def part(self, case_ids: Sequence[str]) -> list[str]:
        """This part's cases: ``sorted(case_ids)[part_id::num_parts]``."""
        return sorted(case_ids)[self.part_id :: self.num_parts]

    @property
    def threads(self) -> int:
        """Torch threads per worker: the whole CPUs it asks for (at least one)."""
        return max(1, math.floor(self.cpus_per_worker))
