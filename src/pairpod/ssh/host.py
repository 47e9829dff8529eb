"""Host mode, the gateway's side: ``LOGIN+host`` connections sharing a shell of their own.

The host (``pairpod pair --via``) authenticates as LOGIN through the auth
chain, like ``LOGIN+ctl``, and gets no environment. Its session channel asks
for the subsystem :data:`~pairpod.sharing.hostwire.SUBSYSTEM` and then
speaks the frames of :mod:`pairpod.sharing.hostwire`; :class:`HostChannel`
turns them into calls on a :class:`~pairpod.sharing.hosted.HostedSession`.
Joiners never reach the host but through that session's Terminal: the
host's connection accepts nothing else (no shell, exec, other subsystem or
forwarding).
"""

from __future__ import annotations

import contextlib

import asyncssh

from pairpod.auth import AuthResult
from pairpod.backends.base import ExitStatus
from pairpod.log import fields, get_logger
from pairpod.sharing.hosted import Hello, HostedSession, HostedSessions, HostRefused, host_refusal
from pairpod.sharing.hostwire import (
    HOST_SUFFIX,
    SUBSYSTEM,
    Frame,
    FrameDecoder,
    Kind,
    ProtocolError,
    encode_json,
    printable,
)
from pairpod.ssh.context import ChannelContext
from pairpod.ssh.control import LineSession
from pairpod.ssh.login import ChainPurpose
from pairpod.ssh.purpose import ConnectionSide
from pairpod.ssh.sink import exit_channel

log = get_logger("sharing")


class HostPurpose(ChainPurpose):
    """``alice+host``: authenticates as ``alice``; its channels host a shared shell."""

    def __init__(self, connection: ConnectionSide, hosted: HostedSessions, login: str) -> None:
        super().__init__(connection, login)
        self._hosted = hosted
        self._login = login

    def _approved(self, result: AuthResult) -> None:
        self._login = result.authenticated_as

    def open_session(self) -> asyncssh.SSHServerSession[bytes]:
        """A host channel."""
        return HostChannel(self._connection.channel_context(), self._hosted, self._login)

    def display_user(self, username: str | None) -> str | None:
        """``alice+host``."""
        return f"{self._login}{HOST_SUFFIX}"


class HostChannel(LineSession):
    """One host's channel: its frames in, the hosted session's frames out."""

    def __init__(self, context: ChannelContext, hosted: HostedSessions, login: str) -> None:
        super().__init__(context)
        self._hosted = hosted
        self._login = login
        self._subsystem = False
        self._decoder = FrameDecoder()
        self._session: HostedSession | None = None
        self._done = False

    def subsystem_requested(self, subsystem: str) -> bool:
        """Only the host protocol."""
        self._subsystem = subsystem == SUBSYSTEM
        return self._subsystem

    def session_started(self) -> None:
        """Refuse at once whatever is not a host allowed here."""
        assert self._chan is not None
        self._chan.set_write_buffer_limits(high=1 << 18, low=1 << 16)
        if not self._subsystem:
            self._refuse(
                HostRefused(f"{self._login}{HOST_SUFFIX} is for sharing a shell: pairpod pair --via HOST")
            )
        elif (refusal := host_refusal(self._context.config, self._login)) is not None:
            self._refuse(refusal)

    def _refuse(self, refusal: HostRefused) -> None:
        log.info("host.refused", extra=self._context.log_fields(reason=str(refusal)))
        self._done = True
        self._say(f"pairpod: {refusal}\n", refusal.refusal)

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        """Frames from the host."""
        if self._done:
            return
        self._context.traffic.received += len(data)
        try:
            for frame in self._decoder.feed(data):
                self._frame(frame)
                if self._done:
                    return
        except ProtocolError as error:
            self._refuse(HostRefused(f"protocol error: {error}"))
        except HostRefused as refusal:
            self._refuse(refusal)

    def _frame(self, frame: Frame) -> None:
        session = self._session
        if session is None:
            if frame.kind is not Kind.HELLO:
                raise ProtocolError(f"expected HELLO, got {frame.kind.name}")
            self._hello(frame)
        elif frame.kind is Kind.OUTPUT:
            session.process.feed(frame.payload)
        elif frame.kind is Kind.END:
            self._end(session, frame)
        else:
            raise ProtocolError(f"unexpected {frame.kind.name}")

    def _hello(self, frame: Frame) -> None:
        limit = self._context.config.ssh.max_pty
        hello = Hello.parse(frame.json(), limit.cols, limit.rows)
        session, resumed = self._hosted.register(self._context.config, self._login, hello, self)
        self._session = session
        cols, rows = session.process.size
        self.send(
            encode_json(
                Kind.WELCOME,
                {
                    "session": session.shared.session_id,
                    "commands": session.commands,
                    "who": self._hosted.describe(session),
                    "cols": cols,
                    "rows": rows,
                    "grace": self._context.config.sharing.host_grace,
                    "resumed": resumed,
                    **session.links_state(),
                },
            )
        )
        log.info(
            "host.attached",
            extra=self._context.log_fields(session=session.shared.session_id, resumed=resumed),
        )

    def _end(self, session: HostedSession, frame: Frame) -> None:
        value = frame.json()
        code = value.get("code")
        text = printable(value.get("reason")) or "the host ended the session"
        status = ExitStatus(code=code if isinstance(code, int) and 0 <= code < 256 else None, signal="HUP")
        log.info("host.end", extra=self._context.log_fields(session=session.shared.session_id, reason=text))
        self._done = True
        session.end(text, status)
        assert self._chan is not None
        exit_channel(self._chan, 0)

    # --- what the hosted session uses (HostLink) ---------------------------------------

    def send(self, data: bytes) -> None:
        """Frames to the host."""
        if self._chan is None:
            return
        self._context.traffic.sent += len(data)
        with contextlib.suppress(OSError, asyncssh.Error):
            self._chan.write(data)

    def pause_reading(self) -> None:
        """The session's output buffer is full."""
        if self._chan is not None:
            self._chan.pause_reading()

    def resume_reading(self) -> None:
        """The session's output buffer drained."""
        if self._chan is not None:
            self._chan.resume_reading()

    def close(self) -> None:
        """The session let go of this channel (ended, or a newer channel took over)."""
        self._done = True
        if self._chan is not None:
            exit_channel(self._chan, 0)

    # --- flow control and the end of the channel ----------------------------------------

    def pause_writing(self) -> None:
        """The host is not reading: joiners' input waits."""
        if self._session is not None:
            self._session.process.pause_writing()

    def resume_writing(self) -> None:
        """The host caught up."""
        if self._session is not None:
            self._session.process.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        """The channel is gone: the session waits for its host (the grace period)."""
        super().connection_lost(exc)
        if self._session is not None:
            log.info("host.detached", extra=fields(session=self._session.shared.session_id))
            self._session.lost(self, self._context.config.sharing.host_grace)
