"""The case runner and its local loop: :class:`CaseRunner` guards and locks the output folders, skips finished cases,
picks this part's cases (:class:`~autosam.runner.parallel.Parallel`), and runs the rest here (pipelined: the next
case read and the previous one written in background threads, :mod:`autosam.background`) or hands them to
:func:`autosam.runner.distributed.run_on_ray`; it writes each case atomically in nnU-Net's layout."""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence, Type

import numpy as np

from .. import export, io
from ..background import ReadAhead, Writer
from ..errors import AutosamError, CasesFailed
from ..integrity import check_file
from ..progress import notice, progress
from ..qc.table import case_file, write_case_rows
from .distributed import run_on_ray
from .jobs import CaseJob, CaseOutput, failure_reason, prepare_job
from .locks import FolderLock, guard_output, real_path
from .parallel import Parallel


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



def _check_writable(folder: Path, what: str) -> None:
    """The folder, or the nearest of its parents that exists, is a folder this process may write in."""
    near = next((p for p in (folder, *folder.absolute().parents) if p.exists()), None)
    if near is None or not near.is_dir():
        raise AutosamError(f"{what} {folder} cannot be made: {near} is not a folder")
    if not os.access(near, os.W_OK | os.X_OK):
        raise AutosamError(f"{what} {folder} cannot be written: no write permission in {near}")


class CaseRunner:
    """Runs a per-case function over cases into an nnU-Net-layout output folder (see :mod:`autosam.runner`).

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
        self._prepared = False  # the folder files are written with the first case (run)
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
            _check_writable(folder, what)
            guard_output(folder, self.inputs, what)
        if self.save_probabilities:
            export.check_probability_layout(self.info)
        if self.overlays is not None:
            from ..report import require_matplotlib

            require_matplotlib()
            outputs = [real_path(self.out), *(real_path(f) for f in self.extra.values())]
            if real_path(self.overlays) in outputs:
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
            notice(f"{kept} case(s) already in {self.out}, skipped (use --overwrite to redo them)")
        changed = export.changed_settings(self.out, self.record) if kept and self.record is not None else []
        if changed:  # said even when quiet: the kept cases are not what these settings would give
            notice(f"note: {self.out} holds {kept} case(s) of a run with other settings ({', '.join(changed)}); they "
                   f"are kept unless --overwrite is given")
        return todo

    def select(self, case_ids: Sequence[str]) -> list[str]:
        """This run's part of ``case_ids`` (all of them unless ``parallel.num_parts`` > 1), reported on stderr."""
        p = self.parallel
        if p.num_parts == 1:
            return list(case_ids)
        chosen = p.part(case_ids)
        if not self.quiet:
            notice(f"part {p.part_id} of {p.num_parts} (--part-id {p.part_id} --num-parts {p.num_parts}): "
                   f"{len(chosen)} of {len(case_ids)} case(s)")
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
        inputs: Optional[Mapping[str, Sequence[str | os.PathLike]]] = None,
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
        refused = self.preflight(todo, cases, inputs or {})  # with keep_going: the cases that cannot be read
        everything, todo = todo, [c for c in todo if c not in refused]
        if not todo:
            raise CasesFailed(refused, [])
        if prepare is not None:
            prepare()
        if isinstance(process, CaseJob):
            process.keep_probabilities = self.save_probabilities
        p = self.parallel
        part = (p.part_id, p.num_parts) if p.num_parts > 1 else None
        locks, created = [], [folder for folder, _ in self._outputs() if not folder.exists()]
        self._prepared = False
        try:
            for folder, _ in self._outputs():
                folder.mkdir(parents=True, exist_ok=True)
                locks.append(FolderLock(folder, self.desc, part=part))
                locks[-1].acquire()
            rw = self.rw_class or io.reader_writer(self.info.file_ending)
            if self.distributed:  # the workers write the cases: the folder files come first, here, once
                self._prepare_folders()
                self._prepared = True  # set before the runner travels, so no worker clears another's temporaries
                failures = run_on_ray(self, {c: [str(f) for f in cases[c]] for c in todo}, process, rw)
            else:  # the folder files (the run record among them) once the first case is written
                failures = self._run_here(todo, cases, process, rw)
        finally:
            for lock in reversed(locks):
                lock.release()
            for folder in created:  # a run refused before its first case leaves no folder behind
                if folder.is_dir() and not any(folder.iterdir()):
                    folder.rmdir()
        failures = {**refused, **failures}
        if failures:
            raise CasesFailed({c: failures[c] for c in everything if c in failures},
                              [c for c in todo if c not in failures])
        return todo

    def preflight(self, todo: Sequence[str], cases: Mapping[str, Sequence[str | os.PathLike]],
                  inputs: Mapping[str, Sequence[str | os.PathLike]]) -> dict[str, str]:
        """Before anything is written: every file the run will read (each pending case's images and its ``inputs``,
        e.g. labels or coarse maps) is there, not empty and read to their end (:func:`check_file`), and a
        case's image files hold the channels dataset.json lists, as far as their headers say. The first bad case
        ends the run (one line), unless it keeps going (``--keep-going``, Ray): then the bad cases are returned,
        with their reasons, to be listed at the end beside the others' failures."""
        keep_going, refused = self.parallel.keep_going or self.distributed, {}
        for case_id in progress(todo, "checking inputs", disable=self.quiet or len(todo) < 20):
            try:
                self._check_case(cases[case_id], inputs.get(case_id, ()))
            except AutosamError as e:
                if not keep_going:
                    raise
                refused[case_id] = failure_reason(e)
        return refused

    def _check_case(self, files: Sequence[str | os.PathLike], inputs: Sequence[str | os.PathLike]) -> None:
        channels = [check_file(path) for path in files]
        if None not in channels and sum(channels) != self.info.num_channels:
            odd = next((p for p, n in zip(files, channels) if n != 1), files[0])
            raise AutosamError(f"{odd}: the image holds {sum(channels)} channel(s) where dataset.json lists "
                               f"{self.info.num_channels} ({', '.join(self.info.channel_names)}); save one channel "
                               "per file (an RGB or palette PNG as greyscale, a 4D volume as one file per channel)")
        for path in inputs:
            if path is not None:
                check_file(path)

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
                prepare_job(process)  # a model that cannot load ends the run (one line, exit 2), it is no case's fault
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
        if not self._prepared:  # only now: a run refused on its first case leaves the folder's record as it was
            self._prepare_folders()
            self._prepared = True
        probs = result.probabilities if self.save_probabilities else None
        for name, (seg, extra_probs) in result.extra.items():
            self._write_folder(self.extra[name], case, seg, extra_probs if self.save_probabilities else None, rw)
        if self.overlays is not None:
            from ..report import write_overlay

            write_overlay(self.overlays / f"{case.case_id}.png", case.image, result.segmentation,
                          self.info.foreground, coarse=result.coarse, spacing=case.spacing)
        self._write_folder(self.out, case, result.segmentation, probs, rw, quality=result.quality)

    def _write_folder(self, folder: Path, case: io.Case, seg: np.ndarray, probs: Optional[np.ndarray],
                      rw: Type, quality: Optional[list[dict]] = None) -> None:
        """One case into one folder: its old files removed first (segmentation first, so a crash leaves it
        unfinished, never stale), then its quality signals (:mod:`autosam.qc`, when given), probabilities, then
        the segmentation."""
        for f in export.case_files(folder, case.case_id, self.info.file_ending, probabilities=True):
            f.unlink(missing_ok=True)
        if quality is not None:
            write_case_rows(folder, case.case_id, quality)
        elif folder == self.out:
            case_file(folder, case.case_id).unlink(missing_ok=True)
        export.write_case(folder, case.case_id, seg, case.properties, self.info, probs, rw)
