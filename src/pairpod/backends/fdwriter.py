"""Writing a program's input (a pipe or a PTY master) without a pipe transport.

Two faults of uvloop's write-pipe transport make the gateway write the
descriptor itself. It reads its descriptor to notice the far end closing and
drops what it reads: on a PTY master that is the program's output, so a
shell's answer went missing at random. And closing it closes the descriptor
twice (libuv's handle, then the file object): when another thread opened
something in between, that thread lost its descriptor. This writer owns its
descriptor, closes it once, and only writes, with the loop's ``add_writer``
(asyncio and uvloop both offer it) while the reader's side is full.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import os
from collections import deque

# Input waiting for a full pipe or terminal before ``drain`` holds its writer back (as
# a transport's default high-water mark).
_HIGH_WATER = 64 * 1024


class _Writing(enum.Enum):
    """Where an :class:`FdWriter`'s descriptor is."""

    OPEN = "open"
    FINISHING = "finishing"  # no more writes; closed once what waits is written
    CLOSED = "closed"


class FdWriter:
    """Writes to a non-blocking descriptor it owns: ``write``, ``drain``, ``finish``, ``close``."""

    def __init__(self, fd: int) -> None:
        os.set_blocking(fd, False)
        self.fd = fd
        self._loop = asyncio.get_running_loop()
        self._pending: deque[memoryview] = deque()
        self._size = 0
        self._state = _Writing.OPEN
        self._drained: asyncio.Future[None] | None = None

    def is_closing(self) -> bool:
        """Whether writing has ended: :meth:`finish` or :meth:`close` was called, or the descriptor failed."""
        return self._state is not _Writing.OPEN

    def write(self, data: bytes) -> None:
        """Write now as much as the descriptor takes; queue the rest."""
        if self._state is not _Writing.OPEN or not data:
            return
        if self._pending:
            view = memoryview(data)
        else:
            try:
                written = os.write(self.fd, data)
            except BlockingIOError:
                written = 0
            except OSError:
                self.close()  # the program's side is gone: input has nowhere to go
                return
            if written == len(data):
                return
            view = memoryview(data)[written:]  # no copy of what is left
            self._loop.add_writer(self.fd, self._flush)
        self._pending.append(view)
        self._size += len(view)

    def _flush(self) -> None:
        while self._pending:
            chunk = self._pending[0]
            try:
                written = os.write(self.fd, chunk)
            except BlockingIOError:
                return
            except OSError:
                self.close()
                return
            self._size -= written
            if written < len(chunk):
                self._pending[0] = chunk[written:]
                return
            self._pending.popleft()
        self._loop.remove_writer(self.fd)
        if self._state is _Writing.FINISHING:
            self.close()
        self._wake()

    def _wake(self) -> None:
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    async def drain(self) -> None:
        """Wait while more than the high-water mark waits for the reader."""
        while self._size > _HIGH_WATER and self._state is not _Writing.CLOSED:
            # One future for every waiter; shielded, so one waiter cancelled cancels no other.
            if self._drained is None or self._drained.done():
                self._drained = self._loop.create_future()
            await asyncio.shield(self._drained)

    def finish(self) -> None:
        """Accept no more writes; close the descriptor (the end of input) once what waits is written."""
        if self._state is not _Writing.OPEN:
            return
        self._state = _Writing.FINISHING
        if not self._pending:
            self.close()

    def close(self) -> None:
        """Drop what waits and close the descriptor."""
        if self._state is _Writing.CLOSED:
            return
        self._state = _Writing.CLOSED
        if self._pending:
            self._loop.remove_writer(self.fd)
            self._pending.clear()
            self._size = 0
        with contextlib.suppress(OSError):
            os.close(self.fd)
        self._wake()
