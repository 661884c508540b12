"""The model steps of a study run, each kept and reused on a rerun: the prompter, its tuned default, the SAM
adapter (and the fold adapters), nnU-Net, the fold nnU-Nets and nnU-Net's tuned default."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

from .. import io
from ..adapt.train import finetune
from ..nnunet.train import predict_nnunet, train_nnunet
from ..prompter import Prompter
from ..prompter.train import TrainOptions, train_prompter
from ..prompter.tuning import tune_prompter, validation_cases
from ..sam_settings import SETTINGS_FILE, from_tuning, read_json, record
from ..tune import TuneResult, coarse_items, combine, tune as tune_candidates
from .checks import KeptModels
from ..progress import notice as log
from .folder import NNUNET_FOLDS, WHOSE
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
                              max_cases=self.opts.tune_cases, adapter=str(adapted) if adapted else None,
                              output=path, grid=self.opts.grid(), log=log, sign_test=self.opts.sign_test)
            if path.is_file():  # a kept record's rule was checked by check_kept before the run
                score = read_json(path).get("tuning", {}).get("chosen_mean_dice", -math.inf)
                if score > best_score + 1e-9:
                    best, best_score = path, score
        return best

    def train_adapter(self, run: dict, prompter_dir: Optional[Path], index: int, fold: Optional[dict] = None
                      ) -> Path:
        """The run's SAM adapter, trained on the cross-fitted maps of ``--adapt-source``: the prompter's (fold
        prompters) or nnU-Net's (fold nnU-Nets, :meth:`nnunet_folds`). The prompter's validation cases, on which
        the default is tuned, are left out whenever the run has a prompter. ``fold`` (a fold of ``folds.json``):
        the same adapter without that fold's predicted cases, in the fold's folder. Frozen-encoder adapters read
        and store their slices' embeddings in the study's one cache."""
        folder = self.adapter_folder(run, fold)
        o = self.opts
        kept = self.kept_adapter(run, fold)
        started = kept is not None
        if started and kept.epoch >= o.adapt_epochs:
            return folder
        held_out = validation_cases(Prompter.load(prompter_dir)) if prompter_dir else []
        if o.adapt_source == "nnunet":
            prompts_from = f"coarse:{self.nnunet_folds(run, index)}"
        else:
            prompts_from = f"prompter:{prompter_dir}"
        left_out = list(fold["predicted"]) if fold else []
        log(f"study {run['name']}: adapting SAM ({o.adapt}) on {WHOSE[o.adapt_source]} cross-fitted prompts"
            + (f", without {fold['folder']}'s {len(left_out)} case(s)" if fold else ""))
        finetune(self.dataset, folder, base="litemedsam", method=o.adapt, epochs=o.adapt_epochs, val_fraction=0.0,
                 iterations_per_epoch=o.adapt_iterations, exclude=self.others(run) + held_out + left_out,
                 subject_pattern=o.subject_pattern, seed=run["seed"], device=o.device, resume=started,
                 prompts_from=prompts_from, folds=o.adapt_folds, auto_prompt=o.adapt_prompt, planes=o.adapt_planes,
                 cache_dir=self.folder / "embedding_cache")
        return folder

    def nnunet(self, run: dict, index: int) -> tuple[Path, float]:
        """nnU-Net trained on the run's subset (its own commands) and its test predictions (with probabilities)."""
        out = self.folder / "predictions" / run["name"] / "nnunet"
        schedule = self.opts.schedule(run["seed"])
        log(f"study {run['name']}: nnU-Net on {len(run['cases'])} case(s)")
        model = train_nnunet(self.dataset, run["cases"], self.folder / "nnunet", 900 + index, schedule)
        seconds = timed(lambda: predict_nnunet(model, self.test_images(run), out, schedule, save_probabilities=True),
                        self._time_file(run, "nnunet"))
        return out, seconds

    def nnunet_folds(self, run: dict, index: int) -> Path:
        """nnU-Net's cross-fitted maps of the run's cases: ``--adapt-folds`` nnU-Nets (the study's schedule), each
        trained on the other folds' cases and predicting its own fold's (label maps and probabilities) into one
        folder, ``models/<run>/nnunet_folds/predictions``; which fold trained on and predicted which cases is
        recorded in ``folds.json`` there, once all are made, and kept ones are reused."""
        o = self.opts
        root = self._folds_root(run)
        out = root / "predictions"
        if self.kept_folds(run) is not None:
            return out
        schedule = o.schedule(run["seed"])
        held = self._held_out(run)
        folds = []
        for i, part in enumerate(held):
            train = [c for c in run["cases"] if c not in part]
            images = self.link_images(part, root / f"fold_{i}" / "images")
            log(f"study {run['name']}: nnU-Net fold {i + 1}/{len(held)} on {len(train)} case(s), "
                f"predicting its {len(part)} held-out case(s)")
            model = train_nnunet(self.dataset, train, root / f"fold_{i}", 900 + index, schedule)
            predict_nnunet(model, images, out, schedule, save_probabilities=True)
            folds.append({"folder": f"fold_{i}", "trained_on": sorted(train), "predicted": sorted(part)})
        io.write_json({"cases": sorted(run["cases"]), "subject_pattern": o.subject_pattern, "folds": folds},
                      out / NNUNET_FOLDS)
        return out

    def tune_nnunet(self, run: dict, index: int, adapter: Optional[Path], prompter_dir: Optional[Path]) -> Path:
        """nnU-Net's SAM default, tuned as the nnU-Net trainer's validation tunes it but on the fold nnU-Nets'
        cross-fitted maps of the run's cases (at most ``--tune-cases``): with frozen SAM, and with
        :meth:`fold_adapters` the adapted SAM, each fold's cases scored with the adapter that left them out. The
        better of the two winners (each "no SAM" unless SAM gained) is recorded in ``nnunet_folds/autosam_sam.json``;
        an adapted winner names the run's adapter, trained on every case, as nnU-Net's own test predictions come
        from the model trained on every case."""
        o = self.opts
        maps = self.nnunet_folds(run, index)
        folds = self.kept_folds(run)
        kept = self.kept_tuning(run, folds)
        if kept is not None:
            return kept
        path = maps.parent / SETTINGS_FILE
        chosen = self._tune_cases(folds)
        references = io.label_files(self.labels, chosen, self.info.file_ending)
        items = dict(zip(chosen, coarse_items(chosen, self.files, references, maps, self.info)))
        grid = o.grid()
        log(f"study {run['name']}: tuning nnU-Net's SAM default on {len(items)} cross-fitted map(s), frozen SAM")
        frozen = tune_candidates(self.predictor(), list(items.values()), self.info, grid, sign_test=o.sign_test)
        results, names = [(frozen, None)], []
        if o.fold_adapters():
            adapted, names = self._tune_fold_adapters(run, index, prompter_dir, folds, items, grid)
            results.append((adapted, adapter))
        result, chosen_adapter = max(results, key=lambda r: r[0].mean(r[0].best.name))  # ties: frozen
        result.base["compared"] = self._compared(results)
        if names:  # whichever won, the fold adapters the adapted SAM was scored with
            result.base["fold_adapters"] = names
        result.base["options"] = {"tune_cases": o.tune_cases, "max_objects": o.max_objects}
        settings = from_tuning(result, adapter=str(chosen_adapter) if chosen_adapter and result.best.use_sam else None)
        record(settings, path.parent, by="autosam study (nnU-Net's cross-fitted maps)")
        log(f"study {run['name']}: nnU-Net's tuned default: {result.best.name}"
            + (" (adapted SAM)" if settings["adapter"] else "") + f", mean Dice {result.mean(result.best.name):.4f} "
            f"against nnU-Net alone {result.mean('no SAM'):.4f} on the folds' maps")
        return path

    def _tune_fold_adapters(self, run: dict, index: int, prompter_dir: Optional[Path], folds: list[dict],
                            items: dict, grid: list) -> tuple[TuneResult, list[str]]:
        """The adapted SAM's tuning on nnU-Net's maps: each fold's cases of ``items`` scored with that fold's
        adapter (trained here if need be), combined; and the fold adapters it used."""
        parts, names = [], []
        for fold in folds:
            cases = [c for c in items if c in fold["predicted"]]
            if cases:
                fold_adapter = self.train_adapter(run, prompter_dir, index, fold)
                log(f"study {run['name']}: tuning on {fold['folder']}'s {len(cases)} case(s), its adapter")
                parts.append(tune_candidates(self.predictor(fold_adapter), [items[c] for c in cases], self.info, grid))
                names.append(str(fold_adapter))
        return combine(parts, sign_test=self.opts.sign_test), names

    def _compared(self, results: list[tuple[TuneResult, Optional[Path]]]) -> dict:
        """What frozen and adapted SAM's tunings each chose (and, with a sign test, what the mean alone would
        have), for the tuned record."""
        compared = {}
        for r, a in results:
            entry = compared["adapted SAM (fold adapters)" if a else "frozen SAM"] = {
                "chosen": r.best.name, "chosen_mean_dice": round(r.mean(r.best.name), 5)}
            if self.opts.sign_test is not None:  # and what the mean alone would have chosen
                mean_rule = r.mean_rule().name
                entry.update(without_sign_test=mean_rule, without_sign_test_mean_dice=round(r.mean(mean_rule), 5))
        return compared
