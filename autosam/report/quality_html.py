"""The parts of the report page that show a prediction folder's ``quality.csv``: the predicted Dice and flag
columns, the line that says what the estimate is with the controls to step through the flagged cases
(``report.js``), the flag badges, and with a reference the predicted-against-true agreement and scatter plot.
"""
from __future__ import annotations

import html
from typing import TYPE_CHECKING, Optional

from .cells import data_uri, dice_style, fmt, sort_value
from .quality import agreement, flagged, mean_predicted, quality_pairs

if TYPE_CHECKING:
    from .build import CaseReport, Report

FLAG_BADGE = '<span class="badge flag">flagged</span>'


def lead_head(col: int) -> list[str]:
    """The table's first quality columns (from column ``col``): the flag and the mean predicted Dice."""
    return [f'<th rowspan="2" data-col="{col}">flag</th>',
            f'<th rowspan="2" data-col="{col + 1}">predicted Dice (mean)</th>']


def lead_cells(c: CaseReport) -> list[str]:
    """A case's flag and mean predicted Dice cells."""
    flag = c.quality is not None and c.quality.flag
    score = mean_predicted(c)
    mark = "⚑" if flag else ("" if c.quality is not None else "–")
    return [f'<td data-v="{int(flag)}">{mark}</td>',
            f'<td data-v="{sort_value(score)}"{dice_style(score)}>{fmt(score)}</td>']


def predicted_cell(c: CaseReport, value: int) -> str:
    """A case's predicted Dice cell for one label (flagged labels in bold)."""
    score = c.quality.predicted.get(value) if c.quality is not None else None
    text = fmt(score)
    if c.quality is not None and c.quality.flags.get(value):
        text = f"<b>{text}</b>"
    return f'<td data-v="{sort_value(score)}"{dice_style(score)}>{text}</td>'


def row_attributes(c: CaseReport) -> str:
    """Extra attributes of a case's table row or gallery entry: marked when flagged."""
    return ' data-flag="1"' if c.quality is not None and c.quality.flag else ""


def quality_note(report: Report) -> str:
    """The line above the table: what the predicted Dice is, how many cases are flagged, and the controls that
    step through them (``report.js``)."""
    names = flagged(report.cases)
    without = sum(c.quality is None for c in report.cases)
    what = ("Predicted Dice: calibrated estimate (quality model)." if report.calibrated else
            "Predicted Dice: uncalibrated rank score (no quality model fitted): it orders the cases; it is not "
            "a Dice.")
    facts = [f"{len(names)} of {len(report.cases)} case{'s' if len(report.cases) != 1 else ''} flagged (⚑)."]
    if without:
        facts.append(f"{without} case{'s have' if without != 1 else ' has'} no estimate in quality.csv.")
    controls = ""
    if names:
        controls = ('<span class="flag-nav"><label><input type="checkbox" id="flagged-only"> flagged only</label> '
                    '<button type="button" id="prev-flagged">&larr; previous flagged</button> '
                    '<button type="button" id="next-flagged">next flagged &rarr;</button> '
                    '<span id="flag-position"></span></span>')
    return f'<p class="note quality" id="quality-note">{html.escape(what)} {" ".join(facts)} {controls}</p>'


def gallery_bits(c: CaseReport, labels: dict[int, str]) -> tuple[str, str]:
    """A case's headline addition (mean predicted Dice and the flag badge) and its scores line part."""
    if c.quality is None:
        return "", ""
    headline = f" &middot; predicted Dice {fmt(c.quality.mean_predicted)}" + (FLAG_BADGE if c.quality.flag else "")
    scores = "<b>predicted Dice</b>: " + ", ".join(
        f"{html.escape(labels.get(v, str(v)))} {fmt(p)}" + (" (flagged)" if c.quality.flags.get(v) else "")
        for v, p in c.quality.predicted.items())
    return headline, scores


def agreement_html(report: Report, scatter: Optional[bytes]) -> list[str]:
    """With a reference: Spearman's rho and the mean absolute error of predicted against true Dice (per label and
    over all), and the scatter plot."""
    e = html.escape
    pairs = quality_pairs(report.cases)
    rows = []
    for name, subset in [(n, [p for p in pairs if p[1] == v]) for v, n in report.labels.items()] + [
            ("all labels", pairs)]:
        a = agreement(subset)
        rows.append(f'<tr><td class="case">{e(name)}</td><td>{a["n"]}</td><td>{fmt(a["rho"])}</td>'
                    f'<td>{fmt(a["mae"])}</td></tr>')
    parts = ['<h3>Predicted against true Dice</h3>',
             '<table id="quality-agreement"><thead><tr><th class="case">label</th><th>points</th>'
             "<th>Spearman rho</th><th>MAE</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>"]
    if not report.calibrated:
        parts.append('<p class="note">The estimate is an uncalibrated rank score: its rho says how well it orders '
                     "the cases; its MAE is no Dice error.</p>")
    if scatter is not None:
        parts.append(f'<div class="plots"><figure><img src="{data_uri(scatter)}" '
                     'alt="predicted against true Dice"></figure></div>')
    return parts
