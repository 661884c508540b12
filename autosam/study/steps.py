"""The model steps of a study run, each kept and reused on a rerun: the prompter, its tuned default, the SAM
adapter (and the fold adapters), nnU-Net, the fold nnU-Nets, nnU-Net's tuned default and the controls' weights."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

from .. import io
from ..adapt.train import finetune
from ..fit import fit
from ..nnunet.folds import link_maps
from ..nnunet.train import predict_nnunet, train_cross_validation, train_nnunet
from ..prompter import Prompter
from ..prompter.train import TrainOptions, train_prompter
from ..prompter.tuning import tune_prompter, validation_cases
from ..settings import SETTINGS_FILE, Runtime, SamSpec, read_json
from .checks import KeptModels
from .controls import blend_folder, blend_weight, planes_folder, planes_weight
from .convergence import RECORD, measure
from ..progress import notice as log
from .folder import NNUNET_DATASET_ID, NNUNET_FOLDS, WHOSE
from .results import timed


class ModelSteps(KeptModels):
    """The steps that train (or reuse) a run's models."""

    def train_prompter(self, run: dict) -> Path:
        """The run's prompter (trained on its subset; its own validation split is part of the subset)."""
        folder = self.folder / "models" / run["name"] / "prompter"
        if not (folder / "model.pt").is_file():
            o = self.opts
            log(f"study {run['name']}: training the prompter on {len(run['cases'])} case(s)")
            train_prompter(self.dataset, folder, TrainOptions(
                epochs=o.prompter_epochs, iterations=o.prompter_iterations, seed=run["seed"],
                exclude_cases=self.others(run), subject_pattern=o.subject_pattern, device=o.device))
        return folder

    def tune(self, prompter_dir: Path, adapter: Optional[Path]) -> Optional[Path]:
        """Tune the prompter's default with frozen SAM (and with the adapted one, if any) on the prompter's
        validation cases; returns the record of the better of the two (None: nothing to tune on)."""
        prompter = Prompter.load(prompter_dir, device=self.opts.device)
        records = [(prompter_dir / SETTINGS_FILE, None)] + ([(adapter / SETTINGS_FILE, adapter)] if adapter else [])
        best, best_score = None, -math.inf
        for path, adapted in records:
            if not path.is_file():
                tune_prompter(prompter, self.dataset, lambda a=adapted: self.predictor(a),
                              max_cases=self.opts.tune_cases, sam=SamSpec(adapter=str(adapted) if adapted else None),
                              output=path, grid=self.opts.grid(), log=log, sign_test=self.opts.sign_test)
            if path.is_file():  # a kept record's rule was checked by check_kept before the run
                score = read_json(path).get("tuning", {}).get("chosen_mean_dice", -math.inf)
                if score > best_score + 1e-9:
                    best, best_score = path, score
        return best

    def train_adapter(self, run: dict, prompter_dir: Optional[Path], index: int) -> Path:
        """The run's SAM adapter, trained on the cross-fitted maps of ``--adapt-source``: the prompter's (fold
        prompters) or nnU-Net's (fold nnU-Nets, :meth:`nnunet_folds`). The prompter's validation cases, on which
        the default is tuned, are left out whenever the run has a prompter. Frozen-encoder adapters read and store
        their slices' embeddings in the study's one cache."""
        folder = self.adapter_folder(run)
        o = self.opts
        kept = self.kept_adapter(run)
        started = kept is not None
        if started and kept.epoch >= o.adapt_epochs:
            return folder
        held_out = validation_cases(Prompter.load(prompter_dir)) if prompter_dir else []
        if o.adapt_source == "nnunet":
            prompts_from = f"coarse:{self.nnunet_folds(run, index)}"
        else:
            prompts_from = f"prompter:{prompter_dir}"
        log(f"study {run['name']}: adapting SAM ({o.adapt}) on {WHOSE[o.adapt_source]} cross-fitted prompts")
        finetune(self.dataset, folder, base="litemedsam", method=o.adapt, epochs=o.adapt_epochs, val_fraction=0.0,
                 iterations_per_epoch=o.adapt_iterations, exclude=self.others(run) + held_out,
                 subject_pattern=o.subject_pattern, seed=run["seed"], device=o.device, resume=started,
                 prompts_from=prompts_from, folds=o.adapt_folds, auto_prompt=o.adapt_prompt, planes=o.adapt_planes,
                 cache_dir=self.folder / "embedding_cache")
        return folder

    def nnunet(self, run: dict, index: int) -> tuple[Path, float]:
        """nnU-Net trained on the run's subset (its own commands) and its test predictions (with probabilities)."""
        out = self.folder / "predictions" / run["name"] / "nnunet"
        schedule = self.opts.schedule(run["seed"])
        log(f"study {run['name']}: nnU-Net on {len(run['cases'])} case(s)")
        model = self.nnunet_model(run, index)
        seconds = timed(lambda: predict_nnunet(model, self.test_images(run), out, schedule, save_probabilities=True),
                        self._time_file(run, "nnunet"))
        return out, seconds

    def nnunet_model(self, run: dict, index: int) -> Path:
        """The model folder of the nnU-Net trained on the run's subset (trained here unless it is kept)."""
        return train_nnunet(self.dataset, run["cases"], self.folder / "nnunet", NNUNET_DATASET_ID + index,
                            self.opts.schedule(run["seed"]))

    def nnunet_folds(self, run: dict, index: int) -> Path:
        """nnU-Net's cross-fitted maps of the run's cases: nnU-Net's own cross-validation with ``--adapt-folds``
        folds (the study's schedule, ``--npz``), each fold trained on the other folds' cases and validating its own;
        the maps are linked into one folder, ``models/<run>/nnunet_folds/predictions``, with ``folds.json``
        (which fold trained on and predicted which cases, and the model folder ``autosam fit`` reads)."""
        root = self._folds_root(run)
        out = root / "predictions"
        if self.kept_folds(run) is not None:
            return out
        held = self._held_out(run)
        log(f"study {run['name']}: nnU-Net's {len(held)}-fold cross-validation on {len(run['cases'])} case(s)")
        model = train_cross_validation(self.dataset, run["cases"], root, NNUNET_DATASET_ID + index,
                                       self.opts.schedule(run["seed"]), held)
        link_maps(self.cross_validation(run, model), out)
        folds = [{"folder": f"fold_{i}", "trained_on": sorted(c for c in run["cases"] if c not in part),
                  "predicted": sorted(part)} for i, part in enumerate(held)]
        io.write_json({"cases": sorted(run["cases"]), "subject_pattern": self.opts.subject_pattern,
                       "model": str(model), "folds": folds}, out / NNUNET_FOLDS)
        return out

    def tune_nnunet(self, run: dict, index: int) -> Path:
        """nnU-Net's SAM default: nnU-Net's cross-validation, then ``autosam fit`` on it (at most ``--tune-cases``
        maps; fold adapters unless the options adapt nothing on nnU-Net's maps), as a user would run it. Returns
        fit's record, ``MODEL/autosam_sam.json``, whose adapter (if the adapted SAM won) trained on every map."""
        self.nnunet_folds(run, index)
        root, model = self._folds_root(run), self.cv_model(run)
        if (model / SETTINGS_FILE).is_file():  # fit finished (check_kept refused a record of other options)
            return model / SETTINGS_FILE
        log(f"study {run['name']}: autosam fit on nnU-Net's cross-validation")
        return fit(model, self.fit_options(run), SamSpec(), Runtime(self.opts.device, self.opts.engine),
                   raw_root=root / "nnUNet_raw", preprocessed_root=root / "nnUNet_preprocessed")

    def control(self, method: str, run: dict, models: dict, out: Path) -> Path:
        """A SAM-free control's predictions of the run's test cases (:mod:`.controls`)."""
        images = self.test_images(run)
        if method == "nnunet-folds":
            folds = [str(i) for i in range(len(self.kept_folds(run)))]
            return predict_nnunet(self.cv_model(run), images, out, self.opts.schedule(run["seed"]), folds=folds)
        if method == "nnunet-planes":
            return planes_folder(images, models["nnunet"][0], models["nnunet_model"], self.opts.schedule().fold, out,
                                 self.planes(run), self.info, self.opts.device)
        prompter = Prompter.load(models["prompter"], device=self.opts.device)
        sam = self.predictor().model if prompter.mode == "embedding" else None
        return blend_folder(images, models["nnunet"][0], out, prompter, sam, self.blend(run, prompter, sam),
                            self.info)

    def blend(self, run: dict, prompter: Prompter, sam) -> float:
        """nnU-Net's weight for ``nnunet+prompter``, chosen once per run (kept in ``nnunet_prompter.json``)."""
        path = self.folder / "models" / run["name"] / "nnunet_prompter.json"
        if path.is_file():
            return float(read_json(path)["weight"])
        cases = validation_cases(prompter)
        weight, means = blend_weight(prompter, sam, cases, self.files, self.labels,
                                     self._folds_root(run) / "predictions", self.info)
        io.write_json({"weight": weight, "mean_dice": means, "cases": cases}, path)
        log(f"study {run['name']}: nnunet+prompter: nnU-Net's weight {weight} (mean Dice by weight on the "
            f"prompter's {len(cases)} validation case(s): {means})")
        return weight

    def planes(self, run: dict) -> float:
        """The native axis's weight for ``nnunet-planes``, chosen once per run on nnU-Net's cross-fitted maps of the
        run's cases (kept in ``nnunet_planes.json``)."""
        path = self.folder / "models" / run["name"] / "nnunet_planes.json"
        if path.is_file():
            return float(read_json(path)["weight"])
        cv = self.cross_validation(run)
        weight, means = planes_weight(cv, self.opts.device)
        io.write_json({"weight": weight, "mean_dice": means, "cases": cv.cases}, path)
        log(f"study {run['name']}: nnunet-planes: the native axis's weight {weight} (mean Dice by weight on nnU-Net's "
            f"cross-fitted maps of {len(cv.cases)} training case(s): {means})")
        return weight

    def convergence(self, run: dict, index: int) -> dict:
        """nnU-Net's fold-0 validation Dice at the study's schedule and at twice its epochs (:mod:`.convergence`):
        fold 0 of the run's cross-validation when there is one, else trained here."""
        models = self.folder / "models" / run["name"]
        cv = self.cv_model(run) if self.kept_folds(run) is not None else None
        log(f"study {run['name']}: nnU-Net's fold 0 at twice the epochs (does the baseline converge?)")
        return measure(self.dataset, run, cv, models, NNUNET_DATASET_ID + index, self.opts.schedule(run["seed"]),
                       self._held_out(run), models / RECORD)
