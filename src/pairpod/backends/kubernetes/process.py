"""A program in a pod, reached through one exec WebSocket."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pairpod.backends.base import ExitStatus, PtySpec
from pairpod.backends.container.process import ContainerProcess, exit_status
from pairpod.backends.container.wrapper import PreambleReader, kill_tree_command, signal_command
from pairpod.backends.kubernetes.pod import PodHandle
from pairpod.backends.kubernetes.stream import (
    STDERR,
    STDOUT,
    ExecProtocolError,
    ExecResult,
    ExecStream,
    Finished,
    Output,
)
from pairpod.log import fields, get_logger

if TYPE_CHECKING:
    from pairpod.backends.kubernetes.backend import KubernetesBackend

log = get_logger("backend.kubernetes")

# Input is sent in frames of at most this size.
_STDIN_FRAME = 64 * 1024


# --- processes ---------------------------------------------------------------------------


class KubernetesProcess(ContainerProcess):
    """A program in a pod, reached through one exec WebSocket."""

    log_prefix = "kubernetes"

    def __init__(
        self,
        backend: KubernetesBackend,
        handle: PodHandle,
        stream: ExecStream,
        pty: PtySpec | None,
        on_done: Callable[[KubernetesProcess], None],
    ) -> None:
        super().__init__(pty)
        self._backend = backend
        self._handle = handle
        self._stream = stream
        self._on_done = on_done
        self._preamble_reader = PreambleReader()
        self._preamble_channel = STDOUT  # ordered with the output, as for Docker
        self._result: ExecResult | None = None
        self._reading = asyncio.Event()
        self._reading.set()
        self._pump = asyncio.ensure_future(self._run())

    # --- data from the API server ---------------------------------------------------

    async def _run(self) -> None:
        try:
            while True:
                if not self._reading.is_set():
                    await self._reading.wait()
                event = await self._stream.receive()
                if event is None:
                    break
                if isinstance(event, Output):
                    self._feed(event.channel, event.data)
                elif isinstance(event, Finished):
                    self._result = event.result
                    break
        except asyncio.CancelledError:
            pass  # killed or abandoned: the status says so
        except ExecProtocolError as error:
            log.warning(
                "kubernetes.exec_stream_corrupt", extra=fields(pod=self._handle.key, error=str(error))
            )
        finally:
            self._conclude()
            # Shielded: a second cancellation must not leave the connection open.
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.shield(self._stream.close())

    def _feed(self, channel: int, data: bytes) -> None:
        if channel == self._preamble_channel and not self._preamble_reader.done:
            preamble, data = self._preamble_reader.feed(data)
            if preamble is not None:
                self._preamble.set_result(preamble)
        self._pipes[channel].feed(data)

    def _conclude(self) -> None:
        """The stream is over: end the pipes and settle the exit status."""
        if not self._preamble.done():
            self._preamble.set_result(self._preamble_reader.feed_eof())
        for pipe in self._pipes.values():
            pipe.end()
        result = self._result
        if result is not None and result.exit_code is not None:
            status = exit_status(result.exit_code)
        elif self._killed:
            status = ExitStatus(code=None, signal="KILL")
        else:
            if result is not None:
                log.warning(
                    "kubernetes.exec_failed",
                    extra=fields(pod=self._handle.key, reason=result.reason, error=result.message),
                )
            else:
                log.warning(
                    "kubernetes.exec_status_unknown",
                    extra=fields(pod=self._handle.key, error="the stream ended without a status"),
                )
            status = ExitStatus(code=255)
        if not self._status.done():
            self._status.set_result(status)
        self._on_done(self)

    # --- used by the environment ----------------------------------------------------

    def leftover_output(self) -> bytes:
        """Everything buffered and the status message, for errors when the wrapper did not run."""
        text = self._pipes[STDOUT].drain() + self._pipes[STDERR].drain()
        if self._result is not None and self._result.message:
            text += b"\n" + self._result.message.encode()
        return text

    @property
    def done(self) -> bool:
        """Whether the process has ended."""
        return self._status.done()

    @property
    def protocol(self) -> str:
        """The exec subprotocol in use."""
        return self._stream.protocol

    def abandon(self) -> None:
        """The environment is going away: end the stream now, the exit status is moot."""
        self._killed = True
        self._abandoned = True
        self._pump.cancel()

    # --- Process ---------------------------------------------------------------------

    def _pause_output(self) -> None:
        self._reading.clear()

    def _resume_output(self) -> None:
        self._reading.set()

    async def write(self, data: bytes) -> None:
        """Send input; input to a program that has ended is dropped."""
        if self._eof_sent or self._status.done():
            return
        view = memoryview(data)
        # A closed stream means the program has ended (or is ending): drop the input.
        with contextlib.suppress(ConnectionError):
            for start in range(0, len(view), _STDIN_FRAME):
                # A view, not a copy: the frame is made by one copy in the codec.
                await self._stream.send_stdin(view[start : start + _STDIN_FRAME])

    async def _close_stdin(self) -> None:
        # On a v4 server stdin cannot be closed: logged, and the program keeps
        # its stdin (ending the channel still ends it).
        try:
            closed = await self._stream.close_stdin()
        except ConnectionError:
            return
        if not closed:
            log.info(
                "kubernetes.stdin_eof_unsupported",
                extra=fields(pod=self._handle.key, protocol=self._stream.protocol),
            )

    async def resize(self, cols: int, rows: int, pixel_width: int = 0, pixel_height: int = 0) -> None:
        """Resize the TTY (the program gets SIGWINCH)."""
        if self._pty is None or self._status.done():
            return
        with contextlib.suppress(ConnectionError):
            await self._stream.resize(cols, rows)

    def _log_fields(self, **extra: Any) -> dict[str, Any]:
        return fields(pod=self._handle.key, **extra)

    async def _send_signal(self, name: str, pid: int) -> None:
        await self._backend.run_helper(self._handle, signal_command(name, pid))

    async def _end_reader(self, pid: int) -> None:
        await self._backend.run_helper(self._handle, signal_command("KILL", pid))

    async def _kill_tree(self, pid: int | None) -> None:
        if pid is not None and not self._pump.done():
            await self._backend.run_helper(self._handle, kill_tree_command(pid))

    def _stop_stream(self) -> None:
        self._pump.cancel()
