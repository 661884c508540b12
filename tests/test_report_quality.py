"""The report of a prediction folder with a ``quality.csv``: cases worst predicted first, flags and the controls to
step through them, predicted against true Dice with a reference, one warning line for a table that does not fit,
the folder left untouched, and the flagged-first order as headless Chromium renders it."""
from __future__ import annotations

import csv
import math
import re
import shutil
import subprocess

import pytest

from autosam import cli, report
from autosam.qc import SIGNALS, TABLE_FILE, write_case_rows, write_quality_csv
from autosam.qc.table import COLUMNS
import test_report
from test_report import HIPPO_WORST, _chromium, open_images, parse

hippo = test_report.hippo  # the report tests' prediction folder of known quality (a module fixture)

#: predicted Dice per case (labels 1 and 2 alike) and the flagged cases of the hand-written table
PREDICTED = {"hippocampus_148": 0.95, "hippocampus_149": 0.7, HIPPO_WORST: 0.1, "hippocampus_221": 0.6,
             "hippocampus_319": 0.3, "hippocampus_320": 0.9}
FLAGGED = {HIPPO_WORST, "hippocampus_319"}
ORDER = [HIPPO_WORST, "hippocampus_319", "hippocampus_221", "hippocampus_149", "hippocampus_320", "hippocampus_148"]


def write_table(path, predicted=PREDICTED, calibrated=1, labels=(1, 2), flagged=FLAGGED):
    """A ``quality.csv`` with the qc table's columns (signals 0)."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(COLUMNS)
        for case in sorted(predicted):
            for label in labels:
                row = {"case": case, "label": label, "predicted_dice": predicted[case], "calibrated": calibrated,
                       "flag": int(case in flagged), **{s: 0 for s in SIGNALS}}
                w.writerow([row[c] for c in COLUMNS])


def case(case_id, predicted=None, flags=(), true=None):
    q = None
    if predicted is not None:
        q = report.CaseQuality({1: predicted, 2: predicted}, {1: 1 in flags, 2: 2 in flags}, True)
    metrics = {1: {"Dice": true, "NSD": true}, 2: {"Dice": true, "NSD": true}} if true is not None else None
    return report.CaseReport(case_id, b"", [], metrics=metrics, quality=q)


def test_order_flags_and_agreement():
    cases = [case("a", 0.9), case("b", 0.2, flags=(2,)), case("c"), case("d", 0.2), case("e", math.nan)]
    ordered = report.sort_predicted_worst_first(cases)
    assert [c.case_id for c in ordered] == ["b", "d", "a", "c", "e"]  # flagged first at equal scores; none last
    assert report.flagged(ordered) == ["b"]
    scored = [case("a", 0.9, true=0.95), case("b", 0.5, true=0.4), case("c", 0.1, true=0.0), case("d", 0.7),
              case("e", math.nan, true=0.5)]
    pairs = report.quality_pairs(scored)
    assert [(p[0], p[1]) for p in pairs] == [("a", 1), ("a", 2), ("b", 1), ("b", 2), ("c", 1), ("c", 2)]
    a = report.agreement(pairs)
    assert a["n"] == 6 and a["rho"] == pytest.approx(1.0) and a["mae"] == pytest.approx(0.25 / 3)
    assert math.isnan(report.agreement(pairs[:2])["rho"]) and math.isnan(report.agreement([])["mae"])


def test_load_quality_reads_the_qc_table_and_refuses_others_in_one_line(tmp_path):
    cases = ["c1", "c2", "c3"]
    for i, c in enumerate(cases):
        signals = [{s: 0.0 if s in ("entropy_band", "uncertain_share") else 0.3 * i + 0.1 * v for s in SIGNALS}
                   for v in (1, 2)]
        write_case_rows(tmp_path, c, [{"label": v, **row} for v, row in zip((1, 2), signals)])
    write_quality_csv(tmp_path)  # the qc writer: uncalibrated rank scores, the worst tenth flagged
    lines = []
    q = report.load_quality(tmp_path, cases + ["c4"], [1, 2], log=lines.append)
    assert not lines and sorted(q) == cases and not any(x.calibrated for x in q.values())
    assert q["c1"].flag and not q["c3"].flag and q["c1"].mean_predicted < q["c3"].mean_predicted
    table = tmp_path / TABLE_FILE
    bad = {"other cases": lambda: write_table(table, {"elsewhere": 0.5}),
           "other labels": lambda: write_table(table, {"c1": 0.5}, labels=(1, 7)),
           "no flag column": lambda: table.write_text("case,label,predicted_dice,calibrated\nc1,1,0.5,1\n"),
           "a short row": lambda: table.write_text(",".join(COLUMNS) + "\nc1,1\n"),
           "not a number": lambda: table.write_text(",".join(COLUMNS) + "\n" + "c1,x" + ",0" * (len(COLUMNS) - 2)),
           "empty": lambda: table.write_text(""), "binary": lambda: table.write_bytes(b"\xff\xfe\x00\x81")}
    for what, write in bad.items():
        write()
        before = sorted((p.name, p.stat().st_mtime_ns) for p in tmp_path.iterdir())
        lines.clear()
        assert report.load_quality(tmp_path, cases, [1, 2], log=lines.append) is None, what
        assert len(lines) == 1 and "\n" not in lines[0] and str(table) in lines[0], (what, lines)
        assert "goes on without" in lines[0] and "Traceback" not in lines[0]
        assert sorted((p.name, p.stat().st_mtime_ns) for p in tmp_path.iterdir()) == before  # read-only
    table.unlink()
    assert report.load_quality(tmp_path, cases, [1, 2], log=lines.append) is None


@pytest.fixture(scope="module")
def quality_folder(hippo, tmp_path_factory):
    """The hippocampus predictions with a calibrated ``quality.csv``."""
    pred = tmp_path_factory.mktemp("quality") / "pred"
    shutil.copytree(hippo["pred"], pred)
    write_table(pred / TABLE_FILE)
    return pred


@pytest.fixture(scope="module")
def quality_report(quality_folder):
    out = quality_folder.parent / "report.html"
    before = sorted((p.name, p.stat().st_mtime_ns) for p in quality_folder.iterdir())
    assert cli.main(["report", str(quality_folder), "-o", str(out)]) == 0
    assert sorted((p.name, p.stat().st_mtime_ns) for p in quality_folder.iterdir()) == before  # read-only
    return out


def flagged_rows(source: str) -> list[str]:
    return re.findall(r'<tr id="row-([^"]+)" data-flag="1">', source)


def test_report_without_reference_orders_by_predicted_dice(quality_report, capsys):
    page = parse(quality_report)
    assert page.rows == ORDER and page.gallery == ORDER
    assert flagged_rows(page.source) == ORDER[:2]
    # cells: rank, case, flag, mean predicted Dice, then per label
    assert [float(cells[3]) for cells in page.cells] == pytest.approx([PREDICTED[c] for c in ORDER])
    assert [cells[2] for cells in page.cells] == ["1", "1", "0", "0", "0", "0"]
    text = " ".join(page.text)
    assert "calibrated estimate (quality model)" in text and "2 of 6 cases flagged" in text
    assert "lowest predicted Dice first" in text and "next flagged" in text and "Spearman" not in text
    assert len(open_images(page)) == 6  # no summary plots without a reference or coarse map
    assert "next-flagged" in page.source and "flagged-only" in page.source


def test_report_with_reference_adds_the_scatter_and_agreement(hippo, tmp_path, capsys):
    pred = tmp_path / "pred"
    shutil.copytree(hippo["pred"], pred)
    write_table(pred / TABLE_FILE, calibrated=0)
    out = tmp_path / "report.html"
    assert cli.main(["report", str(pred), "-o", str(out), "--gt", str(hippo["gt"])]) == 0
    assert "uncalibrated rank score" in capsys.readouterr().out
    page = parse(out)
    assert page.rows[0] == HIPPO_WORST  # with a reference, the true Dice orders the cases
    assert len(open_images(page)) == 6 + 2 + 1  # cases, one summary plot per label, the scatter
    text = " ".join(page.text)
    assert "Spearman rho" in text and "MAE" in text and "uncalibrated rank score" in text
    # the agreement over all labels: 6 cases x 2 labels, predicted and true Dice in much the same order
    row = re.search(r"<td class=\"case\">all labels</td><td>(\d+)</td><td>([-\d.–]+)</td>", page.source)
    assert row and int(row.group(1)) == 12 and float(row.group(2)) > 0.5


def test_report_ignores_a_table_of_other_cases(hippo, tmp_path, capsys):
    pred = tmp_path / "pred"
    shutil.copytree(hippo["pred"], pred)
    write_table(pred / TABLE_FILE, {**PREDICTED, "stranger_001": 0.5})
    out = tmp_path / "report.html"
    assert cli.main(["report", str(pred), "-o", str(out)]) == 0
    warnings = [line for line in capsys.readouterr().out.splitlines() if "quality" in line]
    assert len(warnings) == 1 and "stranger_001" in warnings[0] and "goes on without" in warnings[0]
    page = parse(out)
    assert "predicted Dice" not in page.source and not page.rows and page.gallery == sorted(PREDICTED)


@pytest.mark.skipif(_chromium() is None, reason="no Chromium binary (CI installs Debian's chromium in .ci/run)")
def test_flagged_first_order_renders_in_headless_chromium(quality_report, tmp_path):
    cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", quality_report.resolve().as_uri() + "#flagged"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0 and "<tbody>" in done.stdout, done.stderr[-2000:]
    dom = done.stdout
    rows = re.findall(r'<tr id="row-([^"]+)"', dom)
    assert rows == ORDER and flagged_rows(dom) == ORDER[:2]  # worst predicted first, the flagged ones on top
    assert re.search(r'<body class="flagged-only"', dom)  # the script ran: #flagged shows the flagged cases only
    assert "2 flagged (keys n / p)" in dom
