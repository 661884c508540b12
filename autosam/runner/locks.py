"""The output folder's guard and lock: :func:`guard_output` refuses an output folder that is, holds or lies inside an
input folder; :class:`FolderLock` keeps a second run out of a folder being written (one lock per part of a split
run, :func:`part_lock_name`), and takes over a lock whose process no longer runs on this host."""
from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Mapping, Optional

from ..errors import AutosamError
from ..progress import notice

LOCK_FILE = ".autosam.lock"


def real_path(path: str | os.PathLike) -> Path:
    """The absolute path with every symlink resolved."""
    return Path(os.path.realpath(os.path.abspath(os.fspath(path))))


def guard_output(output: str | os.PathLike, inputs: Mapping[str, Optional[str | os.PathLike]],
                 what: str = "output folder") -> None:
    """Refuse an output folder that equals, contains or lies inside an input folder (resolved real paths)."""
    out = real_path(output)
    for name, folder in inputs.items():
        if folder is None:
            continue
        inp = real_path(folder)
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
    ``name`` locks one file of the folder instead (e.g. ``quality.csv``, assembled by every part; see :meth:`wait`).
    """

    def __init__(self, folder: str | os.PathLike, verb: str = "autosam",
                 part: Optional[tuple[int, int]] = None, name: Optional[str] = None) -> None:
        self.folder = Path(folder)
        self.part, self.name = part, name
        self.path = self.folder / (name or (LOCK_FILE if part is None else part_lock_name(*part)))
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
        """A part run refuses a live whole-folder lock, and a whole-folder run refuses live part locks (a named
        lock, one file's, refuses nothing)."""
        if self.name is not None:
            return
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
                notice(f"autosam: note: taking over the lock of a run that is gone ({self.path}: PID {pid} on "
                       f"{host})")
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self.held = True
            self._check_others()
            return
        raise AutosamError(f"cannot lock {self.folder}: {self.path} keeps reappearing")

    def wait(self, timeout: float = 600.0, poll: float = 0.2) -> "FolderLock":
        """Acquire, waiting up to ``timeout`` seconds while another run holds the lock; returns the lock."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.acquire()
                return self
            except AutosamError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(poll)

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

