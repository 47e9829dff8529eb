"""One recorded channel: an asciicast file (PTY) or an audit line (no PTY).

The methods a session's process calls (``output``, ``input``, ``resize``,
``ended``) only take the time and queue a job; formatting and writing happen
on the writer thread (the ``_write_*`` methods).
"""

from __future__ import annotations

import collections
import datetime
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pairpod.backends.base import ExitStatus, Stream
from pairpod.log import fields, get_logger
from pairpod.recording import asciicast
from pairpod.recording.files import day_folder, make_private_dir, open_private, write_all
from pairpod.recording.writer import RecordingWriter

log = get_logger("recording")

# The event the loop queues where it had to drop events (never written as such).
_GAP = "gap"
# Room kept under max_bytes for the line that says where the recording was cut.
_CUT_RESERVE = 256


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


def rfc3339(when: float) -> str:
    """A UTC timestamp such as ``2026-01-02T03:04:05.678Z``."""
    moment = datetime.datetime.fromtimestamp(when, datetime.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class CastRecording:
    """A PTY session written as an asciicast v2 file.

    The loop side appends events to a deque (thread-safe for one appender and
    one taker) and schedules one drain job at a time; the writer thread takes
    everything queued, merges output events less than ``MERGE_WINDOW`` apart
    (a flood read 4 KiB at a time becomes a few large events), formats them
    and writes them in one system call. At most ``buffer`` bytes wait for the
    disk; beyond that events are dropped, and the file says where.
    """

    MERGE_WINDOW = 0.01  # seconds: below what a replay can show
    # Largest merged event. The writer holds the GIL while it formats an event;
    # small pieces hand it back to the event loop often (large ones measured slower).
    MERGE_BYTES = 256 * 1024

    def __init__(
        self,
        writer: RecordingWriter,
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
        self._info = info
        self._max_bytes = max_bytes
        self._record_input = record_input
        self._buffer = buffer
        self._start = time.monotonic()
        self._events: collections.deque[tuple[float, str, bytes | str]] = collections.deque()
        # Each counter is written by one thread only: the loop counts what it queued
        # and dropped, the writer what it took.
        self._queued_bytes = 0
        self._taken_bytes = 0
        self._dropped = 0
        self._dropping = False
        self._scheduled = False
        # Writer-thread state.
        self._fd: int | None = None
        self._written = 0
        self._lines: list[bytes] = []
        self._noted_drops = 0
        self._stopped = False
        self._output_text = asciicast.TextDecoder()
        self._input_text = asciicast.TextDecoder()
        writer.submit(lambda: self._write_open(header))

    # --- on the event loop (the process's hot path) ---------------------------------

    def output(self, stream: Stream, data: bytes) -> None:
        """Queue an output event."""
        self._queue(asciicast.OUTPUT, data)

    def input(self, data: bytes) -> None:
        """Queue an input event when input is recorded."""
        if self._record_input:
            self._queue(asciicast.INPUT, data)

    def resize(self, cols: int, rows: int) -> None:
        """Queue a resize event."""
        self._queue(asciicast.RESIZE, asciicast.resize_data(cols, rows))

    def ended(self, status: ExitStatus | None) -> None:
        """Queue the file's closing (after whatever is still queued)."""
        self._writer.submit(self._write_close)

    def _queue(self, code: str, data: bytes | str) -> None:
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
                # Marks where the gap is; the writer says there how many were lost.
                self._dropping = True
                self._events.append((time.monotonic() - self._start, _GAP, ""))
            return
        self._dropping = False
        self._queued_bytes += len(data)
        self._events.append((time.monotonic() - self._start, code, data))
        if not self._scheduled:
            self._scheduled = True
            self._writer.submit(self._drain)

    # --- on the writer thread --------------------------------------------------------

    def _write_open(self, header: bytes) -> None:
        try:
            make_private_dir(self.path.parent)
            self._fd = open_private(self.path)
        except OSError as error:
            self._stop(f"cannot create the file: {error.strerror or error}")
            return
        self._write(header)
        self._flush()
        log.info("recording.started", extra=self._info.log_fields(file=str(self.path)))

    def _drain(self) -> None:
        # Cleared before taking: an event queued meanwhile schedules another drain.
        self._scheduled = False
        events = self._events
        taken = 0
        group: list[tuple[float, str, bytes | str]] = []
        group_bytes = 0
        while events:
            event = events.popleft()
            taken += len(event[2])
            if group and self._joins(group[0], event, group_bytes):
                group.append(event)
                group_bytes += len(event[2])
                continue
            self._write_group(group)
            group, group_bytes = [event], len(event[2])
        self._write_group(group)
        self._taken_bytes += taken
        self._flush()

    def _joins(
        self, first: tuple[float, str, bytes | str], event: tuple[float, str, bytes | str], group_bytes: int
    ) -> bool:
        """Whether ``event`` may be merged into the output event that began with ``first``."""
        return (
            first[1] == asciicast.OUTPUT
            and event[1] == asciicast.OUTPUT
            and event[0] - first[0] < self.MERGE_WINDOW
            and group_bytes + len(event[2]) <= self.MERGE_BYTES
        )

    def _write_group(self, group: list[tuple[float, str, bytes | str]]) -> None:
        if not group:
            return
        elapsed, code, data = group[0]
        if len(group) > 1:
            data = b"".join(part for _, _, part in group if isinstance(part, bytes))
        self._write_event(elapsed, code, data)

    def _write_event(self, elapsed: float, code: str, data: bytes | str) -> None:
        if self._stopped or self._fd is None:
            return
        if code == _GAP:
            lost = self._dropped - self._noted_drops
            self._noted_drops += lost
            code, data = (
                asciicast.OUTPUT,
                (f"\r\n[pairpod: {lost} events lost here: the recording fell behind]\r\n"),
            )
        if isinstance(data, bytes):
            decoder = self._input_text if code == asciicast.INPUT else self._output_text
            data = decoder.decode(data)
        line = asciicast.event(elapsed, code, data)
        room = self._max_bytes - _CUT_RESERVE - self._written
        if len(line) > room:
            # Keep the part of the last event that fits, then say where it was cut.
            if code == asciicast.OUTPUT:
                while data and len(line) > room:
                    data = data[: int(len(data) * room / len(line) * 0.9)]
                    line = asciicast.event(elapsed, code, data)
                if data:
                    self._write(line)
            self._write(
                asciicast.event(
                    elapsed,
                    asciicast.OUTPUT,
                    f"\r\n[pairpod: recording cut here: max_bytes ({self._max_bytes}) reached]\r\n",
                )
            )
            self._flush()
            log.info(
                "recording.cut", extra=self._info.log_fields(file=str(self.path), max_bytes=self._max_bytes)
            )
            self._close_file()
            self._stopped = True
            return
        self._write(line)

    def _write(self, line: bytes) -> None:
        """Add a line to what the next flush writes."""
        self._lines.append(line)
        self._written += len(line)

    def _flush(self) -> None:
        lines, self._lines = self._lines, []
        if self._fd is None or not lines:
            return
        try:
            write_all(self._fd, b"".join(lines))
        except OSError as error:
            self._stop(error.strerror or str(error))

    def _stop(self, reason: str) -> None:
        """Give up on this recording; the session itself goes on."""
        self._stopped = True
        self._close_file()
        log.warning("recording.stopped", extra=self._info.log_fields(file=str(self.path), reason=reason))

    def _close_file(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                os.close(fd)
            except OSError as error:
                log.warning(
                    "recording.stopped",
                    extra=self._info.log_fields(file=str(self.path), reason=error.strerror or str(error)),
                )

    def _write_close(self) -> None:
        if self._fd is not None:
            self._flush()
        if self._fd is not None:
            self._close_file()
            log.info(
                "recording.finished", extra=self._info.log_fields(file=str(self.path), bytes=self._written)
            )


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
        data = json.dumps(line, ensure_ascii=False).encode() + b"\n"
        self._writer.submit(lambda: self._write_line(data))

    def _write_line(self, data: bytes) -> None:
        folder = day_folder(self._root, self._started)
        path = folder / self.FILE_NAME
        try:
            make_private_dir(folder)
            fd = open_private(path, append=True)
            try:
                write_all(fd, data)
            finally:
                os.close(fd)
        except OSError as error:
            log.warning(
                "recording.stopped",
                extra=self._info.log_fields(file=str(path), reason=error.strerror or str(error)),
            )
