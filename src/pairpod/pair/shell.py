"""The standing shell: a login shell on a PTY of this machine, started by the local backend.

:class:`StandingShell` is one :class:`~pairpod.backends.base.Process` for
the shared Terminal however many shells it runs in turn: with ``respawn``, a
shell that exits is followed by a fresh one of the same size, and the
Terminal (and everyone watching it) sees one continuous stream.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from typing import Any

from pairpod.backends.base import ExitStatus, Identity, Process, ProcessSpec, PtySpec, Stream
from pairpod.backends.local import LocalEnvironment
from pairpod.config import Config, LocalSettings
from pairpod.log import fields, get_logger
from pairpod.pair.user import ShellUser

log = get_logger("pair")

#: The terminal type the shell is given before anyone joins.
TERM = "xterm-256color"
# How long the shell's last output may take to drain once it has exited,
# before what it left running on the terminal is ended too.
_LINGER = 1.0


def describe_status(status: ExitStatus) -> str:
    """``status 3`` or ``signal KILL``, for people."""
    return f"status {status.code}" if status.code is not None else f"signal {status.signal}"


class StandingShell(Process):
    """The shell (or its successive shells, with ``respawn``) the standing session shares."""

    def __init__(self, environment: LocalEnvironment, spec: ProcessSpec, *, respawn: bool) -> None:
        self._environment = environment
        self._spec = spec
        self._respawn = respawn
        self._stopping = False
        self._size = (spec.pty.cols, spec.pty.rows) if spec.pty else (80, 24)
        self._shell: Process | None = None
        self._reapers: set[asyncio.Task[Any]] = set()
        #: How the last shell ended (None while the first runs).
        self.status: ExitStatus | None = None
        self._ended = asyncio.Event()

    @classmethod
    async def start(
        cls,
        config: Config,
        user: ShellUser,
        *,
        cols: int = 80,
        rows: int = 24,
        env: Mapping[str, str] | None = None,
        respawn: bool = False,
    ) -> StandingShell:
        """Start the shell as ``user`` (a login shell in its home) on a ``cols`` x ``rows`` PTY."""
        settings = LocalSettings(  # noqa: S604 - a login shell is what is shared
            shell=[user.shell, "-l"],
            user=user.name,
            workdir=config.local.workdir,
            env={**config.local.env, **(env or {})},
        )
        identity = Identity(username=user.name, conn_id="pair", remote_addr="", config=config)
        environment = LocalEnvironment(settings, identity)
        spec = ProcessSpec(pty=PtySpec(term=TERM, cols=cols, rows=rows))
        shell = cls(environment, spec, respawn=respawn)
        await shell._start_one()
        return shell

    async def _start_one(self) -> Process:
        cols, rows = self._size
        assert self._spec.pty is not None
        pty = PtySpec(term=self._spec.pty.term, cols=cols, rows=rows)
        process = await self._environment.start(ProcessSpec(pty=pty, env=self._spec.env))
        self._shell = process
        reaper = asyncio.ensure_future(self._reap(process))
        self._reapers.add(reaper)
        reaper.add_done_callback(self._reapers.discard)
        return process

    async def _reap(self, process: Process) -> None:
        """Once a shell exits, end what it left on the terminal (which would keep
        the output open) after a moment for its last output to drain."""
        await process.wait()
        await asyncio.sleep(_LINGER)
        await process.kill()

    @property
    def current(self) -> Process:
        """The shell running now."""
        assert self._shell is not None
        return self._shell

    async def read(self, stream: Stream, size: int = 65536) -> bytes:
        """The shell's output; with ``respawn``, a line and the next shell's after it ends."""
        while True:
            shell = self.current
            data = await shell.read(stream, size)
            if data:
                return data
            self.status = await shell.wait()
            log.info("pair.shell_exited", extra=fields(status=describe_status(self.status)))
            if not self._respawn or self._stopping:
                self._ended.set()
                return b""
            await self._start_one()
            return (
                f"\r\npairpod: the shell exited ({describe_status(self.status)}); a fresh one starts\r\n"
            ).encode()

    async def write(self, data: bytes) -> None:
        """Keystrokes to the shell running now."""
        await self.current.write(data)

    async def write_eof(self) -> None:
        """The terminal's EOF character to the shell running now."""
        await self.current.write_eof()

    async def close_output(self) -> None:
        """Drop the shell's output (nobody asks this of a shared terminal)."""
        await self.current.close_output()

    async def resize(self, cols: int, rows: int, pixel_width: int = 0, pixel_height: int = 0) -> None:
        """Resize the PTY (a fresh shell starts at the last size)."""
        self._size = (cols, rows)
        await self.current.resize(cols, rows, pixel_width, pixel_height)

    async def signal(self, name: str) -> None:
        """Signal the shell running now."""
        await self.current.signal(name)

    async def wait(self) -> ExitStatus:
        """Wait until the last shell has ended and its output drained; its status."""
        await self._ended.wait()
        assert self.status is not None
        return self.status

    async def kill(self) -> None:
        """End the shell (and what it started) and start no other."""
        self._stopping = True
        await self.current.kill()
        for reaper in list(self._reapers):
            reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reaper
