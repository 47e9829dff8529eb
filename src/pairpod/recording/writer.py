"""The recording writer: one thread that owns every file write of recordings.

Sessions hand it small jobs (open a file, write what a session queued, close
it, append an audit line); what a session may queue is bounded by the session
itself (see :class:`pairpod.recording.session.CastRecording`), so the job
queue holds at most a few jobs per session.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable

from pairpod.log import get_logger

log = get_logger("recording")

Job = Callable[[], None]
# Seconds between two rounds of writing (what a session queues meanwhile is bounded
# by the session's buffer).
PACE = 0.05


class RecordingWriter:
    """A queue of jobs drained, in order, by one daemon thread."""

    def __init__(self) -> None:
        self._jobs: collections.deque[Job | None] = collections.deque()  # None stops the thread
        self._ready = threading.Condition()
        self._thread: threading.Thread | None = None

    def submit(self, job: Job) -> None:
        """Run ``job`` on the writer thread, after the jobs queued before it."""
        with self._ready:
            self._jobs.append(job)
            self._ready.notify()
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="pairpod-recording", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            with self._ready:
                while not self._jobs:
                    self._ready.wait()
                jobs = list(self._jobs)
                self._jobs.clear()
            for job in jobs:
                if job is None:
                    return
                try:
                    job()
                except Exception:
                    # A bug in one recording must not stop the others.
                    log.exception("recording.failed")
            # Work in bursts: while this thread formats events it holds the GIL, and
            # every time the event loop waits on a socket it must win the GIL back.
            # Many small bursts measured far slower for the sessions than a few big ones.
            time.sleep(PACE)

    def close(self, timeout: float) -> bool:
        """Finish the queued jobs (up to ``timeout`` seconds); ``True`` when all were written."""
        with self._ready:
            thread = self._thread
            if thread is None:
                return True
            self._jobs.append(None)
            self._ready.notify()
        thread.join(timeout)
        return not thread.is_alive()
