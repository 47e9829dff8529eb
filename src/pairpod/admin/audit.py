"""The audit log: one JSON object per line for each thing that happened.

Events are buffered in memory and written by one background task, in a
worker thread, a few times a second: a slow or failing disk never holds up
the event loop. A failing disk is logged once (and its recovery once, with
how many lines were lost); the gateway goes on either way.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pairpod.errors import ConfigError
from pairpod.log import fields, get_logger

log = get_logger("audit")

# Lines are written at most this long after the event (a burst sooner: see _BATCH).
FLUSH_INTERVAL = 0.2
_BATCH = 256
# Lines held while the disk does not take them; beyond this they are dropped.
MAX_BUFFERED = 10_000


def rfc3339_now() -> str:
    """The current time in UTC, RFC 3339 with milliseconds (``2026-01-01T10:00:00.000Z``)."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class AuditLog:
    """Appends audit events to ``path`` (created mode 0600)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None
        self._lines: list[bytes] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._failing = False
        self._dropped = 0

    async def start(self) -> None:
        """Open the file (an error names ``audit.file``) and start the writer."""
        try:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as error:
            raise ConfigError(f"audit.file: cannot open {self.path}: {error.strerror or error}") from None
        self._task = asyncio.ensure_future(self._writer())

    def write(self, event: str, conn: str | None = None, **values: Any) -> None:
        """Record one event (fields that are None are left out). Never blocks."""
        if len(self._lines) >= MAX_BUFFERED:
            self._lost(1, "buffer full")
            return
        entry = {"time": rfc3339_now(), "event": event, "conn": conn}
        entry.update(values)
        line = json.dumps({k: v for k, v in entry.items() if v is not None}, default=str)
        self._lines.append(line.encode() + b"\n")
        if len(self._lines) == 1 or len(self._lines) >= _BATCH:
            self._wake.set()

    async def stop(self) -> None:
        """Write what is buffered and close the file."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._flush()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    async def _writer(self) -> None:
        while True:
            await self._wake.wait()
            if len(self._lines) < _BATCH:
                await asyncio.sleep(FLUSH_INTERVAL)  # gather a few events per write
            self._wake.clear()
            await self._flush()

    async def _flush(self) -> None:
        if not self._lines or self._fd is None:
            return
        lines, self._lines = self._lines, []
        try:
            await asyncio.to_thread(_write_all, self._fd, b"".join(lines))
        except OSError as error:
            self._lost(len(lines), error.strerror or str(error))
            return
        if self._failing:
            self._failing = False
            log.warning("audit.resumed", extra=fields(file=str(self.path), lost_lines=self._dropped))
            self._dropped = 0

    def _lost(self, count: int, reason: str) -> None:
        self._dropped += count
        if not self._failing:
            self._failing = True
            log.error(
                "audit.write_failed",
                extra=fields(
                    file=str(self.path),
                    reason=reason,
                    effect="audit lines are dropped until writing works again",
                ),
            )


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]
