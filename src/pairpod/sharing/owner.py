"""The owner's side of a shared terminal, as a session channel drives it.

:class:`OwnerRelay` fits the relay seam of the SSH layer: the owner's
keystrokes and window changes go through the shared Terminal (which merges
everyone's input and sizes the PTY for all), output comes back through the
owner's Sink.
"""

from __future__ import annotations

from pairpod.backends.base import Process
from pairpod.sharing.service import SharingService
from pairpod.sharing.terminal import Terminal
from pairpod.sharing.tokens import SharedSession


class OwnerRelay:
    """The owner's channel attached to a shared Terminal it registered."""

    def __init__(
        self, process: Process, terminal: Terminal, service: SharingService, shared: SharedSession[Terminal]
    ) -> None:
        self._process = process
        self._terminal = terminal
        self._service = service
        self.shared = shared

    async def start(self) -> None:
        """Pump the program's output to everyone until it ends."""
        await self._terminal.run()

    async def input(self, data: bytes) -> None:
        """The owner's keystrokes, merged with the read-write joiners'."""
        await self._terminal.owner.send_input(data)

    async def resize(self, cols: int, rows: int, pixel_width: int, pixel_height: int) -> None:
        """The Terminal sizes the PTY for everyone (smallest read-write participant)."""
        self._terminal.owner.resize(cols, rows)

    async def signal(self, name: str) -> None:
        """Signal the shared program."""
        await self._process.signal(name)

    def pause_output(self) -> None:
        """The owner is not reading: the Terminal holds the program back."""
        self._terminal.owner.pause_writing()

    def resume_output(self) -> None:
        """The owner caught up."""
        self._terminal.owner.resume_writing()

    async def end_of_write(self) -> None:
        """Left alone: the other participants still read the terminal."""

    def leave(self) -> None:
        """The owner's channel closed."""
        self._terminal.owner.leave()

    def finish(self) -> None:
        """The program ended: forget the shared session and its links."""
        self._service.close_session(self.shared)
