"""Progress bars for long work (tqdm on stderr); the lowest layer, so every other module may use it."""
from __future__ import annotations

import os
import sys
from typing import Iterable, Optional, TypeVar

T = TypeVar("T")


def progress(items: Iterable[T], desc: str, unit: str = "case", total: Optional[int] = None,
             disable: bool = False) -> Iterable[T]:
    """A tqdm progress bar on stderr over ``items``; plain iteration when tqdm is unavailable, when ``disable``, or
    when stderr is not a terminal (logs and pipes get no bar redraws; ``AUTOSAM_PROGRESS=1`` forces the bar)."""
    if disable:
        return items
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        return items
    forced = os.environ.get("AUTOSAM_PROGRESS", "").strip() == "1"
    return tqdm(items, desc=desc, unit=unit, total=total, file=sys.stderr, dynamic_ncols=True,
                disable=False if forced else None)


_noticed: set[str] = set()


def notice(text: str, once: Optional[str] = None) -> None:
    """One line on stderr, flushed: the one way autosam tells a person something on the way (``once``: a key, so the
    line is printed once per process)."""
    if once is not None:
        if once in _noticed:
            return
        _noticed.add(once)
    print(text, file=sys.stderr, flush=True)


def clear_bars() -> None:
    """Erase every open progress bar from the terminal (before a one-line error, so the error stands alone)."""
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        return
    for bar in list(getattr(tqdm, "_instances", ())):
        bar.leave = False
        bar.close()
