"""A Process that reports what passes through it, for recorders and activity clocks.

Wrapping the Process (rather than the SSH channel or the sharing Terminal) is
the one place that sees a PTY's whole output, every size actually applied and
every byte of input, whether the session is shared or not: the Terminal and
the direct relay both talk to the Process.
"""

from __future__ import annotations

from typing import Protocol

from pairpod.backends.base import ExitStatus, Process, Stream


class ProcessObserver(Protocol):
    """Told about a process's traffic; every call must be cheap (it is on the hot path)."""

    def output(self, stream: Stream, data: bytes) -> None:
        """The program wrote ``data``."""

    def input(self, data: bytes) -> None:
        """``data`` was sent to the program."""

    def resize(self, cols: int, rows: int) -> None:
        """The PTY now has this size."""

    def ended(self, status: ExitStatus | None) -> None:
        """The program ended (``None``: killed before its status was known). Once."""


class ObservedProcess(Process):
    """Delegates to a Process and tells its observers about the traffic."""

    def __init__(self, process: Process, observers: list[ProcessObserver]) -> None:
        self.inner = process
        self._observers = observers
        self._ended = False

    async def read(self, stream: Stream, size: int = 65536) -> bytes:
        """Read from the program, reporting what was read."""
        data = await self.inner.read(stream, size)
        if data:
            for observer in self._observers:
                observer.output(stream, data)
        return data

    async def write(self, data: bytes) -> None:
        """Send input, reporting it."""
        for observer in self._observers:
            observer.input(data)
        await self.inner.write(data)

    async def write_eof(self) -> None:
        """Close the program's input."""
        await self.inner.write_eof()

    async def close_output(self) -> None:
        """Close the program's output (the client's stdout closed)."""
        await self.inner.close_output()

    async def resize(self, cols: int, rows: int, pixel_width: int = 0, pixel_height: int = 0) -> None:
        """Resize the PTY, reporting the new size."""
        await self.inner.resize(cols, rows, pixel_width, pixel_height)
        for observer in self._observers:
            observer.resize(cols, rows)

    async def signal(self, name: str) -> None:
        """Deliver a signal."""
        await self.inner.signal(name)

    async def wait(self) -> ExitStatus:
        """Wait for the end, reporting the status."""
        status = await self.inner.wait()
        self._end(status)
        return status

    async def kill(self) -> None:
        """End the program; observers learn it ended if they had not yet."""
        try:
            await self.inner.kill()
        finally:
            self._end(None)

    def _end(self, status: ExitStatus | None) -> None:
        if self._ended:
            return
        self._ended = True
        for observer in self._observers:
            observer.ended(status)
