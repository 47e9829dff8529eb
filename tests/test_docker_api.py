"""The Engine client's hijacked streams, against a small fake engine on a unix socket."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from pairpod.backends.docker.api import Engine, HijackedStream

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _fake_engine(path: Path, handler: Handler, greeting: bytes = b"") -> asyncio.Server:
    """Answer each request with 101 (and ``greeting`` in the same write), then run ``handler``."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        await reader.readexactly(length)
        writer.write(b"HTTP/1.1 101 UPGRADED\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\n" + greeting)
        await handler(reader, writer)

    return await asyncio.start_unix_server(serve, path)


async def _read_all(stream: HijackedStream) -> AsyncIterator[bytes]:
    """The stream's bytes as its consumer sees them, up to the end."""
    queue: asyncio.Queue[bytes | None] = asyncio.Queue()
    stream.set_consumer(queue.put_nowait, lambda _: queue.put_nowait(None))
    while (chunk := await queue.get()) is not None:
        yield chunk


@pytest.fixture
def socket_path(tmp_path: Path) -> Path:
    return tmp_path / "engine.sock"


async def test_two_streams_read_at_once_each_get_their_own_bytes(socket_path: Path):
    payloads = {b"a": os.urandom(700_000), b"b": os.urandom(900_000)}

    async def send(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        which = await reader.readexactly(1)
        payload = payloads[which]
        for start in range(0, len(payload), 50_000):
            writer.write(payload[start : start + 50_000])
            await writer.drain()
        writer.close()

    server = await _fake_engine(socket_path, send)
    engine = Engine(f"unix://{socket_path}")
    streams: dict[bytes, HijackedStream] = {}
    try:
        streams = {name: await engine.start_exec(name.decode(), tty=False) for name in payloads}
        for name, stream in streams.items():
            await stream.write(name)

        async def collect(stream: HijackedStream) -> bytes:
            return b"".join([chunk async for chunk in _read_all(stream)])

        got = await asyncio.gather(*(collect(stream) for stream in streams.values()))
        assert dict(zip(streams, got, strict=True)) == payloads
    finally:
        for stream in streams.values():
            stream.close()
        server.close()
        await engine.close()


async def test_bytes_sent_with_the_upgrade_answer_reach_a_late_consumer(socket_path: Path):
    async def close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    # Output right behind the answer is read with it, before anyone consumes the stream.
    server = await _fake_engine(socket_path, close, greeting=b"early bytes")
    engine = Engine(f"unix://{socket_path}")
    try:
        stream = await engine.start_exec("x", tty=True)
        assert b"".join([chunk async for chunk in _read_all(stream)]) == b"early bytes"
        stream.close()
    finally:
        server.close()
        await engine.close()


async def test_stdin_arrives_whole_and_then_ends(socket_path: Path):
    payload = os.urandom(3_000_000)
    received: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    async def sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received.set_result(await reader.read())  # until the client half-closes
        writer.close()

    server = await _fake_engine(socket_path, sink)
    engine = Engine(f"unix://{socket_path}")
    try:
        stream = await engine.start_exec("x", tty=False)
        stream.set_consumer(lambda _: None, lambda _: None)
        for start in range(0, len(payload), 32_768):
            await stream.write(payload[start : start + 32_768])
        stream.write_eof()
        assert await asyncio.wait_for(received, 30) == payload
        stream.close()
    finally:
        server.close()
        await engine.close()


def test_a_stream_works_the_same_on_uvloop(socket_path: Path):
    # uvloop's transports are not subclasses of asyncio's: the stream must take
    # them as they are (an isinstance check once failed every exec there).
    uvloop = pytest.importorskip("uvloop")
    payload = os.urandom(3_000_000)

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):  # until the client half-closes
            writer.write(data)
            await writer.drain()
        writer.close()

    async def main() -> bytes:
        server = await _fake_engine(socket_path, echo)
        engine = Engine(f"unix://{socket_path}")
        try:
            stream = await engine.start_exec("x", tty=False)
            received = bytearray()
            done = asyncio.get_running_loop().create_future()

            def on_data(data: bytes) -> None:
                received.extend(data)
                # Flow control reaches uvloop's transport too.
                stream.pause_reading()
                asyncio.get_running_loop().call_soon(stream.resume_reading)

            stream.set_consumer(on_data, lambda _: done.done() or done.set_result(None))
            for start in range(0, len(payload), 32_768):
                await stream.write(payload[start : start + 32_768])
            stream.write_eof()
            await asyncio.wait_for(done, 30)
            stream.close()
            return bytes(received)
        finally:
            server.close()
            await engine.close()

    assert uvloop.run(main()) == payload
