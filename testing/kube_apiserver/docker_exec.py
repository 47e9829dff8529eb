"""A Docker exec session: the one place that knows aiodocker's exec internals.

aiodocker has no public call to close an exec's stdin (the half-close the
Docker CLI does with CloseWrite), so ``close_stdin`` reaches the hijacked
connection's transport here and nowhere else.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiodocker
from aiodocker.execs import Exec
from aiodocker.stream import Stream

# How long to wait for Docker to record an exec's exit code after its output
# ended, and how often to ask: the engine sets it right after the process exits.
_EXIT_CODE_WAIT = 10.0
_EXIT_CODE_POLL = 0.02


class DockerExecSession:
    """One running ``docker exec`` with its attached streams."""

    def __init__(self, execution: Exec, stream: Stream, *, tty: bool) -> None:
        self._exec = execution
        self._stream = stream
        self.tty = tty
        self._stdin_closed = False

    @classmethod
    async def start(
        cls,
        docker: aiodocker.Docker,
        container_id: str,
        command: list[str],
        *,
        stdin: bool,
        stdout: bool,
        stderr: bool,
        tty: bool,
    ) -> DockerExecSession:
        """Create and start an exec in a running container."""
        container = docker.containers.container(container_id)
        execution = await container.exec(command, stdin=stdin, stdout=stdout, stderr=stderr, tty=tty)
        stream = execution.start(detach=False)
        await stream._init()  # open the hijacked connection now
        return cls(execution, stream, tty=tty)

    async def read(self) -> tuple[int, bytes] | None:
        """The next output chunk as (1 stdout | 2 stderr, data), or None at the end."""
        message = await self._stream.read_out()
        if message is None:
            return None
        return message.stream, message.data

    async def write(self, data: bytes) -> None:
        """Feed the process's stdin."""
        if data and not self._stdin_closed:
            await self._stream.write_in(data)

    def close_stdin(self) -> None:
        """Half-close the connection so the process reads EOF on stdin."""
        if self._stdin_closed:
            return
        self._stdin_closed = True
        response: Any = self._stream._resp  # no public half-close
        connection = response.connection if response is not None else None
        transport = connection.transport if connection is not None else None
        if transport is not None and transport.can_write_eof():
            transport.write_eof()

    async def resize(self, width: int, height: int) -> None:
        """Resize the exec's terminal (Docker waits until the process has started)."""
        await self._exec.resize(h=height, w=width)

    async def exit_code(self) -> int:
        """The process's exit code; call after ``read`` returned None."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _EXIT_CODE_WAIT
        while True:
            info = await self._exec.inspect()
            if not info.get("Running") and info.get("ExitCode") is not None:
                return int(info["ExitCode"])
            if loop.time() > deadline:
                return -1
            await asyncio.sleep(_EXIT_CODE_POLL)

    async def close(self) -> None:
        """Drop the connection (the process loses its streams)."""
        await self._stream.close()
