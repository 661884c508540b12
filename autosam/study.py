"""``autosam study``: the low-data comparison on the user's own dataset, by one command.

Test cases are fixed first (by subject) and no model ever trains or tunes on them. For each training size and
seed, a nested, seeded subset of the other cases trains the prompter (whose own validation split then tunes its SAM
default), a SAM adapter on the prompter's (or, ``--adapt-source nnunet``, nnU-Net's) cross-fitted prompts, and
nnU-Net through its own commands. Every method then segments the same test cases and is scored per case and label
(Dice, NSD, HD95, seconds).

Layout of ``STUDY_DIR``: ``plan.json``; ``test_images/`` (links); ``models/<run>/{prompter,adapter,nnunet_folds}``;
``nnunet/`` (nnU-Net's raw, preprocessed and results folders); ``predictions/<run>/<method>/`` (nnU-Net layout);
``embedding_cache/``; ``results.csv``, ``summary.md`` and ``learning_curve.png``. Everything is kept and reused, so
a rerun resumes where the last one stopped.
"""
from __future__ import annotations

import csv
import functools
import itertools
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from . import evaluation, io
from .errors import AutosamError
from .splits import split_by_subject, subject_of

#: Every method the study can score, in table order; "-adapted" ones need an adapter (``--adapt``).
METHODS = ("sam-oracle", "sam-oracle-adapted", "prompter", "prompter+sam", "prompter+sam-adapted", "tuned",
           "nnunet", "nnunet+sam", "nnunet+sam-adapted", "nnunet+tuned")
#: What a study scores unless ``--methods`` says otherwise: every method but ``nnunet+tuned``, which trains
#: ``--adapt-folds`` more nnU-Nets (and adapters) per run.
DEFAULT_METHODS = tuple(m for m in METHODS if m != "nnunet+tuned")
DESCRIPTIONS = {
    "sam-oracle": "frozen SAM, boxes from the reference labels (a ceiling, not automatic)",
    "sam-oracle-adapted": "adapted SAM, boxes from the reference labels (a ceiling, not automatic)",
    "prompter": "the prompter alone",
    "prompter+sam": "prompter -> frozen SAM, built-in default (box+mask, auto: average)",
    "prompter+sam-adapted": "prompter -> adapted SAM, built-in default (box+mask, auto: average)",
    "tuned": "prompter -> the default tuned on the prompter's validation cases (may be no SAM)",
    "nnunet": "nnU-Net alone",
    "nnunet+sam": "nnU-Net -> frozen SAM, built-in default",
    "nnunet+sam-adapted": "nnU-Net -> adapted SAM, built-in default",
    "nnunet+tuned": "nnU-Net -> the default tuned on nnU-Net's cross-fitted maps of the training cases (frozen SAM, "
                    "and with --adapt-source nnunet the adapted one through fold adapters; may be no SAM)",
}
#: Levers a method variant can switch on (``METHOD/FUSION+LEVER+...``), as :class:`RefineConfig` fields.
LEVERS = {"hypotheses": {"box_hypotheses": True}, "rebox": {"rebox": 1}, "largest": {"max_objects": 1},
          "box": {"prompt": "box"}, "planes": {"planes": True}}
#: What a variant starts from: box+mask prompts (the lever ``box`` drops the mask prompt).
VARIANT_BASE = {"prompt": "box+mask"}
#: Whose cross-fitted maps prompt the adapter (``--adapt-source``).
ADAPT_SOURCES = ("prompter", "nnunet")
#: The record of the nnU-Net folds behind an ``--adapt-source nnunet`` adapter (in ``models/<run>/nnunet_folds``).
NNUNET_FOLDS = "folds.json"
_WHOSE = {"prompter": "the prompter's", "nnunet": "nnU-Net's"}
#: Methods that take a variant: SAM prompted from an automatic coarse map.
VARIABLE = ("prompter+sam", "prompter+sam-adapted", "nnunet+sam", "nnunet+sam-adapted")
RESULT_FIELDS = ("method", "train_size", "seed", "case", "label", "dice", "nsd", "hd95", "seconds")


def parse_method(method: str) -> tuple[str, Optional[dict]]:
    """``"prompter+sam-adapted/replace+rebox"`` -> ``("prompter+sam-adapted", {"prompt": "box+mask", "fusion":
    "replace", "rebox": 1})``: the base method and the :class:`RefineConfig` fields of its variant (None: the base
    method as it is)."""
    from .fusion import fusion_strategies

    base, _, spec = method.partition("/")
    if base not in METHODS:
        raise AutosamError(f"unknown method {base!r}; choose from {', '.join(METHODS)}")
    if not spec:
        return base, None
    if base not in VARIABLE:
        raise AutosamError(f"method {base!r} takes no variant; variants go with {', '.join(VARIABLE)}")
    fusion, *levers = spec.split("+")
    if fusion not in fusion_strategies:
        raise AutosamError(f"method {method!r}: unknown fusion {fusion!r}; choose from {', '.join(fusion_strategies)}")
    fields: dict = {**VARIANT_BASE, "fusion": fusion}
    for lever in levers:
        if lever not in LEVERS:
            raise AutosamError(f"method {method!r}: unknown lever {lever!r}; choose from {', '.join(LEVERS)}")
        fields.update(LEVERS[lever])
    return base, fields


def describe(method: str) -> str:
    base, variant = parse_method(method)
    if variant is None:
        return DESCRIPTIONS[base]
    fusion, *levers = method.partition("/")[2].split("+")
    levers = [lv for lv in levers if lv != "box"]
    return DESCRIPTIONS[base].split(", built-in")[0] + f", {variant['prompt']} prompts, {fusion} fusion" + (
        "".join(f", {lv}" for lv in levers) if levers else "")


@dataclass
class StudyOptions:
    """What to run. Sizes are numbers of training cases (``"all"``: every non-test case); epochs and iterations
    set the (short) schedules; ``nnunet_*`` go to :class:`autosam.nnunet_train.Schedule`."""

    train_sizes: list = field(default_factory=lambda: ["5", "10", "20", "all"])
    seeds: int = 1
    test_fraction: float = 0.2
    test_cases: Optional[list] = None
    subject_pattern: Optional[str] = None
    exclude: list = field(default_factory=list)
    split_seed: int = 0
    methods: list = field(default_factory=lambda: list(DEFAULT_METHODS))
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

    def check(self) -> None:
        for m in self.methods:
            parse_method(m)
        if self.uses_adapted() and not self.adapt:
            raise AutosamError("adapted methods need --adapt decoder|lora|desam")
        if self.adapt not in (None, "decoder", "lora", "desam"):
            raise AutosamError(f"unknown --adapt {self.adapt!r}; choose decoder, lora or desam")
        from .adapt.data import auto_prompts

        try:
            auto_prompts(self.adapt_prompt)
        except AutosamError as e:
            raise AutosamError(f"--adapt-prompt: {e}") from None
        if self.adapt_source not in ADAPT_SOURCES:
            raise AutosamError(f"unknown --adapt-source {self.adapt_source!r}; choose {' or '.join(ADAPT_SOURCES)}")
        if self.adapt_folds < 2:
            raise AutosamError(f"--adapt-folds must be >= 2, got {self.adapt_folds}")
        if self.seeds < 1:
            raise AutosamError(f"--seeds must be >= 1, got {self.seeds}")
        if self.nnunet_spacing is not None:  # nnunet_train's own check, before anything is written
            from .nnunet_train import Schedule

            try:
                Schedule(spacing=self.nnunet_spacing)
            except AutosamError as e:
                raise AutosamError(f"--nnunet-spacing: {e}") from None
        if self.max_objects < 0:
            raise AutosamError(f"--max-objects must be >= 0, got {self.max_objects}")
        from .tune import check_sign_test

        check_sign_test(self.sign_test)
        if self.test_cases is None and not 0 < self.test_fraction < 1:
            raise AutosamError(f"--test-fraction must be in (0, 1), got {self.test_fraction}")
        for s in self.train_sizes:
            if str(s) != "all" and (not str(s).isdigit() or int(s) < 2):
                raise AutosamError(f"train size {s!r}: give a whole number >= 2 or 'all'")

    def grid(self) -> list:
        """The candidates every tuning of the study scores: :func:`autosam.tune.candidates`, with the options' object
        limit; ``small_grid`` leaves out the box hypotheses (three boxes per object) and the three-plane candidates
        (each case encoded along every axis), a quarter of the decoder calls and a third of the encoder's."""
        from .tune import candidates

        limits = {"max_objects": (self.max_objects,)} if self.max_objects else {}
        return candidates(**limits, **({"levers": ((False, 0),), "planes": False} if self.small_grid else {}))

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
        """Only nnU-Net's tuned default could use the run's adapter (no adapted method, no prompter ``tuned``): it
        is trained after that tuning, and only if the tuning chose the adapted SAM."""
        return self.adapts() and not self.uses_adapted() and "tuned" not in self.methods

    def needs_nnunet_folds(self) -> bool:
        """Fold nnU-Nets predict the run's cases: they prompt the adapter, or nnU-Net's default is tuned on them."""
        return (self.adapts() and self.adapt_source == "nnunet") or "nnunet+tuned" in self.methods

    def fold_adapters(self) -> bool:
        """nnU-Net's tuned default also tries the adapted SAM, through one adapter per fold (each left its fold's
        cases out, so it is scored only on cases it never trained on)."""
        return "nnunet+tuned" in self.methods and self.adapts() and self.adapt_source == "nnunet"

    def needs_prompter(self) -> bool:
        """A prompter is trained: a prompter method, the tuned default, or the prompter's maps prompt the adapter."""
        prompted = any(m.startswith("prompter") or m == "tuned" for m in self.methods)
        return prompted or (self.adapts() and self.adapt_source == "prompter")


def quick_options() -> StudyOptions:
    """``--quick``: the bundled hippocampus sample end to end in a few minutes (a smoke test, not a result)."""
    return StudyOptions(train_sizes=["3", "4"], seeds=1, test_cases=None, test_fraction=0.2, prompter_epochs=4,
                        prompter_iterations=10, adapt_epochs=1, adapt_iterations=10, adapt_folds=2, tune_cases=1,
                        max_objects=1, small_grid=True, nnunet_configuration="2d", nnunet_epochs=1,
                        nnunet_iterations=3)


# -- the plan -------------------------------------------------------------------------------------------------
def make_plan(dataset: Path, opts: StudyOptions) -> dict:
    """Test cases, and per size and seed the nested training subsets (a subject's cases stay together)."""
    info = io.load_dataset_json(dataset)
    cases = sorted(io.list_cases(dataset / "imagesTr", info.file_ending, info.num_channels))
    io.label_files(dataset / "labelsTr", cases, info.file_ending)
    excluded = set(opts.exclude)
    cases = [c for c in cases if c not in excluded and subject_of(c, opts.subject_pattern) not in excluded]
    if opts.test_cases is not None:
        missing = [c for c in opts.test_cases if c not in cases]
        if missing:
            raise AutosamError(f"test case {missing[0]} is not in {dataset / 'imagesTr'}")
        test = sorted(opts.test_cases)
    else:
        test = split_by_subject(cases, opts.test_fraction, opts.split_seed, opts.subject_pattern)["val"]
    test_subjects = {subject_of(c, opts.subject_pattern) for c in test}
    pool = [c for c in cases if subject_of(c, opts.subject_pattern) not in test_subjects]
    sizes = [len(pool) if str(s) == "all" else int(s) for s in opts.train_sizes]
    too_big = [s for s in sizes if s > len(pool)]
    if too_big:
        raise AutosamError(f"train size {too_big[0]} is larger than the {len(pool)} case(s) left after the "
                           f"{len(test)} test case(s) of {dataset}")
    runs = []
    for seed in range(opts.seeds):
        order = _subject_order(pool, opts.subject_pattern, seed)
        for size in sorted(set(sizes)):
            runs.append({"name": f"n{size}_s{seed}", "size": size, "seed": seed, "cases": _take(order, size)})
    return {"dataset": str(dataset), "test": test, "runs": runs, "options": asdict(opts)}


def _subject_order(pool: Sequence[str], pattern: Optional[str], seed: int) -> list[list[str]]:
    groups: dict[str, list[str]] = {}
    for c in pool:
        groups.setdefault(subject_of(c, pattern), []).append(c)
    names = sorted(groups)
    return [groups[names[i]] for i in np.random.default_rng(1000 + seed).permutation(len(names))]


def _take(order: list[list[str]], size: int) -> list[str]:
    """The first subjects of ``order`` up to ``size`` cases (nested: a larger size extends a smaller one)."""
    out: list[str] = []
    for group in order:
        if len(out) >= size:
            break
        out += group
    return sorted(out)


def check_plan(study: Path, plan: dict) -> dict:
    """A new study's plan, or the stored one when it matches (same dataset and test cases; new runs added)."""
    path = study / "plan.json"
    if not path.is_file():
        return plan
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise AutosamError(f"{path}: cannot read the study plan ({e}); delete it to start over") from None
    if not _same_dataset(str(old.get("dataset", "")), plan["dataset"]):
        raise AutosamError(f"{study} holds a study of another dataset ({old.get('dataset')}); use another study "
                           "folder")
    if old.get("test") != plan["test"]:
        raise AutosamError(f"{study} holds a study of other test cases; use another study folder")
    return plan


def _same_dataset(a: str, b: str) -> bool:
    """Whether two spellings of a dataset folder name the same one: the same folder where both are found from
    here (a study may be resumed from another working directory), else the same folder name."""
    pa, pb = Path(a), Path(b)
    if pa.is_dir() and pb.is_dir():
        return pa.resolve() == pb.resolve()
    return pa.name == pb.name


def estimate_seconds(plan: dict, info: io.DatasetInfo, slices_per_case: float, gpu: bool) -> dict[str, float]:
    """A rough time per step (CPU: ~0.6 s per SAM slice with OpenVINO; GPU: ~100x less)."""
    o = plan["options"]
    opts = StudyOptions(**o)
    sam = (0.006 if gpu else 0.6) * slices_per_case
    n_test = len(plan["test"])
    methods = o["methods"]
    adapts = opts.adapts()
    from_nnunet = adapts and opts.adapt_source == "nnunet"
    fold_adapters = (opts.adapt_folds - 1) if opts.fold_adapters() else 0  # each on (folds - 1) / folds of the cases
    nnunet = o["nnunet_epochs"] * (o["nnunet_iterations"] + 5) * (0.3 if gpu else 1.0) + 60
    per_run = {
        "prompter": o["prompter_epochs"] * o["prompter_iterations"] * (0.01 if gpu else 0.15)
        if opts.needs_prompter() else 0,
        # the default axis twice (frozen and adapted SAM), and on 3D the two other planes of the planes candidates
        "tuning": o["tune_cases"] * sam * (4 if slices_per_case > 1 else 2) if "tuned" in methods else 0,
        "tuning nnU-Net's default (nnunet+tuned)": 0,  # below: --tune-cases 0 tunes on every case of the run
        "adapter": ((0 if from_nnunet else o["adapt_folds"]) + 1 + fold_adapters) * o["prompter_epochs"]
        * o["prompter_iterations"] * (0.01 if gpu else 0.1) * (3 if opts.adapt_planes and slices_per_case > 1 else 1)
        if adapts else 0,
        "nnunet": nnunet if any(m.startswith("nnunet") for m in methods) else 0,
        "nnU-Net folds": o["adapt_folds"] * nnunet if opts.needs_nnunet_folds() else 0,
        "inference": n_test * 0.2 * len(methods),
    }
    steps = {k: v * len(plan["runs"]) for k, v in per_run.items()}
    if "nnunet+tuned" in methods:
        steps["tuning nnU-Net's default (nnunet+tuned)"] = sum(
            min(o["tune_cases"] or len(r["cases"]), len(r["cases"])) for r in plan["runs"]) * sam * (
            4 if slices_per_case > 1 else 2)
    steps["SAM encoder (test cases, cached once)"] = n_test * sam
    return steps


# -- results --------------------------------------------------------------------------------------------------
def score_folder(pred: Path, labels: Path, info: io.DatasetInfo, cases: Sequence[str], method: str, run: dict,
                 seconds: float) -> list[dict]:
    """One row per case and label (Dice, NSD at 1 mm, HD95) for the predictions of ``cases`` in ``pred``,
    scored by :func:`autosam.evaluation.evaluate_folder`."""
    summary = evaluation.evaluate_folder(labels, pred, info)
    scored = {Path(c["prediction_file"]).name[: -len(info.file_ending)]: c["metrics"]
              for c in summary["metric_per_case"]}
    missing = [c for c in cases if c not in scored]
    if missing:
        raise AutosamError(f"{pred}: no prediction for test case {missing[0]}")
    names = {v: k for k, v in info.labels.items()}
    return [{"method": method, "train_size": run["size"], "seed": run["seed"], "case": c, "label": names[value],
             "dice": m["Dice"], "nsd": m["NSD"], "hd95": m["HD95"], "seconds": seconds}
            for c in cases for value, m in ((v, scored[c][v]) for v in info.foreground)]


def write_results(study: Path, rows: list[dict]) -> Path:
    path = study / "results.csv"
    with io.atomic_output(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=RESULT_FIELDS)
        writer.writeheader()
        for r in rows:
            writer.writerow({k: (f"{v:.5f}" if isinstance(v, float) else v) for k, v in r.items()})
    return path


def _case_means(rows: list[dict], key: str = "dice") -> dict[tuple, list[float]]:
    """Per (method, size) the list over (seed, case) of the label-mean metric (labels empty in both skipped)."""
    per_case: dict[tuple, list[float]] = {}
    for r in rows:
        v = float(r[key])
        if math.isfinite(v):
            per_case.setdefault((r["method"], int(r["train_size"]), int(r["seed"]), r["case"]), []).append(v)
    out: dict[tuple, list[float]] = {}
    for (method, size, _seed, _case), values in sorted(per_case.items()):
        out.setdefault((method, size), []).append(float(np.mean(values)))
    return out


def summary_markdown(rows: list[dict], plan: dict, methods: Sequence[str]) -> str:
    """Mean Dice (± std over test cases and seeds) per method and training size, plus NSD and seconds per case."""
    dice, nsd, secs = _case_means(rows, "dice"), _case_means(rows, "nsd"), _case_means(rows, "seconds")
    sizes = sorted({size for _, size in dice})
    lines = [f"# autosam study: {plan['dataset']}", "",
             f"{len(plan['test'])} test cases (never trained or tuned on); sizes = training cases; "
             f"{plan['options']['seeds']} seed(s). Dice mean ± std over test cases (and seeds); "
             "best automatic method per size in bold.", "",
             "| method | " + " | ".join(f"n={s}" for s in sizes) + " | NSD (largest n) | s/case |",
             "|---|" + "---:|" * (len(sizes) + 2)]
    automatic = [m for m in methods if "oracle" not in m]
    best = {s: max(((np.mean(dice[(m, s)]), m) for m in automatic if (m, s) in dice), default=(0, None))[1]
            for s in sizes}
    for m in methods:
        cells = []
        for s in sizes:
            v = dice.get((m, s))
            text = f"{np.mean(v):.3f} ± {np.std(v):.3f}" if v else "-"
            cells.append(f"**{text}**" if best.get(s) == m else text)
        last = nsd.get((m, sizes[-1])) if sizes else None
        sec = secs.get((m, sizes[-1])) if sizes else None
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {np.mean(last):.3f} |" if last else
                     f"| {m} | " + " | ".join(cells) + " | - |")
        lines[-1] += f" {np.mean(sec):.1f} |" if sec else " - |"
    lines += ["", "Methods:"] + [f"- `{m}`: {describe(m)}" for m in methods]
    return "\n".join(lines) + "\n"


def learning_curve(rows: list[dict], methods: Sequence[str], path: Path, title: str) -> Path:
    """Dice against the number of training cases, one line per method (error bars: std over cases)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dice = _case_means(rows, "dice")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for m in methods:
        pts = sorted((s, np.mean(v), np.std(v)) for (mm, s), v in dice.items() if mm == m)
        if pts:
            xs, ys, es = zip(*pts)
            style = "--" if "oracle" in m else "-"
            ax.errorbar(xs, ys, yerr=es, label=m, linestyle=style, marker="o", capsize=3, alpha=0.85)
    ax.set_xlabel("training cases")
    ax.set_ylabel("Dice (test cases)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    with io.atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path


def timed(step: Callable[[], object], record: Path) -> float:
    """Run ``step`` and add its seconds to those kept in ``record``: a resumed step (which skips what is done)
    adds only what it still did, so the total is that of one full run."""
    t0 = time.perf_counter()
    step()
    spent = time.perf_counter() - t0
    old = 0.0
    if record.is_file():
        try:
            old = float(json.loads(record.read_text())["seconds"])
        except (OSError, ValueError, KeyError, TypeError):
            old = 0.0
    record.parent.mkdir(parents=True, exist_ok=True)
    io.write_json({"seconds": old + spent}, record)
    return old + spent


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- running it -----------------------------------------------------------------------------------------------
class Study:
    """One study folder: the plan, the test images, shared SAM predictors (one embedding cache on disk, so each
    test slice is encoded once for the whole study), and one step per model and method."""

    def __init__(self, dataset: Path, folder: Path, opts: StudyOptions, plan: dict) -> None:
        self.dataset, self.folder, self.opts, self.plan = Path(dataset), Path(folder), opts, plan
        self.info = io.load_dataset_json(self.dataset)
        self.images = self.folder / "test_images"
        self.labels = self.dataset / "labelsTr"
        self._cache = None
        self._predictors: dict = {}

    # -- shared pieces ------------------------------------------------------------------------------------
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

    def link_test_images(self) -> None:
        self.link_images(self.plan["test"], self.images)

    def predictor(self, adapter: Optional[Path] = None):
        """A caching SAM predictor (frozen, or with ``adapter``), built once per adapter."""
        from .sam import build_sam
        from .sam.cache import CachingPredictor, EmbeddingCache

        key = str(adapter) if adapter else ""
        if key not in self._predictors:
            if self._cache is None:
                self._cache = EmbeddingCache(self.folder / "embedding_cache")
            model = build_sam("litemedsam", adapter=str(adapter) if adapter else None)
            self._predictors[key] = CachingPredictor(model, device=self.opts.device, cache=self._cache,
                                                     engine=self.opts.engine)
        return self._predictors[key]

    def others(self, run: dict) -> list[str]:
        """Every case of the dataset outside the run's training subset (test cases included)."""
        return sorted(set(self.files) - set(run["cases"]))

    def score(self, method: str, run: dict, folder: Path, seconds: float) -> list[dict]:
        return score_folder(folder, self.labels, self.info, self.plan["test"], method, run,
                            seconds / max(1, len(self.plan["test"])))

    # -- models -------------------------------------------------------------------------------------------
    def train_prompter(self, run: dict) -> Path:
        """The run's prompter (trained on its subset; its own validation split is part of the subset)."""
        from .prompter.train import TrainOptions, train_prompter

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
        from .prompter import Prompter
        from .prompter.tuning import tune_prompter
        from .sam_settings import SETTINGS_FILE, read_json

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
        from .adapt.train import finetune
        from .prompter.tuning import validation_cases
        from .prompter import Prompter

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
        log(f"study {run['name']}: adapting SAM ({o.adapt}) on {_WHOSE[o.adapt_source]} cross-fitted prompts"
            + (f", without {fold['folder']}'s {len(left_out)} case(s)" if fold else ""))
        finetune(self.dataset, folder, base="litemedsam", method=o.adapt, epochs=o.adapt_epochs, val_fraction=0.0,
                 iterations_per_epoch=o.adapt_iterations, exclude=self.others(run) + held_out + left_out,
                 subject_pattern=o.subject_pattern, seed=run["seed"], device=o.device, resume=started,
                 prompts_from=prompts_from, folds=o.adapt_folds, auto_prompt=o.adapt_prompt, planes=o.adapt_planes,
                 cache_dir=self.folder / "embedding_cache")
        return folder

    def adapter_folder(self, run: dict, fold: Optional[dict] = None) -> Path:
        models = self.folder / "models" / run["name"]
        return models / "nnunet_folds" / fold["folder"] / "adapter" if fold else models / "adapter"

    def kept_adapter(self, run: dict, fold: Optional[dict] = None):
        """The config of the run's kept adapter (of ``fold``; None: none yet); one trained on other prompts or on
        another source's maps than the options ask is refused in one line, so a study never mixes adapters."""
        from .adapt.config import CONFIG_NAME, read_config

        folder = self.adapter_folder(run, fold)
        if not (folder / CONFIG_NAME).is_file():
            return None
        kept, o = read_config(folder), self.opts
        trained = ((kept.prompts_from or {}).get("prompts") or {}).get("strategy", "box")
        # an adapter of an older study trained on boxes: the option says which one a rerun expects
        if trained != o.adapt_prompt:
            raise AutosamError(f"{folder}: this adapter trained on {trained} prompts, not {o.adapt_prompt} "
                               f"(--adapt-prompt); use another study folder or give --adapt-prompt {trained}")
        source = "nnunet" if str((kept.prompts_from or {}).get("source", "")).startswith("coarse:") else "prompter"
        if source != o.adapt_source:
            raise AutosamError(f"{folder}: this adapter trained on {_WHOSE[source]} maps, not "
                               f"{_WHOSE[o.adapt_source]} (--adapt-source); use another study folder or give "
                               f"--adapt-source {source}")
        if kept.planes != o.adapt_planes:
            raise AutosamError(f"{folder}: this adapter trained on the slices of "
                               + ("all three axes; use another study folder or give --adapt-planes" if kept.planes
                                  else "one axis, not all three (--adapt-planes); use another study folder or "
                                       "drop --adapt-planes"))
        return kept

    def _folds_root(self, run: dict) -> Path:
        return self.folder / "models" / run["name"] / "nnunet_folds"

    def _held_out(self, run: dict) -> list[list[str]]:
        from .adapt.crossfit import fold_assignment

        return fold_assignment(run["cases"], self.opts.adapt_folds, run["seed"], self.opts.subject_pattern)

    def kept_folds(self, run: dict) -> Optional[list[dict]]:
        """The folds of the run's kept fold nnU-Nets (``folds.json``; None: not all made yet); folds of other cases
        or another ``--adapt-folds`` are refused in one line."""
        path = self._folds_root(run) / "predictions" / NNUNET_FOLDS
        if not path.is_file():
            return None
        try:
            folds = json.loads(path.read_text())["folds"]
            held = [sorted(f["predicted"]) for f in folds]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise AutosamError(f"{path}: cannot read the fold nnU-Nets' record ({e}); use another study folder"
                               ) from None
        if held != self._held_out(run):
            raise AutosamError(f"{path}: these {len(folds)} fold nnU-Net(s) left out other cases than "
                               f"--adapt-folds {self.opts.adapt_folds} does now; use another study folder or "
                               f"give --adapt-folds {len(folds)}")
        return folds

    def nnunet_folds(self, run: dict, index: int) -> Path:
        """nnU-Net's cross-fitted maps of the run's cases: ``--adapt-folds`` nnU-Nets (the study's schedule), each
        trained on the other folds' cases and predicting its own fold's (label maps and probabilities) into one
        folder, ``models/<run>/nnunet_folds/predictions``; which fold trained on and predicted which cases is
        recorded in ``folds.json`` there, once all are made, and kept ones are reused."""
        from .nnunet_train import predict_nnunet, train_nnunet

        o = self.opts
        root = self._folds_root(run)
        out = root / "predictions"
        if self.kept_folds(run) is not None:
            return out
        schedule = self.schedule()
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

    def _tune_cases(self, folds: list[dict]) -> list[str]:
        """The cases nnU-Net's default is tuned on: the folds' cases in turn, so that a ``--tune-cases`` limit
        takes from every fold."""
        order = [c for group in itertools.zip_longest(*(f["predicted"] for f in folds)) for c in group if c]
        return order[: self.opts.tune_cases or None]

    def kept_tuning(self, run: dict, folds: list[dict]) -> Optional[Path]:
        """The run's kept record of nnU-Net's tuned default (None: none yet); one tuned on other cases, with other
        SAMs or another object limit than the options ask is refused in one line."""
        from .sam_settings import SETTINGS_FILE

        path = self._folds_root(run) / SETTINGS_FILE
        if not path.is_file():
            return None
        try:
            tuning = json.loads(path.read_text())["tuning"]
            cases = set(tuning["validation_cases"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise AutosamError(f"{path}: cannot read this tuning record ({e}); delete it to tune again") from None
        o, want = self.opts, self._tune_cases(folds)
        adapted = o.fold_adapters()
        problem = None
        if cases != set(want):
            problem = f"was tuned on {len(cases)} case(s), not the {len(want)} that --tune-cases {o.tune_cases} gives"
        elif bool(tuning.get("fold_adapters")) != adapted:
            problem = ("compared frozen and adapted SAM, but these options adapt none" if not adapted else
                       "scored frozen SAM only, but these options adapt SAM on nnU-Net's maps")
        elif tuning.get("options", {}).get("max_objects", o.max_objects) != o.max_objects:
            problem = f"was tuned with --max-objects {tuning['options']['max_objects']}, not {o.max_objects}"
        elif tuning.get("sign_test") != o.sign_test:
            problem = self._rule_problem(tuning.get("sign_test"))
        if problem:
            raise AutosamError(f"{path}: this tuned default {problem}; delete it to tune again or use another "
                               "study folder")
        return path

    def _rule_problem(self, kept: Optional[float]) -> str:
        had = f"--sign-test {kept}" if kept is not None else "no sign test"
        return f"was chosen with {had}, not " + (f"--sign-test {self.opts.sign_test}" if self.opts.sign_test
                                                  is not None else "without one")

    def check_rule(self, path: Path) -> None:
        """Refuse, in one line, a kept tuning record chosen with another ``--sign-test`` than the options ask."""
        from .sam_settings import read_json

        try:
            kept = read_json(path).get("tuning", {}).get("sign_test")
        except (OSError, ValueError, AttributeError) as e:
            raise AutosamError(f"{path}: cannot read this tuning record ({e}); delete it to tune again") from None
        if kept != self.opts.sign_test:
            raise AutosamError(f"{path}: this tuned default {self._rule_problem(kept)}; delete it to tune again or "
                               "use another study folder")

    def check_kept(self, run: dict) -> None:
        """Refuse, in one line and before anything is written, the run's kept models made with other options: its
        adapter, the fold nnU-Nets, their adapters and nnU-Net's tuned default."""
        from .sam_settings import SETTINGS_FILE

        o = self.opts
        if o.adapts():
            self.kept_adapter(run)
        if "tuned" in o.methods:  # the prompter's tuned records, frozen and adapted
            models = self.folder / "models" / run["name"]
            for path in (models / "prompter" / SETTINGS_FILE, models / "adapter" / SETTINGS_FILE):
                if path.is_file():
                    self.check_rule(path)
        folds = self.kept_folds(run) if o.needs_nnunet_folds() else None
        if folds is None:
            return
        if o.fold_adapters():
            for fold in folds:
                self.kept_adapter(run, fold)
        if "nnunet+tuned" in o.methods:
            self.kept_tuning(run, folds)

    def tune_nnunet(self, run: dict, index: int, adapter: Optional[Path], prompter_dir: Optional[Path]) -> Path:
        """nnU-Net's SAM default, tuned as the nnU-Net trainer's validation tunes it but on the fold nnU-Nets'
        cross-fitted maps of the run's cases (at most ``--tune-cases``): with frozen SAM, and with
        :meth:`fold_adapters` the adapted SAM, each fold's cases scored with the adapter that left them out. The
        better of the two winners (each "no SAM" unless SAM gained) is recorded in ``nnunet_folds/autosam_sam.json``;
        an adapted winner names the run's adapter, trained on every case, as nnU-Net's own test predictions come
        from the model trained on every case."""
        from .sam_settings import SETTINGS_FILE, from_tuning, record
        from .tune import coarse_items, combine, tune

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
        results = [(tune(self.predictor(), list(items.values()), self.info, grid, sign_test=o.sign_test), None)]
        names: list[str] = []
        if o.fold_adapters():
            parts = []
            for fold in folds:
                cases = [c for c in chosen if c in fold["predicted"]]
                if cases:
                    fold_adapter = self.train_adapter(run, prompter_dir, index, fold)
                    log(f"study {run['name']}: tuning on {fold['folder']}'s {len(cases)} case(s), its adapter")
                    parts.append(tune(self.predictor(fold_adapter), [items[c] for c in cases], self.info, grid))
                    names.append(str(fold_adapter))
            results.append((combine(parts, sign_test=o.sign_test), adapter))
        result, chosen_adapter = max(results, key=lambda r: r[0].mean(r[0].best.name))  # ties: frozen
        compared = {}
        for r, a in results:
            entry = compared["adapted SAM (fold adapters)" if a else "frozen SAM"] = {
                "chosen": r.best.name, "chosen_mean_dice": round(r.mean(r.best.name), 5)}
            if o.sign_test is not None:  # and what the mean alone would have chosen
                mean_rule = r.mean_rule().name
                entry.update(without_sign_test=mean_rule, without_sign_test_mean_dice=round(r.mean(mean_rule), 5))
        result.base["compared"] = compared
        if names:  # whichever won, the fold adapters the adapted SAM was scored with
            result.base["fold_adapters"] = names
        result.base["options"] = {"tune_cases": o.tune_cases, "max_objects": o.max_objects}
        settings = from_tuning(result, adapter=str(chosen_adapter) if chosen_adapter and result.best.use_sam else None)
        record(settings, path.parent, by="autosam study (nnU-Net's cross-fitted maps)")
        log(f"study {run['name']}: nnU-Net's tuned default: {result.best.name}"
            + (" (adapted SAM)" if settings["adapter"] else "") + f", mean Dice {result.mean(result.best.name):.4f} "
            f"against nnU-Net alone {result.mean('no SAM'):.4f} on the folds' maps")
        return path

    def schedule(self):
        from .nnunet_train import Schedule

        o = self.opts
        kwargs = {"epochs": o.nnunet_epochs, "iterations": o.nnunet_iterations, "device": o.device}
        if o.nnunet_trainer:
            kwargs["trainer"] = o.nnunet_trainer
        if o.nnunet_configuration:
            kwargs["configuration"] = o.nnunet_configuration
        if o.nnunet_spacing:
            kwargs["spacing"] = o.nnunet_spacing
        return Schedule(**kwargs)

    def nnunet(self, run: dict, index: int) -> tuple[Path, float]:
        """nnU-Net trained on the run's subset (its own commands) and its test predictions (with probabilities)."""
        from .nnunet_train import predict_nnunet, train_nnunet

        out = self.folder / "predictions" / run["name"] / "nnunet"
        schedule = self.schedule()
        log(f"study {run['name']}: nnU-Net on {len(run['cases'])} case(s)")
        model = train_nnunet(self.dataset, run["cases"], self.folder / "nnunet", 900 + index, schedule)
        seconds = timed(lambda: predict_nnunet(model, self.images, out, schedule, save_probabilities=True),
                        self._time_file(run, "nnunet"))
        return out, seconds

    def _time_file(self, run: dict, method: str) -> Path:
        return self.folder / "predictions" / run["name"] / "seconds" / f"{method.replace('/', '@')}.json"

    # -- methods ------------------------------------------------------------------------------------------
    def predict(self, method: str, run: dict, models: dict) -> tuple[Path, float]:
        """Segment the test cases with ``method``; the folder and its seconds (all cases)."""
        from .pipelines import oracle_folder, refine_folder, segment_folder
        from .prompter import Prompter

        out = self.folder / "predictions" / run["name"] / method.replace("/", "@")
        if method == "nnunet":
            return models["nnunet"]
        base, variant = parse_method(method)
        adapter = models.get("adapter") if base.endswith("-adapted") else None
        sam = (lambda: self.predictor(adapter))
        config = self.config(variant)
        if method in ("tuned", "nnunet+tuned"):
            config, sam = self._tuned_config(models.get("tuned" if method == "tuned" else "nnunet_tuned"))
        kwargs = {"run_args": {"verb": "study", "method": method}, "quiet": True}
        if method.startswith("sam-oracle"):
            step = lambda: oracle_folder(self.images, self.labels, out, self.info, sam, run_args=kwargs["run_args"])
        elif method.startswith("nnunet+"):
            if config is None:  # "no SAM" won: nnU-Net's own predictions
                return models["nnunet"]
            step = lambda: refine_folder(self.images, models["nnunet"][0], out, self.info, sam, config, **kwargs)
        else:
            prompter = Prompter.load(models["prompter"], device=self.opts.device)
            step = lambda: segment_folder(self.images, out, prompter, self.info, sam,
                                          None if method == "prompter" else config, **kwargs)
        return out, timed(step, self._time_file(run, method))

    def config(self, variant: Optional[dict] = None):
        """The built-in default, or a method variant's fields (the object limit of the options unless the variant
        sets one)."""
        from .refine import RefineConfig

        fields = dict(variant) if variant else {}
        return RefineConfig(**{"max_objects": self.opts.max_objects, **fields})

    @staticmethod
    def _tuned_adapter(record: Path) -> bool:
        """The tuned record names an adapter (the run's, which may not be trained yet)."""
        from .sam_settings import read_json

        return bool(read_json(record).get("adapter"))

    def _tuned_config(self, record: Optional[Path]):
        """The tuned record's configuration (None: no SAM) and its predictor factory (built-in default when
        nothing could be tuned)."""
        from .refine import RefineConfig
        from .sam_settings import load_file

        if record is None:
            return self.config(), (lambda: self.predictor())
        settings = load_file(record)
        adapter = Path(settings["adapter"]) if settings.get("adapter") else None
        config = RefineConfig(**settings["refine"]) if settings.get("use_sam", True) else None
        return config, (lambda: self.predictor(adapter))

    def run(self, run: dict, index: int) -> list[dict]:
        """Train what the run's methods need, segment the test cases with each method, score them."""
        o = self.opts
        models: dict = {}
        if o.needs_prompter():
            models["prompter"] = self.train_prompter(run)
        deferred = o.defers_adapter()
        if o.adapts() and not deferred:
            models["adapter"] = self.train_adapter(run, models.get("prompter"), index)
        if "tuned" in o.methods:
            models["tuned"] = self.tune(models["prompter"], models.get("adapter"))
        if o.uses("nnunet"):
            models["nnunet"] = self.nnunet(run, index)
        if "nnunet+tuned" in o.methods:
            adapter = self.adapter_folder(run) if deferred else models.get("adapter")
            models["nnunet_tuned"] = self.tune_nnunet(run, index, adapter, models.get("prompter"))
            if deferred and self._tuned_adapter(models["nnunet_tuned"]):
                models["adapter"] = self.train_adapter(run, models.get("prompter"), index)
        rows = []
        for method in o.methods:
            # frozen SAM with label boxes does not depend on the training cases: one folder for all runs
            folder, seconds = self.predict(method, {"name": "oracle"} if method == "sam-oracle" else run, models)
            rows += self.score(method, run, folder, seconds)
        return rows


def run_study(dataset: str | Path, folder: str | Path, opts: StudyOptions, dry_run: bool = False,
              plan: Optional[dict] = None) -> dict:
    """Run (or resume, or with ``dry_run`` only plan) a study; returns the plan (with ``results``: the rows).
    ``plan``: :func:`make_plan`'s result when the caller made it already."""
    opts.check()
    dataset, folder = Path(dataset), Path(folder)
    plan = check_plan(folder, plan if plan is not None else make_plan(dataset, opts))
    info = io.load_dataset_json(dataset)
    if dry_run:
        return plan
    study = Study(dataset, folder, opts, plan)
    for run in plan["runs"]:  # kept models of other options are refused before anything is written
        study.check_kept(run)
    folder.mkdir(parents=True, exist_ok=True)
    io.write_json(plan, folder / "plan.json")
    study.link_test_images()
    rows: list[dict] = []
    for index, run in enumerate(plan["runs"]):
        rows += study.run(run, index)
        write_results(folder, rows)
    methods = [m for m in METHODS if m in opts.methods] + [m for m in opts.methods if m not in METHODS]
    with io.atomic_output(folder / "summary.md") as tmp:
        tmp.write_text(summary_markdown(rows, plan, methods))
    learning_curve(rows, methods, folder / "learning_curve.png", f"{info.raw.get('name', dataset.name)}: "
                   f"{len(plan['test'])} test cases")
    plan["results"] = rows
    return plan
