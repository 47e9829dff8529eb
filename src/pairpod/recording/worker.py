"""The recording worker: a child process of the gateway that formats and writes recordings.

Formatting asciicast (UTF-8 decoding, JSON escaping) costs CPU per byte; in
the gateway's process it would hold the GIL against the event loop that
relays every session (measured: a quarter of a PTY flood's throughput). Here
it runs on a core of its own. The gateway sends frames on stdin
(:mod:`pairpod.recording.frames`); the worker answers with one JSON status
line per notable event on stdout (started, finished, cut, stopped), which the
gateway logs.

    python -m pairpod.recording.worker
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pairpod.recording import asciicast
from pairpod.recording.files import make_private_dir, open_private, write_all
from pairpod.recording.frames import Frame, FrameDecoder, Kind

# Room kept under max_bytes for the line that says where the recording was cut.
_CUT_RESERVE = 256
# Output frames closer than this (seconds) and up to MERGE_BYTES become one event.
MERGE_WINDOW = 0.01
MERGE_BYTES = 256 * 1024
_READ = 1 << 20

Report = Callable[..., None]


class CastFile:
    """One asciicast file being written."""

    def __init__(self, path: Path, header: bytes, max_bytes: int, report: Report) -> None:
        self.path = path
        self._max_bytes = max_bytes
        self._report = report
        self._fd: int | None = None
        self._written = 0
        self._lines: list[bytes] = []
        self.stopped = False
        self._text = {Kind.OUTPUT: asciicast.TextDecoder(), Kind.INPUT: asciicast.TextDecoder()}
        try:
            make_private_dir(path.parent)
            self._fd = open_private(path)
        except OSError as error:
            self._stop(f"cannot create the file: {error.strerror or error}")
            return
        self._write(header)
        self.flush()
        report("recording.started", file=str(path))

    def event(self, elapsed: float, kind: Kind, data: bytes) -> None:
        """Add one event (output, input, resize or a gap note)."""
        if self.stopped:
            return
        if kind is Kind.GAP:
            code, text = (
                asciicast.OUTPUT,
                (f"\r\n[pairpod: {data.decode()} events lost here: the recording fell behind]\r\n"),
            )
        elif kind is Kind.RESIZE:
            code, text = asciicast.RESIZE, data.decode()
        else:
            code = asciicast.OUTPUT if kind is Kind.OUTPUT else asciicast.INPUT
            text = self._text[kind].decode(data)
        line = asciicast.event(elapsed, code, text)
        room = self._max_bytes - _CUT_RESERVE - self._written
        if len(line) <= room:
            self._write(line)
            return
        # Keep the part of the last event that fits, then say where it was cut.
        if code == asciicast.OUTPUT:
            while text and len(line) > room:
                text = text[: int(len(text) * room / len(line) * 0.9)]
                line = asciicast.event(elapsed, code, text)
            if text:
                self._write(line)
        note = f"\r\n[pairpod: recording cut here: max_bytes ({self._max_bytes}) reached]\r\n"
        self._write(asciicast.event(elapsed, asciicast.OUTPUT, note))
        self.flush()
        self._report("recording.cut", file=str(self.path), max_bytes=self._max_bytes)
        self._close()
        self.stopped = True

    def _write(self, line: bytes) -> None:
        self._lines.append(line)
        self._written += len(line)

    def flush(self) -> None:
        """Write what was added, in one system call."""
        lines, self._lines = self._lines, []
        if self._fd is None or not lines:
            return
        try:
            write_all(self._fd, b"".join(lines))
        except OSError as error:
            self._stop(error.strerror or str(error))

    def _stop(self, reason: str) -> None:
        self.stopped = True
        self._close()
        self._report("recording.stopped", file=str(self.path), reason=reason)

    def _close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                os.close(fd)
            except OSError as error:
                self._report("recording.stopped", file=str(self.path), reason=error.strerror or str(error))

    def finish(self) -> None:
        """Write the rest and close the file."""
        self.flush()
        if self._fd is not None:
            self._close()
            self._report("recording.finished", file=str(self.path), bytes=self._written)


def append_audit(path: Path, line: bytes, report: Report, fields: dict[str, Any]) -> None:
    """Append one audit line to ``path`` (0600, in a 0700 folder)."""
    try:
        make_private_dir(path.parent)
        fd = open_private(path, append=True)
        try:
            write_all(fd, line)
        finally:
            os.close(fd)
    except OSError as error:
        report("recording.stopped", file=str(path), reason=error.strerror or str(error), **fields)


class Worker:
    """Applies frames to files; reports through ``emit`` (one JSON object per call)."""

    def __init__(self, emit: Callable[[dict[str, Any]], None]) -> None:
        self._emit = emit
        self._files: dict[int, CastFile] = {}
        self._fields: dict[int, dict[str, Any]] = {}

    def _reporter(self, recording: int) -> Report:
        def report(event: str, **values: Any) -> None:
            self._emit({"event": event, "recording": recording, **self._fields.get(recording, {}), **values})

        return report

    def handle(self, frames: list[Frame]) -> None:
        """Apply a batch of frames, merging close output frames of one recording."""
        index = 0
        touched: set[int] = set()
        while index < len(frames):
            frame = frames[index]
            index += 1
            if frame.kind in (Kind.OUTPUT, Kind.INPUT, Kind.RESIZE, Kind.GAP):
                cast = self._files.get(frame.recording)
                if cast is None:
                    continue
                data = frame.payload
                if frame.kind is Kind.OUTPUT:
                    parts = [data]
                    size = len(data)
                    while (
                        index < len(frames)
                        and frames[index].kind is Kind.OUTPUT
                        and frames[index].recording == frame.recording
                        and frames[index].elapsed - frame.elapsed < MERGE_WINDOW
                        and size + len(frames[index].payload) <= MERGE_BYTES
                    ):
                        parts.append(frames[index].payload)
                        size += len(frames[index].payload)
                        index += 1
                    data = b"".join(parts) if len(parts) > 1 else data
                cast.event(frame.elapsed, frame.kind, data)
                touched.add(frame.recording)
            elif frame.kind is Kind.OPEN:
                spec = json.loads(frame.payload)
                self._fields[frame.recording] = spec["fields"]
                self._files[frame.recording] = CastFile(
                    Path(spec["path"]),
                    spec["header"].encode(),
                    spec["max_bytes"],
                    self._reporter(frame.recording),
                )
            elif frame.kind is Kind.CLOSE:
                cast = self._files.pop(frame.recording, None)
                if cast is not None:
                    cast.finish()
                self._fields.pop(frame.recording, None)
                touched.discard(frame.recording)
            elif frame.kind is Kind.AUDIT:
                spec = json.loads(frame.payload)
                append_audit(
                    Path(spec["path"]), spec["line"].encode(), self._reporter(frame.recording), spec["fields"]
                )
        for recording in touched:
            cast = self._files.get(recording)
            if cast is not None:
                cast.flush()

    def finish(self) -> None:
        """Close every file (the gateway went away)."""
        for recording in list(self._files):
            self._files.pop(recording).finish()


def main() -> None:
    """Read frames from stdin until EOF."""
    out = sys.stdout

    def emit(message: dict[str, Any]) -> None:
        out.write(json.dumps(message) + "\n")
        out.flush()

    worker = Worker(emit)
    decoder = FrameDecoder()
    try:
        while data := os.read(0, _READ):
            worker.handle(decoder.feed(data))
    finally:
        worker.finish()


if __name__ == "__main__":  # pragma: no cover
    main()
