"""What ``autosam fit`` compares and trains (:class:`FitOptions`), and where it keeps its work."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional

from ..adapt.data import auto_prompts
from ..errors import AutosamError
from ..tune import MIN_GAIN, check_sign_test, grid

#: fit's working folder inside the model folder (fold adapters, kept scores, embedding cache, lock).
FIT_DIR = "autosam_fit"
#: The final adapter, trained on every cross-fitted map, when an adapted candidate wins.
ADAPTER_DIR = "autosam_adapter"


@dataclass(frozen=True)
class FitOptions:
    """``frozen``: frozen SAM only (no adapters). ``max_cases``: cross-fitted maps scored (0: all; else taken
    round-robin over the folds). ``min_gain`` / ``sign_test``: the choice rule of :mod:`autosam.tune`.
    ``max_objects`` / ``small_grid``: the grid (:func:`autosam.tune.grid`). ``adapt*``: the study's recipe for the
    fold adapters (``box+mask`` prompts from the maps, every plane of a 3D case)."""

    frozen: bool = False
    max_cases: int = 0
    min_gain: float = MIN_GAIN
    sign_test: Optional[float] = None
    max_objects: int = 0
    small_grid: bool = False
    adapt: str = "decoder"
    adapt_epochs: int = 4
    adapt_iterations: int = 0
    adapt_prompt: str = "box+mask"
    adapt_planes: bool = True
    seed: int = 0

    def check(self) -> None:
        """Refuse, in one line, options that cannot run (before anything is written)."""
        if self.adapt not in ("decoder", "lora", "desam"):
            raise AutosamError(f"unknown --adapt {self.adapt!r}; choose decoder, lora or desam")
        try:
            auto_prompts(self.adapt_prompt)
        except AutosamError as e:
            raise AutosamError(f"--adapt-prompt: {e}") from None
        check_sign_test(self.sign_test)

    def grid(self) -> list:
        return grid(self.max_objects, self.small_grid)

    def adapter_record(self) -> dict:
        """The options a fold adapter is trained with: a kept one with others is refused."""
        keys = ("adapt", "adapt_epochs", "adapt_iterations", "adapt_prompt", "adapt_planes", "seed")
        return {k: v for k, v in asdict(self).items() if k in keys}

    def to_record(self) -> dict:
        return asdict(self)
