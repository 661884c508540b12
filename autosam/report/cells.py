"""How the report page writes numbers: table cells, their sort values, the Dice colour, embedded PNGs."""
from __future__ import annotations

import base64
import math
from typing import Optional


def data_uri(png: bytes) -> str:
    """A PNG as a ``data:`` URI, to embed in the page."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def fmt(value: Optional[float], digits: int = 3) -> str:
    """A number as the page shows it: "–" for a missing or NaN value, "∞" for an infinite one."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if math.isinf(value):
        return "∞"
    return f"{value:.{digits}f}"


def sort_value(value: Optional[float]) -> str:
    """A cell's ``data-v`` (what the table sorts by; JavaScript's parseFloat reads NaN and Infinity)."""
    if value is None or math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return repr(float(value))


def dice_style(value: float) -> str:
    """A cell's background from red (Dice 0) to green (Dice 1); none for a missing value."""
    if value is None or math.isnan(value):
        return ""
    hue = 120 * max(0.0, min(1.0, value))
    return f' style="background:hsl({hue:.0f},70%,86%)"'
