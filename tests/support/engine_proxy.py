"""A Unix socket in front of the shared Docker engine that a test can freeze.

Frozen, it still accepts connections but answers nothing and forwards
nothing: what a hung engine looks like to pairpod. The engine itself is never
touched (other tests use it at the same time).
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

ENGINE_SOCKET = "/var/run/docker.sock"


class EngineProxy:
    """Forwards ``socket`` to the Docker engine until :meth:`freeze`."""

    def __init__(self, socket: Path, engine: str = ENGINE_SOCKET) -> None:
        self.socket = socket
        self._engine = engine
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._running = asyncio.Event()  # set: forwarding; clear: frozen
        self._server: asyncio.AbstractServer | None = None

    @property
    def host(self) -> str:
        """The value for ``docker.host``."""
        return f"unix://{self.socket}"

    def start(self) -> EngineProxy:
        """Listen (in a thread of its own)."""
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    async def _start(self) -> None:
        self._running.set()
        self._server = await asyncio.start_unix_server(self._serve, path=str(self.socket))

    def freeze(self) -> None:
        """From now on accept, but never answer."""
        self._loop.call_soon_threadsafe(self._running.clear)

    def thaw(self) -> None:
        """Forward again."""
        self._loop.call_soon_threadsafe(self._running.set)

    def stop(self) -> None:
        """Close everything and end the thread."""

        async def close() -> None:
            if self._server is not None:
                self._server.close()

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self._running.wait()
        up_reader, up_writer = await asyncio.open_unix_connection(self._engine)
        await asyncio.gather(
            self._pipe(reader, up_writer), self._pipe(up_reader, writer), return_exceptions=True
        )
        for w in (writer, up_writer):
            w.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            await self._running.wait()  # frozen: hold what arrived, forever
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
