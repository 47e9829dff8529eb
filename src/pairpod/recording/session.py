"""One recorded channel: an asciicast file (PTY) or an audit line (no PTY).

The methods a session's process calls (``output``, ``input``, ``resize``,
``ended``) only note the time and queue the bytes; framing happens on the
writer thread, formatting and writing in the worker process.
"""

from __future__ import annotations

import collections
import datetime
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pairpod.backends.base import ExitStatus, Stream
from pairpod.log import fields, get_logger
from pairpod.recording import asciicast
from pairpod.recording.files import day_folder
from pairpod.recording.frames import Kind, encode
from pairpod.recording.writer import RecordingWriter

log = get_logger("recording")


@dataclass(frozen=True)
class SessionInfo:
    """Who and what a recorded channel belongs to."""

    user: str
    conn_id: str
    remote_addr: str
    environment: str

    def log_fields(self, **extra: Any) -> dict[str, Any]:
        """Log fields naming the connection."""
        return fields(conn=self.conn_id, user=self.user, remote=self.remote_addr, **extra)

    def report_fields(self) -> dict[str, str]:
        """What the worker's reports about this channel carry (for the log)."""
        return {"conn": self.conn_id, "user": self.user, "remote": self.remote_addr}


def rfc3339(when: float) -> str:
    """A UTC timestamp such as ``2026-01-02T03:04:05.678Z``."""
    moment = datetime.datetime.fromtimestamp(when, datetime.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class CastRecording:
    """A PTY session written as an asciicast v2 file.

    The loop side appends events to a deque (thread-safe for one appender and
    one taker) and schedules one send job at a time; the writer thread frames
    everything queued and sends it to the worker. At most ``buffer`` bytes
    wait; beyond that events are dropped, and the file says where and how many.
    """

    def __init__(
        self,
        writer: RecordingWriter,
        recording: int,
        path: Path,
        header: bytes,
        *,
        info: SessionInfo,
        max_bytes: int,
        record_input: bool,
        buffer: int,
    ) -> None:
        self.path = path
        self._writer = writer
        self._id = recording
        self._info = info
        self._record_input = record_input
        self._buffer = buffer
        self._start = time.monotonic()
        self._events: collections.deque[tuple[float, Kind, bytes]] = collections.deque()
        # Each counter is written by one thread only: the loop counts what it queued
        # and dropped, the writer thread what it took and reported.
        self._queued_bytes = 0
        self._taken_bytes = 0
        self._dropped = 0
        self._reported_drops = 0
        self._dropping = False
        self._scheduled = False
        self._stopped = False  # set when the worker reports the file cut or failed
        spec = json.dumps(
            {
                "path": str(path),
                "header": header.decode(),
                "max_bytes": max_bytes,
                "fields": info.report_fields(),
            }
        ).encode()
        writer.watch(recording, self._on_report)
        writer.submit(lambda: writer.send(encode(Kind.OPEN, recording, 0.0, spec)))

    # --- on the event loop (the process's hot path) ---------------------------------

    def output(self, stream: Stream, data: bytes) -> None:
        """Queue an output event."""
        self._queue(Kind.OUTPUT, data)

    def input(self, data: bytes) -> None:
        """Queue an input event when input is recorded."""
        if self._record_input:
            self._queue(Kind.INPUT, data)

    def resize(self, cols: int, rows: int) -> None:
        """Queue a resize event."""
        self._queue(Kind.RESIZE, asciicast.resize_data(cols, rows).encode())

    def ended(self, status: ExitStatus | None) -> None:
        """Queue the file's closing (after whatever is still queued)."""
        elapsed = time.monotonic() - self._start
        self._writer.submit(lambda: self._writer.send(encode(Kind.CLOSE, self._id, elapsed)))

    def _queue(self, kind: Kind, data: bytes) -> None:
        if self._stopped:  # cut, or the disk failed: nothing more to keep
            return
        if self._queued_bytes - self._taken_bytes > self._buffer:
            if self._dropped == 0:
                log.warning(
                    "recording.behind",
                    extra=self._info.log_fields(
                        file=str(self.path), reason="the disk is not keeping up; events dropped"
                    ),
                )
            self._dropped += 1
            if not self._dropping:
                # Marks where the gap is; the writer thread adds how many were lost.
                self._dropping = True
                self._events.append((time.monotonic() - self._start, Kind.GAP, b""))
            return
        self._dropping = False
        self._queued_bytes += len(data)
        self._events.append((time.monotonic() - self._start, kind, data))
        if not self._scheduled:
            self._scheduled = True
            self._writer.submit(self._send)

    def _on_report(self, report: dict[str, Any]) -> None:
        if report["event"] in ("recording.cut", "recording.stopped"):
            self._stopped = True

    # --- on the writer thread --------------------------------------------------------

    def _send(self) -> None:
        # Cleared before taking: an event queued meanwhile schedules another send.
        self._scheduled = False
        events = self._events
        frames = []
        taken = 0
        while events:
            elapsed, kind, data = events.popleft()
            taken += len(data)
            if kind is Kind.GAP:
                lost = self._dropped - self._reported_drops
                self._reported_drops += lost
                data = str(lost).encode()
            frames.append(encode(kind, self._id, elapsed, data))
        self._taken_bytes += taken
        self._writer.send(b"".join(frames))


class AuditRecord:
    """A channel without a PTY, summed up in one JSON line of the day's audit.jsonl."""

    FILE_NAME = "audit.jsonl"

    def __init__(
        self, writer: RecordingWriter, root: Path, *, info: SessionInfo, kind: str, command: str | None
    ) -> None:
        self._writer = writer
        self._root = root
        self._info = info
        self._kind = kind
        self._command = command
        self._started = time.time()
        self._clock = time.monotonic()
        self._bytes_in = 0
        self._bytes_out = 0

    def output(self, stream: Stream, data: bytes) -> None:
        """Count output bytes."""
        self._bytes_out += len(data)

    def input(self, data: bytes) -> None:
        """Count input bytes."""
        self._bytes_in += len(data)

    def resize(self, cols: int, rows: int) -> None:
        """Nothing to note without a PTY."""

    def ended(self, status: ExitStatus | None) -> None:
        """Queue the channel's audit line."""
        line = {
            "time": rfc3339(self._started),
            "conn": self._info.conn_id,
            "user": self._info.user,
            "remote": self._info.remote_addr,
            "environment": self._info.environment,
            "kind": self._kind,
            "command": self._command,
            "exit_code": status.code if status is not None else None,
            "exit_signal": status.signal if status is not None else None,
            "bytes_in": self._bytes_in,
            "bytes_out": self._bytes_out,
            "duration": round(time.monotonic() - self._clock, 3),
        }
        path = day_folder(self._root, self._started) / self.FILE_NAME
        payload = json.dumps(
            {
                "path": str(path),
                "line": json.dumps(line, ensure_ascii=False) + "\n",
                "fields": self._info.report_fields(),
            }
        ).encode()
        self._writer.submit(lambda: self._writer.send(encode(Kind.AUDIT, 0, 0.0, payload)))
