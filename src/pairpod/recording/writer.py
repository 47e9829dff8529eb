"""The gateway's side of recording: a thread that feeds the recording worker process.

Sessions hand the thread small jobs (send this recording's queued events, open
or close a file, an audit line); what a session may queue is bounded by the
session itself (see :class:`pairpod.recording.session.CastRecording`). The
thread only frames bytes and writes them to the worker's pipe (the GIL is
released while it writes); the worker (:mod:`pairpod.recording.worker`)
formats and writes the files on a core of its own and reports back, and a
second thread logs its reports.
"""

from __future__ import annotations

import collections
import json
import logging
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import IO, Any

from pairpod.log import fields, get_logger
from pairpod.recording.files import write_all

log = get_logger("recording")

Job = Callable[[], None]
StatusCallback = Callable[[dict[str, Any]], None]
# Seconds between two rounds of sending (what a session queues meanwhile is bounded
# by the session's buffer): fewer, larger writes to the worker.
PACE = 0.05
_WARNINGS = {"recording.stopped"}


class RecordingWriter:
    """A queue of jobs run, in order, by one daemon thread; owns the worker process."""

    def __init__(self) -> None:
        self._jobs: collections.deque[Job | None] = collections.deque()  # None stops the thread
        self._ready = threading.Condition()
        self._thread: threading.Thread | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None
        self._dead = False
        self._watchers: dict[int, StatusCallback] = {}

    def submit(self, job: Job) -> None:
        """Run ``job`` on the writer thread, after the jobs queued before it."""
        with self._ready:
            self._jobs.append(job)
            self._ready.notify()
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="pairpod-recording", daemon=True)
                self._thread.start()

    def watch(self, recording: int, callback: StatusCallback) -> None:
        """Have ``callback`` told the worker's reports about ``recording``."""
        self._watchers[recording] = callback

    def send(self, data: bytes) -> None:
        """Write frames to the worker (on the writer thread only)."""
        if self._dead or not data:
            return
        try:
            process = self._worker()
            assert process.stdin is not None
            write_all(process.stdin.fileno(), data)
        except OSError as error:
            self._dead = True
            log.warning(
                "recording.stopped",
                extra=fields(
                    reason=f"the recording process is gone ({error.strerror or error}); "
                    "no more recordings until restart"
                ),
            )

    def _worker(self) -> subprocess.Popen[bytes]:
        if self._process is None:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "pairpod.recording.worker"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                close_fds=True,
            )
            assert self._process.stdout is not None
            self._reader = threading.Thread(
                target=self._read_reports,
                args=(self._process.stdout,),
                name="pairpod-recording-reports",
                daemon=True,
            )
            self._reader.start()
        return self._process

    def _read_reports(self, stream: IO[bytes]) -> None:
        for line in stream:
            try:
                report = json.loads(line)
                event = str(report.pop("event"))
                recording = int(report.pop("recording"))
            except (ValueError, KeyError, TypeError):
                log.warning("recording.bad_report", extra=fields(line=line[:200]))
                continue
            level = logging.WARNING if event in _WARNINGS else logging.INFO
            log.log(level, event, extra=fields(**report))
            callback = self._watchers.get(recording)
            if callback is not None:
                callback({"event": event, **report})
                if event in ("recording.finished", "recording.stopped", "recording.cut"):
                    self._watchers.pop(recording, None)

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
            time.sleep(PACE)

    def close(self, timeout: float) -> bool:
        """Send what is queued and let the worker finish (up to ``timeout`` seconds).

        ``True`` when everything was written.
        """
        deadline = time.monotonic() + timeout
        with self._ready:
            thread = self._thread
            if thread is not None:
                self._jobs.append(None)
                self._ready.notify()
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                return False
        process = self._process
        if process is None:
            return True
        assert process.stdin is not None
        process.stdin.close()  # the worker finishes its files at end of input
        try:
            process.wait(max(deadline - time.monotonic(), 0.0))
        except subprocess.TimeoutExpired:
            process.kill()
            return False
        if self._reader is not None:
            self._reader.join(max(deadline - time.monotonic(), 0.0))
        return process.returncode == 0
