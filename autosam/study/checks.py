"""The checks of a run's kept models against the options, done before anything is written: the adapter, nnU-Net's
cross-validation, the prompter's tuned records and ``autosam fit``'s kept adapters. A kept model made with other
options is refused in one line that names its file, so a study never mixes them."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from ..adapt.config import CONFIG_NAME, read_config
from ..errors import AutosamError
from ..fit.stages import preflight
from ..nnunet.folds import CrossValidation, read_cross_validation
from ..settings import SETTINGS_FILE, SamSpec, read_json
from .folder import NNUNET_FOLDS, WHOSE, StudyFolder


class KeptModels(StudyFolder):
    """A study folder whose kept models are read, and refused when other options made them."""

    def kept_adapter(self, run: dict):
        """The config of the run's kept adapter (None: none yet); one trained on other prompts or on
        another source's maps than the options ask is refused in one line, so a study never mixes adapters."""
        folder = self.adapter_folder(run)
        if not (folder / CONFIG_NAME).is_file():
            return None
        kept, o = read_config(folder), self.opts
        prompts_from = kept.prompts_from or {}
        trained = (prompts_from.get("prompts") or {}).get("strategy")
        if trained is None:
            raise AutosamError(f"{folder}: this adapter records no kind of cross-fitted prompt, so no study made it; "
                               "use another study folder")
        if trained != o.adapt_prompt:
            raise AutosamError(f"{folder}: this adapter trained on {trained} prompts, not {o.adapt_prompt} "
                               f"(--adapt-prompt); use another study folder or give --adapt-prompt {trained}")
        source = "nnunet" if str(prompts_from.get("source", "")).startswith("coarse:") else "prompter"
        if source != o.adapt_source:
            raise AutosamError(f"{folder}: this adapter trained on {WHOSE[source]} maps, not "
                               f"{WHOSE[o.adapt_source]} (--adapt-source); use another study folder or give "
                               f"--adapt-source {source}")
        if kept.planes != o.adapt_planes:
            raise AutosamError(f"{folder}: this adapter trained on the slices of "
                               + ("all three axes; use another study folder or give --adapt-planes" if kept.planes
                                  else "one axis, not all three (--adapt-planes); use another study folder or "
                                       "drop --adapt-planes"))
        return kept

    def kept_folds(self, run: dict) -> Optional[list[dict]]:
        """The folds of the run's kept fold nnU-Nets (``folds.json``; None: not all made yet); folds of other cases
        or another ``--adapt-folds`` are refused in one line."""
        path = self._folds_root(run) / "predictions" / NNUNET_FOLDS
        if not path.is_file():
            return None
        try:
            record = json.loads(path.read_text())
            folds, held = record["folds"], [sorted(f["predicted"]) for f in record["folds"]]
            record["model"]  # made by nnU-Net's own cross-validation (older studies trained one nnU-Net per fold)
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise AutosamError(f"{path}: cannot read the fold nnU-Nets' record ({e}; an older autosam trained one "
                               "nnU-Net per fold); use another study folder") from None
        if held != self._held_out(run):
            raise AutosamError(f"{path}: these {len(folds)} fold nnU-Net(s) left out other cases than "
                               f"--adapt-folds {self.opts.adapt_folds} does now; use another study folder or "
                               f"give --adapt-folds {len(folds)}")
        return folds

    def cross_validation(self, run: dict, model: Optional[Path] = None) -> CrossValidation:
        """The run's nnU-Net cross-validation, read and checked (``model``: its folder, else ``folds.json``'s)."""
        root = self._folds_root(run)
        return read_cross_validation(model or self.cv_model(run), raw_root=root / "nnUNet_raw",
                                     preprocessed_root=root / "nnUNet_preprocessed")

    def _rule_problem(self, kept: Optional[float]) -> str:
        had = f"--sign-test {kept}" if kept is not None else "no sign test"
        return f"was chosen with {had}, not " + (f"--sign-test {self.opts.sign_test}" if self.opts.sign_test
                                                  is not None else "without one")

    def check_rule(self, path: Path) -> None:
        """Refuse, in one line, a kept tuning record chosen with another ``--sign-test`` than the options ask."""
        try:
            kept = read_json(path).get("tuning", {}).get("sign_test")
        except (OSError, ValueError, AttributeError) as e:
            raise AutosamError(f"{path}: cannot read this tuning record ({e}); delete it to tune again") from None
        if kept != self.opts.sign_test:
            raise AutosamError(f"{path}: this tuned default {self._rule_problem(kept)}; delete it to tune again or "
                               "use another study folder")

    def check_kept(self, run: dict) -> None:
        """Refuse, in one line and before anything is written, the run's kept models made with other options: its
        adapter, nnU-Net's cross-validation and fit's adapters."""
        o = self.opts
        if o.adapts():
            self.kept_adapter(run)
        if "tuned" in o.methods:  # the prompter's tuned records, frozen and adapted
            models = self.folder / "models" / run["name"]
            for path in (models / "prompter" / SETTINGS_FILE, models / "adapter" / SETTINGS_FILE):
                if path.is_file():
                    self.check_rule(path)
        folds = self.kept_folds(run) if o.needs_nnunet_folds() else None
        if folds is not None and "nnunet+tuned" in o.methods:  # fit's kept adapters of other options
            cv = self.cross_validation(run)
            preflight(cv, self.fit_options(run), SamSpec())
            self.kept_fit(cv.model / SETTINGS_FILE, self.fit_options(run).to_record())

    @staticmethod
    def kept_fit(path: Path, want: dict) -> None:
        """Refuse fit's kept record when it was made with other options (its choice feeds kept predictions)."""
        if not path.is_file():
            return
        have = (read_json(path).get("fit") or {}).get("options") or {}
        differ = [k for k in want if have.get(k) != want[k]]
        if differ:
            k = differ[0]
            raise AutosamError(f"{path}: autosam fit chose nnU-Net's default with another {k} ({have.get(k)!r}, now "
                               f"{want[k]!r}); use another study folder")
