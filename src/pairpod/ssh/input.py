"""A session channel's input, in the order the client sent it: data, window changes, EOF.

sshd applies a window change before any input that follows it; so does this
queue. What it holds is bounded: past a high mark of queued bytes the client
is paused until the program has taken enough, and a flood of window changes
keeps only the latest past a cap.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

# Pause the client when this much input is queued for a slow program.
_HIGH_WATER = 1 << 20
_LOW_WATER = 1 << 18
# Data items joined into one write at most.
_CHUNK = 1 << 18
# Window changes waiting at most; past that (a client flooding them) only the
# latest is kept, applied in place of the last one queued.
_MAX_QUEUED_RESIZES = 64


@dataclass(frozen=True)
class WindowSize:
    """A window change, queued with the input so it reaches the program in order."""

    cols: int
    rows: int
    pixel_width: int
    pixel_height: int


#: What the queue hands out: data, a window change, or None for EOF.
InputItem = bytes | WindowSize | None


class InputQueue:
    """Input of one channel, with the client paused while too much waits."""

    def __init__(self, pause_reading: Callable[[], None], resume_reading: Callable[[], None]) -> None:
        self._queue: asyncio.Queue[InputItem] = asyncio.Queue()
        self._pause_reading = pause_reading
        self._resume_reading = resume_reading
        self._held: InputItem = None
        self._holding = False
        self._resizes = 0
        self._resize_overflow: WindowSize | None = None
        self._queued = 0
        self._paused = False

    def data(self, data: bytes) -> None:
        """Client data; pauses the client past the high mark."""
        self._queue.put_nowait(data)
        self._queued += len(data)
        if not self._paused and self._queued > _HIGH_WATER:
            self._paused = True
            self._pause_reading()

    def eof(self) -> None:
        """The client's EOF, after everything queued."""
        self._queue.put_nowait(None)

    def resize(self, size: WindowSize) -> None:
        """A window change, in order with the data."""
        if self._resizes >= _MAX_QUEUED_RESIZES:
            self._resize_overflow = size
            return
        self._resizes += 1
        self._queue.put_nowait(size)

    def taken(self, size: int) -> None:
        """``size`` bytes reached the program; resume the client below the low mark."""
        self._queued -= size
        if self._paused and self._queued < _LOW_WATER:
            self._paused = False
            self._resume_reading()

    async def next(self) -> InputItem:
        """The next item; data joined with the data already queued behind it (fewer writes)."""
        item = await self._joined()
        if isinstance(item, WindowSize):
            self._resizes -= 1
            if self._resizes == 0 and self._resize_overflow is not None:
                item, self._resize_overflow = self._resize_overflow, None
        return item

    async def _take(self) -> InputItem:
        if self._holding:
            self._holding = False
            return self._held
        return await self._queue.get()

    async def _joined(self) -> InputItem:
        item = await self._take()
        if not isinstance(item, bytes) or self._queue.empty():
            return item
        parts = [item]
        size = len(item)
        while not self._queue.empty() and size < _CHUNK:
            more = self._queue.get_nowait()
            if not isinstance(more, bytes):
                self._held, self._holding = more, True  # EOF or a resize: next round, in order
                break
            parts.append(more)
            size += len(more)
        return b"".join(parts)
