"""The web listener's connection caps, on a real listener: per source and for everyone."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from pathlib import Path
from typing import cast

import pytest

from pairpod.eventloop import LoopChoice, new_event_loop
from pairpod.web.connections import ConnectionLimit
from tests.support.web import web_certificate
from tests.test_web_http import ended


class _Greeting(asyncio.Protocol):
    """Says hello on a connection the limit let through (a refused one gets EOF at once)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TLS transport writes but is no asyncio.WriteTransport subclass.
        cast(asyncio.WriteTransport, transport).write(b"hi")


async def _admitted(port: int, source: str) -> tuple[bool, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    return await reader.read(2) == b"hi", writer


async def test_all_sources_together_hold_at_most_the_total() -> None:
    # Many addresses together must not take the process's descriptors either.
    limit = ConnectionLimit(
        lambda address: address == "127.0.0.9", header_timeout=300, send_timeout=300, per_source=1, total=4
    )
    server = await asyncio.get_running_loop().create_server(limit.wrap(_Greeting), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    writers: list[asyncio.StreamWriter] = []
    try:
        admitted = []
        for source in [f"127.0.0.{n}" for n in range(2, 8)]:  # six addresses, one connection each
            ok, writer = await _admitted(port, source)
            admitted.append(ok)
            writers.append(writer)
        assert admitted == [True] * 4 + [False] * 2
        # Two leaving make room for two more, both from a source not capped by itself
        # (a trusted proxy): its second is past the per-source cap of one.
        writers[0].close()
        writers[1].close()
        for _ in range(2):
            async with asyncio.timeout(20):
                while True:
                    ok, writer = await _admitted(port, "127.0.0.9")
                    writers.append(writer)
                    if ok:
                        break
    finally:
        for writer in writers:
            writer.close()
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_a_tls_hello_waiting_at_the_accept_is_not_lost_and_a_bad_one_frees_its_slot(
    loop: LoopChoice, tmp_path: Path
) -> None:
    # The listener is plain TCP and starts TLS on a connection it let in; uvloop reads
    # from the accept on, so the ClientHello may be read before the handshake begins.
    # A failed handshake must leave the counts (one connection per source here).
    cert, key = web_certificate(tmp_path)
    server_side = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_side.load_cert_chain(cert, key)
    client_side = ssl.create_default_context(cafile=str(cert))
    # A loop of its own, not made current: asyncio.Runner would also take over the
    # process's child watcher, which the module's other gateways still rely on.
    running = new_event_loop(loop)
    try:
        assert running.run_until_complete(_greeting_after_an_early_hello(server_side, client_side)) == b"hi"
    finally:
        running.run_until_complete(running.shutdown_default_executor())
        running.close()


async def _greeting_after_an_early_hello(server_side: ssl.SSLContext, client_side: ssl.SSLContext) -> bytes:
    limit = ConnectionLimit(lambda _: False, header_timeout=300, send_timeout=300, per_source=1)
    server = await asyncio.get_running_loop().create_server(
        limit.wrap(_Greeting, server_side), "127.0.0.1", 0
    )
    port = server.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"\x16\x03\x01\x00\x08not tls!")  # a handshake record that is none
        async with asyncio.timeout(20):
            assert await ended(reader)
            writer.close()
            while True:  # its slot is free (once the gateway's side of it has ended too)
                with contextlib.suppress(OSError):
                    return await _early_hello(port, client_side)
    finally:
        server.close()
        await server.wait_closed()


async def _early_hello(port: int, client_side: ssl.SSLContext) -> bytes:
    """What a TLS server says first to a client whose ClientHello waits at the accept."""
    client = client_side.wrap_socket(
        socket.create_connection(("127.0.0.1", port)),
        server_hostname="127.0.0.1",
        do_handshake_on_connect=False,
    )
    try:
        # Connected and the hello sent before this loop runs again: it waits at the accept.
        client.setblocking(False)
        with pytest.raises(ssl.SSLWantReadError):
            client.do_handshake()
        client.settimeout(20)
        return await asyncio.to_thread(_handshake_and_read, client)
    finally:
        client.close()


def _handshake_and_read(client: ssl.SSLSocket) -> bytes:
    client.do_handshake()
    return client.recv(2)
