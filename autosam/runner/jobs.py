"""The job protocol: what a verb computes for one case (:class:`CaseOutput`), what it does with one case in a form
that travels to worker processes (:class:`CaseJob`, :class:`FunctionJob`), and the one line a failed case is
reported by (:func:`failure_reason`)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np

from .. import io
from ..errors import AutosamError


@dataclass
class CaseOutput:
    """What a verb computed for one case: ``segmentation`` ``(Z, Y, X)`` (or ``(Y, X)``), optional ``probabilities``
    ``(C, Z, Y, X)`` background first, the ``coarse`` map it started from (for overlays), ``extra``
    outputs by name (``name -> (segmentation, probabilities or None)``) for the runner's extra folders, and
    ``quality``: the case's label-free quality rows (:mod:`autosam.qc`), written beside it when given."""

    segmentation: np.ndarray
    probabilities: Optional[np.ndarray] = None
    coarse: Optional[np.ndarray] = None
    extra: dict[str, tuple[np.ndarray, Optional[np.ndarray]]] = field(default_factory=dict)
    quality: Optional[list[dict]] = None


class CaseJob:
    """What a verb does with one case, in a form that travels to worker processes (Ray pickles it).

    A subclass holds the run's settings (picklable) and implements :meth:`process`; :meth:`setup` loads what every
    case needs (SAM, the prompter, nnU-Net) into attributes whose names start with ``_``. It runs once per process,
    after the first case has been read and before it is processed; ``_`` attributes never travel, so a job is
    shipped unloaded and each worker loads its own models. The single-process path calls the same object: one code
    path per verb. ``keep_probabilities`` is set by the runner: whether the output needs probability volumes (a
    job that can skip them saves memory on large cases).
    """

    keep_probabilities: bool = True

    def setup(self) -> None:
        """Load the models every case needs (once per process)."""

    def process(self, case: io.Case) -> CaseOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def prefetch(self, case: io.Case) -> None:
        """Work on a freshly read case that can run beside :meth:`process` of the case before (nnU-Net's
        preprocessing, say), kept in ``case.prefetched``. The pipelined loop calls it in its read-ahead thread;
        :meth:`process` must do the work itself when it finds nothing there (the first case, a plain loop, Ray)."""

    @property
    def read_ahead(self) -> int:
        """How many cases the pipelined loop reads (and :meth:`prefetch`es) ahead of the one being processed."""
        return 1

    def close(self) -> None:
        """Release what :meth:`prefetch` started (worker processes, say); the local loop calls it at its end."""

    def ready(self) -> None:
        """Run :meth:`setup` unless this process did already."""
        if not self.__dict__.get("_ready"):
            self.setup()
            self._ready = True

    def __call__(self, case: io.Case) -> CaseOutput:
        self.ready()
        return self.process(case)

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}


@dataclass
class FunctionJob(CaseJob):
    """A :class:`CaseJob` of two functions: ``load()`` builds what every case needs (once per process) and
    ``fn(loaded, case)`` processes one case. Closures travel too: Ray pickles functions with cloudpickle."""

    load: Callable[[], Any]
    fn: Callable[[Any, io.Case], CaseOutput]
    _loaded: Any = field(default=None, init=False, repr=False)

    def setup(self) -> None:
        self._loaded = self.load()

    def process(self, case: io.Case) -> CaseOutput:
        return self.fn(self._loaded, case)


def prepare_job(process: Callable[[io.Case], CaseOutput]) -> None:
    """Set up ``process`` in this process if it is a :class:`CaseJob` (once; a plain function needs nothing)."""
    if isinstance(process, CaseJob):
        process.ready()


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (empty when it has none)."""
    return (str(e).strip().splitlines() or [""])[0]


def failure_reason(e: BaseException) -> str:
    """One line for a failed case: an :class:`AutosamError`'s message, else the exception's type and message."""
    return first_line(e) if isinstance(e, AutosamError) else f"{type(e).__name__}: {first_line(e)}".rstrip(": ")
