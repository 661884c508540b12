"""Work beside the case loop: a thread reading ahead and a thread writing behind, each bounded.

The case runner's local loop (:class:`autosam.runner.CaseRunner`) reads the next case with :class:`ReadAhead` and
hands finished cases to :class:`Writer` while it processes the current one, so reading and writing files overlap
SAM's work. Each holds at most ``depth`` items besides the one it is working on, so memory stays bounded; an
error in either thread travels back to the loop as the exception itself (its one-line message unchanged).

>>> with ReadAhead(case_ids, read) as cases, Writer(write) as writer:
...     for case_id, case, error in cases:
...         writer.put(case_id, process(case))   # blocks while the previous case is still being written
...     failures = writer.close()
"""
from __future__ import annotations

import queue
import threading
from typing import Any, Callable, Iterator, Optional, Sequence

#: seconds a blocked thread waits before it looks again whether it was stopped
_POLL = 0.1


class ReadAhead:
    """``read(key)`` of each key in order, computed by a background thread at most ``depth`` keys ahead of the one
    the caller holds; iterating yields ``(key, value, error)`` with either ``value`` or ``error`` (the exception)."""

    def __init__(self, keys: Sequence[Any], read: Callable[[Any], Any], depth: int = 1) -> None:
        self.keys = list(keys)
        self.read = read
        self._slots = threading.Semaphore(max(1, depth))
        self._ready: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="autosam-read", daemon=True)

    def _run(self) -> None:
        for key in self.keys:
            while not self._slots.acquire(timeout=_POLL):
                if self._stop.is_set():
                    return
            if self._stop.is_set():
                return
            try:
                self._ready.put((key, self.read(key), None))
            except BaseException as e:  # noqa: BLE001 - handed to the loop, which decides
                self._ready.put((key, None, e))

    def __iter__(self) -> Iterator[tuple[Any, Any, Optional[BaseException]]]:
        for _ in self.keys:
            item = self._ready.get()
            self._slots.release()  # the caller holds this one now: the thread may read the next
            yield item

    def __enter__(self) -> "ReadAhead":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


class Writer:
    """``write(key, value)`` in a background thread, one item at a time: :meth:`put` blocks while the previous item
    is still being written (so the writer holds at most one). With ``keep_going`` a failed write is recorded and the
    next is written; otherwise the first failure stops the writer (later items are dropped unwritten) and
    :meth:`put` and :meth:`close` raise it in the caller's thread."""

    def __init__(self, write: Callable[[Any, Any], None], keep_going: bool = False) -> None:
        self.write = write
        self.keep_going = keep_going
        self.failures: dict[Any, BaseException] = {}
        self._items: queue.Queue = queue.Queue()
        self._free = threading.Semaphore(1)
        self._error: Optional[BaseException] = None
        self._thread = threading.Thread(target=self._run, name="autosam-write", daemon=True)

    def _run(self) -> None:
        while True:
            item = self._items.get()
            if item is None:
                return
            key, value = item
            try:
                if self._error is None:  # after a failure that stopped the writer nothing more is written
                    self.write(key, value)
            except BaseException as e:  # noqa: BLE001 - raised or listed in the caller's thread
                if self.keep_going and isinstance(e, Exception):
                    self.failures[key] = e
                else:
                    self._error = e
            finally:
                del item, value
                self._free.release()

    def check(self) -> None:
        """Raise the failure that stopped the writer, if any."""
        if self._error is not None:
            raise self._error

    def put(self, key: Any, value: Any) -> None:
        """Hand over one item (blocks while the previous one is written); raises an earlier item's failure instead."""
        self.check()
        while not self._free.acquire(timeout=_POLL):
            self.check()
        self.check()
        self._items.put((key, value))

    def close(self) -> dict[Any, BaseException]:
        """Write what is queued and stop; raises a failure that stopped the writer, else returns the recorded
        failures by key (``keep_going``)."""
        if self._thread.is_alive():
            self._items.put(None)
            self._thread.join()
        self.check()
        return self.failures

    def __enter__(self) -> "Writer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        """Whatever ended the block, what was handed over is written (or dropped after a failure) before the
        caller goes on, e.g. to release the folder's lock."""
        if self._thread.is_alive():
            self._items.put(None)
            self._thread.join()
