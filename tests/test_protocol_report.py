"""scripts/protocol_report.py: the protocol's statistics from results.csv, the best control and the verdict."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from autosam.errors import AutosamError
from autosam.study.results import write_results
from autosam.study.stats import crossed_ci

spec = importlib.util.spec_from_file_location("protocol_report",
                                              Path(__file__).parents[1] / "scripts" / "protocol_report.py")
report = importlib.util.module_from_spec(spec)
spec.loader.exec_module(report)


def _rows(means: dict, repeats=3, cases=12, noise=0.01, seed=0) -> list[dict]:
    """Two labels per case; each method's case Dice is its mean plus a case effect shared by every method and
    small method noise."""
    rng = np.random.default_rng(seed)
    case_effect = rng.normal(0, 0.05, cases)
    rows = []
    for method, mean in means.items():
        for r in range(repeats):
            for c in range(cases):
                v = mean + case_effect[c] + rng.normal(0, noise)
                rows += [{"method": method, "train_size": 10, "repeat": r, "seed": r, "case": f"c{c:02d}",
                          "label": label, "dice": v + e, "nsd": v, "hd95": 1.0, "seconds": 1.0}
                         for label, e in (("Anterior", 0.01), ("Posterior", -0.01))]
    return rows


def test_crossed_ci_draws_one_case_sample_for_every_drawn_repeat():
    same = np.tile(np.arange(10.0), (3, 1))  # every repeat identical: only the case draw matters
    low, high = crossed_ci(same, 2000, 0)
    assert low < 4.5 < high and (low, high) == crossed_ci(same, 2000, 0)
    assert crossed_ci(np.full((3, 5), 0.25)) == (0.25, 0.25)
    assert crossed_ci(np.array([[0.0] * 4, [1.0] * 4])) == (0.0, 1.0)  # repeats that disagree
    with pytest.raises(AutosamError):
        crossed_ci(np.array([[0.1, np.nan]]))


def test_report_picks_the_best_control_and_reads_the_verdict_against_it(tmp_path, capsys):
    rows = _rows({"nnunet+tuned": 0.83, "nnunet": 0.80, "nnunet-folds": 0.83, "nnunet+prompter": 0.81})
    write_results(tmp_path, rows)
    assert report.main([str(tmp_path / "results.csv"), "-o", str(tmp_path / "report.md")]) == 0
    text = capsys.readouterr().out
    assert text.rstrip() == (tmp_path / "report.md").read_text().rstrip()
    assert "3 repeat(s) x 12 test cases" in text and "not in the run: nnunet-planes" in text
    assert "**Best control: `nnunet-folds`**" in text and "**Verdict: SAM ties (the interval holds 0)**" in text
    nnunet = next(line for line in text.splitlines() if line.startswith("| nnunet |"))
    wins, losses, ties = map(int, nnunet.split(" | ")[6].split("/"))
    assert nnunet.endswith("| pays |") and wins + losses + ties == 36 and wins >= 30
    assert "): d = +0.0296, met (changes nothing above)." in text  # the +2-point target against nnunet


def test_report_verdicts_and_the_extra_comparison(tmp_path, capsys):
    write_results(tmp_path, _rows({"nnunet+tuned": 0.78, "nnunet": 0.80, "tuned": 0.90, "prompter": 0.85}))
    assert report.main([str(tmp_path), "--also", "tuned:prompter"]) == 0
    text = capsys.readouterr().out
    assert "**Verdict: SAM loses**" in text and "missed" in text
    assert "`tuned` against `prompter`" in text and text.rstrip().count("| pays |") == 1


def test_report_refuses_an_unfinished_run_in_one_line(tmp_path, capsys):
    rows = [r for r in _rows({"nnunet+tuned": 0.8, "nnunet": 0.8}) if not (r["method"] == "nnunet" and
                                                                            r["repeat"] == 2 and r["case"] == "c03")]
    write_results(tmp_path, rows)
    assert report.main([str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: nnunet: no score for repeat 2, case c03 (1 missing); the run has not finished"
    assert report.main([str(tmp_path / "nowhere")]) == 2
    assert capsys.readouterr().err.strip().endswith("nowhere: no study results.csv there")
