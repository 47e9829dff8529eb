"""Writing a PTY master without a pipe transport (which uvloop would make read it too).

uvloop's write-pipe transport reads its descriptor to notice the far end
closing, and drops what it reads: on a PTY master that is the program's
output, so a shell's answer went missing at random. This writer only writes,
with the loop's ``add_writer`` (asyncio and uvloop both offer it) while the
terminal's input queue is full.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections import deque

# Input waiting for a full terminal before ``drain`` holds its writer back (as
# a transport's default high-water mark).
_HIGH_WATER = 64 * 1024


class PtyWriter:
    """Writes to a non-blocking descriptor it owns: ``write``, ``drain``, ``close``."""

    def __init__(self, fd: int) -> None:
        os.set_blocking(fd, False)
        self.fd = fd
        self._loop = asyncio.get_running_loop()
        self._pending: deque[memoryview] = deque()
        self._size = 0
        self._closed = False
        self._drained: asyncio.Future[None] | None = None

    def is_closing(self) -> bool:
        """Whether :meth:`close` was called (or the descriptor failed)."""
        return self._closed

    def write(self, data: bytes) -> None:
        """Write now as much as the terminal takes; queue the rest."""
        if self._closed or not data:
            return
        view = memoryview(data)
        if not self._pending:
            try:
                written = os.write(self.fd, data)
            except BlockingIOError:
                written = 0
            except OSError:
                self.close()  # the program's side is gone: input has nowhere to go
                return
            if written == len(data):
                return
            view = view[written:]  # no copy of what is left
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
        self._wake()

    def _wake(self) -> None:
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    async def drain(self) -> None:
        """Wait while more than the high-water mark waits for the terminal."""
        while self._size > _HIGH_WATER and not self._closed:
            # One future for every waiter; shielded, so one waiter cancelled cancels no other.
            if self._drained is None or self._drained.done():
                self._drained = self._loop.create_future()
            await asyncio.shield(self._drained)

    def close(self) -> None:
        """Drop what waits and close the descriptor."""
        if self._closed:
            return
        self._closed = True
        if self._pending:
            self._loop.remove_writer(self.fd)
            self._pending.clear()
            self._size = 0
        with contextlib.suppress(OSError):
            os.close(self.fd)
        self._wake()
