"""The report page: one self-contained HTML string (images as PNG data URIs) with a legend, the mean scores and
summary plots, a sortable per-case table (worst first) and a gallery of every case.

The page's style sheet and script (table sorting; stepping through the flagged cases of a quality table, whose
parts :mod:`~autosam.report.quality_html` writes) are package data (``report.css``, ``report.js``), inlined into
the page.
"""
from __future__ import annotations

import html
from datetime import datetime
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from ..evaluation import summarise
from . import quality_html
from .cells import data_uri, dice_style, fmt, sort_value
from .overlay import COLOURS, LINESTYLES

if TYPE_CHECKING:
    from .build import CaseReport, Report

_SVG_DASH = {"solid": "", "dashed": "6,3", "dotted": "1.5,2.5", "dashdot": "6,2.5,1.5,2.5"}


@lru_cache(maxsize=None)
def _asset(name: str) -> str:
    """The text of a package data file of this package (``report.css``, ``report.js``)."""
    return resources.files(__package__).joinpath(name).read_text(encoding="utf-8")


def _legend_html(report: Report) -> str:
    def line(colour: str, dash: str = "") -> str:
        d = f' stroke-dasharray="{dash}"' if dash else ""
        return (f'<svg width="34" height="12" aria-hidden="true"><line x1="3" y1="6" x2="31" y2="6" '
                f'stroke="{colour}" stroke-width="2.5"{d}/></svg>')

    items = []
    if report.has_reference:
        items.append(f"<span>{line(COLOURS['reference'])} reference</span>")
    if report.has_coarse:
        items.append(f"<span>{line(COLOURS['coarse'])} coarse</span>")
    items.append(f"<span>{line(COLOURS['prediction'])} {'refined' if report.has_coarse else 'prediction'}</span>")
    if len(report.labels) > 1:
        for j, name in enumerate(report.labels.values()):
            style = LINESTYLES[j % len(LINESTYLES)]
            items.append(f"<span>{line('#dddddd', _SVG_DASH[style])} {html.escape(name)}</span>")
    return '<div class="legend">' + "".join(items) + "</div>"


def _per_label_columns(report: Report) -> list[str]:
    """The table's columns under each label's name."""
    if report.has_reference:
        columns = ["Dice", "NSD", "HD95 (mm)"] + (["coarse Dice"] if report.has_coarse else [])
    else:
        columns = ["changed"] if report.has_coarse else []
    return columns + (["predicted Dice"] if report.has_quality else [])


def _table_head(report: Report, per_label: list[str]) -> str:
    """The table's header: a row of label groups and a row of metric names (click to sort)."""
    e = html.escape
    top = ['<th rowspan="2" data-col="0">rank</th>', '<th rowspan="2" class="case" data-col="1">case</th>']
    sub = []
    col = 2
    if report.has_quality:
        top += quality_html.lead_head(col)
        col += 2
    if report.has_reference:
        top.append(f'<th rowspan="2" data-col="{col}">mean Dice</th>')
        col += 1
    if report.has_coarse:
        top.append(f'<th rowspan="2" data-col="{col}">changed (all)</th>')
        col += 1
    for name in report.labels.values():
        if per_label:
            top.append(f'<th colspan="{len(per_label)}">{e(name)}</th>')
            for metric in per_label:
                sub.append(f'<th data-col="{col}">{e(metric)}</th>')
                col += 1
    return "<thead><tr>" + "".join(top) + "</tr>" + ("<tr>" + "".join(sub) + "</tr>" if sub else "") + "</thead>"


def _label_cells(report: Report, c: CaseReport, value: int) -> list[str]:
    """A case's cells under one label: its scores (with a reference) or the share SAM changed, and its
    predicted Dice."""
    cells = []
    if report.has_reference:
        m = c.metrics[value]
        cells.append(f'<td data-v="{sort_value(m["Dice"])}"{dice_style(m["Dice"])}>{fmt(m["Dice"])}</td>')
        cells.append(f'<td data-v="{sort_value(m["NSD"])}">{fmt(m["NSD"])}</td>')
        cells.append(f'<td data-v="{sort_value(m["HD95"])}">{fmt(m["HD95"], 2)}</td>')
        if report.has_coarse:
            d = c.coarse_metrics[value]["Dice"]
            cells.append(f'<td data-v="{sort_value(d)}"{dice_style(d)}>{fmt(d)}</td>')
    elif report.has_coarse:
        share = c.changed[value]
        cells.append(f'<td data-v="{sort_value(share)}">{100 * share:.1f}%</td>')
    if report.has_quality:
        cells.append(quality_html.predicted_cell(c, value))
    return cells


def _table_html(report: Report) -> str:
    """The per-case table: a header row of label groups, a row of metric names (click to sort), a row per case."""
    e = html.escape
    head = _table_head(report, _per_label_columns(report))
    rows = []
    for rank, c in enumerate(report.cases, 1):
        cells = [f'<td data-v="{rank}">{rank}</td>',
                 f'<td class="case"><a href="#case-{e(c.case_id)}">{e(c.case_id)}</a>'
                 + "".join(f' <span class="badge">empty {w}</span>' for w in c.empty) + "</td>"]
        if report.has_quality:
            cells += quality_html.lead_cells(c)
        if report.has_reference:
            cells.append(f'<td data-v="{sort_value(c.mean_dice)}"{dice_style(c.mean_dice)}>{fmt(c.mean_dice)}</td>')
        if report.has_coarse:
            share = c.changed["all"]
            cells.append(f'<td data-v="{sort_value(share)}">{100 * share:.1f}%</td>')
        for value in report.labels:
            cells += _label_cells(report, c, value)
        rows.append(f'<tr id="row-{e(c.case_id)}"{quality_html.row_attributes(c)}>' + "".join(cells) + "</tr>")
    return f'<table class="sortable" id="cases-table">{head}<tbody>' + "".join(rows) + "</tbody></table>"


def _means_html(report: Report) -> str:
    """Mean scores per label (nnU-Net's rules: NaN and inf left out of the means)."""
    e = html.escape
    labels = list(report.labels)
    summary = summarise([{"metrics": c.metrics} for c in report.cases], labels)
    coarse = (summarise([{"metrics": c.coarse_metrics} for c in report.cases], labels)
              if report.has_coarse else None)
    head = ["label", "mean Dice"] + (["coarse mean Dice"] if coarse else []) + ["mean NSD", "mean HD95 (mm)",
                                                                              "cases with HD95 = ∞"]
    rows = []
    for value, name in report.labels.items():
        m = summary["mean"][value]
        cells = [f'<td class="case">{e(name)}</td>', f"<td{dice_style(m['Dice'])}>{fmt(m['Dice'])}</td>"]
        if coarse:
            d = coarse["mean"][value]["Dice"]
            cells.append(f"<td{dice_style(d)}>{fmt(d)}</td>")
        cells += [f"<td>{fmt(m['NSD'])}</td>", f"<td>{fmt(m['HD95'], 2)}</td>", f"<td>{m['HD95_n_inf']}</td>"]
        rows.append("<tr>" + "".join(cells) + "</tr>")
    first = ' class="case"'
    return ("<table><thead><tr>" + "".join(f'<th{first if i == 0 else ""}>{e(h)}</th>'
                                           for i, h in enumerate(head))
            + "</tr></thead><tbody>" + "".join(rows) + "</tbody></table>")


def _case_scores(report: Report, c: CaseReport) -> str:
    parts = []
    for value, name in report.labels.items():
        bits = []
        if c.metrics is not None:
            m = c.metrics[value]
            bits.append(f"Dice {fmt(m['Dice'])}, NSD {fmt(m['NSD'])}, HD95 {fmt(m['HD95'], 2)}")
            if c.coarse_metrics is not None:
                bits.append(f"coarse Dice {fmt(c.coarse_metrics[value]['Dice'])}")
        if c.changed is not None:
            bits.append(f"changed {100 * c.changed[value]:.1f}%")
        if bits:
            parts.append(f"<b>{html.escape(name)}</b>: " + "; ".join(bits))
    if c.changed is not None:
        parts.append(f"<b>all labels</b>: changed {100 * c.changed['all']:.1f}%")
    if c.depth > 1:  # a single-slice (2D) case has nothing to name
        shown = ", ".join(f"{role} {i}" for role, i in c.slices)
        parts.append(f"slices: {html.escape(shown)}")
    return " &middot; ".join(parts)


def _head_html(report: Report, title: str, sources: Optional[dict], tolerance_mm: float) -> list[str]:
    """The page's lines up to ``<main>``: the document head with the style sheet, and the header (the folders
    read, the number of cases, the labels, the NSD tolerance and the time written)."""
    e = html.escape
    meta = []
    for what, folder in (sources or {}).items():
        if folder is not None:
            meta.append(f"{what}: <code>{e(str(folder))}</code>")
    facts = [f"{len(report.cases)} case{'s' if len(report.cases) != 1 else ''}",
             "labels: " + ", ".join(f"{e(n)} ({v})" for v, n in report.labels.items())]
    if report.has_reference:
        facts.append(f"NSD tolerance {tolerance_mm:g} mm")
    facts.append(f"written {datetime.now().strftime('%Y-%m-%d %H:%M')}")
    return [
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">', f"<title>{e(title)}</title>",
        f"<style>\n{_asset('report.css')}</style>", "</head>", "<body>", "<header>", f"<h1>{e(title)}</h1>",
        '<p class="meta">' + " &middot; ".join(meta) + "</p>", '<p class="meta">' + " &middot; ".join(facts) + "</p>",
        "</header>", "<main>",
    ]


def _legend_section(report: Report, has_images: bool) -> list[str]:
    """The legend section: the contour colours and line styles, and which slices each case shows."""
    return [
        '<section id="legend"><h2>Legend</h2>', _legend_html(report),
        '<p class="note">Contours: one colour per source, one line style per label. '
        + ("" if has_images else "No images were given (-i): contours are drawn on black. ")
        + "Each case shows the slice where the labels are largest"
        + (", the slice of the worst error" if report.has_reference else
           (", the slice SAM changed most" if report.has_coarse else ""))
        + " and the middle of the foreground.</p></section>",
    ]


def _summary_section(report: Report, plots: dict[int, bytes], scatter: Optional[bytes]) -> list[str]:
    """The summary: mean scores, plots and, with a quality table, predicted against true Dice (with a reference);
    nothing without a reference or coarse map."""
    if not (report.has_reference or report.has_coarse):
        return []
    e = html.escape
    parts = ['<section id="summary"><h2>Summary</h2>']
    if report.has_reference:
        parts.append(_means_html(report))
    if plots:
        parts.append('<div class="plots">')
        for value, png in plots.items():
            name = e(report.labels[value])
            parts.append(f'<figure><img src="{data_uri(png)}" alt="summary plot of {name}"></figure>')
        parts.append("</div>")
    if report.has_reference and report.has_quality:
        parts += quality_html.agreement_html(report, scatter)
    parts.append("</section>")
    return parts


def _cases_section(report: Report) -> list[str]:
    """The per-case table with the lines above it; nothing without a reference, coarse map or quality table."""
    if not (report.has_reference or report.has_coarse or report.has_quality):
        return []
    order = ("lowest mean Dice first" if report.has_reference else
             "lowest predicted Dice first" if report.has_quality else "most changed first")
    return ['<section id="cases"><h2>Cases</h2>',
            f'<p class="note">Worst first ({order}); click a column header to sort, a case to see it. '
            + ("Dice and NSD: higher is better; HD95: lower is better (∞: one of the masks is empty; "
               "–: the label is absent from both). " if report.has_reference else "")
            + ("Changed: share of the voxels in either map whose label SAM changed. " if report.has_coarse
               else "") + "</p>"] + ([quality_html.quality_note(report)] if report.has_quality else []) \
        + [_table_html(report), "</section>"]


def _gallery_section(report: Report) -> list[str]:
    """Every case, in the report's order: its headline, scores and picture."""
    e = html.escape
    parts = ['<section id="gallery" class="gallery"><h2>Gallery</h2>']
    for rank, c in enumerate(report.cases, 1):
        headline = f"#{rank} {e(c.case_id)}"
        if c.metrics is not None:
            headline += f" &middot; mean Dice {fmt(c.mean_dice)}"
        elif c.changed is not None:
            headline += f" &middot; changed {100 * c.changed['all']:.1f}%"
        badges = "".join(f'<span class="badge">empty {w}</span>' for w in c.empty)
        predicted, scores = quality_html.gallery_bits(c, report.labels)
        scores = " &middot; ".join(s for s in (scores, _case_scores(report, c)) if s)
        parts += [f'<div class="case" id="case-{e(c.case_id)}"{quality_html.row_attributes(c)}>',
                  f"<h3>{headline}{predicted}{badges}</h3>", f'<p class="scores">{scores}</p>',
                  f'<img src="{data_uri(c.png)}" alt="slices of {e(c.case_id)}">', "</div>"]
    parts.append("</section>")
    return parts


def render_html(report: Report, plots: dict[int, bytes], *, title: Optional[str] = None,
                sources: Optional[dict] = None, tolerance_mm: float = 1.0, has_images: bool = True,
                scatter: Optional[bytes] = None) -> str:
    """The report page as one HTML string (images as data URIs); ``scatter``: the predicted against true Dice
    plot of a report with a quality table and a reference."""
    title = title or f"autosam report: {Path(sources['prediction']).name if sources else report.path.stem}"
    parts = (_head_html(report, title, sources, tolerance_mm) + _legend_section(report, has_images)
             + _summary_section(report, plots, scatter) + _cases_section(report) + _gallery_section(report)
             + ["</main>", f"<script>\n{_asset('report.js')}</script>", "</body>", "</html>"])
    return "\n".join(parts) + "\n"
