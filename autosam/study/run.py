"""Running a study: :class:`Study` trains what a run's methods need, segments the test cases with each method and
scores them; :func:`run_study` checks everything before it writes, then runs (or resumes) every run of the plan."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Callable, Optional

from .. import io
from ..pipelines import oracle_folder, refine_folder, segment_folder
from ..progress import notice as log
from ..prompter import Prompter
from ..settings.model import Settings
from .methods import CONTROLS, parse_method, table_order
from .options import StudyOptions
from .plan import check_plan, make_plan
from .results import kept_rows, read_results, timed, write_results
from .summary import describe_tests, write_reports
from .steps import ModelSteps


class Study(ModelSteps):
    """One study folder: the plan, the test images, shared SAM predictors (one embedding cache on disk, so each
    test slice is encoded once for the whole study), and one step per model and method."""

    def predict(self, method: str, run: dict, models: dict) -> tuple[Path, float]:
        """Segment the test cases with ``method``; the folder and its seconds (all cases)."""
        out = self.folder / "predictions" / run["name"] / method.replace("/", "@")
        if method == "nnunet":
            return models["nnunet"]
        if method in CONTROLS:  # the SAM-free controls other than nnU-Net itself
            return out, timed(lambda: self.control(method, run, models, out), self._time_file(run, method))
        base, variant = parse_method(method)
        adapter = models.get("adapter") if base.endswith("-adapted") else None
        sam = (lambda: self.predictor(adapter))
        config = self.config(variant)
        images = self.test_images(run)
        if method in ("tuned", "nnunet+tuned"):
            config, sam = self._tuned_config(models.get("tuned" if method == "tuned" else "nnunet_tuned"))
        kwargs = {"run_args": {"verb": "study", "method": method}, "quiet": True}
        if method.startswith("sam-oracle"):
            step = lambda: oracle_folder(images, self.labels, out, self.info, sam, run_args=kwargs["run_args"])
        elif method.startswith("nnunet+"):
            if config is None:  # "no SAM" won: nnU-Net's own predictions
                return models["nnunet"]
            step = lambda: refine_folder(images, models["nnunet"][0], out, self.info, sam, config, **kwargs)
        else:
            prompter = Prompter.load(models["prompter"], device=self.opts.device)
            step = lambda: segment_folder(images, out, prompter, self.info, sam,
                                          None if method == "prompter" else config, **kwargs)
        return out, timed(step, self._time_file(run, method))

    def _tuned_config(self, record: Optional[Path]):
        """The tuned record's configuration (None: no SAM) and its predictor factory (built-in default when
        nothing could be tuned)."""
        if record is None:
            return self.config(), (lambda: self.predictor())
        settings = Settings.from_record(record)
        adapter = Path(settings.sam.adapter) if settings.sam.adapter else None
        return settings.refine, (lambda: self.predictor(adapter))

    def run(self, run: dict, index: int, kept: Optional[dict] = None,
            save: Callable[[list[dict]], object] = lambda rows: None) -> list[dict]:
        """Train what the run's methods need, segment the test cases with each method, score them. ``kept``: rows
        already scored, by method (those methods are not run again, and only what the others need is trained);
        ``save`` gets the run's rows after each method. The SAM-free methods go first and ``nnunet+tuned`` last, so
        a run stopped in ``autosam fit`` keeps the controls' rows; the rows come back in ``--methods`` order."""
        kept = dict(kept or {})
        pending = sorted((m for m in self.opts.methods if m not in kept), key=lambda m: m == "nnunet+tuned")
        models = self.train_models(run, index, replace(self.opts, methods=tuple(pending)))
        for method in pending:
            if method == "nnunet+tuned":  # nnU-Net's cross-validation, then autosam fit
                models["nnunet_tuned"] = self.tune_nnunet(run, index)
            # frozen SAM with label boxes does not depend on the training cases: one folder per test set
            folder, seconds = self.predict(method, self.oracle_run(run) if method == "sam-oracle" else run, models)
            kept[method] = self.score(method, run, folder, seconds)
            save([r for m in self.opts.methods if m in kept for r in kept[m]])
        return [r for m in self.opts.methods for r in kept[m]]

    def train_models(self, run: dict, index: int, o: StudyOptions) -> dict:
        """The models that the methods of ``o`` need, trained or kept (``autosam fit`` waits for its method)."""
        models: dict = {}
        if o.needs_prompter():
            models["prompter"] = self.train_prompter(run)
        if o.adapts() and not o.defers_adapter():
            models["adapter"] = self.train_adapter(run, models.get("prompter"), index)
        if "tuned" in o.methods:
            models["tuned"] = self.tune(models["prompter"], models.get("adapter"))
        if o.uses("nnunet"):
            models["nnunet"] = self.nnunet(run, index)
        if "nnunet-planes" in o.methods:  # the model folder, which predicts along the other axes
            models["nnunet_model"] = self.nnunet_model(run, index)
        if o.needs_nnunet_folds():
            self.nnunet_folds(run, index)
        return models


def run_study(dataset: str | Path, folder: str | Path, opts: StudyOptions, dry_run: bool = False,
              plan: Optional[dict] = None) -> dict:
    """Run (or resume, or with ``dry_run`` only plan) a study; returns the plan (with ``results``: the rows).
    ``plan``: :func:`make_plan`'s result when the caller made it already. A method whose rows in ``results.csv``
    score every test case of a run is not run again there (nor is what only it needs trained), so a study resumes
    from ``results.csv`` and ``plan.json`` even where its models are gone."""
    dataset, folder = Path(dataset), Path(folder)
    opts.check(dataset)
    plan = check_plan(folder, plan if plan is not None else make_plan(dataset, opts))
    info = io.load_dataset_json(dataset)
    if dry_run:
        return plan
    done = _reusable_results(folder, plan)  # before plan.json is rewritten
    study = Study(dataset, folder, opts, plan)
    for run in plan["runs"]:  # kept models of other options are refused before anything is written
        study.check_kept(run)
    folder.mkdir(parents=True, exist_ok=True)
    io.write_json(plan, folder / "plan.json")
    study.link_test_images()
    rows: list[dict] = []
    for index, run in enumerate(plan["runs"]):
        kept = kept_rows(done, run, opts.methods)
        if len(kept) == len(opts.methods):
            log(f"study {run['name']}: scored already (results.csv); not run again")
        elif kept:
            log(f"study {run['name']}: {', '.join(kept)} scored already (results.csv)")
        before = list(rows)  # each method's rows are kept as soon as it is scored, even when its models are not
        rows = before + study.run(run, index, kept, lambda mine: write_results(folder, before + mine))
        write_results(folder, rows)
        if opts.convergence and "nnunet" in opts.methods and run.get("repeat", 0) == 0:  # once per size
            study.convergence(run, index)
    write_reports(folder, rows, plan, table_order(opts.methods), opts.baseline,
                  f"{info.raw.get('name', dataset.name)}: {describe_tests(plan)}")
    plan["results"] = rows
    return plan


def _reusable_results(folder: Path, plan: dict) -> list[dict]:
    """The rows of ``folder``'s ``results.csv`` that a rerun may keep: only when its ``plan.json`` was made with
    the same options and each run trained on the same cases (otherwise none: every run is scored again)."""
    path = folder / "plan.json"
    if not path.is_file():
        return []
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    same = old.get("options") == json.loads(json.dumps(plan["options"]))
    cases = {r.get("name"): r.get("cases") for r in old.get("runs", []) if isinstance(r, dict)}
    rows = read_results(folder) if same else []
    return [r for r in rows if any(cases.get(run["name"]) == run["cases"] and r["train_size"] == run["size"]
                                   and r["repeat"] == run["repeat"] for run in plan["runs"])]
