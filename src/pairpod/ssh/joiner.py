"""A joiner's SSH channel, attached to a live shared Terminal (no backend).

The Terminal may run in this process or on another replica: the channel sees
a :class:`~pairpod.sharing.joinable.Joinable` and, once attached, a
:class:`~pairpod.sharing.joinable.Seat` either way.
"""

from __future__ import annotations

from collections.abc import Callable

import asyncssh
from asyncssh.misc import TermModes

from pairpod.errors import PairpodError
from pairpod.sharing.joinable import Joinable, Seat
from pairpod.ssh.context import ChannelContext
from pairpod.ssh.input import InputQueue
from pairpod.ssh.request_limits import bounded_size, pty_refusal
from pairpod.ssh.sink import ChannelSink, exit_channel


class ViewerSession(asyncssh.SSHServerSession[bytes]):
    """A joiner's channel attached to a shared Terminal (here or on another replica)."""

    def __init__(
        self,
        context: ChannelContext,
        session: Joinable,
        name: str,
        sharing_event: Callable[..., None],
    ) -> None:
        self._context = context
        self._sharing_event = sharing_event
        self._session = session
        self._access = session.access
        self._name = name
        self._chan: asyncssh.SSHServerChannel[bytes] | None = None
        self._size: tuple[int, int] | None = None
        self._viewer: Seat | None = None
        self._paused = False
        self._closed = False
        self._input: InputQueue | None = None
        self._refusal: str | None = None

    def connection_made(self, chan: asyncssh.SSHServerChannel[bytes]) -> None:
        """Remember the channel and bound its write buffer."""
        self._chan = chan
        chan.set_write_buffer_limits(high=1 << 18, low=1 << 16)
        # Bounded like a login channel's input: past its high mark the joiner is paused
        # (the SSH window closes), so a program that reads nothing costs no memory here.
        self._input = InputQueue(chan.pause_reading, chan.resume_reading)

    def pty_requested(
        self, term_type: str, term_size: tuple[int, int, int, int], term_modes: TermModes
    ) -> bool:
        """A joiner needs a terminal: remember its size (within ``ssh.max_pty``)."""
        cols, rows, _, _ = term_size
        limit = self._context.config.ssh.max_pty
        refusal = pty_refusal(term_type, cols, rows, limit)
        if refusal is not None:
            assert self._chan is not None
            self._chan.write_stderr(f"pairpod: {refusal}\r\n".encode())
            return False
        size = bounded_size(cols, rows, 0, 0, limit)
        self._size = (size.cols, size.rows)
        return True

    def shell_requested(self) -> bool:
        """Joining is the shell request."""
        return True

    def exec_requested(self, command: str) -> bool:
        """A command makes no sense on a join link; say so at start."""
        self._refusal = "a join link runs no command: use plain ssh -t"
        return True

    def subsystem_requested(self, subsystem: str) -> bool:
        """Joiners get no subsystems."""
        return False

    def session_started(self) -> None:
        """Attach to the Terminal: the current screen at once, then live output."""
        assert self._chan is not None
        if self._refusal is None and self._size is None:
            self._refusal = "joining needs a terminal: use ssh -t"
        if self._refusal is not None:
            self._chan.write_stderr(f"pairpod: {self._refusal}\r\n".encode())
            exit_channel(self._chan, 1)
            return
        self._context.tasks.spawn(self._attach(self._chan))

    async def _attach(self, chan: asyncssh.SSHServerChannel[bytes]) -> None:
        # Attaching may ask another replica: the channel's events meanwhile are
        # kept (input queued, the latest size) and applied once seated.
        assert self._size is not None
        size = self._size
        try:
            sink = ChannelSink(chan, self._context.traffic)
            viewer = await self._session.attach(sink, name=self._name, cols=size[0], rows=size[1])
        except PairpodError as error:
            chan.write_stderr(f"pairpod: {error.user_message}\r\n".encode())
            exit_channel(chan, 1)
            return
        if self._closed:  # the joiner hung up while being seated
            viewer.leave()
            return
        self._viewer = viewer
        if self._size != size:
            viewer.resize(*self._size)
        if self._paused:
            viewer.pause_writing()
        self._sharing_event("join", name=self._name, access=self._access.value)
        await self._pump_input(viewer)

    async def _pump_input(self, viewer: Seat) -> None:
        assert self._input is not None
        while True:
            data = await self._input.next()
            if isinstance(data, bytes):  # only data is queued here
                await viewer.send_input(data)
                self._input.taken(len(data))

    def eof_received(self) -> bool:
        """A joiner's EOF does not end the shared program, nor the joiner's view."""
        return True

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        """Keystrokes: the Terminal merges read-write input and drops read-only input."""
        self._context.traffic.received += len(data)
        assert self._input is not None  # made with the channel, before any data
        self._input.data(data)

    def terminal_size_changed(self, width: int, height: int, pixwidth: int, pixheight: int) -> None:
        """The joiner's window changed (clamped to ``ssh.max_pty``)."""
        size = bounded_size(width, height, 0, 0, self._context.config.ssh.max_pty)
        self._size = (size.cols, size.rows)
        if self._viewer is not None:
            self._viewer.resize(size.cols, size.rows)

    def pause_writing(self) -> None:
        """The joiner is not reading: the Terminal queues, then resyncs."""
        self._paused = True
        if self._viewer is not None:
            self._viewer.pause_writing()

    def resume_writing(self) -> None:
        """The joiner caught up."""
        self._paused = False
        if self._viewer is not None:
            self._viewer.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        """The joiner left."""
        self._closed = True
        self._context.closed(self)
        if self._viewer is not None:
            self._viewer.leave()
            self._sharing_event("leave", name=self._name)
