"""A program's buffered output, between what produces it and the reader.

This is the one home of output back-pressure: a :class:`FlowControl` counts
what waits in the pipes of one source (a local pipe or PTY, a Docker stream, a
Kubernetes exec) and stops that source past a high-water mark, so a slow
reader holds back the program rather than the gateway's memory; once the
reader has taken it below the low-water mark, the source is read again.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

# Output buffered per source before it is no longer read, and the level at
# which reading resumes.
HIGH_WATER = 1 << 20
LOW_WATER = 256 * 1024


class FlowControl:
    """Pauses a source while more than ``high`` bytes of its output wait, until below ``low``.

    Shared by every :class:`OutputPipe` one source feeds (stdout and stderr of
    one stream): the marks apply to what they hold together.
    """

    __slots__ = ("_pause", "_resume", "buffered", "high", "low", "paused")

    def __init__(
        self,
        pause: Callable[[], object],
        resume: Callable[[], object],
        *,
        high: int = HIGH_WATER,
        low: int = LOW_WATER,
    ) -> None:
        self._pause = pause
        self._resume = resume
        self.high = high
        self.low = low
        self.buffered = 0
        self.paused = False

    def grew(self, count: int) -> None:
        """``count`` more bytes wait: past the high-water mark, stop the source."""
        self.buffered += count
        if not self.paused and self.buffered > self.high:
            self.paused = True
            self._pause()

    def shrank(self, count: int) -> None:
        """``count`` bytes were taken (or dropped): below the low-water mark, read again."""
        self.buffered -= count
        if self.paused and self.buffered < self.low:
            self.paused = False
            self._resume()


class OutputPipe:
    """One output stream between its source and its reader.

    With a :class:`FlowControl`, every byte fed and taken is counted there.
    """

    __slots__ = ("chunks", "eof", "flow", "offset", "size", "waiter")

    def __init__(self, flow: FlowControl | None = None) -> None:
        self.flow = flow
        self.chunks: deque[bytes] = deque()
        self.offset = 0  # how much of chunks[0] was already read
        self.size = 0
        self.eof = False
        self.waiter: asyncio.Future[None] | None = None

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def feed(self, data: bytes) -> None:
        """Buffer output for the reader."""
        if data and not self.eof:
            self.chunks.append(data)
            self.size += len(data)
            self._wake()
            if self.flow is not None:
                self.flow.grew(len(data))

    def end(self) -> None:
        """No more output will come."""
        self.eof = True
        self._wake()

    def close(self) -> None:
        """The reader wants no more: drop what is buffered, end, ignore what follows."""
        self.drain()
        self.end()

    async def read(self, size: int) -> bytes:
        """Up to ``size`` buffered bytes; waits for some; ``b""`` at the end."""
        while not self.chunks:
            if self.eof:
                return b""
            self.waiter = asyncio.get_running_loop().create_future()
            try:
                await self.waiter
            finally:
                self.waiter = None
        chunk = self.chunks[0]
        start = self.offset
        if len(chunk) - start <= size:
            self.chunks.popleft()
            self.offset = 0
            data = chunk[start:] if start else chunk
            if self.chunks and len(data) + len(self.chunks[0]) <= size:
                # Several small chunks waiting: one larger read costs one copy
                # here but saves a relay round (and its packets) per chunk.
                parts = [data]
                total = len(data)
                while self.chunks and total + len(self.chunks[0]) <= size:
                    part = self.chunks.popleft()
                    parts.append(part)
                    total += len(part)
                data = b"".join(parts)
        else:
            # Slice without copying the rest: big chunks are read in pieces.
            self.offset = start + size
            data = bytes(memoryview(chunk)[start : start + size])
        self.size -= len(data)
        if self.flow is not None:
            self.flow.shrank(len(data))
        return data

    def drain(self) -> bytes:
        """Everything buffered, at once (for error messages)."""
        data = b"".join(self.chunks)[self.offset :]
        self.chunks.clear()
        self.offset = 0
        if self.flow is not None:
            self.flow.shrank(self.size)
        self.size = 0
        return data
