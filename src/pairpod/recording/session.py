"""One recorded channel: an asciicast file (PTY) or an audit line (no PTY).

The methods a session's process calls (``output``, ``input``, ``resize``,
``ended``) only take the time and queue a job; formatting and writing happen
on the writer thread (the ``_write_*`` methods).
"""

from __future__ import annotations

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
    """A PTY session written as an asciicast v2 file."""

    def __init__(
        self,
        writer: RecordingWriter,
        path: Path,
        header: bytes,
        *,
        info: SessionInfo,
        max_bytes: int,
        record_input: bool,
    ) -> None:
        self.path = path
        self._writer = writer
        self._info = info
        self._max_bytes = max_bytes
        self._record_input = record_input
        self._start = time.monotonic()
        self._dropped = 0  # events refused by the full queue (loop side)
        # Writer-thread state.
        self._fd: int | None = None
        self._written = 0
        self._noted_drops = 0
        self._stopped = False
        self._output_text = asciicast.TextDecoder()
        self._input_text = asciicast.TextDecoder()
        writer.submit_always(lambda: self._write_open(header))

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
        """Queue the file's closing."""
        self._writer.submit_always(self._write_close)

    def _queue(self, code: str, data: bytes | str) -> None:
        elapsed = time.monotonic() - self._start
        if not self._writer.submit(lambda: self._write_event(elapsed, code, data)):
            if self._dropped == 0:
                log.warning(
                    "recording.behind",
                    extra=self._info.log_fields(
                        file=str(self.path), reason="the disk is not keeping up; events dropped"
                    ),
                )
            self._dropped += 1

    # --- on the writer thread --------------------------------------------------------

    def _write_open(self, header: bytes) -> None:
        try:
            make_private_dir(self.path.parent)
            self._fd = open_private(self.path)
        except OSError as error:
            self._stop(f"cannot create the file: {error.strerror or error}")
            return
        self._write(header)
        log.info("recording.started", extra=self._info.log_fields(file=str(self.path)))

    def _write_event(self, elapsed: float, code: str, data: bytes | str) -> None:
        if self._stopped or self._fd is None:
            return
        if self._dropped > self._noted_drops:
            lost = self._dropped - self._noted_drops
            self._noted_drops = self._dropped
            self._write(
                asciicast.event(
                    elapsed,
                    asciicast.OUTPUT,
                    f"\r\n[pairpod: {lost} events lost here: the recording fell behind]\r\n",
                )
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
            log.info(
                "recording.cut", extra=self._info.log_fields(file=str(self.path), max_bytes=self._max_bytes)
            )
            self._close_file()
            self._stopped = True
            return
        self._write(line)

    def _write(self, line: bytes) -> None:
        if self._fd is None:
            return
        try:
            write_all(self._fd, line)
        except OSError as error:
            self._stop(error.strerror or str(error))
            return
        self._written += len(line)

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
        self._writer.submit_always(lambda: self._write_line(data))

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
