"""The part of a Process the Docker and Kubernetes backends share.

Both receive a program's output over one stream into two :class:`OutputPipe`
buffers sharing one :class:`FlowControl` (reading the stream pauses while too
much waits), learn the
program's PID from the wrapper's preamble, and reach the program the same
way: EOF on a terminal is its EOF character, signals and kills are a second
exec (``kill``) aimed at that PID. How the stream is read, and how a helper
exec is run, stays in each backend.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal as signal_module
from abc import abstractmethod
from typing import Any, ClassVar

from pairpod.backends.base import SSH_SIGNALS, ExitStatus, Process, PtySpec, Stream
from pairpod.backends.container.wrapper import Preamble
from pairpod.backends.output import FlowControl, OutputPipe
from pairpod.backends.termmodes import eof_character
from pairpod.errors import PairpodError
from pairpod.log import fields, get_logger

# How long a helper exec (kill, signal) may take.
HELPER_TIMEOUT = 10.0

# Where a program's output arrives, by the number both stream formats give it.
STDOUT = Stream.STDOUT.value
STDERR = Stream.STDERR.value


def exit_status(code: int) -> ExitStatus:
    """How a process in a container ended, from its shell-style exit code.

    Engines and kubelets report a program killed by a signal as 128 + the
    signal number, indistinguishable from ``exit 130``; like a shell, take it
    as the signal when it names one an SSH client understands.
    """
    if code > 128:
        with contextlib.suppress(ValueError):
            name = signal_module.Signals(code - 128).name.removeprefix("SIG")
            if name in SSH_SIGNALS:
                return ExitStatus(code=None, signal=name)
    return ExitStatus(code=code)


class ContainerProcess(Process):
    """Base of the Docker and Kubernetes processes: output, preamble, status, signals."""

    log_prefix: ClassVar[str]
    """First part of this backend's log event names (``docker``, ``kubernetes``)."""

    def __init__(self, pty: PtySpec | None) -> None:
        self._pty = pty
        # Stdout and stderr arrive on one stream: the marks count both.
        self._flow = FlowControl(self._pause_output, self._resume_output)
        self._pipes = {STDOUT: OutputPipe(self._flow), STDERR: OutputPipe(self._flow)}
        loop = asyncio.get_running_loop()
        self._preamble: asyncio.Future[Preamble] = loop.create_future()
        self._status: asyncio.Future[ExitStatus] = loop.create_future()
        self._killed = False
        self._abandoned = False
        self._eof_sent = False
        self._output_closed = False

    # --- what each backend does its own way -------------------------------------------

    @abstractmethod
    def _pause_output(self) -> None:
        """Stop reading the stream (too much output waits for the reader)."""

    @abstractmethod
    def _resume_output(self) -> None:
        """Read the stream again."""

    @abstractmethod
    async def _close_stdin(self) -> None:
        """Close the program's stdin (no PTY)."""

    @abstractmethod
    async def _send_signal(self, name: str, pid: int) -> None:
        """Run the helper exec that signals ``pid``."""

    @abstractmethod
    async def _end_reader(self, pid: int) -> None:
        """Run the helper exec that ends the wrapper's stdout reader ``pid``."""

    @abstractmethod
    async def _kill_tree(self, pid: int | None) -> None:
        """End the program and its descendants (as far as this backend can still reach them)."""

    @abstractmethod
    def _stop_stream(self) -> None:
        """Stop reading and close the stream: the process is over for us."""

    def _signallable(self) -> bool:
        """Whether a signal can still reach the program (beyond its status)."""
        return True

    def _log_fields(self, **extra: Any) -> dict[str, Any]:
        return fields(**extra)

    @property
    def _log(self) -> logging.Logger:
        return get_logger(f"backend.{self.log_prefix}")

    # --- shared ---------------------------------------------------------------------------

    async def preamble(self) -> Preamble:
        """The wrapper's first line (or what came instead of it)."""
        return await asyncio.shield(self._preamble)

    async def read(self, stream: Stream, size: int = 65536) -> bytes:
        """Up to ``size`` bytes of output; ``b""`` at its end (at once for STDERR with a PTY)."""
        if stream is Stream.STDERR and self._pty is not None:
            return b""
        return await self._pipes[stream.value].read(size)

    async def write_eof(self) -> None:
        """Close stdin; with a PTY, type the terminal's EOF character instead
        (closing a terminal's input would end its output too)."""
        if self._pty is not None:
            eof = eof_character(self._pty.modes)
            if eof:
                await self.write(eof)
            return
        if self._eof_sent or self._status.done():
            return
        self._eof_sent = True
        await self._close_stdin()

    async def close_output(self) -> None:
        """Close the program's stdout (no PTY) or drop its output (PTY); see Process."""
        if self._output_closed:
            return
        self._output_closed = True
        # Dropping what stdout holds may resume the stream (via the flow control):
        # nobody may read again to resume it, and stderr and the exit still need it.
        self._pipes[STDOUT].close()
        if self._pty is not None:
            return
        preamble = await self.preamble()
        if preamble.pid is None or self._status.done() or not self._signallable():
            return
        try:
            if preamble.reader is not None:
                await self._end_reader(preamble.reader)
            else:
                # No reader of ours to end: the program is its container's main
                # process, or the image lacks mkfifo, cat or a writable temporary
                # directory. SIGPIPE now is what its next write would have got.
                self._log.info(
                    f"{self.log_prefix}.output_closed_by_signal",
                    extra=self._log_fields(reason="no stdout reader of ours"),
                )
                await self._send_signal("PIPE", preamble.pid)
        except (PairpodError, TimeoutError) as error:
            if not self._status.done():
                self._log.warning(
                    f"{self.log_prefix}.close_output_failed",
                    extra=self._log_fields(error=getattr(error, "operator_message", str(error))),
                )

    async def signal(self, name: str) -> None:
        """Deliver a signal to the program (a second exec runs ``kill``)."""
        if name not in SSH_SIGNALS:
            self._log.info(f"{self.log_prefix}.signal_ignored", extra=self._log_fields(signal=name))
            return
        preamble = await self.preamble()
        if preamble.pid is None or self._status.done() or not self._signallable():
            return
        try:
            await self._send_signal(name, preamble.pid)
        except (PairpodError, TimeoutError) as error:
            if not self._status.done():
                self._log.warning(
                    f"{self.log_prefix}.signal_failed",
                    extra=self._log_fields(signal=name, error=getattr(error, "operator_message", str(error))),
                )

    async def wait(self) -> ExitStatus:
        """Wait for the program to end; how it ended."""
        return await asyncio.shield(self._status)

    async def kill(self) -> None:
        """End the program and its descendants now. Idempotent."""
        if self._status.done():
            return
        self._killed = True
        preamble = self._preamble.result() if self._preamble.done() else None
        try:
            await self._kill_tree(preamble.pid if preamble is not None else None)
        except (PairpodError, TimeoutError) as error:
            self._log.warning(
                f"{self.log_prefix}.kill_failed",
                extra=self._log_fields(error=getattr(error, "operator_message", str(error))),
            )
        # Whatever still holds the output open, this process is over for us.
        self._stop_stream()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._status), HELPER_TIMEOUT)
