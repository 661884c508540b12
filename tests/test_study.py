"""``autosam study --quick``: every method end to end on the bundled sample, resumable, with its three outputs."""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest

from autosam.cli import main
from autosam.errors import AutosamError
from autosam.nnunet.train import Schedule
from autosam.sample import sample_dataset
from autosam.study import (DEFAULT_METHODS, METHODS, STATS_FIELDS, StudyOptions, check_plan, compare, describe,
                           hierarchical_ci, make_plan, pair, parse_method, wilcoxon_p, wins_losses_ties, write_reports)
from autosam.tune import TIE


#: the quick study's methods: the default ones without nnU-Net, whose methods the nnU-Net study below scores (one
#: nnU-Net per run is trained there, not in both)
QUICK_METHODS = tuple(m for m in DEFAULT_METHODS if not m.startswith("nnunet"))
#: the nnU-Net study's methods (and nnunet+sam-adapted on its rerun): with QUICK_METHODS, every method
NNUNET_METHODS = ("nnunet", "nnunet+sam", "nnunet+tuned", "nnunet-folds", "nnunet+prompter", "nnunet-planes")


@pytest.fixture(scope="module")
def quick_study(tmp_path_factory):
    folder = tmp_path_factory.mktemp("study") / "quick"
    assert main(["study", "--quick", "-o", str(folder), "--methods", *QUICK_METHODS, "--baseline", "prompter"]) == 0
    return folder


def test_quick_study_writes_every_method_and_its_outputs(quick_study):
    rows = list(csv.DictReader((quick_study / "results.csv").open()))
    plan = json.loads((quick_study / "plan.json").read_text())
    assert {r["method"] for r in rows} == set(QUICK_METHODS)
    assert set(QUICK_METHODS) | set(NNUNET_METHODS) | {"nnunet+sam-adapted"} == set(METHODS)  # all, in one fixture
    sizes = {int(r["train_size"]) for r in rows}
    assert sizes == {3, 4}
    for method in QUICK_METHODS:  # one row per test case, label and size
        assert len([r for r in rows if r["method"] == method]) == len(plan["test"]) * 2 * len(sizes), method
    dice = {(r["method"], r["case"], r["label"], r["train_size"]): float(r["dice"]) for r in rows}
    assert all(0.0 <= v <= 1.0 for v in dice.values())
    oracle = [v for (m, *_), v in dice.items() if m == "sam-oracle"]
    assert sum(oracle) / len(oracle) > 0.5  # SAM with label boxes works whatever was trained
    # no model saw a test case
    for run in plan["runs"]:
        assert not set(run["cases"]) & set(plan["test"])
        split = json.loads((quick_study / "models" / run["name"] / "prompter" / "splits.json").read_text())
        assert not set(split["train"] + split["val"]) & set(plan["test"])
    assert plan["runs"][0]["cases"] == sorted(set(plan["runs"][0]["cases"]) & set(plan["runs"][1]["cases"]))
    summary = (quick_study / "summary.md").read_text()
    assert all(f"| {m} |" in summary for m in QUICK_METHODS)
    assert {(r["repeat"], r["seed"]) for r in rows} == {("0", "0")}  # one repeat, seeded 0
    assert "## Against `prompter`" in summary and "95% CI" in summary and "| prompter | 1 x 1 |" in summary
    stats = list(csv.DictReader((quick_study / "stats.csv").open()))
    assert {s["method"] for s in stats} == set(QUICK_METHODS) - {"prompter"}
    assert len(stats) == 2 * (len(QUICK_METHODS) - 1)  # two sizes
    assert (quick_study / "learning_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_study_resumes_from_its_results_and_plan_alone(quick_study, tmp_path, capsys):
    """A long study split over sessions keeps results.csv and plan.json: in a new folder with just those two, less
    one method's rows of one run, the same command scores that method again and trains nothing it does not need
    (frozen SAM with label boxes needs no model), and gives the same rows."""
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "plan.json").write_bytes((quick_study / "plan.json").read_bytes())
    rows = list(csv.DictReader((quick_study / "results.csv").open()))
    dropped = [r for r in rows if not (r["method"] == "sam-oracle" and r["train_size"] == "3")]
    assert len(dropped) < len(rows)
    with open(fresh / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(dropped)
    assert main(["study", "--quick", "-o", str(fresh), "--methods", *QUICK_METHODS, "--baseline", "prompter"]) == 0
    err = capsys.readouterr().err
    assert "study n4_s0: scored already (results.csv); not run again" in err
    assert "study n3_s0: " + ", ".join(m for m in QUICK_METHODS if m != "sam-oracle") + " scored already" in err
    assert not (fresh / "models").exists()  # nothing trained
    assert {p.name for p in (fresh / "predictions").iterdir()} <= {"oracle", "n3_s0"}
    again = list(csv.DictReader((fresh / "results.csv").open()))
    strip = (lambda rs: [{k: v for k, v in r.items() if k != "seconds"} for r in rs])
    assert strip(again) == strip(rows)  # the same rows, in the same order


def test_kept_rows_need_every_test_case_of_a_method_and_the_same_options(tmp_path):
    """A method's rows are kept only when they score each test case of the run; rows of a plan made with other
    options or other training cases, or without a plan, are not kept."""
    from autosam.study.results import kept_rows, write_results
    from autosam.study.run import _reusable_results
    run = {"name": "n3_s0", "size": 3, "repeat": 0, "seed": 0, "cases": ["a", "b", "c"], "test": ["x", "y"]}
    rows = [{"method": m, "train_size": 3, "repeat": 0, "seed": 0, "case": c, "label": "1", "dice": 0.5,
             "nsd": 0.5, "hd95": 1.0, "seconds": 2.0} for m in ("prompter", "sam-oracle") for c in run["test"]]
    assert kept_rows(rows, run, ["sam-oracle", "prompter"]) == {"sam-oracle": rows[2:], "prompter": rows[:2]}
    assert kept_rows(rows[:-1], run, ["prompter", "sam-oracle"]) == {"prompter": rows[:2]}  # a test case missing
    assert kept_rows(rows, run, ["prompter", "tuned"]) == {"prompter": rows[:2]}  # tuned was never scored
    assert kept_rows(rows, {**run, "seed": 1}, ["prompter"]) == {}
    plan = {"runs": [run], "options": {"methods": ["prompter", "sam-oracle"]}}
    write_results(tmp_path, rows)
    assert _reusable_results(tmp_path, plan) == []  # no plan.json
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    assert _reusable_results(tmp_path, plan) == rows
    assert _reusable_results(tmp_path, {**plan, "options": {"methods": ["prompter"]}}) == []
    assert _reusable_results(tmp_path, {**plan, "runs": [{**run, "cases": ["a", "b", "d"]}]}) == []


def test_quick_study_rerun_resumes_without_training(quick_study, capsys):
    """A rerun trains nothing; a lever variant added on the rerun is scored from the kept models."""
    model = quick_study / "models" / "n4_s0" / "prompter" / "model.pt"
    before = model.stat().st_mtime_ns
    variant = "prompter+sam-adapted/replace+rebox"
    assert main(["study", "--quick", "-o", str(quick_study), "--methods", "prompter", variant]) == 0
    assert model.stat().st_mtime_ns == before
    out, err = capsys.readouterr()
    assert "training the prompter" not in err and "adapting SAM" not in err
    rows = list(csv.DictReader((quick_study / "results.csv").open()))
    assert {r["method"] for r in rows} == {"prompter", variant}
    assert (quick_study / "predictions" / "n4_s0" / "prompter+sam-adapted@replace+rebox").is_dir()
    assert f"| {variant} |" in out and "replace fusion, rebox" in out
    assert "`nnunet` (--baseline) was not run; the baseline here is `prompter`" in out


def test_quick_study_refuses_an_adapter_trained_on_other_prompts(quick_study, capsys):
    """The kept adapter trained on box+mask prompts; asking for box ones is one line, exit 2, the adapter kept."""
    adapter = quick_study / "models" / "n3_s0" / "adapter" / "adapter.pt"
    before = adapter.stat().st_mtime_ns
    assert main(["study", "--quick", "-o", str(quick_study), "--methods", "nnunet+sam-adapted",
                 "--adapt-prompt", "box"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "trained on box+mask prompts, not box (--adapt-prompt)" in err[-1]
    assert adapter.stat().st_mtime_ns == before


def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path, capsys):
    assert main(["study", "--quick", "-o", str(tmp_path / "s"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "run n3_s0: 3 training case(s)" in out and "estimated total" in out
    assert not (tmp_path / "s").exists()


def test_variant_levers_are_refine_fields():
    """A variant starts from box+mask prompts; ``box`` drops the mask prompt, the others add their lever."""
    assert parse_method("nnunet+sam-adapted/average+box") == (
        "nnunet+sam-adapted", {"prompt": "box", "fusion": "average"})
    assert parse_method("prompter+sam/replace+hypotheses+largest") == (
        "prompter+sam", {"prompt": "box+mask", "fusion": "replace", "box_hypotheses": True, "max_objects": 1})
    assert describe("nnunet+sam-adapted/average+box+hypotheses").endswith(
        "adapted SAM, box prompts, average fusion, hypotheses")
    assert parse_method("nnunet+sam/average+planes") == (
        "nnunet+sam", {"prompt": "box+mask", "fusion": "average", "planes": True})
    assert parse_method("nnunet") == ("nnunet", None)


@pytest.fixture(scope="module")
def nnunet_study(tmp_path_factory):
    """``autosam study --quick --repeats 2`` with nnU-Net, ``nnunet+tuned`` (an adapter learning from nnU-Net's
    cross-fitted maps), the three SAM-free controls and the convergence line; what the tests read is kept before a
    test reruns the study in the same folder (a rerun without ``--repeats 2`` works on the first repeat only).
    ``rows``: the first repeat's rows; ``all_rows``: both repeats'."""
    folder = tmp_path_factory.mktemp("nnsrc") / "tuned"
    assert main(["study", "--quick", "-o", str(folder), "--train-sizes", "4", "--adapt-source", "nnunet",
                 "--tune-cases", "2", "--methods", *NNUNET_METHODS, "--convergence", "--repeats", "2"]) == 0
    plan = json.loads((folder / "plan.json").read_text())
    run = plan["runs"][0]
    rows = list(csv.DictReader((folder / "results.csv").open()))
    return {"folder": folder, "run": run, "plan": plan, "all_rows": rows,
            "rows": [r for r in rows if r["repeat"] == "0"],
            "adapter_trained": (folder / "models" / run["name"] / "adapter" / "adapter.pt").is_file(),
            "summary": (folder / "summary.md").read_text(), "stats": list(csv.DictReader((folder / "stats.csv").open()))}


def test_quick_study_with_two_repeats_pairs_every_method_with_nnunet(nnunet_study):
    """``--repeats 2``: a new test split, training subset and seed per repeat, in results.csv's repeat and seed
    columns; summary.md and stats.csv compare every method with nnU-Net on the same (repeat, case) pairs, with a
    95% CI, wins/losses/ties and a Wilcoxon p; the three SAM-free controls are among them."""
    plan, rows = nnunet_study["plan"], nnunet_study["all_rows"]
    runs = plan["runs"]
    assert [(r["repeat"], r["seed"]) for r in runs] == [(0, 0), (1, 1)] and runs[0]["name"] != runs[1]["name"]
    assert {(r["repeat"], r["seed"]) for r in rows} == {("0", "0"), ("1", "1")}
    methods = NNUNET_METHODS
    pairs = {m: sorted((r["repeat"], r["case"]) for r in rows if r["method"] == m) for m in methods}
    for run in runs:  # every method scored every test case of every repeat, each case on its own repeat's split
        assert sorted(c for rep, c in set(pairs["nnunet"]) if rep == str(run["repeat"])) == sorted(run["test"])
    assert all(p == pairs["nnunet"] for p in pairs.values())
    n = len(set(pairs["nnunet"]))  # cases x repeats, each case's Dice its mean over labels
    stats = {s["method"]: s for s in nnunet_study["stats"]}
    assert set(stats) == set(methods) - {"nnunet"}
    for m in methods[1:]:
        s = stats[m]
        assert int(s["cases"]) == n and int(s["repeats"]) == 2
        assert float(s["ci_low"]) <= float(s["diff"]) <= float(s["ci_high"])
        assert int(s["wins"]) + int(s["losses"]) + int(s["ties"]) == n
        against = nnunet_study["summary"].split("## Against `nnunet`")[1]
        row = next(line for line in against.splitlines() if line.startswith(f"| {m} | "))
        cells = [c.strip() for c in row.strip("|").split("|")]
        per_repeat = {len(run["test"]) for run in runs}
        count = f"{per_repeat.pop()} x 2" if len(per_repeat) == 1 else f"{n} (2 repeats)"
        assert cells[1] == count and cells[4].startswith("[") and cells[5] == f"{s['wins']}/{s['losses']}/{s['ties']}"
        assert cells[6] == "n/a" or 0 <= float(cells[6]) <= 1
    assert "## Against `nnunet`" in nnunet_study["summary"] and "## baseline_convergence" in nnunet_study["summary"]


def test_quick_study_tunes_nnunets_default_on_its_cross_fitted_maps(nnunet_study, capsys):
    """``nnunet+tuned`` is nnU-Net's cross-validation, then ``autosam fit``: the default is chosen on the folds'
    maps of the training cases; the adapted SAM is scored there only through fold adapters that never trained on
    the case scored, and the choice is never below nnU-Net alone on those cases."""
    folder, run = nnunet_study["folder"], nnunet_study["run"]
    folds_dir = folder / "models" / run["name"] / "nnunet_folds"
    kept_folds = json.loads((folds_dir / "predictions" / "folds.json").read_text())
    folds, model = kept_folds["folds"], Path(kept_folds["model"])
    record = json.loads((model / "autosam_sam.json").read_text())
    tuning, fitted = record["tuning"], record["fit"]
    tuned_on = tuning["validation_cases"]
    assert record["recorded_by"].startswith("autosam fit")
    assert len(tuned_on) == 2 and set(tuned_on) <= set(run["cases"])
    assert tuning["chosen_mean_dice"] >= tuning["no_sam_mean_dice"]  # never below nnU-Net alone on validation
    # the winner is the better of frozen and adapted SAM's winners
    assert tuning["chosen_mean_dice"] == pytest.approx(
        max(fitted[k]["chosen_mean_dice"] for k in ("frozen", "adapted")), abs=1e-5)
    if record["adapter"]:  # an adapted winner is fit's final adapter, trained on every case
        assert record["adapter"] == "autosam_adapter" and (model / "autosam_adapter" / "adapter.pt").is_file()
    assert not nnunet_study["adapter_trained"]  # no other method uses a run adapter: none is trained
    # one case from each fold, each scored with its own fold's adapter, which left that fold's cases out
    adapters = fitted["adapted"]["fold_adapters"]
    assert len(adapters) == len(folds) == 2
    for i, fold in enumerate(folds):
        adapter = model / adapters[str(i)]
        assert len(set(tuned_on) & set(fold["predicted"])) == 1
        split = json.loads((adapter / "split.json").read_text())
        assert split["train"] and not set(split["train"]) & set(fold["predicted"])
        assert set(split["train"]) <= set(run["cases"])
    rows = nnunet_study["rows"]
    dice = {m: [float(r["dice"]) for r in rows if r["method"] == m] for m in ("nnunet", "nnunet+tuned")}
    assert len(dice["nnunet+tuned"]) == len(dice["nnunet"]) > 0
    if not record["use_sam"]:  # "no SAM" won: nnU-Net's own predictions
        assert dice["nnunet+tuned"] == dice["nnunet"]
    assert "| nnunet+tuned |" in nnunet_study["summary"]
    # a rerun with other options is refused, before anything is written, in one line that names the kept file
    kept = [model / "autosam_sam.json", folds_dir / "predictions" / "folds.json", folder / "results.csv"]
    before = [p.stat().st_mtime_ns for p in kept]
    args = ["study", "--quick", "-o", str(folder), "--train-sizes", "4", "--adapt-source", "nnunet",
            "--tune-cases", "2", "--methods", "nnunet", "nnunet+tuned", "nnunet-folds", "nnunet+prompter"]
    for extra, message in ((["--tune-cases", "3"], "with another max_cases (2, now 3)"),
                           (["--adapt-epochs", "2"], "trained with another adapt_epochs (1, now 2)"),
                           (["--adapt-folds", "3"], "left out other cases than --adapt-folds 3 does now")):
        assert main(args + extra) == 2, extra
        err = capsys.readouterr().err.strip().splitlines()
        assert message in err[-1] and str(folds_dir) in err[-1], (extra, err)
    assert [p.stat().st_mtime_ns for p in kept] == before


def test_quick_study_scores_the_sam_free_controls(nnunet_study):
    """``nnunet-folds`` (nnU-Net's cross-validation folds ensembled), ``nnunet+prompter`` (the two models'
    probabilities averaged, nnU-Net's weight chosen on the prompter's validation cases, never on a test case) and
    ``nnunet-planes`` (the 2d nnU-Net along each axis, the native axis's weight chosen on the fold nnU-Nets'
    cross-fitted maps of the training cases) are scored on the same test cases as nnU-Net, and compared with it in
    summary.md."""
    from autosam.study.controls import PLANE_WEIGHTS

    folder, run, rows = nnunet_study["folder"], nnunet_study["run"], nnunet_study["rows"]  # the first repeat's
    cases = {m: sorted(r["case"] for r in rows if r["method"] == m) for m in ("nnunet", "nnunet-folds",
                                                                             "nnunet+prompter", "nnunet-planes")}
    assert cases["nnunet-folds"] == cases["nnunet+prompter"] == cases["nnunet"] == sorted(run["test"] * 2)
    assert cases["nnunet-planes"] == cases["nnunet"]
    blend = json.loads((folder / "models" / run["name"] / "nnunet_prompter.json").read_text())
    assert blend["weight"] in (0.0, 0.25, 0.5, 0.75, 1.0) and set(blend["cases"]) <= set(run["cases"])
    assert not set(blend["cases"]) & set(run["test"])
    planes = json.loads((folder / "models" / run["name"] / "nnunet_planes.json").read_text())
    assert planes["weight"] in PLANE_WEIGHTS and planes["cases"] == sorted(run["cases"])
    assert set(planes["mean_dice"]) == {str(w) for w in PLANE_WEIGHTS}
    assert planes["mean_dice"][str(planes["weight"])] == max(planes["mean_dice"].values())
    if planes["weight"] == 1.0:  # nnU-Net alone along its own axis: nnU-Net's predictions
        dice = {m: [float(r["dice"]) for r in rows if r["method"] == m] for m in ("nnunet", "nnunet-planes")}
        assert dice["nnunet-planes"] == pytest.approx(dice["nnunet"], abs=1e-6)
    log = (folder / "predictions" / run["name"] / "nnunet-folds" / "nnunet_predict.log").read_text()
    assert "-f 0 1 " in log  # both folds ensembled
    for method in ("nnunet-folds", "nnunet+prompter", "nnunet-planes"):
        assert f"| {method} |" in nnunet_study["summary"]
    # the baseline's convergence: nnU-Net's fold-0 validation Dice at the schedule E and at 2E
    record = json.loads((folder / "models" / run["name"] / "convergence.json").read_text())
    assert record["epochs"] == 1 and record["dice_e"] is not None and record["dice_2e"] is not None
    assert "## baseline_convergence" in nnunet_study["summary"]
    assert f"| 4 | 0 | 1 x 3 | {record['dice_e']:.4f} | {record['dice_2e']:.4f} |" in nnunet_study["summary"]


def test_quick_study_adapts_on_nnunets_cross_fitted_maps(nnunet_study, capsys):
    """``--adapt-source nnunet``: fold nnU-Nets (nnU-Net's own commands) each predict only cases they did not train
    on, the adapter learns from those maps, and no prompter is trained; the other source is then refused. Run in
    the tuned study's folder: its fold nnU-Nets are reused, and no nnU-Net is trained again."""
    folder, run = nnunet_study["folder"], nnunet_study["run"]
    capsys.readouterr()
    # the adapted SAM with label boxes and with nnU-Net's (kept) predictions: the run's adapter is trained, no nnU-Net
    assert main(["study", "--quick", "-o", str(folder), "--train-sizes", "4", "--adapt-source", "nnunet",
                 "--methods", "sam-oracle-adapted", "nnunet+sam-adapted"]) == 0
    assert "$ nnUNetv2_train" not in capsys.readouterr().err
    models = folder / "models" / run["name"]
    record = json.loads((models / "nnunet_folds" / "predictions" / "folds.json").read_text())
    assert len(record["folds"]) == 2
    predicted = []
    for fold in record["folds"]:
        assert not set(fold["trained_on"]) & set(fold["predicted"])
        assert sorted(fold["trained_on"] + fold["predicted"]) == sorted(run["cases"])
        # nnU-Net's own record of the fold: its cross-validation validates it on the cases it predicted
        schedule = json.loads((Path(record["model"]) / fold["folder"] / "autosam_schedule.json").read_text())
        assert schedule["val"] == fold["predicted"] and schedule["cases"] == sorted(run["cases"])
        predicted += fold["predicted"]
    assert sorted(predicted) == sorted(run["cases"])
    prompts = json.loads((models / "adapter" / "prompts_from.json").read_text())
    assert prompts["source"] == f"coarse:{models / 'nnunet_folds' / 'predictions'}"
    assert set(prompts["cases"]) <= set(run["cases"]) and prompts["cases"]
    # (the study folder's prompter is nnunet+prompter's, of the fixture; the adapter's prompts are nnU-Net's)
    rows = list(csv.DictReader((folder / "results.csv").open()))
    assert {r["method"] for r in rows} == {"sam-oracle-adapted", "nnunet+sam-adapted"}
    oracle = [float(r["dice"]) for r in rows if r["method"] == "sam-oracle-adapted"]
    assert sum(oracle) / len(oracle) > 0.5  # the adapter still segments with good boxes
    adapter = models / "adapter" / "adapter.pt"
    before = adapter.stat().st_mtime_ns
    assert main(["study", "--quick", "-o", str(folder), "--train-sizes", "4", "--methods", "sam-oracle-adapted"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "trained on nnU-Net's maps, not the prompter's (--adapt-source)" in err[-1]
    assert main(["study", "--quick", "-o", str(folder), "--train-sizes", "4", "--adapt-source", "nnunet",
                 "--adapt-planes", "--methods", "sam-oracle-adapted"]) == 2  # a one-axis adapter: refused too
    err = capsys.readouterr().err.strip().splitlines()
    assert "one axis, not all three (--adapt-planes)" in err[-1]
    assert adapter.stat().st_mtime_ns == before


def test_a_study_resumes_from_another_spelling_of_its_dataset_only(tmp_path):
    """The plan's dataset may be spelt relative to another working directory; another dataset is refused."""
    from autosam.errors import AutosamError
    from autosam.study import check_plan

    (tmp_path / "a" / "Dataset1").mkdir(parents=True)
    (tmp_path / "b" / "Dataset1").mkdir(parents=True)
    study = tmp_path / "study"
    study.mkdir()
    old = {"dataset": "../shared/elsewhere/Dataset1", "test": ["c1"], "runs": []}
    (study / "plan.json").write_text(json.dumps(old))
    same = {**old, "dataset": str(tmp_path / "a" / "Dataset1")}
    assert check_plan(study, same) is same  # not found from here: the same folder name
    (study / "plan.json").write_text(json.dumps(same))
    assert check_plan(study, {**same, "dataset": str(tmp_path / "a" / "." / "Dataset1")})
    with pytest.raises(AutosamError, match="study of another dataset"):
        check_plan(study, {**same, "dataset": str(tmp_path / "b" / "Dataset1")})
    with pytest.raises(AutosamError, match="study of other test cases"):
        check_plan(study, {**same, "test": ["c2"]})


# --- repeats and paired statistics (fast: no SAM, no nnU-Net) ----------------------------------------------------


def _scores(shift: float, repeats: int = 3, cases: int = 15, seed: int = 0) -> tuple[dict, dict]:
    """A baseline with a wide spread between cases, and a method ``shift`` better on every case (small noise)."""
    rng = np.random.default_rng(seed)
    base = {(r, f"c{r}_{i}"): rng.uniform(0.4, 0.95) for r in range(repeats) for i in range(cases)}
    return {k: v + shift + rng.normal(0, 0.005) for k, v in base.items()}, base


def test_paired_bootstrap_ci_holds_a_known_shift_and_pairs_by_key():
    """A +0.03 shift: the CI holds it and excludes 0, and is as narrow as pairing makes it (unpaired, the cases'
    spread would make it several times wider); pairs follow the keys, not the order they were given in."""
    values, base = _scores(0.03)
    shuffled = dict(reversed(list(base.items())))
    s = compare(values, shuffled)
    assert s["ci_low"] < 0.03 < s["ci_high"] and s["ci_low"] > 0
    assert s["ci_high"] - s["ci_low"] < 0.01  # unpaired (or paired by position): about 0.1 wide
    assert s["cases"] == 45 and s["repeats"] == 3 and s["wins"] == 45 and s["p"] < 1e-6
    assert compare(values, base) == s  # a fixed seed: the same interval again
    # the bootstrap resamples repeats, then cases: repeats that disagree widen the interval
    assert hierarchical_ci([np.zeros(10), np.ones(10)]) == (0.0, 1.0)
    assert hierarchical_ci([np.full(10, 0.5), np.full(10, 0.5)]) == (0.5, 0.5)


def test_pairing_refuses_unequal_case_sets():
    """Unequal (repeat, case) sets are never compared: one line, whichever key is missing."""
    values, base = _scores(0.03)
    for a, b in (({k: v for k, v in values.items() if k != (0, "c0_0")}, base),
                 (values, {(9 if k == (1, "c1_0") else k[0], k[1]): v for k, v in base.items()})):
        with pytest.raises(AutosamError, match=r"cannot pair .* in only one of them") as e:
            compare(a, b)
        assert "\n" not in str(e.value)
        with pytest.raises(AutosamError):
            pair(b, a)


def test_wins_losses_ties_and_wilcoxon():
    assert wins_losses_ties([0.002, -0.002, 0.001, -0.001, 0.0, 0.0011]) == (2, 1, 3)  # ties: |diff| <= TIE
    assert TIE == 0.001
    assert wilcoxon_p([0.0] * 5) == 1.0  # every difference zero: n/a in summary.md
    assert wilcoxon_p([0.01 * (i + 1) for i in range(10)]) == pytest.approx(2 / 2 ** 10)  # exact, two-sided
    assert 0.5 < wilcoxon_p([0.01, -0.02, 0.03, -0.04, 0.05, -0.06]) <= 1.0


def test_plan_repeats_draw_new_splits_subsets_and_seeds(tmp_path):
    """Each repeat draws its own test split (unless --test-cases), training subsets and seeds (nnU-Net's too);
    one repeat is the plan of a study made before repeats (names, cases, seeds, nnU-Net seed 1)."""
    dataset = sample_dataset("hippocampus")
    plan = make_plan(dataset, StudyOptions(train_sizes=["2", "3"], test_fraction=0.4, repeats=3))
    runs = plan["runs"]
    assert [r["name"] for r in runs] == ["n2_s0", "n3_s0", "n2_s1", "n3_s1", "n2_s2", "n3_s2"]
    assert [r["seed"] for r in runs] == [r["repeat"] for r in runs] == [0, 0, 1, 1, 2, 2]
    assert plan["test"] == runs[0]["test"] and len({tuple(r["test"]) for r in runs}) == 3
    assert len({tuple(r["cases"]) for r in runs if r["size"] == 3}) == 3
    for r in runs:
        assert not set(r["cases"]) & set(r["test"])
    opts = StudyOptions()
    assert [opts.schedule(r["seed"]).seed for r in runs[::2]] == [1, 2, 3] and Schedule().seed == 1
    fixed = make_plan(dataset, StudyOptions(train_sizes=["3"], test_cases=["hippocampus_221"], repeats=3))
    assert {tuple(r["test"]) for r in fixed["runs"]} == {("hippocampus_221",)}
    assert len({tuple(r["cases"]) for r in fixed["runs"]}) > 1
    one = make_plan(dataset, StudyOptions(train_sizes=["2", "3"], test_fraction=0.4))
    assert one["runs"] == runs[:2] and one["test"] == plan["test"]


def test_a_study_made_with_several_seeds_is_refused(tmp_path):
    """A study of the older --seeds layout (one test split, one nnU-Net seed) is refused in one line; a kept
    repeat whose test cases differ is refused too."""
    plan = make_plan(sample_dataset("hippocampus"), StudyOptions(train_sizes=["2"], repeats=2))
    (tmp_path / "plan.json").write_text(json.dumps({**plan, "runs": [
        {k: v for k, v in r.items() if k not in ("repeat", "test")} for r in plan["runs"]]}))
    with pytest.raises(AutosamError, match="made with --seeds before --repeats"):
        check_plan(tmp_path, plan)
    (tmp_path / "plan.json").write_text(json.dumps({**plan, "runs": [plan["runs"][0], {**plan["runs"][1],
                                                                                       "test": ["x"]}]}))
    with pytest.raises(AutosamError, match=r"other test cases \(repeat 1\)"):
        check_plan(tmp_path, plan)
    assert check_plan(tmp_path, {**plan, "runs": plan["runs"][:1]})["runs"] == plan["runs"][:1]


def _rows(methods: dict, repeats: int = 2, cases: int = 6) -> list[dict]:
    rng = np.random.default_rng(1)
    rows = []
    for r in range(repeats):
        for i in range(cases):
            base = rng.uniform(0.5, 0.9)
            for m, shift in methods.items():
                rows += [{"method": m, "train_size": 4, "repeat": r, "seed": r, "case": f"c{r}{i}", "label": label,
                          "dice": base + shift, "nsd": 0.5, "hd95": 2.0, "seconds": 1.0} for label in ("a", "b")]
    return rows


def test_summary_and_stats_csv_compare_every_method_with_the_baseline(tmp_path):
    tests = [[f"c{r}{i}" for i in range(6)] for r in range(2)]
    plan = {"dataset": "D", "test": tests[0], "runs": [{"repeat": r, "test": tests[r]} for r in range(2)]}
    rows = _rows({"prompter": -0.05, "nnunet": 0.0, "nnunet+tuned": 0.0})
    rows = [r for r in rows if not (r["method"] == "prompter" and r["case"] == "c15")]  # pairs: shared keys only
    write_reports(tmp_path, rows, plan, ["prompter", "nnunet", "nnunet+tuned"], "nnunet", "t")
    summary = (tmp_path / "summary.md").read_text()
    assert "6 test cases x 2 repeats (a new split in each)" in summary and "## Against `nnunet`" in summary
    assert "| prompter | 11 (2 repeats) | " in summary and "| -0.050 | [-0.050, -0.050] | 0/11/0 |" in summary
    assert "| nnunet+tuned | 6 x 2 | " in summary and "| 0/0/12 | n/a |" in summary
    stats = list(csv.DictReader((tmp_path / "stats.csv").open()))
    assert tuple(stats[0]) == STATS_FIELDS and [s["method"] for s in stats] == ["prompter", "nnunet+tuned"]
    assert stats[0]["cases"] == "11" and float(stats[0]["diff"]) == pytest.approx(-0.05) and stats[1]["p"] == "1"
    assert (tmp_path / "learning_curve.png").read_bytes()[:4] == b"\x89PNG"
    write_reports(tmp_path, [r for r in rows if r["method"] != "nnunet"], plan, ["prompter", "nnunet+tuned"],
                  "nnunet", "t")  # the baseline was not run: the first method run, said so
    summary = (tmp_path / "summary.md").read_text()
    assert "`nnunet` (--baseline) was not run; the baseline here is `prompter`" in summary
    assert "## Against `prompter`" in summary


def test_dry_run_with_repeats_and_the_older_seeds_name(tmp_path, capsys):
    for option in ("--repeats", "--seeds"):
        assert main(["study", "--quick", "-o", str(tmp_path / "s"), "--dry-run", option, "2"]) == 0
        out = capsys.readouterr().out
        assert "run n4_s1: 4 training case(s), repeat 1's own 1 test case(s)" in out
    assert not (tmp_path / "s").exists()


# --- nnunet-planes: the 2d nnU-Net along each axis (fast: a fake predictor, tiny volumes) -----------------------


def _one_hot(label: np.ndarray, channels: int = 3) -> np.ndarray:
    return np.stack([(label == k) for k in range(channels)]).astype(np.float32)


def _volume(folder: Path, name: str, array: np.ndarray, spacing=(3.0, 2.0, 1.0)) -> Path:
    """``array`` (Z, Y, X) as a NIfTI file (spacing in Z, Y, X order, as nnU-Net reads it back)."""
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(array)
    image.SetSpacing(tuple(reversed(spacing)))
    folder.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(folder / name))
    return folder / name


def _label(shift: int = 0) -> np.ndarray:
    label = np.zeros((4, 5, 6), np.int16)
    label[1:3, 1:4, 1 + shift:3 + shift] = 1
    label[:, 4, 4:] = 2
    return label


def test_nnunet_planes_transposes_each_axis_first_and_back():
    """Each other axis is sliced first with its spacing, the probabilities come back in the case's geometry, and
    the native axis alone (w = 1) is the native prediction exactly."""
    from autosam import io
    from autosam.nnunet.planes import ORDERS, average, other_axes, restore, transpose_case

    image = np.random.default_rng(0).normal(size=(1, 4, 5, 6)).astype(np.float32)
    case = io.Case("c", image, {"spacing": [3.0, 2.0, 1.0]}, [])
    seen = []

    def predict(c: io.Case) -> np.ndarray:  # a pointwise "network": the geometry must come back as it went
        seen.append((c.image.shape, list(c.properties["spacing"])))
        return np.concatenate([c.image, 2 * c.image])

    others = other_axes(predict, case)
    assert seen == [((1, 5, 4, 6), [2.0, 3.0, 1.0]), ((1, 6, 4, 5), [1.0, 3.0, 2.0])]
    native = predict(case)
    for probabilities in others:
        assert np.array_equal(probabilities, native)
    assert case.image.shape == (1, 4, 5, 6) and case.properties["spacing"] == [3.0, 2.0, 1.0]  # left unchanged
    for order in ORDERS:
        assert np.array_equal(restore(transpose_case(case, order).image, order), image)
    shifted = [native + 1, native + 2]
    assert average(native, shifted, 1.0) is native
    assert np.allclose(average(native, shifted, 0.5), native + 0.75)
    assert np.allclose(average(native, shifted, 1 / 3), native + 1)


def test_control_weights_pick_the_best_mean_and_the_larger_weight_on_ties():
    from autosam.study.controls import PLANE_WEIGHTS, choose

    assert PLANE_WEIGHTS == (1.0, 0.75, 0.5, 1 / 3)
    best, means = choose({1.0: [0.5, 0.75], 0.75: [0.75, 0.5], 0.5: [0.25, 0.75], 1 / 3: [0.5, float("nan")]})
    assert best == 1.0 and means == {"1.0": 0.625, "0.75": 0.625, "0.5": 0.5, "0.3333333333333333": 0.5}
    assert choose({1.0: [0.5], 0.75: [0.5], 0.5: [0.75], 1 / 3: [0.75]})[0] == 0.5
    assert choose({1.0: [0.5], 0.75: [0.25], 0.5: [0.25], 1 / 3: [0.75]})[0] == 1 / 3


def test_nnunet_planes_weight_is_chosen_on_each_folds_own_cases(tmp_path, monkeypatch):
    """Each fold model predicts only the cases it left out, along the two other axes; the native axis is that
    fold's validation map. Bad native maps (all background) and right other axes: 1/3 wins (at 0.5 the tie goes
    to the background)."""
    from autosam import io
    from autosam.nnunet.folds import CrossValidation
    from autosam.study import controls

    info = io.load_dataset_json(sample_dataset("hippocampus"))
    maps, images, labels = {}, {}, {}
    for i, case in enumerate(("a", "b")):
        label = _label(i)
        images[case] = [_volume(tmp_path / "images", f"{case}_0000.nii.gz", label.astype(np.float32))]
        labels[case] = _volume(tmp_path / "labels", f"{case}.nii.gz", label)
        seg = _volume(tmp_path / f"fold_{i}", f"{case}.nii.gz", np.zeros_like(label))
        np.savez(tmp_path / f"fold_{i}" / f"{case}.npz", probabilities=_one_hot(np.zeros_like(label)))
        maps[case] = (seg, tmp_path / f"fold_{i}" / f"{case}.npz")
    cv = CrossValidation(tmp_path, info, tmp_path, {"0": ["a"], "1": ["b"]}, maps, images, labels)
    seen = []
    monkeypatch.setattr(controls, "load_nnunet_predictor", lambda model, folds, device: folds[0])
    monkeypatch.setattr(controls, "model_reader_writer", lambda predictor: io.reader_writer(".nii.gz"))
    monkeypatch.setattr(controls, "nnunet_probabilities", lambda fold: lambda c: seen.append(
        (fold, c.case_id)) or _one_hot(np.rint(c.image[0])))  # the image is the label: a perfect fake
    weight, means = controls.planes_weight(cv, "cpu")
    assert sorted(seen) == [("0", "a"), ("0", "a"), ("1", "b"), ("1", "b")]
    assert weight == 1 / 3 and means == {"1.0": 0.0, "0.75": 0.0, "0.5": 0.0, "0.3333333333333333": 1.0}


def test_nnunet_planes_folder_keeps_written_cases_and_is_nnunet_at_weight_one(tmp_path, monkeypatch):
    from autosam import io
    from autosam.study import controls

    info = io.load_dataset_json(sample_dataset("hippocampus"))
    for i, case in enumerate(("a", "b")):
        _volume(tmp_path / "images", f"{case}_0000.nii.gz", _label(i).astype(np.float32))
        _volume(tmp_path / "nnunet", f"{case}.nii.gz", _label(1 - i))
        np.savez(tmp_path / "nnunet" / f"{case}.npz", probabilities=_one_hot(_label(1 - i)))
    asked = []
    monkeypatch.setattr(controls, "load_nnunet_predictor", lambda model, folds, device: asked.append(folds) or "p")
    out = controls.planes_folder(tmp_path / "images", tmp_path / "nnunet", tmp_path, "all", tmp_path / "w1", 1.0,
                                 info, "cpu")
    assert asked == []  # nnU-Net alone: no other axis is predicted
    for i, case in enumerate(("a", "b")):
        assert np.array_equal(io.read_label(out / f"{case}.nii.gz")[0], _label(1 - i))
    monkeypatch.setattr(controls, "model_reader_writer", lambda predictor: io.reader_writer(".nii.gz"))
    monkeypatch.setattr(controls, "nnunet_probabilities", lambda p: lambda c: asked.append(c.case_id) or _one_hot(
        np.rint(c.image[0])))
    kept = _volume(tmp_path / "third", "a.nii.gz", np.zeros((4, 5, 6), np.int16))
    before = kept.stat().st_mtime_ns
    out = controls.planes_folder(tmp_path / "images", tmp_path / "nnunet", tmp_path, "all", tmp_path / "third", 1 / 3,
                                 info, "cpu")
    assert asked == [["all"], "b", "b"] and kept.stat().st_mtime_ns == before  # a written case is kept
    assert np.array_equal(io.read_label(out / "b.nii.gz")[0], _label(1))  # two right axes outvote the native one


def test_nnunet_planes_is_refused_on_2d_images_and_without_the_2d_nnunet(tmp_path, capsys):
    hc18, hippocampus = sample_dataset("hc18"), sample_dataset("hippocampus")
    opts = StudyOptions(methods=["nnunet", "nnunet-planes"], nnunet_configuration="2d")
    opts.check(hippocampus)
    with pytest.raises(AutosamError, match="holds 2D images .* drop nnunet-planes"):
        opts.check(hc18)
    with pytest.raises(AutosamError, match="not 3d_fullres; give --nnunet-configuration 2d"):
        StudyOptions(methods=["nnunet-planes"]).check(hippocampus)
    assert main(["study", "-d", str(hc18), "-o", str(tmp_path / "s"), "--methods", "nnunet-planes",
                 "--nnunet-configuration", "2d", "--dry-run"]) == 2
    assert "holds 2D images (one slice per case)" in capsys.readouterr().err.strip().splitlines()[-1]
    assert main(["study", "--quick", "-o", str(tmp_path / "s"), "--dry-run", "--methods", "nnunet",
                 "nnunet-planes"]) == 0  # the quick preset's 2d nnU-Net on the sample's volumes
    out = capsys.readouterr().out
    assert "nnunet-planes (nnU-Net along two more axes)" in out and "nnU-Net folds" in out
    assert not (tmp_path / "s").exists()


def test_keep_study_keeps_what_the_run_in_progress_needs_and_restores_it(tmp_path):
    """scripts/keep_study.py: the run still scoring keeps its prompter, nnU-Net's finished folds (checkpoints
    without the optimizer), maps and links; a finished run keeps only its records; a fold still training is left
    out; restore fills a folder without a plan and nothing else."""
    import importlib.util

    import torch

    from autosam.study.results import write_results
    spec = importlib.util.spec_from_file_location("keep_study", Path(__file__).parents[1] / "scripts" / "keep_study.py")
    keep = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(keep)
    study = tmp_path / "study"
    runs = [{"name": f"n3_s{i}", "size": 3, "repeat": i, "seed": i, "cases": ["a", "b", "c"], "test": ["x"]}
            for i in range(2)]
    methods = ["nnunet", "nnunet+tuned"]
    (study / "models").mkdir(parents=True)
    (study / "plan.json").write_text(json.dumps({"runs": runs, "options": {"methods": methods}}))
    write_results(study, [{"method": m, "train_size": 3, "repeat": 0, "seed": 0, "case": "x", "label": "1",
                           "dice": 0.5, "nsd": 0.5, "hd95": 1.0, "seconds": 1.0} for m in methods]
                  + [{"method": "nnunet", "train_size": 3, "repeat": 1, "seed": 1, "case": "x", "label": "1",
                      "dice": 0.5, "nsd": 0.5, "hd95": 1.0, "seconds": 1.0}])
    for index, run in enumerate(runs):
        models = study / "models" / run["name"]
        (models / "prompter").mkdir(parents=True)
        for name in ("model.pt", "config.json", "checkpoint.pt"):
            (models / "prompter" / name).write_text("x")
        (models / "convergence.json").write_text("{}")
        model = study / "nnunet" / "nnUNet_results" / f"Dataset{900 + index}_AutosamSubset" / "T__P__2d"
        for fold, schedule in (("fold_all", {"train_s": 1.0}), ("fold_0", {})):
            (model / fold / "validation").mkdir(parents=True)
            (model / fold / "autosam_schedule.json").write_text(json.dumps(schedule))
            (model / fold / "validation" / "x.nii.gz").write_text("x")
            torch.save({"network_weights": {"w": torch.ones(2)}, "optimizer_state": {"big": torch.ones(9)}},
                       model / fold / "checkpoint_final.pth")
        (model / "plans.json").write_text("{}")
        for fold, epoch in (("0", 3), ("1", 2)):  # fit's fold adapters: one finished, one still training
            adapter = model / "autosam_fit" / "adapters" / f"fold_{fold}"
            adapter.mkdir(parents=True)
            (adapter / "autosam_fit.json").write_text("{}")
            (adapter / "adapter_config.json").write_text(json.dumps({"epoch": epoch, "epochs": 3}))
            for name in ("adapter.pt", "train_state.pt"):
                (adapter / name).write_text("x")
            os.utime(adapter / "adapter.pt", ns=(10**18, 10**18))  # fit's kept scores name this time
        own = models / "adapter"  # the study's own adapter, finished
        own.mkdir()
        (own / "adapter_config.json").write_text(json.dumps({"epoch": 3, "epochs": 3}))
        (own / "train_state.pt").write_text("x")
        maps = models / "nnunet_folds" / "predictions"
        maps.mkdir(parents=True)
        tuned = study / "predictions" / run["name"] / "nnunet+tuned"  # SAM's cases so far: one finished, one not
        tuned.mkdir(parents=True)
        for name in ("x.nii.gz", "autosam_run.json", ".autosam.lock", ".tmp7_y.nii.gz"):
            (tuned / name).write_text("x")
        (maps / "folds.json").write_text(json.dumps({"model": str(model)}))
        (maps / "x.nii.gz").symlink_to(model / "fold_all" / "validation" / "x.nii.gz")
    kept = tmp_path / "kept"
    keep.save(study, kept)
    assert sorted(p.name for p in (kept / "models" / "n3_s0").iterdir()) == ["convergence.json"]  # scored
    busy = kept / "models" / "n3_s1"
    assert sorted(p.name for p in (busy / "prompter").iterdir()) == ["config.json", "model.pt"]
    assert sorted(p.name for p in (busy / "adapter").iterdir()) == ["adapter_config.json"]
    model = kept / "nnunet" / "nnUNet_results" / "Dataset901_AutosamSubset" / "T__P__2d"
    state = torch.load(model / "fold_all" / "checkpoint_final.pth", weights_only=False)
    assert list(state) == ["network_weights"] and torch.equal(state["network_weights"]["w"], torch.ones(2))
    assert not (model / "fold_0").exists()  # still training when kept
    adapters = model / "autosam_fit" / "adapters"
    assert sorted(p.name for p in adapters.iterdir()) == ["fold_0"]  # fold 1's adapter is still training
    assert sorted(p.name for p in (adapters / "fold_0").iterdir()) == ["adapter.pt", "adapter_config.json",
                                                                       "autosam_fit.json"]
    assert not (kept / "nnunet" / "nnUNet_results" / "Dataset900_AutosamSubset").exists()
    assert sorted(p.name for p in (kept / "predictions" / "n3_s1" / "nnunet+tuned").iterdir()) == [
        "autosam_run.json", "x.nii.gz"]
    assert not (kept / "predictions" / "n3_s0").exists()
    link = busy / "nnunet_folds" / "predictions" / "x.nii.gz"
    assert link.is_symlink() and Path(link.readlink()).is_relative_to(study)
    keep.save(study, kept)  # again: the same, the unchanged checkpoint reused
    assert torch.load(model / "fold_all" / "checkpoint_final.pth", weights_only=False).keys() == state.keys()
    assert not keep.restore(study, kept)  # the study has its plan: nothing is copied
    fresh = tmp_path / "fresh"
    os.utime(adapters / "fold_0" / "adapter.pt")  # a checkout of kept/ does not keep modification times
    assert keep.restore(fresh, kept)
    assert (fresh / "results.csv").read_bytes() == (study / "results.csv").read_bytes()
    assert (fresh / "models" / "n3_s1" / "prompter" / "model.pt").is_file()
    moved = fresh / "models" / "n3_s1" / "nnunet_folds" / "predictions" / "x.nii.gz"
    assert Path(moved.readlink()).is_relative_to(fresh) and moved.resolve().is_file()  # into the new folder
    assert not (fresh / "study_path.txt").exists() and not (fresh / "mtimes.json").exists()
    weights = fresh / "nnunet" / "nnUNet_results" / "Dataset901_AutosamSubset" / "T__P__2d" / "autosam_fit" / \
        "adapters" / "fold_0" / "adapter.pt"
    assert weights.stat().st_mtime_ns == 10**18
    record = json.loads((fresh / "models" / "n3_s1" / "nnunet_folds" / "predictions" / "folds.json").read_text())
    assert Path(record["model"]).is_relative_to(fresh)
