"""The channel adapter: one SSH session channel, a backend Process behind it.

AsyncSSH hands every channel event to a callback (pty, env, exec/shell/
subsystem, data, EOF, window-change, signal, break, flow control). This
module checks the requests, starts the Process, and hands the running
session's events to a :class:`~pairpod.ssh.relay.Relay` (direct, or the
owner of a shared terminal), keeping input in order and bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine
from typing import Any

import asyncssh
from asyncssh.misc import TermModes

from pairpod.backends.base import SSH_SIGNALS, ExitStatus, Process, ProcessSpec, PtySpec
from pairpod.errors import PairpodError
from pairpod.log import get_logger
from pairpod.ssh.channel import env_name_passes, env_refusal_of
from pairpod.ssh.context import SessionContext
from pairpod.ssh.input import InputQueue, WindowSize
from pairpod.ssh.relay import Relay
from pairpod.ssh.request_limits import (
    bounded_size,
    command_refusal,
    pty_refusal,
    subsystem_refusal,
)
from pairpod.ssh.requests import on_end_of_write

log = get_logger("channel")

# After the program exits, how long its output may keep draining (a background
# job holding the terminal open must not hold the channel forever).
_DRAIN_AFTER_EXIT = 2.0


def filter_env(requested: dict[str, str], allow: list[str], deny: list[str] | None = None) -> dict[str, str]:
    """Keep the variables whose names match an ``allow`` glob and no ``deny`` glob."""
    return {name: value for name, value in requested.items() if env_name_passes(name, allow, deny or ())}


def _plain_ip(host: object) -> str:
    # An IPv4 client on a dual-stack socket shows as ::ffff:a.b.c.d; sshd prints a.b.c.d.
    return str(host).removeprefix("::ffff:")


def ssh_connection_env(peer: tuple[object, ...] | None, local: tuple[object, ...] | None) -> dict[str, str]:
    """``SSH_CONNECTION`` and ``SSH_CLIENT`` as sshd sets them, from the socket's two ends."""
    if not peer or not local:
        return {}
    client_ip, client_port, server_ip, server_port = (
        _plain_ip(peer[0]),
        peer[1],
        _plain_ip(local[0]),
        local[1],
    )
    return {
        "SSH_CONNECTION": f"{client_ip} {client_port} {server_ip} {server_port}",
        "SSH_CLIENT": f"{client_ip} {client_port} {server_port}",
    }


class ChannelSession(asyncssh.SSHServerSession[bytes]):
    """One SSH session channel running a Process in the connection's Environment."""

    def __init__(self, context: SessionContext) -> None:
        self._context = context
        self._security = context.config.security
        self._chan: asyncssh.SSHServerChannel[bytes] | None = None
        self._pty: PtySpec | None = None
        self._command: str | None = None
        self._subsystem: str | None = None
        self._denied: str | None = None
        self._process: Process | None = None
        # Input and window changes, in the order the client sent them: sshd
        # applies a window change before any input that follows it.
        self._input = InputQueue(self._pause_reading, self._resume_reading)
        self._output_paused = False
        self._task: asyncio.Task[None] | None = None
        self._relay: Relay | None = None
        self._closed = False
        # What the admin view shows once the program runs.
        self.kind: str | None = None
        self.spec: ProcessSpec | None = None
        self._output_closed = False

    @property
    def shared(self) -> Any:
        """The shared session this channel owns (None: not shared)."""
        return self._relay.shared if self._relay is not None else None

    # --- requests before the session starts -------------------------------------------

    def connection_made(self, chan: asyncssh.SSHServerChannel[bytes]) -> None:
        """Remember the channel and keep AsyncSSH's write buffer small."""
        self._chan = chan
        chan.set_write_buffer_limits(high=1 << 20, low=1 << 18)
        on_end_of_write(chan, self.end_of_write_received)

    def pty_requested(
        self, term_type: str, term_size: tuple[int, int, int, int], term_modes: TermModes
    ) -> bool:
        """Accept a PTY request unless the config forbids PTYs."""
        if not self._security.allow_pty or not self._context.permissions.pty:
            # Said before the refusal so the client shows it even when it then gives up.
            assert self._chan is not None
            self._chan.write_stderr(b"pairpod: terminal (pty) allocation is not allowed here\r\n")
            self._log_denied("pty")
            return False
        cols, rows, pixel_width, pixel_height = term_size
        limit = self._context.config.ssh.max_pty
        refusal = pty_refusal(term_type, cols, rows, limit)
        if refusal is not None:
            assert self._chan is not None
            self._chan.write_stderr(f"pairpod: {refusal}\r\n".encode())
            self._log_denied("pty")
            return False
        size = bounded_size(cols, rows, pixel_width, pixel_height, limit)
        self._pty = PtySpec(
            term=term_type or "dumb",
            cols=size.cols,
            rows=size.rows,
            pixel_width=size.pixel_width,
            pixel_height=size.pixel_height,
            modes=dict(term_modes),
        )
        return True

    def shell_requested(self) -> bool:
        """Accept; a denial is reported on stderr once the session starts."""
        if not self._security.allow_shell:
            self._deny("shell", "interactive shells are disabled on this gateway")
        return True

    def exec_requested(self, command: str) -> bool:
        """Accept; a denial is reported on stderr once the session starts."""
        if not self._security.allow_exec:
            self._deny("exec", "running commands is disabled on this gateway")
        refusal = command_refusal(command, self._security)
        if refusal is not None:
            self._deny("exec", refusal)
            command = ""
        self._command = command
        return True

    def subsystem_requested(self, subsystem: str) -> bool:
        """Accept the subsystems the config allows (sftp)."""
        refusal = subsystem_refusal(subsystem)
        if refusal is not None:
            self._deny("subsystem", refusal)
            return True
        if subsystem not in self._security.subsystems:
            self._deny("subsystem", f"subsystem {subsystem!r} is not allowed on this gateway")
        self._subsystem = subsystem
        return True

    def _deny(self, what: str, message: str) -> None:
        self._denied = message
        self._log_denied(what)

    def _log_denied(self, what: str) -> None:
        log.info("channel.denied", extra=self._context.log_fields(request=what))

    # --- the session --------------------------------------------------------------

    def session_started(self) -> None:
        """Start the relay task, owned by the connection's task group."""
        self._task = self._context.tasks.spawn(self._run())

    def _client_env(self) -> dict[str, str]:
        assert self._chan is not None
        return {
            k.decode("utf-8", "replace"): v.decode("utf-8", "replace")
            for k, v in self._chan.get_environment_bytes().items()
        }

    def _spec(self) -> ProcessSpec:
        client_env = self._client_env()
        # Variables from the login (authorized_keys environment=, webhook) come with the
        # Identity; these are only what the client asked for and the config allows.
        env = filter_env(client_env, self._security.env_allow, self._security.env_deny)
        command = self._command
        subsystem = self._subsystem
        forced = self._context.permissions.forced_command or self._security.force_command
        if forced is not None:
            # A forced command replaces whatever was asked for, as in OpenSSH.
            if command is not None or subsystem is not None:
                env["SSH_ORIGINAL_COMMAND"] = command if command is not None else subsystem or ""
            command, subsystem = forced, None
        if self._pty is not None and "TERM" not in env:
            env["TERM"] = self._pty.term
        env.update(self._context.ssh_env)  # never the client's say
        return ProcessSpec(command=command, subsystem=subsystem, pty=self._pty, env=env)

    async def _run(self) -> None:
        chan = self._chan
        assert chan is not None
        if self._denied is None:
            self._denied = env_refusal_of(chan)
        if self._denied is not None:
            self._finish_with_error(self._denied, 1)
            return
        try:
            # Progress lines (an image pull) go to terminals only: a command's
            # stderr belongs to the command, and scripts read it.
            waiting = self if self._pty is not None else None
            environment = await self._context.environment(waiting)
            # Built once the environment is ready: the window may have changed meanwhile.
            spec = self._spec()
            self._process = self._context.observe(await environment.start(spec), spec, environment)
        except PairpodError as error:
            log.warning(
                "channel.start_failed",
                extra=self._context.log_fields(error=error.operator_message, kind=type(error).__name__),
            )
            self._finish_with_error(error.user_message, 1)
            return
        except Exception:
            # A bug must cost one channel, never hang it or the gateway.
            log.exception("channel.start_failed", extra=self._context.log_fields())
            self._finish_with_error("internal error", 1)
            return
        self.spec, self.kind = spec, "subsystem" if spec.subsystem else "exec" if spec.command else "shell"
        log.info(
            "channel.started",
            extra=self._context.log_fields(
                kind=self.kind, command=spec.command, subsystem=spec.subsystem, pty=spec.pty is not None
            ),
        )
        self._context.started(self.kind, spec.command or spec.subsystem, spec.pty is not None)
        relay = self._relay = self._context.relay(self._process, spec, chan, self._client_env())
        if self._output_paused:
            relay.pause_output()
        if self._output_closed:
            self._context.tasks.spawn(relay.end_of_write())  # eow came before the program started
        try:
            status = await self._relay_until_exit(self._process, relay)
        finally:
            relay.finish()
        self._exit(status)

    async def _relay_until_exit(self, process: Process, relay: Relay) -> ExitStatus:
        output = asyncio.ensure_future(relay.start())
        feeder = asyncio.ensure_future(self._pump_input(process, relay))
        try:
            status = await process.wait()
            _, pending = await asyncio.wait([output], timeout=_DRAIN_AFTER_EXIT)
            if pending:
                log.info(
                    "channel.output_abandoned",
                    extra=self._context.log_fields(reason="output still open after the program exited"),
                )
            return status
        finally:
            for task in (output, feeder):
                task.cancel()
            await asyncio.gather(output, feeder, return_exceptions=True)

    async def _pump_input(self, process: Process, relay: Relay) -> None:
        traffic = self._context.traffic
        while (item := await self._input.next()) is not None:
            if isinstance(item, WindowSize):
                await relay.resize(item.cols, item.rows, item.pixel_width, item.pixel_height)
                continue
            traffic.received += len(item)
            await relay.input(item)
            self._input.taken(len(item))
        await process.write_eof()

    def _pause_reading(self) -> None:
        if self._chan is not None:
            self._chan.pause_reading()

    def _resume_reading(self) -> None:
        if self._chan is not None:
            self._chan.resume_reading()

    def _finish_with_error(self, message: str, code: int) -> None:
        self.write_status(message)
        self._exit(ExitStatus(code=code))

    def _exit(self, status: ExitStatus) -> None:
        chan = self._chan
        if chan is None or self._closed:
            return
        self._closed = True
        # The session is over once we exit; free its slot without waiting for the
        # client's CLOSE, which may race with its next channel open.
        self._context.closed(self)
        log.info(
            "channel.exit", extra=self._context.log_fields(exit_code=status.code, exit_signal=status.signal)
        )
        self._context.exited(status)
        with contextlib.suppress(OSError, asyncssh.Error):
            if status.signal is not None:
                chan.exit_with_signal(status.signal, status.core_dumped, f"killed by signal {status.signal}")
            else:
                chan.exit(status.code if status.code is not None else 255)

    # --- events while it runs ---------------------------------------------------------

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        """Queue input in order; pause the client if the program falls behind."""
        self._input.data(data)

    def eof_received(self) -> bool:
        """Forward EOF after any queued input; keep our side open for output."""
        self._input.eof()
        return True

    def terminal_size_changed(self, width: int, height: int, pixwidth: int, pixheight: int) -> None:
        """Queue the resize with the input: it applies before any input sent after it.

        The program starts with the size of the PTY request; changes made while
        it starts are in the queue too, and reach it in order. Sizes are
        bounded by ``ssh.max_pty`` before anything is queued.
        """
        if self._pty is None:
            return
        bounded = bounded_size(width, height, pixwidth, pixheight, self._context.config.ssh.max_pty)
        self._input.resize(WindowSize(bounded.cols, bounded.rows, bounded.pixel_width, bounded.pixel_height))

    def end_of_write_received(self) -> None:
        """The client's stdout closed (``eow@openssh.com``): the relay decides what it ends."""
        self._output_closed = True
        if self._relay is not None:
            self._context.tasks.spawn(self._relay.end_of_write())

    def signal_received(self, signal: str) -> None:
        """Deliver a client's signal request (only the RFC 4254 names)."""
        name = signal.upper().removeprefix("SIG")
        if name not in SSH_SIGNALS:
            log.info("channel.signal_ignored", extra=self._context.log_fields(signal=name))
            return
        self._later(lambda r: r.signal(name))

    def break_received(self, msec: int) -> bool:
        """A break interrupts: Ctrl-C through the terminal, SIGINT without one."""
        if self._pty is not None:
            self.data_received(b"\x03", None)
        else:
            self._later(lambda r: r.signal("INT"))
        return True

    def _later(self, action: Callable[[Relay], Coroutine[Any, Any, None]]) -> None:
        if self._relay is not None:
            self._context.tasks.spawn(action(self._relay))

    def pause_writing(self) -> None:
        """The client is not keeping up: stop sending it output."""
        self._output_paused = True
        if self._relay is not None:
            self._relay.pause_output()

    def resume_writing(self) -> None:
        """The client caught up."""
        self._output_paused = False
        if self._relay is not None:
            self._relay.resume_output()

    def connection_lost(self, exc: Exception | None) -> None:
        """The channel closed: stop the relay and end the process."""
        self._closed = True
        self._context.closed(self)
        if self._relay is not None:
            self._relay.leave()
        if self._task is not None and not self._task.done():
            self._task.cancel()
        process = self._process
        if process is not None:
            self._context.tasks.spawn(process.kill())

    def write_status(self, text: str) -> None:
        """Show the user a progress line on stderr (while their environment is made)."""
        if self._chan is not None and not self._closed:
            with contextlib.suppress(OSError, asyncssh.Error):
                self._chan.write_stderr(f"pairpod: {text}\r\n".encode())

    def write_notice(self, text: str) -> None:
        """Show the user one line on stderr (used at gateway shutdown)."""
        if self._chan is not None and not self._closed:
            with contextlib.suppress(OSError, asyncssh.Error):
                self._chan.write_stderr(f"\r\npairpod: {text}\r\n".encode())

    async def terminate(self, message: str) -> None:
        """End this session: tell the user, end the process, close the channel."""
        self.write_notice(message)
        if self._process is not None:
            await self._process.kill()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(asyncio.shield(self._task), _DRAIN_AFTER_EXIT)
        self._exit(ExitStatus(code=None, signal="TERM") if self._process else ExitStatus(code=1))
