"""A program in a Docker container: an exec, or (session mode) the container itself."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING

from pairpod.backends.base import ExitStatus, PtySpec
from pairpod.backends.container.process import ContainerProcess, exit_status
from pairpod.backends.container.wrapper import PreambleReader, kill_tree_command, signal_command
from pairpod.backends.docker.api import Engine, HijackedStream
from pairpod.backends.docker.stream import STDERR, STDOUT, SYSTEMERR, Demuxer
from pairpod.errors import BackendError, PairpodError
from pairpod.log import fields, get_logger

if TYPE_CHECKING:
    from pairpod.backends.docker.environment import DockerConnectionEnvironment, DockerSessionEnvironment

log = get_logger("backend.docker")

# --- processes -------------------------------------------------------------------------


class ExecTarget:
    """How a process that is an exec is signalled, killed and waited for."""

    def __init__(
        self, engine: Engine, exec_id: str, environment: DockerConnectionEnvironment | None = None
    ) -> None:
        self.engine = engine
        self.exec_id = exec_id
        # None only for a spare not yet handed to a connection.
        self.environment = environment

    def _env(self) -> DockerConnectionEnvironment:
        if self.environment is None:
            raise BackendError("a spare process has no environment yet")
        return self.environment

    async def signal(self, name: str, pid: int) -> None:
        await self._env().run_helper(signal_command(name, pid))

    async def kill(self, pid: int | None) -> None:
        if pid is not None:
            await self._env().run_helper(kill_tree_command(pid))

    async def end_reader(self, pid: int) -> None:
        await self._env().run_helper(signal_command("KILL", pid))

    async def exit_code(self) -> int | None:
        """The exit code, once the exec has ended (its stream is already at its end)."""
        delay = 0.005
        # The engine records the code before it closes the stream, so this is
        # normally answered at once. A program can also close its output and
        # keep running; then its end is waited for, polling ever more slowly.
        while True:
            info = await self.engine.inspect_exec(self.exec_id)
            if not info.get("Running") and info.get("ExitCode") is not None:
                return int(info["ExitCode"])
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)

    async def resize(self, cols: int, rows: int) -> None:
        await self.engine.resize_exec(self.exec_id, cols, rows)

    async def release(self) -> None:
        """Nothing to remove: exec instances go with their container."""


class ContainerTarget:
    """How a process that is a whole container (session mode) is handled."""

    def __init__(self, environment: DockerSessionEnvironment, name: str, container_id: str) -> None:
        self.environment = environment
        self.name = name
        self.container_id = container_id

    async def signal(self, name: str, pid: int) -> None:
        # The init (PID 1) forwards it to the program.
        await self.environment.backend.engine.kill_container(self.container_id, f"SIG{name}")

    async def kill(self, pid: int | None) -> None:
        await self.release()

    async def end_reader(self, pid: int) -> None:
        await self.environment.backend.run_helper(self.container_id, signal_command("KILL", pid))

    async def exit_code(self) -> int | None:
        return await self.environment.backend.engine.wait_container(self.container_id)

    async def resize(self, cols: int, rows: int) -> None:
        await self.environment.backend.engine.resize_container(self.container_id, cols, rows)

    async def release(self) -> None:
        env = self.environment
        await env.backend.remove(self.name, env.settings.timeouts.stop)


class DockerProcess(ContainerProcess):
    """A program in a container, reached through one hijacked Engine stream."""

    log_prefix = "docker"

    def __init__(
        self,
        target: ExecTarget | ContainerTarget,
        stream: HijackedStream,
        pty: PtySpec | None,
        on_done: Callable[[DockerProcess], None],
    ) -> None:
        super().__init__(pty)
        self._target = target
        self._stream = stream
        self._on_done = on_done
        self._demuxer = None if pty is not None else Demuxer()
        self._engine_errors = bytearray()
        self._preamble_reader = PreambleReader()
        # On stdout, ahead of the program's output: the engine copies stdout and
        # stderr apart, so a line on stderr could arrive after more output than
        # is buffered before reading stops, and never be read.
        self._preamble_stream = STDOUT
        # Only spares say "ready" (before their instructions, then the preamble).
        self._ready: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._finisher: asyncio.Task[None] | None = None
        self._resizes_pending = 0
        self._resize_idle = asyncio.Event()
        self._resize_idle.set()
        self.token = ""  # a spare's end-of-instructions line
        stream.set_consumer(self._on_data, self._on_eof)

    # --- data from the engine -------------------------------------------------------

    def _on_data(self, data: bytes) -> None:
        if self._demuxer is None:
            pieces: list[tuple[int, bytes]] = [(STDOUT, data)]
        else:
            try:
                pieces = self._demuxer.feed(data)
            except ValueError as error:
                log.warning("docker.stream_corrupt", extra=fields(error=str(error)))
                self._stream.close()
                return
        for stream, payload in pieces:
            if stream == SYSTEMERR:
                self._engine_errors += payload
                continue
            if stream == self._preamble_stream:
                payload = self._take_preamble(payload)
            self._pipes[stream].feed(payload)

    def _take_preamble(self, payload: bytes) -> bytes:
        while payload and not self._preamble_reader.done:
            preamble, payload = self._preamble_reader.feed(payload)
            if preamble is None:
                break
            if preamble.ready and not self._ready.done():
                self._ready.set_result(True)
                self._preamble_reader = PreambleReader()  # the real preamble follows
                continue
            self._preamble.set_result(preamble)
        return payload

    def _on_eof(self, exc: BaseException | None) -> None:
        if not self._ready.done():
            self._ready.set_result(False)
        if not self._preamble.done():
            self._preamble.set_result(self._preamble_reader.feed_eof())
        for pipe in self._pipes.values():
            pipe.end()
        if self._engine_errors:
            log.warning(
                "docker.stream_error",
                extra=fields(error=self._engine_errors.decode(errors="replace").strip()),
            )
        if self._finisher is None:
            self._finisher = asyncio.ensure_future(self._finish())

    async def _finish(self) -> None:
        """After the stream ends: learn the exit code, release the container."""
        status: ExitStatus
        code = None
        if not self._abandoned:
            try:
                code = await self._target.exit_code()
            except PairpodError as error:
                if not self._killed:
                    log.warning("docker.exit_status_unknown", extra=fields(error=error.operator_message))
        if code is not None:
            status = exit_status(code)
        elif self._killed:
            status = ExitStatus(code=None, signal="KILL")
        else:
            status = ExitStatus(code=255)
        with contextlib.suppress(PairpodError):
            await self._target.release()
        self._stream.close()
        if not self._status.done():
            self._status.set_result(status)
        self._on_done(self)

    # --- used by the environment ----------------------------------------------------

    def leftover_output(self) -> bytes:
        """Everything buffered, for error messages when the wrapper did not run."""
        return self._pipes[STDOUT].drain() + self._pipes[STDERR].drain() + bytes(self._engine_errors)

    async def ready(self) -> bool:
        """For a spare: whether it is up and waiting for instructions."""
        return await asyncio.shield(self._ready)

    def adopt(
        self, environment: DockerConnectionEnvironment, on_done: Callable[[DockerProcess], None]
    ) -> None:
        """A spare joins an environment (it was started before there was one)."""
        assert isinstance(self._target, ExecTarget)
        self._target.environment = environment
        self._on_done = on_done

    async def launch(self, pty: PtySpec | None, instructions: bytes) -> None:
        """Tell a spare what to become."""
        self._pty = pty
        await self.write(instructions)

    @property
    def usable_spare(self) -> bool:
        """A spare that said ready and has not ended since."""
        return (
            self._ready.done()
            and self._ready.result()
            and not self._preamble.done()
            and self._finisher is None
        )

    def abandon(self) -> None:
        """The environment is going away: end the streams now, the exit code is moot."""
        self._killed = True
        self._abandoned = True
        self._stream.close()

    # --- Process -------------------------------------------------------------------------

    def _pause_output(self) -> None:
        self._stream.pause_reading()

    def _resume_output(self) -> None:
        self._stream.resume_reading()

    async def write(self, data: bytes) -> None:
        """Send input; input to a program that has ended is dropped.

        Input that follows a resize waits for it: the resize is an Engine call,
        slower than the data path, and a program reading the input ("stty
        size", a redraw) must already see the new size, as with a local PTY.
        """
        if not self._resize_idle.is_set():
            await self._resize_idle.wait()
        if self._eof_sent or self._status.done():
            return
        with contextlib.suppress(ConnectionError):
            await self._stream.write(data)

    async def _close_stdin(self) -> None:
        self._stream.write_eof()

    async def resize(self, cols: int, rows: int, pixel_width: int = 0, pixel_height: int = 0) -> None:
        """Resize the TTY through the Engine (the program gets SIGWINCH)."""
        if self._pty is None or self._status.done():
            return
        # Marked before the first await, so input sent after this resize waits for it.
        self._resizes_pending += 1
        self._resize_idle.clear()
        try:
            await self._target.resize(cols, rows)
        except PairpodError as error:
            # Racing with the program's exit is normal; anything else is worth a line.
            if not self._status.done():
                log.info("docker.resize_failed", extra=fields(error=error.operator_message))
        finally:
            self._resizes_pending -= 1
            if not self._resizes_pending:
                self._resize_idle.set()

    def _signallable(self) -> bool:
        return self._finisher is None  # the stream has not ended

    async def _send_signal(self, name: str, pid: int) -> None:
        await self._target.signal(name, pid)

    async def _end_reader(self, pid: int) -> None:
        await self._target.end_reader(pid)

    async def _kill_tree(self, pid: int | None) -> None:
        if self._finisher is None:
            await self._target.kill(pid)

    def _stop_stream(self) -> None:
        self._stream.close()
