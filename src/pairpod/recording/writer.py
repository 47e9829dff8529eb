"""The recording writer: one thread that owns every file write of recordings.

Sessions only append small items to a bounded in-memory queue; the thread
formats and writes them. When the queue is full, data events are refused (the
session counts them and the recording says so later); open and close items are
always accepted, so a file is never left open.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable

from pairpod.log import get_logger

log = get_logger("recording")

Job = Callable[[], None]


class RecordingWriter:
    """A bounded queue of jobs drained by one daemon thread."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        # (job, counted): counted jobs are the bounded data kind; None stops the thread.
        self._jobs: collections.deque[tuple[Job, bool] | None] = collections.deque()
        self._data = 0  # data jobs queued (the bounded kind)
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)
        self._thread: threading.Thread | None = None

    def submit(self, job: Job) -> bool:
        """Queue a data job; ``False`` (and nothing queued) when the queue is full."""
        with self._lock:
            if self._data >= self._limit:
                return False
            self._data += 1
            self._jobs.append((job, True))
            self._ready.notify()
        self._ensure_thread()
        return True

    def submit_always(self, job: Job) -> None:
        """Queue a job that must run (open, close, audit lines) even when full."""
        with self._lock:
            self._jobs.append((job, False))
            self._ready.notify()
        self._ensure_thread()

    def _ensure_thread(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="pairpod-recording", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._jobs:
                    self._ready.wait()
                item = self._jobs.popleft()
                if item is not None and item[1]:
                    self._data -= 1
            if item is None:
                return
            try:
                item[0]()
            except Exception:
                # A bug in one recording must not stop the others.
                log.exception("recording.failed")

    def close(self, timeout: float) -> bool:
        """Finish the queued jobs (up to ``timeout`` seconds); ``True`` when all were written."""
        thread = self._thread
        if thread is None:
            return True
        with self._lock:
            self._jobs.append(None)
            self._ready.notify()
        thread.join(timeout)
        return not thread.is_alive()
