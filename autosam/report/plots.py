"""The summary plots of a report, one PNG per label: Dice per method (or the share SAM changed) as box plots
with the cases as points, and coarse against refined Dice per case (matplotlib, through the Agg canvas).
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Optional

import numpy as np

from .overlay import COLOURS, new_figure, png_bytes

if TYPE_CHECKING:
    from .build import Report


def _plot_methods(report: Report, value: int) -> tuple[list[tuple[str, list[float], str]], str, Optional[tuple]]:
    """What the first panel of a label shows: ``(name, value per case, colour)`` per method, the y label and
    the y limits (None: automatic)."""
    if report.has_reference:
        methods = [("refined" if report.has_coarse else "prediction", [c.metrics[value]["Dice"] for c in
                                                                      report.cases], COLOURS["prediction"])]
        if report.has_coarse:
            methods.insert(0, ("coarse", [c.coarse_metrics[value]["Dice"] for c in report.cases],
                               COLOURS["coarse"]))
        return methods, "Dice", (-0.03, 1.03)
    changed = [("SAM changed", [c.changed[value] for c in report.cases], COLOURS["prediction"])]
    return changed, "share of voxels changed", None


def _box_panel(ax, methods: list[tuple[str, list[float], str]], rng: np.random.Generator) -> None:
    """A box plot per method with the cases as jittered points (NaN left out), or a note if nothing is scored."""
    data = [np.array([v for v in vals if not math.isnan(v)], float) for _, vals, _ in methods]
    positions = list(range(1, len(methods) + 1))
    if any(len(d) for d in data):
        box = ax.boxplot([d if len(d) else [np.nan] for d in data], positions=positions, widths=0.5,
                         showfliers=False, patch_artist=True, medianprops={"color": "black"})
        for patch, (_, _, colour) in zip(box["boxes"], methods):
            patch.set_facecolor(colour)
            patch.set_alpha(0.45)
        for p, d in zip(positions, data):
            ax.scatter(p + rng.uniform(-0.12, 0.12, len(d)), d, s=12, color="black", zorder=3, alpha=0.8)
    else:
        ax.text(0.5, 0.5, "no scores (label absent)", ha="center", va="center", transform=ax.transAxes)
    ax.set_xticks(positions)
    ax.set_xticklabels([m for m, _, _ in methods])
    ax.set_xlim(0.4, len(methods) + 0.6)


def _coarse_vs_refined_panel(ax, report: Report, value: int, name: str) -> None:
    """Refined against coarse Dice per case (green above the diagonal, orange below; the three lowest named)."""
    pairs = [(c.coarse_metrics[value]["Dice"], c.metrics[value]["Dice"], c.case_id) for c in report.cases]
    pairs = [p for p in pairs if not (math.isnan(p[0]) or math.isnan(p[1]))]
    ax.plot([0, 1], [0, 1], color="#999999", lw=1, ls="--", zorder=1)
    if pairs:
        x, y = np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])
        colours = np.where(y > x + 1e-9, "#009E73", np.where(y < x - 1e-9, "#D55E00", "#555555"))
        ax.scatter(x, y, s=18, c=colours, zorder=3)
        for xi, yi, case in sorted(pairs, key=lambda p: p[1])[:3]:
            ax.annotate(case, (xi, yi), fontsize=6.5, xytext=(3, -8), textcoords="offset points")
    ax.set_xlim(-0.03, 1.03)
    ax.set_ylim(-0.03, 1.03)
    ax.set_aspect("equal")
    ax.set_xlabel("coarse Dice")
    ax.set_ylabel("refined Dice")
    ax.set_title(f"{name}: per case (above the line = better)", fontsize=10)
    ax.grid(alpha=0.3)


def summary_plots(report: Report) -> dict[int, bytes]:
    """One PNG per label: Dice per method (box plot with the cases as points) and, with a coarse map, coarse
    against refined Dice per case; without a reference, the share of voxels SAM changed (with a coarse map).
    Empty when there is nothing to plot."""
    if not report.cases or (not report.has_reference and not report.has_coarse):
        return {}
    out = {}
    rng = np.random.default_rng(0)
    panels = 2 if report.has_reference and report.has_coarse else 1
    for value, name in report.labels.items():
        fig = new_figure(3.6 * panels, 3.2)
        methods, ylabel, ylim = _plot_methods(report, value)
        ax = fig.add_subplot(1, panels, 1)
        _box_panel(ax, methods, rng)
        if ylim:
            ax.set_ylim(*ylim)
        ax.set_ylabel(ylabel)
        ax.set_title(f"{name}: {ylabel} per case", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
        if panels == 2:
            _coarse_vs_refined_panel(fig.add_subplot(1, 2, 2), report, value, name)
        fig.tight_layout()
        out[value] = png_bytes(fig)
        fig.clear()
    return out


def quality_scatter(report: Report) -> Optional[bytes]:
    """Predicted against true Dice, one point per case and label (one colour per label, the three lowest true
    Dice named), titled with Spearman's rho and the MAE; None without a quality table, a reference or points."""
    from .quality import agreement, quality_pairs

    pairs = quality_pairs(report.cases) if report.has_reference and report.has_quality else []
    if not pairs:
        return None
    fig = new_figure(4.4, 4.0)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot([0, 1], [0, 1], color="#999999", lw=1, ls="--", zorder=1)
    palette = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000"]
    for j, (value, name) in enumerate(report.labels.items()):
        points = [p for p in pairs if p[1] == value]
        if points:
            ax.scatter([p[3] for p in points], [p[2] for p in points], s=18, color=palette[j % len(palette)],
                       label=name, zorder=3)
    named: list[str] = []
    for case, _, predicted, true in sorted(pairs, key=lambda p: p[3]):
        if case not in named and len(named) < 3:  # each of the three lowest cases once
            named.append(case)
            ax.annotate(case, (true, predicted), fontsize=6.5, xytext=(3, -8), textcoords="offset points")
    a = agreement(pairs)
    ax.set_xlim(-0.03, 1.03)
    ax.set_ylim(-0.03, 1.03)
    ax.set_aspect("equal")
    ax.set_xlabel("true Dice")
    ax.set_ylabel("predicted Dice" if report.calibrated else "rank score (uncalibrated)")
    ax.set_title(f"predicted vs true: rho {a['rho']:.2f}, MAE {a['mae']:.3f} (n={a['n']})", fontsize=10)
    ax.grid(alpha=0.3)
    if len(report.labels) > 1:
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    png = png_bytes(fig)
    fig.clear()
    return png
