"""autosam's exception types: bad input (the CLI prints one line, exit 2) and failed cases (one line each, exit 1)."""
from __future__ import annotations

from typing import Mapping, Sequence


class AutosamError(Exception):
    """Bad input or configuration, with a message that names the file and the problem."""


class CasesFailed(Exception):
    """Cases that failed (in a distributed run: after Ray's retries) while the run went on with the others.

    ``failures`` maps case id -> a one-line reason; ``written`` lists the cases that were written. The verbs print
    one line per failed case and exit with code 1.
    """

    def __init__(self, failures: Mapping[str, str], written: Sequence[str]) -> None:
        self.failures = dict(failures)
        self.written = list(written)
        super().__init__(f"{len(self.failures)} case(s) failed: {', '.join(self.failures)}")

    def lines(self) -> list[str]:
        return [f"case {case} failed: {why}" for case, why in self.failures.items()]
