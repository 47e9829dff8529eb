"""The seam between an SSH session channel and what it drives.

A :class:`Relay` is what the channel adapter (:mod:`pairpod.ssh.session`)
hands input, window changes, signals and flow control to. Two kinds exist:
:class:`DirectRelay` here (the channel straight to a backend Process) and
:class:`pairpod.sharing.owner.OwnerRelay` (the channel as the owner of a
shared Terminal). The adapter never asks which one it has.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Protocol

from pairpod.backends.base import Process, Stream
from pairpod.log import get_logger
from pairpod.traffic import Traffic

log = get_logger("channel")

_CHUNK = 1 << 18


class Relay(Protocol):
    """What a session channel drives once its program runs."""

    #: The shared session this relay owns (None: not shared); the admin view lists it.
    shared: Any

    async def start(self) -> None:
        """Pump the program's output to the client until it ends."""

    async def input(self, data: bytes) -> None:
        """Client keystrokes / stdin bytes for the program."""

    async def resize(self, cols: int, rows: int, pixel_width: int, pixel_height: int) -> None:
        """The client's window changed."""

    async def signal(self, name: str) -> None:
        """Deliver a signal (an RFC 4254 name) to the program."""

    def pause_output(self) -> None:
        """The client is not keeping up: stop sending it output."""

    def resume_output(self) -> None:
        """The client caught up."""

    async def end_of_write(self) -> None:
        """The client's own stdout closed (``eow@openssh.com``)."""

    def leave(self) -> None:
        """The channel closed while the program may still run."""

    def finish(self) -> None:
        """The program ended: let go of what the relay holds."""


class DirectRelay:
    """A channel relayed straight to one backend Process (stdout and stderr apart)."""

    shared = None

    def __init__(
        self,
        process: Process,
        write: Callable[[bytes], None],
        write_stderr: Callable[[bytes], None],
        traffic: Traffic,
        log_fields: Callable[..., dict[str, Any]],
    ) -> None:
        self._process = process
        self._write = write
        self._write_stderr = write_stderr
        self._traffic = traffic
        self._log_fields = log_fields
        self._can_write = asyncio.Event()
        self._can_write.set()

    async def start(self) -> None:
        """Pump stdout and stderr until both end."""
        await asyncio.gather(
            self._pump(Stream.STDOUT, self._write), self._pump(Stream.STDERR, self._write_stderr)
        )

    async def _pump(self, stream: Stream, send: Callable[[bytes], None]) -> None:
        while data := await self._process.read(stream, _CHUNK):
            self._traffic.sent += len(data)
            send(data)
            if not self._can_write.is_set():
                await self._can_write.wait()

    async def input(self, data: bytes) -> None:
        """Write to the program's stdin."""
        await self._process.write(data)

    async def resize(self, cols: int, rows: int, pixel_width: int, pixel_height: int) -> None:
        """Resize the program's PTY."""
        try:
            await self._process.resize(cols, rows, pixel_width, pixel_height)
        except Exception:
            # A size the backend cannot apply must not cost the session its input.
            log.warning("channel.resize_failed", exc_info=True, extra=self._log_fields())

    async def signal(self, name: str) -> None:
        """Signal the program."""
        await self._process.signal(name)

    def pause_output(self) -> None:
        """Stop pumping output."""
        self._can_write.clear()

    def resume_output(self) -> None:
        """Pump output again."""
        self._can_write.set()

    async def end_of_write(self) -> None:
        """Close the program's output, as sshd does: it ends on SIGPIPE."""
        await self._process.close_output()

    def leave(self) -> None:
        """Nothing to let go of: the adapter kills the process."""

    def finish(self) -> None:
        """Nothing to let go of."""
