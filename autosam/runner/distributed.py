"""Cases as Ray tasks: :func:`run_on_ray` runs a :class:`~autosam.runner.local.CaseRunner`'s pending cases on Ray
actors (:class:`_RayWorker`), each of which sets its job up once, then reads, processes and writes its cases; the
driver keeps the lock, the resume check and the progress bar. Ray is imported only inside these functions
(:func:`import_ray`: a one-line error when it is missing); :func:`ray_available` asks without importing it."""
from __future__ import annotations

import math
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Optional, Type

from .. import export, io
from ..errors import AutosamError
from ..progress import notice, progress
from .jobs import CaseOutput, failure_reason, first_line, prepare_job
from .parallel import Parallel

if TYPE_CHECKING:
    from .local import CaseRunner

#: how to get Ray, for the one-line error when it is missing
RAY_INSTALL = "pip install 'autosam[ray]'"
NO_RAY = f"--ray and --workers run on Ray, which is not installed: {RAY_INSTALL}"


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
            prepare_job(job)
        except Exception as e:  # noqa: BLE001 - ends the run in the driver
            return "setup", first_line(e) if isinstance(e, AutosamError) else \
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


def _start_workers(ray, runner: CaseRunner, job: Callable[[io.Case], CaseOutput], rw: Type, n: int,
                   n_cases: int) -> tuple[Any, list]:
    """The job put in Ray's object store (once for all workers) and ``n`` actors started, said on stderr."""
    p = runner.parallel
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
        notice(f"{runner.desc}: {n_cases} case(s) on {n} worker(s) ({p.cpus_per_worker:g} CPU{gpus} each) of "
               f"{where}")
    return shipped, actors


def _stop_workers(ray, actors: list, runner: CaseRunner, cases: dict[str, list[str]]) -> None:
    """The actors killed, and the temporary files of the cases they were writing removed."""
    for actor in actors:
        try:
            ray.kill(actor)
        except Exception:  # noqa: BLE001 - already gone
            pass
    names = {f"{c}{suffix}" for c in cases for suffix in (runner.info.file_ending, ".npz", ".pkl", ".png")}
    for folder, _ in runner._outputs():
        export.clear_temporary(folder, names)


def run_on_ray(runner: CaseRunner, cases: dict[str, list[str]], job: Callable[[io.Case], CaseOutput],
               rw: Type) -> dict[str, str]:
    """The cases as Ray tasks on actors (see :mod:`autosam.runner`); returns the failures by case."""
    from collections import deque

    p = runner.parallel
    with ray_session(p) as ray:
        n = _worker_count(ray, p, len(cases))
        shipped, actors = _start_workers(ray, runner, job, rw, n, len(cases))
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
            _stop_workers(ray, actors, runner, cases)
    return failures
