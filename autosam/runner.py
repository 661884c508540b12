"""The one case runner: every folder verb (oracle, refine, segment, predict, demo) and the nnU-Net plugins run
their cases through :class:`CaseRunner`, and supply only what to do with one case.

The runner lists the cases, guards the output folder against every input folder (real paths, so symlinks count),
locks the output folder, skips finished cases (resume), shows one progress bar, reads each case with nnU-Net's
reader, and writes each case atomically in nnU-Net's layout (:mod:`autosam.export`): probabilities first, the
segmentation last, so a case is finished exactly when its segmentation exists. In one process the loop is
pipelined (:mod:`autosam.background`; off with ``pipeline=False`` or ``AUTOSAM_PIPELINE=0``): the next case is read
and the previous one written in background threads while the current one is processed, at most one of each.

>>> runner = CaseRunner(out, info, inputs={"images": images}, record={"verb": "refine"})
>>> runner.run(io.list_cases(images, info.file_ending, info.num_channels), lambda case: CaseOutput(seg(case)))

Parallel runs (:class:`Parallel`): ``num_parts``/``part_id`` pick every ``num_parts``-th case of the sorted case list,
as nnU-Net does, so Slurm jobs split a folder without Ray; ``workers`` and ``ray`` run the cases as Ray tasks on
actors (:class:`CaseJob` objects set up once per worker process: SAM, the prompter or nnU-Net loaded once each), on
a local Ray instance or an existing cluster. Ray is imported only then. The driver keeps the output folder's lock,
the resume check and the one progress bar; each worker reads, processes and writes its cases (atomically, as here).
A worker that dies is restarted and its case retried by Ray; cases that still fail are raised together at the end
as :class:`CasesFailed` (also single-process with ``keep_going``).
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence, Type

import numpy as np

from . import export, io
from .background import ReadAhead, Writer
from .errors import AutosamError, CasesFailed
from .progress import progress

LOCK_FILE = ".autosam.lock"
#: how to get Ray, for the one-line error when it is missing
RAY_INSTALL = "pip install 'autosam[ray]'"
NO_RAY = f"--ray and --workers run on Ray, which is not installed: {RAY_INSTALL}"


@dataclass
class CaseOutput:
    """What a verb computed for one case: ``segmentation`` ``(Z, Y, X)`` (or ``(Y, X)``), optional ``probabilities``
    ``(C, Z, Y, X)`` background first, the ``coarse`` map it started from (for overlays), and ``extra``
    outputs by name (``name -> (segmentation, probabilities or None)``) for the runner's extra folders."""

    segmentation: np.ndarray
    probabilities: Optional[np.ndarray] = None
    coarse: Optional[np.ndarray] = None
    extra: dict[str, tuple[np.ndarray, Optional[np.ndarray]]] = field(default_factory=dict)


def _real(path: str | os.PathLike) -> Path:
    return Path(os.path.realpath(os.path.abspath(os.fspath(path))))


def guard_output(output: str | os.PathLike, inputs: Mapping[str, Optional[str | os.PathLike]],
                 what: str = "output folder") -> None:
    """Refuse an output folder that equals, contains or lies inside an input folder (resolved real paths)."""
    out = _real(output)
    for name, folder in inputs.items():
        if folder is None:
            continue
        inp = _real(folder)
        if out == inp:
            relation = "is"
        elif inp in out.parents:
            relation = "lies inside"
        elif out in inp.parents:
            relation = "contains"
        else:
            continue
        shown = f"{output}" + (f" (= {out})" if str(out) != os.path.abspath(output) else "")
        raise AutosamError(f"{what} {shown} {relation} the {name} folder {folder}; it must differ from, and lie "
                           f"outside, every input folder")


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def part_lock_name(part_id: int, num_parts: int) -> str:
    """The lock file of part ``part_id`` of ``num_parts`` (parts of one run write one folder side by side)."""
    return f".autosam.part{part_id}of{num_parts}.lock"


class FolderLock:
    """An exclusive lock on an output folder: ``<folder>/.autosam.lock`` holding the owner's PID and host.

    A second run into the same folder fails at once naming the holder; a lock left by a process that no longer
    runs on this host is taken over with a notice. ``part=(part_id, num_parts)`` locks one part of a split run
    (``--num-parts``) instead: parts share the folder, but a part and a whole-folder run exclude each other.
    """

    def __init__(self, folder: str | os.PathLike, verb: str = "autosam",
                 part: Optional[tuple[int, int]] = None) -> None:
        self.folder = Path(folder)
        self.part = part
        self.path = self.folder / (LOCK_FILE if part is None else part_lock_name(*part))
        self.verb = verb
        self.held = False

    def _holder(self, path: Optional[Path] = None) -> Optional[dict]:
        try:
            data = json.loads((path or self.path).read_text())
            return data if isinstance(data, dict) else {}
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}

    def _check_others(self) -> None:
        """A part run refuses a live whole-folder lock, and a whole-folder run refuses live part locks."""
        others = [self.folder / LOCK_FILE] if self.part is not None else sorted(self.folder.glob(".autosam.part*.lock"))
        host = socket.gethostname()
        for path in others:
            holder = self._holder(path)
            if holder is None:
                continue
            pid, other_host = holder.get("pid"), holder.get("host")
            if isinstance(pid, int) and other_host == host and not _process_alive(pid):
                continue  # left by a run that is gone
            what = "a run over the whole folder" if path.name == LOCK_FILE else "a part"
            self.release()
            raise AutosamError(f"{self.folder} is in use by {what} of another autosam run ({path.name}: PID {pid} "
                               f"on {other_host}); wait for it, or delete {path} if that run is gone")

    def acquire(self) -> None:
        me = {"pid": os.getpid(), "host": socket.gethostname(), "verb": self.verb,
              "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                if holder is None:
                    continue  # released in between: try again
                pid, host = holder.get("pid"), holder.get("host")
                if isinstance(pid, int) and host == me["host"] and _process_alive(pid):
                    raise AutosamError(f"{self.folder} is in use by another autosam run (PID {pid} on {host}, "
                                       f"{holder.get('verb', '?')} since {holder.get('since', '?')}); wait for it "
                                       f"or write elsewhere")
                if isinstance(pid, int) and host not in (None, me["host"]):
                    raise AutosamError(f"{self.folder} is locked by PID {pid} on host {host} (since "
                                       f"{holder.get('since', '?')}); if that run is gone, delete {self.path}")
                print(f"autosam: note: taking over the lock of a run that is gone ({self.path}: PID {pid} on "
                      f"{host})", file=sys.stderr)
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self.held = True
            self._check_others()
            return
        raise AutosamError(f"cannot lock {self.folder}: {self.path} keeps reappearing")

    def release(self) -> None:
        if self.held:
            holder = self._holder()
            if holder is not None and holder.get("pid") == os.getpid():
                self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> "FolderLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


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


def _prepare(process: Callable[[io.Case], CaseOutput]) -> None:
    if isinstance(process, CaseJob):
        process.ready()


def _call(fn: Callable[[Any], Any], arg: Any) -> tuple[Any, Optional[Exception]]:
    """``(fn(arg), None)``, or ``(None, error)`` when it raises."""
    try:
        return fn(arg), None
    except Exception as e:  # noqa: BLE001 - the caller decides
        return None, e


class _Inline:
    """:class:`autosam.background.Writer`'s interface, writing at once in the caller's thread (no pipeline)."""

    def __init__(self, write: Callable[[Any, Any], None], keep_going: bool) -> None:
        self.write, self.keep_going, self.failures = write, keep_going, {}

    def put(self, key: Any, value: Any) -> None:
        try:
            self.write(key, value)
        except Exception as e:  # noqa: BLE001 - listed at the end with keep_going
            if not self.keep_going:
                raise
            self.failures[key] = e

    def close(self) -> dict:
        return self.failures


def pipeline_default() -> bool:
    """Whether the local case loop is pipelined unless told: yes, unless ``AUTOSAM_PIPELINE=0``."""
    return os.environ.get("AUTOSAM_PIPELINE", "1").strip() not in ("0", "false", "no", "off")


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [""])[0]


def failure_reason(e: BaseException) -> str:
    """One line for a failed case: an :class:`AutosamError`'s message, else the exception's type and message."""
    return _first_line(e) if isinstance(e, AutosamError) else f"{type(e).__name__}: {_first_line(e)}".rstrip(": ")


@dataclass(frozen=True)
class Parallel:
    """How a run spreads its cases over processes.

    ``num_parts``/``part_id``: this run does every ``num_parts``-th case of the sorted case list, from ``part_id``
    (nnU-Net's split: parts started at any time cover every case exactly once). ``ray``: ``None`` for no Ray
    (unless ``workers`` > 1: then a local instance), ``"local"`` for a new local Ray instance on this machine's
    cores, or a cluster address (``auto``, ``HOST:6379``, ``ray://HOST:10001``). ``workers``: actors to start
    (default: 1 without Ray, else as many as the cluster's CPUs and GPUs hold at ``cpus_per_worker`` and
    ``gpus_per_worker`` each; fractions allowed). ``retries``: Ray's retries of a case whose worker died.
    ``keep_going``: a single-process run lists failed cases at the end instead of stopping at the first (a
    distributed run always does).
    """

    ray: Optional[str] = None
    workers: Optional[int] = None
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    num_parts: int = 1
    part_id: int = 0
    keep_going: bool = False
    retries: int = 2

    LOCAL = "local"

    @property
    def distributed(self) -> bool:
        """Cases run as Ray tasks (``ray`` given, or more than one worker)."""
        return self.ray is not None or (self.workers or 1) > 1

    @property
    def local(self) -> bool:
        """Ray, if used, is a new local instance (no address given)."""
        return self.ray in (None, "", self.LOCAL)

    def check(self) -> None:
        if self.num_parts < 1:
            raise AutosamError(f"--num-parts must be at least 1 (got {self.num_parts})")
        if not 0 <= self.part_id < self.num_parts:
            raise AutosamError(f"--part-id must be 0 to {self.num_parts - 1} for --num-parts {self.num_parts} "
                               f"(got {self.part_id})")
        if self.workers is not None and self.workers < 1:
            raise AutosamError(f"--workers must be at least 1 (got {self.workers})")
        if not self.cpus_per_worker > 0:
            raise AutosamError(f"--cpus-per-worker must be above 0 (got {self.cpus_per_worker:g})")
        if not self.gpus_per_worker >= 0:
            raise AutosamError(f"--gpus-per-worker must be 0 or more (got {self.gpus_per_worker:g})")
        if self.retries < 0:
            raise AutosamError(f"retries must be 0 or more (got {self.retries})")

    def part(self, case_ids: Sequence[str]) -> list[str]:
        """This part's cases: ``sorted(case_ids)[part_id::num_parts]``."""
        return sorted(case_ids)[self.part_id :: self.num_parts]

    @property
    def threads(self) -> int:
        """Torch threads per worker: the whole CPUs it asks for (at least one)."""
        return max(1, math.floor(self.cpus_per_worker))


class CaseRunner:
    """Runs a per-case function over cases into an nnU-Net-layout output folder (see the module doc).

    ``inputs`` names every folder the run reads (images, labels, coarse, model, prompter, adapter ...); the output
    (and every ``extra_outputs`` folder, and ``overlays``) must lie outside all of them. ``record`` is written to
    ``autosam_run.json`` with ``dataset.json`` and ``plans.json`` (``plans``: a file or dict; default a minimal
    one); ``record=None`` leaves the folder's files alone (folders that nnU-Net manages itself). ``parallel``
    (:class:`Parallel`) splits the cases into parts and/or runs them on Ray workers. ``pipeline`` (default: on,
    unless the environment sets ``AUTOSAM_PIPELINE=0``): a single-process run reads the next case and writes the
    previous one in background threads while it processes the current one (at most one case read ahead and one
    being written).
    """

    def __init__(
        self,
        out_dir: str | os.PathLike,
        info: io.DatasetInfo,
        *,
        inputs: Mapping[str, Optional[str | os.PathLike]] = (),
        record: Optional[dict] = None,
        plans: Optional[str | os.PathLike | dict] = None,
        save_probabilities: bool = False,
        overwrite: bool = False,
        desc: str = "autosam",
        extra_outputs: Optional[Mapping[str, str | os.PathLike]] = None,
        overlays: Optional[str | os.PathLike] = None,
        rw_class: Optional[Type] = None,
        quiet: bool = False,
        parallel: Optional[Parallel] = None,
        pipeline: Optional[bool] = None,
    ) -> None:
        self.out = Path(out_dir)
        self.info = info
        self.inputs = dict(inputs or {})
        self.record = record
        self.plans = plans
        self.save_probabilities = save_probabilities
        self.overwrite = overwrite
        self.desc = desc
        self.extra = {k: Path(v) for k, v in (extra_outputs or {}).items()}
        self.overlays = Path(overlays) if overlays is not None else None
        self.rw_class = rw_class
        self.quiet = quiet
        self.parallel = parallel or Parallel()
        self.pipeline = pipeline_default() if pipeline is None else bool(pipeline)
        self.check()

    def check(self) -> None:
        """Every output guarded against every input, nothing written yet."""
        self.parallel.check()
        for folder, what in self._outputs():
            if folder.exists() and not folder.is_dir():
                raise AutosamError(f"{what} {folder} exists and is not a folder")
            guard_output(folder, self.inputs, what)
        if self.save_probabilities:
            export.check_probability_layout(self.info)
        if self.overlays is not None:
            from .report import require_matplotlib

            require_matplotlib()
            outputs = [_real(self.out), *(_real(f) for f in self.extra.values())]
            if _real(self.overlays) in outputs:
                raise AutosamError(f"overlay folder {self.overlays} is an output folder; give --overlays its own "
                                   f"folder (its PNGs would mix with the predictions)")

    def _outputs(self) -> Iterator[tuple[Path, str]]:
        yield self.out, "output folder"
        for name, folder in self.extra.items():
            yield folder, f"{name} output folder"
        if self.overlays is not None:
            yield self.overlays, "overlay folder"

    def finished(self, case_id: str) -> bool:
        files = export.case_files(self.out, case_id, self.info.file_ending, self.save_probabilities)
        return all(f.is_file() for f in files)

    def pending(self, case_ids: Sequence[str]) -> list[str]:
        """Cases not finished in the output folder (all with ``overwrite``); skips are reported once on stderr."""
        if self.overwrite:
            return list(case_ids)
        todo = [c for c in case_ids if not self.finished(c)]
        kept = len(case_ids) - len(todo)
        if kept and not self.quiet:
            print(f"{kept} case(s) already in {self.out}, skipped (use --overwrite to redo them)", file=sys.stderr)
        changed = export.changed_settings(self.out, self.record) if kept and self.record is not None else []
        if changed:  # said even when quiet: the kept cases are not what these settings would give
            print(f"note: {self.out} holds {kept} case(s) of a run with other settings ({', '.join(changed)}); they "
                  f"are kept unless --overwrite is given", file=sys.stderr)
        return todo

    def select(self, case_ids: Sequence[str]) -> list[str]:
        """This run's part of ``case_ids`` (all of them unless ``parallel.num_parts`` > 1), reported on stderr."""
        p = self.parallel
        if p.num_parts == 1:
            return list(case_ids)
        chosen = p.part(case_ids)
        if not self.quiet:
            print(f"part {p.part_id} of {p.num_parts} (--part-id {p.part_id} --num-parts {p.num_parts}): "
                  f"{len(chosen)} of {len(case_ids)} case(s)", file=sys.stderr)
        return chosen

    @property
    def distributed(self) -> bool:
        """The cases run as Ray tasks (see :class:`Parallel`)."""
        return self.parallel.distributed

    def run(
        self,
        cases: Mapping[str, Sequence[str | os.PathLike]],
        process: Callable[[io.Case], CaseOutput],
        prepare: Optional[Callable[[], None]] = None,
    ) -> list[str]:
        """Read and process every pending case of ``cases`` (case id -> channel files); returns the cases written.

        ``process`` is a :class:`CaseJob` (needed for a distributed run; its ``setup`` runs once per process) or
        any function of a case. ``prepare()`` runs once in this process before anything is written, only when a
        case is pending (check models there, so a broken model fails before the output folder is touched).
        Failed cases raise :class:`CasesFailed` at the end in a distributed or ``keep_going`` run; otherwise the
        first failure ends the run.
        """
        todo = self.pending(self.select(list(cases)))
        if not todo:
            return []
        if prepare is not None:
            prepare()
        if isinstance(process, CaseJob):
            process.keep_probabilities = self.save_probabilities
        p = self.parallel
        part = (p.part_id, p.num_parts) if p.num_parts > 1 else None
        locks = []
        try:
            for folder, _ in self._outputs():
                folder.mkdir(parents=True, exist_ok=True)
                locks.append(FolderLock(folder, self.desc, part=part))
                locks[-1].acquire()
            self._prepare_folders()
            rw = self.rw_class or io.reader_writer(self.info.file_ending)
            if self.distributed:
                failures = _run_on_ray(self, {c: [str(f) for f in cases[c]] for c in todo}, process, rw)
            else:
                failures = self._run_here(todo, cases, process, rw)
        finally:
            for lock in reversed(locks):
                lock.release()
        if failures:
            raise CasesFailed(failures, [c for c in todo if c not in failures])
        return todo

    def _run_here(self, todo: list[str], cases: Mapping[str, Sequence[str | os.PathLike]],
                  process: Callable[[io.Case], CaseOutput], rw: Type) -> dict[str, str]:
        """The cases one after another in this process; failures by case (only with ``keep_going``). Pipelined
        (:attr:`pipeline`): the next case is read and the previous one written in background threads
        (:mod:`autosam.background`) while this one is processed; otherwise each step waits for the one before."""
        failures: dict[str, str] = {}
        keep_going = self.parallel.keep_going

        def read(case_id: str) -> io.Case:
            case = io.read_case(case_id, [Path(f) for f in cases[case_id]], rw)
            if self.pipeline and isinstance(process, CaseJob):
                process.prefetch(case)  # in the read-ahead thread, beside the case being processed
            return case

        def write(case_id: str, done: tuple[io.Case, CaseOutput]) -> None:
            self._write(*done, rw)

        depth = process.read_ahead if isinstance(process, CaseJob) else 1
        reader = ReadAhead(todo, read, depth=depth) if self.pipeline else ((c, *_call(read, c)) for c in todo)
        writer = Writer(write, keep_going) if self.pipeline else _Inline(write, keep_going)
        with contextlib.ExitStack() as stack:
            if isinstance(process, CaseJob):
                stack.callback(process.close)  # after the reader has stopped (exit order is reversed)
            if self.pipeline:
                stack.enter_context(reader)
                stack.enter_context(writer)
            for case_id, case, error in progress(reader, self.desc, total=len(todo), disable=self.quiet):
                if error is not None:
                    if not keep_going:
                        raise error
                    failures[case_id] = failure_reason(error)
                    continue
                _prepare(process)  # a model that cannot load ends the run (one line, exit 2), it is no case's fault
                try:
                    result = process(case)
                except Exception as e:  # noqa: BLE001 - listed at the end with keep_going
                    if not keep_going:
                        raise
                    failures[case_id] = failure_reason(e)
                    continue
                writer.put(case_id, (case, result))
                del case, result  # the writer holds them until they are written
            failed = writer.close()
        failures.update((c, failure_reason(e)) for c, e in failed.items())
        return {c: failures[c] for c in todo if c in failures}

    def _prepare_folders(self) -> None:
        """The folder files, and no temporary file of an earlier run left. A part of a split run leaves a folder
        that another part prepared alone: its temporary files may be that part's, being written."""
        split = self.parallel.num_parts > 1
        if self.record is None:
            if not split:
                export.clear_temporary(self.out)
            return
        folders = [(self.out, self.record)] + [(f, {**self.record, "output": n}) for n, f in self.extra.items()]
        for folder, record in folders:
            if split and (folder / export.RUN_FILE).is_file():
                continue
            export.prepare_folder(folder, self.info, record, self.plans)

    def _write(self, case: io.Case, result: CaseOutput, rw: Type) -> None:
        probs = result.probabilities if self.save_probabilities else None
        for name, (seg, extra_probs) in result.extra.items():
            self._write_folder(self.extra[name], case, seg, extra_probs if self.save_probabilities else None, rw)
        if self.overlays is not None:
            from .report import write_overlay

            write_overlay(self.overlays / f"{case.case_id}.png", case.image, result.segmentation,
                          self.info.foreground, coarse=result.coarse, spacing=case.spacing)
        self._write_folder(self.out, case, result.segmentation, probs, rw)

    def _write_folder(self, folder: Path, case: io.Case, seg: np.ndarray, probs: Optional[np.ndarray],
                      rw: Type) -> None:
        """One case into one folder: its old files removed first (segmentation first, so a crash leaves it
        unfinished, never stale), then probabilities, then the segmentation."""
        for f in export.case_files(folder, case.case_id, self.info.file_ending, probabilities=True):
            f.unlink(missing_ok=True)
        export.write_case(folder, case.case_id, seg, case.properties, self.info, probs, rw)


# --- Ray ----------------------------------------------------------------------------------------------------------

def ray_available() -> bool:
    """Whether Ray can be imported (without importing it)."""
    if "ray" in sys.modules:
        return sys.modules["ray"] is not None
    import importlib.util

    return importlib.util.find_spec("ray") is not None


def import_ray():
    """Ray, or a one-line error saying how to install it."""
    try:
        import ray
    except ImportError:
        raise AutosamError(NO_RAY) from None
    return ray


class ray_session:
    """Ray for one run: the instance this process is already connected to (left running), else a new local instance
    (``parallel.local``; bound to this machine's loopback address) or the cluster at ``parallel.ray``, shut down
    (disconnected) at the end."""

    def __init__(self, parallel: Parallel) -> None:
        self.parallel = parallel
        self.started = False

    def __enter__(self):
        p = self.parallel
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        if p.local and "ray" not in sys.modules:
            # read by Ray on import: the node's address is 127.0.0.1, so a local instance serves this machine only
            os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        ray = import_ray()
        if ray.is_initialized():
            return ray
        options = {"include_dashboard": False, "log_to_driver": False, "logging_level": "ERROR"}
        try:
            if p.local:
                cpus = None if p.workers is None else max(os.cpu_count() or 1, math.ceil(p.workers * p.cpus_per_worker))
                ray.init(address="local", num_cpus=cpus, **options)
            else:
                ray.init(address=p.ray, **options)
        except (ConnectionError, RuntimeError, ValueError) as e:
            where = "start a local Ray instance" if p.local else f"connect to the Ray cluster at {p.ray}"
            raise AutosamError(f"cannot {where}: {failure_reason(e)}") from None
        self.started = True
        return ray

    def __exit__(self, *exc) -> None:
        if self.started:
            import ray

            ray.shutdown()


class _RayWorker:
    """One Ray actor: its torch threads set (and the GPUs it was not given hidden), then cases read, processed by the
    job (set up before the first one) and written. The job comes with each task as a reference, fetched once per
    process (so a restarted actor fetches it again). Returns ``None``, ``("case", reason)`` or
    ``("setup", reason)``."""

    def __init__(self, threads: int, hide_gpus: bool) -> None:
        if hide_gpus:  # Ray leaves CUDA_VISIBLE_DEVICES alone for an actor given no GPU
            os.environ["CUDA_VISIBLE_DEVICES"] = ""
        try:
            import torch

            torch.set_num_threads(threads)
        except ImportError:  # pragma: no cover
            pass
        self.shipped: Optional[tuple] = None

    def pid(self) -> int:
        return os.getpid()

    def run(self, case_id: str, files: list[str], box: list) -> Optional[tuple[str, str]]:
        if self.shipped is None:
            import ray

            try:
                self.shipped = ray.get(box[0])
            except Exception as e:  # noqa: BLE001 - e.g. autosam missing on a node: ends the run in the driver
                return "setup", f"a worker could not load the job (is autosam installed on every node?): " \
                                f"{failure_reason(e)}"
        runner, job, rw = self.shipped
        try:
            case = io.read_case(case_id, [Path(f) for f in files], rw)
        except Exception as e:  # noqa: BLE001 - reported by the driver
            return "case", failure_reason(e)
        try:
            _prepare(job)
        except Exception as e:  # noqa: BLE001 - ends the run in the driver
            return "setup", _first_line(e) if isinstance(e, AutosamError) else \
                f"a worker could not set up {runner.desc}: {failure_reason(e)}"
        try:
            runner._write(case, job(case), rw)
        except Exception as e:  # noqa: BLE001 - reported by the driver
            return "case", failure_reason(e)
        return None


def _worker_count(ray, p: Parallel, n_cases: int) -> int:
    total = ray.cluster_resources()
    cpus, gpus = float(total.get("CPU", 0.0)), float(total.get("GPU", 0.0))
    if p.cpus_per_worker > cpus:
        raise AutosamError(f"--cpus-per-worker {p.cpus_per_worker:g} is more than the Ray cluster has "
                           f"({cpus:g} CPU(s))")
    if p.gpus_per_worker > gpus:
        raise AutosamError(f"--gpus-per-worker {p.gpus_per_worker:g} is more than the Ray cluster has "
                           f"({gpus:g} GPU(s))")
    n = p.workers
    if n is None:
        n = int(cpus // p.cpus_per_worker)
        if p.gpus_per_worker > 0:
            n = min(n, int(gpus // p.gpus_per_worker))
    return max(1, min(n, n_cases))


def _run_on_ray(runner: CaseRunner, cases: dict[str, list[str]], job: Callable[[io.Case], CaseOutput],
                rw: Type) -> dict[str, str]:
    """The cases as Ray tasks on actors (see the module doc); returns the failures by case."""
    from collections import deque

    p = runner.parallel
    with ray_session(p) as ray:
        n = _worker_count(ray, p, len(cases))
        try:
            shipped = ray.put((runner, job, rw))
        except Exception as e:  # noqa: BLE001 - an unpicklable job is a programming error, said in one line
            raise AutosamError(f"cannot send the {runner.desc} job to Ray workers: {failure_reason(e)}") from None
        worker = ray.remote(_RayWorker).options(num_cpus=p.cpus_per_worker, num_gpus=p.gpus_per_worker,
                                                max_restarts=-1, max_task_retries=p.retries)
        actors = [worker.remote(p.threads, p.gpus_per_worker == 0) for _ in range(n)]
        if not runner.quiet:
            gpus = f", {p.gpus_per_worker:g} GPU" if p.gpus_per_worker else ""
            where = "a local Ray instance" if p.local else f"the Ray cluster at {p.ray}"
            print(f"{runner.desc}: {len(cases)} case(s) on {n} worker(s) ({p.cpus_per_worker:g} CPU{gpus} each) of "
                  f"{where}", file=sys.stderr)
        queue, running, failures = deque(cases), {}, {}

        def submit(actor) -> None:
            case_id = queue.popleft()
            running[actor.run.remote(case_id, cases[case_id], [shipped])] = (actor, case_id)

        def finished() -> Iterator[str]:
            while running:
                (ref,), _ = ray.wait(list(running), num_returns=1)
                actor, case_id = running.pop(ref)
                try:
                    status = ray.get(ref)
                except ray.exceptions.RayError as e:
                    status = ("case", f"its worker died, also on Ray's {p.retries} retries ({type(e).__name__})")
                if status is not None:
                    kind, why = status
                    if kind == "setup":
                        raise AutosamError(why)
                    failures[case_id] = why
                if queue:
                    submit(actor)
                yield case_id

        try:
            for actor in actors:
                if queue:
                    submit(actor)
            for _ in progress(finished(), runner.desc, total=len(cases), disable=runner.quiet):
                pass
        finally:
            for actor in actors:
                try:
                    ray.kill(actor)
                except Exception:  # noqa: BLE001 - already gone
                    pass
            names = {f"{c}{suffix}" for c in cases for suffix in (runner.info.file_ending, ".npz", ".pkl", ".png")}
            for folder, _ in runner._outputs():
                export.clear_temporary(folder, names)
    return failures
