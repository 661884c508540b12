"""``autosam``: one verb per job; each verb lives in :mod:`autosam.commands`."""
from __future__ import annotations

import argparse
import importlib
import signal
import sys
import threading
from typing import Optional, Sequence

from . import __version__
from .errors import AutosamError, CasesFailed
from .progress import clear_bars
from .settings import bind_bounds

#: Verb modules under autosam.commands, in the order ``--help`` lists them.
VERBS = ["demo", "oracle", "fit", "predict", "refine", "evaluate", "finetune", "train-prompter", "tune", "segment", "study",
         "report",
         "nnunet-env"]


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (``autosam VERB: error: ...``), like every other autosam error."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="autosam", description="Automatic SAM prompting inside nnU-Net workflows.")
    parser.add_argument("--version", action="version", version=f"autosam {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    sub.required = True
    for verb in VERBS:
        importlib.import_module(f"autosam.commands.{verb.replace('-', '_')}").add_parser(sub)
    for p in _parsers(parser):
        bind_bounds(p)
    return parser


def _parsers(parser: argparse.ArgumentParser):
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _parsers(sub)


def given_options(argv: Sequence[str]) -> set[str]:
    """The destinations of the options that ``argv`` sets itself (not left at their defaults)."""
    parser = build_parser()
    for p in _parsers(parser):
        p._defaults.clear()
        for action in p._actions:
            action.default = argparse.SUPPRESS
    return set(vars(parser.parse_args(argv)))


def _terminated(signum, frame):
    """SIGTERM (what batch schedulers send) stops a run as Ctrl-C does: locks released, finished cases kept."""
    raise KeyboardInterrupt


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = [str(a) for a in (sys.argv[1:] if argv is None else argv)]
    args = build_parser().parse_args(argv)
    args.given = given_options(argv)  # lets a verb tell an option given as its default from one left out
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminated) if main_thread else None
    try:
        return int(args.run(args) or 0)
    except AutosamError as e:
        clear_bars()
        print(f"autosam {args.verb}: error: {e}", file=sys.stderr)
        return 2
    except CasesFailed as failed:
        clear_bars()
        for line in failed.lines():
            print(f"autosam {args.verb}: {line}", file=sys.stderr)
        print(f"autosam {args.verb}: {len(failed.failures)} case(s) failed, {len(failed.written)} written to "
              f"{getattr(args, 'output', 'the output folder')}; rerun the same command to retry the failed ones",
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        clear_bars()
        print(f"autosam {args.verb}: interrupted; finished cases are kept, rerun to resume", file=sys.stderr)
        return 130
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
