"""The owner's sharing controls over SSH: ``ssh alice+ctl@gw COMMAND``."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import asyncssh
from asyncssh.misc import TermModes

from pairpod.log import get_logger
from pairpod.sharing.service import ControlError, SharingService
from pairpod.ssh.context import ChannelContext
from pairpod.ssh.sink import exit_channel

log = get_logger("sharing")


class LineSession(asyncssh.SSHServerSession[bytes]):
    """A channel that says something and ends."""

    def __init__(self, context: ChannelContext) -> None:
        self._context = context
        self._chan: asyncssh.SSHServerChannel[bytes] | None = None
        self._command: str | None = None

    def connection_made(self, chan: asyncssh.SSHServerChannel[bytes]) -> None:
        """Remember the channel."""
        self._chan = chan

    def pty_requested(
        self, term_type: str, term_size: tuple[int, int, int, int], term_modes: TermModes
    ) -> bool:
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
        self._context.closed(self)

    def _say(self, text: str, code: int) -> None:
        assert self._chan is not None
        stream = self._chan.write if code == 0 else self._chan.write_stderr
        with contextlib.suppress(OSError, asyncssh.Error):
            stream(text.replace("\n", "\r\n").encode() if self._chan.get_terminal_type() else text.encode())
        exit_channel(self._chan, code)


class ControlSession(LineSession):
    """``ssh alice+ctl@gw COMMAND``: the owner's controls of their shared sessions."""

    def __init__(
        self, context: ChannelContext, service: SharingService, owner: str, sharing_event: Callable[..., None]
    ) -> None:
        super().__init__(context)
        self._service = service
        self._owner = owner
        self._sharing_event = sharing_event

    def session_started(self) -> None:
        """Run the command (here, or where the owner's sessions are) and end."""
        self._context.tasks.spawn(self._run())

    async def _run(self) -> None:
        try:
            output = await self._service.control_anywhere(self._owner, self._command or "help")
        except ControlError as error:
            self._say(f"pairpod: {error}\n", 2)
            return
        words = (self._command or "help").split()
        log.info("sharing.control", extra=self._context.log_fields(command=words[0]))
        if words[0] in {"kick", "revoke", "mint"}:
            self._sharing_event(words[0], args=" ".join(words[1:]))
        self._say(output, 0)
