"""SSH session channels of sharing: joiners and the owner's controls.

None of these channels touches a backend: joiners attach to a live
:class:`~pairpod.sharing.terminal.Terminal`, the control channel talks to the
:class:`~pairpod.sharing.service.SharingService`.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

import asyncssh

from pairpod.log import get_logger
from pairpod.request_limits import bounded_size, pty_refusal
from pairpod.sharing.service import ControlError, SharingService
from pairpod.sharing.terminal import Participant, Sink, Terminal, TerminalEnded
from pairpod.sharing.tokens import Access
from pairpod.traffic import Traffic

if TYPE_CHECKING:
    from pairpod.server import Connection

log = get_logger("sharing")


def _exit(chan: asyncssh.SSHServerChannel[bytes], code: int) -> None:
    with contextlib.suppress(OSError, asyncssh.Error):
        chan.exit(code)


class ChannelSink(Sink):
    """A participant's SSH channel, as the Terminal sees it."""

    def __init__(self, chan: asyncssh.SSHServerChannel[bytes], traffic: Traffic | None = None) -> None:
        self._chan = chan
        self._traffic = traffic

    def write(self, data: bytes) -> None:
        """Terminal output to this participant."""
        if self._traffic is not None:
            self._traffic.sent += len(data)
        with contextlib.suppress(OSError, asyncssh.Error):
            self._chan.write(data)

    def close(self, reason: str) -> None:
        """The Terminal let go of this participant (already told why)."""
        _exit(self._chan, 0)


class _LineSession(asyncssh.SSHServerSession[bytes]):
    """A channel that says something and ends; the base of the small sessions here."""

    def __init__(self, connection: Connection) -> None:
        self._connection = connection
        self._chan: asyncssh.SSHServerChannel[bytes] | None = None
        self._command: str | None = None

    def connection_made(self, chan: asyncssh.SSHServerChannel[bytes]) -> None:
        """Remember the channel."""
        self._chan = chan

    def pty_requested(self, term_type: str, term_size: tuple[int, int, int, int],
                      term_modes: asyncssh.TermModes) -> bool:
        """Accept; what the terminal is matters only to joiners."""
        return True

    def shell_requested(self) -> bool:
        """Accept."""
        return True

    def exec_requested(self, command: str) -> bool:
        """Accept and remember the command."""
        self._command = command
        return True

    def eof_received(self) -> bool:
        """Keep the channel open to answer: the client's EOF is not the end."""
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        """Free the channel's slot on the connection."""
        self._connection.channel_closed(self)

    def _say(self, text: str, code: int) -> None:
        assert self._chan is not None
        stream = self._chan.write if code == 0 else self._chan.write_stderr
        with contextlib.suppress(OSError, asyncssh.Error):
            stream(text.replace("\n", "\r\n").encode() if self._chan.get_terminal_type()
                   else text.encode())
        _exit(self._chan, code)


class ControlSession(_LineSession):
    """``ssh alice+ctl@gw COMMAND``: the owner's controls of their shared sessions."""

    def __init__(self, connection: Connection, service: SharingService, owner: str) -> None:
        super().__init__(connection)
        self._service = service
        self._owner = owner

    def session_started(self) -> None:
        """Run the command and end."""
        try:
            output = self._service.control(self._owner, self._command or "help")
        except ControlError as error:
            self._say(f"pairpod: {error}\n", 2)
            return
        words = (self._command or "help").split()
        log.info("sharing.control", extra=self._connection.log_fields(command=words[0]))
        if words[0] in {"kick", "revoke", "mint"}:
            self._connection.gateway.ops.sharing(self._connection, words[0], args=" ".join(words[1:]))
        self._say(output, 0)


class ViewerSession(asyncssh.SSHServerSession[bytes]):
    """A joiner's channel attached to a shared Terminal."""

    def __init__(self, connection: Connection, terminal: Terminal, access: Access,
                 name: str) -> None:
        self._connection = connection
        self._terminal = terminal
        self._access = access
        self._name = name
        self._chan: asyncssh.SSHServerChannel[bytes] | None = None
        self._size: tuple[int, int] | None = None
        self._viewer: Participant | None = None
        self._input: asyncio.Queue[bytes] = asyncio.Queue()
        self._refusal: str | None = None

    def connection_made(self, chan: asyncssh.SSHServerChannel[bytes]) -> None:
        """Remember the channel and bound its write buffer."""
        self._chan = chan
        chan.set_write_buffer_limits(high=1 << 18, low=1 << 16)

    def pty_requested(self, term_type: str, term_size: tuple[int, int, int, int],
                      term_modes: asyncssh.TermModes) -> bool:
        """A joiner needs a terminal: remember its size (within ``ssh.max_pty``)."""
        cols, rows, _, _ = term_size
        limit = self._connection.config.ssh.max_pty
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
        cap = self._connection.config.sharing.max_participants
        if self._refusal is None and sum(
                not p.owner for p in self._terminal.participants()) >= cap:
            self._refusal = f"this shared session is full (max {cap} participants)"
        if self._refusal is not None:
            self._chan.write_stderr(f"pairpod: {self._refusal}\r\n".encode())
            _exit(self._chan, 1)
            return
        assert self._size is not None
        try:
            self._viewer = self._terminal.join(
                ChannelSink(self._chan, self._connection.traffic), name=self._name, access=self._access,
                cols=self._size[0], rows=self._size[1])
        except TerminalEnded as error:
            self._chan.write_stderr(f"pairpod: {error.user_message}\r\n".encode())
            _exit(self._chan, 1)
            return
        self._connection.gateway.ops.sharing(self._connection, "join", name=self._name,
                                             access=self._access.value)
        self._connection.tasks.spawn(self._pump_input(self._viewer))

    async def _pump_input(self, viewer: Participant) -> None:
        while True:
            data = await self._input.get()
            await viewer.send_input(data)

    def eof_received(self) -> bool:
        """A joiner's EOF does not end the shared program, nor the joiner's view."""
        return True

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        """Keystrokes: the Terminal merges read-write input and drops read-only input."""
        self._connection.traffic.received += len(data)
        self._input.put_nowait(data)

    def terminal_size_changed(self, width: int, height: int,
                              pixwidth: int, pixheight: int) -> None:
        """The joiner's window changed (clamped to ``ssh.max_pty``)."""
        if self._viewer is not None:
            size = bounded_size(width, height, 0, 0, self._connection.config.ssh.max_pty)
            self._viewer.resize(size.cols, size.rows)

    def pause_writing(self) -> None:
        """The joiner is not reading: the Terminal queues, then resyncs."""
        if self._viewer is not None:
            self._viewer.pause_writing()

    def resume_writing(self) -> None:
        """The joiner caught up."""
        if self._viewer is not None:
            self._viewer.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        """The joiner left."""
        self._connection.channel_closed(self)
        if self._viewer is not None:
            self._viewer.leave()
            self._connection.gateway.ops.sharing(self._connection, "leave", name=self._name)
