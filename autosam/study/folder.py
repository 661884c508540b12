"""The pieces every step of a study shares: the study folder's paths, the dataset's cases and links to their
images, one SAM predictor per adapter over one embedding cache, the refine configuration of a method, scoring, and
the log."""
from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Optional, Sequence

from .. import io
from ..adapt.crossfit import fold_assignment
from ..fit import FitOptions
from ..refine import RefineConfig
from ..sam.cache import EmbeddingCache
from ..settings import Runtime, SamSpec
from .options import StudyOptions
from .results import score_folder

#: The record of the nnU-Net folds behind an ``--adapt-source nnunet`` adapter (in ``models/<run>/nnunet_folds``).
NNUNET_FOLDS = "folds.json"
#: A run's nnU-Nets get the dataset id ``NNUNET_DATASET_ID + run index`` (nnU-Net's ``DatasetXXX_`` folders).
NNUNET_DATASET_ID = 900
#: Whose maps, by ``--adapt-source``, in messages.
WHOSE = {"prompter": "the prompter's", "nnunet": "nnU-Net's"}


class StudyFolder:
    """One study folder: the plan, the test images, shared SAM predictors (one embedding cache on disk, so each
    test slice is encoded once for the whole study), and where each run keeps its models and predictions."""

    def __init__(self, dataset: Path, folder: Path, opts: StudyOptions, plan: dict) -> None:
        self.dataset, self.folder, self.opts, self.plan = Path(dataset), Path(folder), opts, plan
        self.info = io.load_dataset_json(self.dataset)
        self.images = self.folder / "test_images"
        self.labels = self.dataset / "labelsTr"
        self._cache = None
        self._predictors: dict = {}

    @functools.cached_property
    def files(self) -> dict[str, list[Path]]:
        """Each case of the dataset and its image files."""
        return io.list_cases(self.dataset / "imagesTr", self.info.file_ending, self.info.num_channels)

    def link_images(self, cases: Sequence[str], folder: Path) -> Path:
        """``folder`` with links to the image files of ``cases`` (kept links are left as they are)."""
        folder.mkdir(parents=True, exist_ok=True)
        for case in cases:
            for f in self.files[case]:
                link = folder / f.name
                if not link.exists():
                    link.symlink_to(f.resolve())
        return folder

    def test_images(self, run: dict) -> Path:
        """The folder of links to the run's test images: ``test_images`` for repeat 0's test cases (and every
        repeat's, with ``--test-cases``), ``test_images_r<repeat>`` for a repeat's own split (linked here)."""
        if run["test"] == self.plan["test"]:
            return self.images
        return self.link_images(run["test"], self.folder / f"test_images_r{run['repeat']}")

    def oracle_run(self, run: dict) -> dict:
        """``run`` as the label-box methods see it: their predictions do not depend on the training cases, so
        they are made once per test set (``predictions/oracle``; ``oracle_r<repeat>`` for a repeat's own split)."""
        return {**run, "name": "oracle" if run["test"] == self.plan["test"] else f"oracle_r{run['repeat']}"}

    def link_test_images(self) -> None:
        self.link_images(self.plan["test"], self.images)

    def predictor(self, adapter: Optional[Path] = None):
        """A caching SAM predictor (frozen, or with ``adapter``), built once per adapter."""
        key = str(adapter) if adapter else ""
        if key not in self._predictors:
            if self._cache is None:
                self._cache = EmbeddingCache(self.folder / "embedding_cache")
            spec = SamSpec("litemedsam", adapter=str(adapter) if adapter else None)  # the study's SAM (#36: more)
            self._predictors[key] = spec.predictor(Runtime(device=self.opts.device, engine=self.opts.engine),
                                                   cache=self._cache)
        return self._predictors[key]

    def config(self, variant: Optional[dict] = None) -> RefineConfig:
        """The built-in default, or a method variant's fields (the object limit of the options unless the variant
        sets one)."""
        fields = dict(variant) if variant else {}
        return RefineConfig.from_dict({"max_objects": self.opts.max_objects, **fields})

    def others(self, run: dict) -> list[str]:
        """Every case of the dataset outside the run's training subset (test cases included)."""
        return sorted(set(self.files) - set(run["cases"]))

    def score(self, method: str, run: dict, folder: Path, seconds: float) -> list[dict]:
        return score_folder(folder, self.labels, self.info, run["test"], method, run,
                            seconds / max(1, len(run["test"])))

    # -- where a run keeps its models -------------------------------------------------------------------------
    def adapter_folder(self, run: dict) -> Path:
        return self.folder / "models" / run["name"] / "adapter"

    def _folds_root(self, run: dict) -> Path:
        return self.folder / "models" / run["name"] / "nnunet_folds"

    def _held_out(self, run: dict) -> list[list[str]]:
        return fold_assignment(run["cases"], self.opts.adapt_folds, run["seed"], self.opts.subject_pattern)

    def cv_model(self, run: dict) -> Path:
        """The model folder of the run's nnU-Net cross-validation (``folds.json``, once made)."""
        return Path(json.loads((self._folds_root(run) / "predictions" / NNUNET_FOLDS).read_text())["model"])

    def fit_options(self, run: dict) -> FitOptions:
        """What ``autosam fit`` compares for ``nnunet+tuned``: at most ``--tune-cases`` maps, the study's grid and
        rule, and fold adapters (the study's adapter options) when the study adapts SAM on nnU-Net's maps."""
        o = self.opts
        return FitOptions(frozen=not o.fold_adapters(), max_cases=o.tune_cases, sign_test=o.sign_test,
                          max_objects=o.max_objects, small_grid=o.small_grid, adapt=o.adapt or "decoder",
                          adapt_epochs=o.adapt_epochs, adapt_iterations=o.adapt_iterations,
                          adapt_prompt=o.adapt_prompt, adapt_planes=o.adapt_planes, seed=run["seed"])

    def _time_file(self, run: dict, method: str) -> Path:
        return self.folder / "predictions" / run["name"] / "seconds" / f"{method.replace('/', '@')}.json"
