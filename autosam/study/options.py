"""What a study runs (:class:`StudyOptions`), its checks before anything is written, and the ``--quick`` preset."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ..adapt.data import auto_prompts
from ..errors import AutosamError
from ..nnunet.train import Schedule, default_configuration
from ..tune import check_sign_test, grid
from .methods import CROSS_VALIDATED, DEFAULT_METHODS, parse_method

#: Whose cross-fitted maps prompt the adapter (``--adapt-source``).
ADAPT_SOURCES = ("prompter", "nnunet")


@dataclass
class StudyOptions:
    """What to run. Sizes are numbers of training cases (``"all"``: every non-test case); epochs and iterations
    set the (short) schedules; ``nnunet_*`` go to :class:`autosam.nnunet.train.Schedule`."""

    train_sizes: list = field(default_factory=lambda: ["5", "10", "20", "all"])
    repeats: int = 1  # repeats: each its own test split (unless test_cases), training subsets and model seeds
    test_fraction: float = 0.2
    test_cases: Optional[list] = None
    subject_pattern: Optional[str] = None
    exclude: list = field(default_factory=list)
    split_seed: int = 0
    methods: list = field(default_factory=lambda: list(DEFAULT_METHODS))
    baseline: str = "nnunet"  # the method every other is compared with in summary.md and stats.csv
    adapt: Optional[str] = "decoder"
    prompter_epochs: int = 12
    prompter_iterations: int = 50
    adapt_epochs: int = 4
    adapt_iterations: int = 0  # steps per adapter epoch (0: one pass over the samples)
    adapt_folds: int = 3
    adapt_prompt: str = "box+mask"  # what the adapter is given on the cross-fitted prompts: box+mask or box
    adapt_source: str = "prompter"  # whose cross-fitted maps prompt the adapter: prompter or nnunet
    adapt_planes: bool = False  # the adapter trains on the slices of all three axes of a volume
    tune_cases: int = 10
    sign_test: Optional[float] = None  # tuning also asks SAM to win a one-sided sign test at this p (None: mean only)
    max_objects: int = 0  # components prompted per label and slice in every prompted SAM method (0: all)
    small_grid: bool = False  # tunings leave out the box-hypotheses and three-plane candidates (--quick)
    nnunet_trainer: Optional[str] = None
    nnunet_configuration: Optional[str] = None
    nnunet_epochs: int = 20
    nnunet_iterations: int = 50
    nnunet_spacing: Optional[list] = None  # nnU-Net's -overwrite_target_spacing (three numbers), None: its own
    device: str = "cpu"
    engine: str = "auto"
    convergence: bool = True  # with nnunet: fold 0 at the schedule E and at 2E (summary.md's baseline_convergence)

    def check(self, dataset: Optional[Path] = None) -> None:
        """Refuse, in one line, options that cannot run (nothing is written yet); ``dataset``: also those its
        images rule out."""
        for m in self.methods:
            parse_method(m)
        if self.uses_adapted() and not self.adapt:
            raise AutosamError("adapted methods need --adapt decoder|lora|desam")
        if self.adapt not in (None, "decoder", "lora", "desam"):
            raise AutosamError(f"unknown --adapt {self.adapt!r}; choose decoder, lora or desam")
        try:
            auto_prompts(self.adapt_prompt)
        except AutosamError as e:
            raise AutosamError(f"--adapt-prompt: {e}") from None
        if self.adapt_source not in ADAPT_SOURCES:
            raise AutosamError(f"unknown --adapt-source {self.adapt_source!r}; choose {' or '.join(ADAPT_SOURCES)}")
        if self.adapt_folds < 2:
            raise AutosamError(f"--adapt-folds must be >= 2, got {self.adapt_folds}")
        if self.repeats < 1:
            raise AutosamError(f"--repeats must be >= 1, got {self.repeats}")
        if (self.uses("nnunet") or self.needs_nnunet_folds()) and self.repeats * len(self.train_sizes) > 99:
            raise AutosamError(f"--repeats {self.repeats} x {len(self.train_sizes)} train size(s) is more than the 99 "
                               "runs whose nnU-Nets get a dataset id (900 + run)")
        try:
            parse_method(self.baseline)
        except AutosamError as e:
            raise AutosamError(f"--baseline: {e}") from None
        if self.nnunet_spacing is not None:  # nnunet_train's own check, before anything is written
            try:
                Schedule(spacing=self.nnunet_spacing)
            except AutosamError as e:
                raise AutosamError(f"--nnunet-spacing: {e}") from None
        if self.max_objects < 0:
            raise AutosamError(f"--max-objects must be >= 0, got {self.max_objects}")
        check_sign_test(self.sign_test)
        if self.test_cases is None and not 0 < self.test_fraction < 1:
            raise AutosamError(f"--test-fraction must be in (0, 1), got {self.test_fraction}")
        for s in self.train_sizes:
            if str(s) != "all" and (not str(s).isdigit() or int(s) < 2):
                raise AutosamError(f"train size {s!r}: give a whole number >= 2 or 'all'")
        self._check_planes(dataset)

    def _check_planes(self, dataset: Optional[Path]) -> None:
        """``nnunet-planes`` slices volumes along their three axes with the 2d nnU-Net: one line otherwise."""
        if "nnunet-planes" not in self.methods:
            return
        if dataset is not None:
            try:
                flat = default_configuration(Path(dataset)) == "2d"
            except (AutosamError, OSError, IndexError):  # no readable image: the plan names the problem
                flat = False
            if flat:
                raise AutosamError(f"nnunet-planes: {dataset} holds 2D images (one slice per case), with no other "
                                   "axis to slice along; drop nnunet-planes")
        if self.nnunet_configuration != "2d" and (self.nnunet_configuration or dataset is not None):
            raise AutosamError("nnunet-planes slices each axis with the 2d nnU-Net, not "
                               f"{self.nnunet_configuration or '3d_fullres'}; give --nnunet-configuration 2d")

    def grid(self) -> list:
        """The candidates every tuning of the study scores (:func:`autosam.tune.grid`; ``small_grid``: ``--quick``)."""
        return grid(self.max_objects, self.small_grid)

    def schedule(self, seed: int = 0) -> Schedule:
        """The schedule of every nnU-Net a run with model seed ``seed`` trains (the run's and the fold nnU-Nets):
        nnU-Net is seeded with ``seed + 1`` (its seeds start at 1; autosam's short trainers use it, nnU-Net's own
        trainer does not)."""
        kwargs = {"epochs": self.nnunet_epochs, "iterations": self.nnunet_iterations, "device": self.device,
                  "seed": seed + 1}
        if self.nnunet_trainer:
            kwargs["trainer"] = self.nnunet_trainer
        if self.nnunet_configuration:
            kwargs["configuration"] = self.nnunet_configuration
        if self.nnunet_spacing:
            kwargs["spacing"] = self.nnunet_spacing
        return Schedule(**kwargs)

    def uses(self, prefix: str) -> bool:
        return any(m.startswith(prefix) for m in self.methods)

    def uses_adapted(self) -> bool:
        return any(parse_method(m)[0].endswith("-adapted") for m in self.methods)

    def adapts(self) -> bool:
        """A SAM adapter is trained: an adapted method, or a tuned default that also tries the adapter (the
        prompter's; nnU-Net's when the adapter learns from nnU-Net's maps)."""
        tunes = "tuned" in self.methods or ("nnunet+tuned" in self.methods and self.adapt_source == "nnunet")
        return bool(self.adapt) and (self.uses_adapted() or tunes)

    def defers_adapter(self) -> bool:
        """Only nnU-Net's tuned default could use an adapter (no adapted method, no prompter ``tuned``): the run
        trains none; ``autosam fit`` trains its own, and keeps the final one only if the adapted SAM won."""
        return self.adapts() and not self.uses_adapted() and "tuned" not in self.methods

    def needs_nnunet_folds(self) -> bool:
        """Fold nnU-Nets predict the run's cases: they prompt the adapter, or nnU-Net's default is tuned on them."""
        return (self.adapts() and self.adapt_source == "nnunet") or bool(set(CROSS_VALIDATED) & set(self.methods))

    def fold_adapters(self) -> bool:
        """nnU-Net's tuned default also tries the adapted SAM, through one adapter per fold (each left its fold's
        cases out, so it is scored only on cases it never trained on)."""
        return "nnunet+tuned" in self.methods and self.adapts() and self.adapt_source == "nnunet"

    def needs_prompter(self) -> bool:
        """A prompter is trained: a prompter method, the tuned default, or the prompter's maps prompt the adapter."""
        prompted = any(m.startswith("prompter") or m in ("tuned", "nnunet+prompter") for m in self.methods)
        return prompted or (self.adapts() and self.adapt_source == "prompter")


def quick_options() -> StudyOptions:
    """``--quick``: the bundled hippocampus sample end to end in a few minutes (a smoke test, not a result)."""
    return StudyOptions(train_sizes=["3", "4"], repeats=1, test_cases=None, test_fraction=0.2, prompter_epochs=4,
                        prompter_iterations=10, adapt_epochs=1, adapt_iterations=10, adapt_folds=2, tune_cases=1,
                        max_objects=1, small_grid=True, convergence=False, nnunet_configuration="2d", nnunet_epochs=1,
                        nnunet_iterations=3)
