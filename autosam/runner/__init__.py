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
as :class:`~autosam.errors.CasesFailed` (also single-process with ``keep_going``).

Modules: :mod:`.locks` (the output guard and folder locks), :mod:`.jobs` (the job protocol and failure reasons),
:mod:`.parallel` (:class:`Parallel`), :mod:`.local` (:class:`CaseRunner` and its local loop) and :mod:`.distributed`
(Ray; named so that it never shadows the ``ray`` package). They import :mod:`autosam.io`, :mod:`autosam.export`,
:mod:`autosam.background`, :mod:`autosam.errors` and :mod:`autosam.progress` (:mod:`autosam.report` for overlays,
:mod:`autosam.qc` for each case's quality signals),
and never the verbs, models or commands above them; Ray only inside :mod:`.distributed`'s functions.
"""
from .distributed import NO_RAY, RAY_INSTALL, import_ray, ray_available, ray_session
from .jobs import CaseJob, CaseOutput, FunctionJob, failure_reason
from .local import CaseRunner, pipeline_default
from .locks import LOCK_FILE, FolderLock, guard_output, part_lock_name
from .parallel import Parallel

__all__ = [
    "NO_RAY", "RAY_INSTALL", "import_ray", "ray_available", "ray_session",
    "CaseJob", "CaseOutput", "FunctionJob", "failure_reason",
    "CaseRunner", "pipeline_default",
    "LOCK_FILE", "FolderLock", "guard_output", "part_lock_name",
    "Parallel",
]
