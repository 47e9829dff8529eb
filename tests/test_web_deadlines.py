"""The web listener's deadlines and request limits, on a real gateway over raw sockets.

A client that opens connections and never finishes a request (slowloris, or
nothing at all) must not keep an address's (or everyone's) connection slots;
a WebSocket viewer, once open, is not under that deadline. The gateway of the
module has ``sharing.web.header_timeout`` and ``send_timeout`` at 2s (short,
but with room for a test to fill an address's slots before the first expire).
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from pairpod.config import validate_config
from pairpod.errors import ConfigError
from pairpod.web.connections import PER_SOURCE
from tests.support.gateway import ClientKey, GatewayThread, Tmux, wait_until
from tests.support.web import (
    share_options,
    stalled_viewer,
    wait_for_participants,
    web_certificate,
    web_gateway,
    web_links,
)
from tests.test_web_http import ended, messages_until, origin_of


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, client_key: ClientKey) -> Iterator[GatewayThread]:
    directory = tmp_path_factory.mktemp("web-deadlines")
    overrides = {"sharing": {"open": True, "web": {"header_timeout": "2s", "send_timeout": "2s"}}}
    with web_gateway(directory / "gw", client_key, overrides) as gateway:
        yield gateway


@pytest.fixture
def port(gw: GatewayThread) -> int:
    assert gw.gateway.web is not None
    return gw.gateway.web.port


async def test_unfinished_requests_are_cut_and_free_the_address_but_a_viewer_stays(
    gw: GatewayThread, port: int, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="pairpod")
    owner = Tmux("owner", tmp_path).start(gw.ssh_argv(options=share_options()), 90, 25)
    try:
        url = web_links(owner)["ro"]
        async with (
            aiohttp.ClientSession() as session,
            session.ws_connect(f"{url}/ws", headers={"Origin": origin_of(url)}) as viewer,
        ):
            await messages_until(viewer, '"type": "hello"')
            # The viewer holds one of the address's slots; half request lines hold the rest.
            held: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
            try:
                for _ in range(PER_SOURCE - 1):
                    held.append(await asyncio.open_connection("127.0.0.1", port))
                    held[-1][1].write(b"GET /s/")
                # The address is full: its next browser is turned away while they are held.
                with pytest.raises(aiohttp.ClientConnectionError):
                    async with session.get(url):
                        pass
                # At the deadline each is closed, counted as such, and leaves the count.
                async with asyncio.timeout(30):
                    assert all(await asyncio.gather(*(ended(reader) for reader, _ in held)))
                assert cut_addresses(caplog) == ["127.0.0.1"] * (PER_SOURCE - 1)
            finally:
                for _, writer in held:
                    writer.close()
            # A browser at the same address joins again.
            async with session.ws_connect(f"{url}/ws", headers={"Origin": origin_of(url)}) as again:
                await messages_until(again, '"type": "hello"')
            # The viewer, open for longer than the deadline, still gets live output.
            owner.type("echo still-here-$((6*7))\n")
            await messages_until(viewer, b"still-here-42")
    finally:
        owner.close()


def cut_addresses(caplog: pytest.LogCaptureFixture, message: str = "web.header_timeout") -> list[str]:
    """The addresses of the connections the log says were cut (at their deadline, by default)."""
    return [getattr(r, "pairpod_fields", {})["addr"] for r in caplog.records if r.getMessage() == message]


async def test_a_browser_that_takes_nothing_is_cut_after_the_send_timeout(
    gw: GatewayThread, port: int, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Without it such a socket would be held for ever: closing a transport waits
    # until what is queued has been sent, and this client takes nothing.
    caplog.set_level(logging.INFO, logger="pairpod")
    owner = Tmux("owner", tmp_path).start(gw.ssh_argv(options=share_options()), 90, 25)
    stalled: socket.socket | None = None
    try:
        url = web_links(owner)["ro"]
        stalled = await stalled_viewer(port, url)
        wait_for_participants(gw, 1)
        owner.type("head -c 3000000 /dev/zero | tr '\\0' x; echo; echo flood-$((7*6))\n")
        wait_until(
            lambda: any(r.getMessage() == "web.send_timeout" for r in caplog.records),
            timeout=30,
            message="the stalled browser cut",
        )
        wait_for_participants(gw, 0)
        owner.wait_for("flood-42", timeout=60)  # the owner was never held
    finally:
        if stalled is not None:
            stalled.close()
        owner.close()


async def test_a_kept_alive_connection_waits_for_its_next_request_only_so_long(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET /favicon.ico HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 20)
        assert head.startswith(b"HTTP/1.1 204")
        assert b"connection: close" not in head.lower()  # kept alive
        writer.write(b"GET /s/")  # the next request, never finished
        async with asyncio.timeout(30):
            assert await ended(reader)
    finally:
        writer.close()


@pytest.mark.parametrize(
    "request_head",
    [
        b"GET /s/" + b"x" * 4000 + b" HTTP/1.1\r\nHost: h\r\n\r\n",  # a request line past 2 KiB
        b"GET /s/x HTTP/1.1\r\nHost: h\r\n" + b"".join(b"X-%d: y\r\n" % n for n in range(60)) + b"\r\n",
        b"GET /s/x HTTP/1.1\r\nHost: h\r\nX-Big: " + b"y" * 9000 + b"\r\n\r\n",  # one header past 8 KiB
    ],
    ids=["request-line", "header-count", "header-size"],
)
async def test_oversized_request_heads_are_refused(port: int, request_head: bytes) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request_head)
        async with asyncio.timeout(20):
            answer = await reader.read()
        assert re.match(rb"HTTP/1\.[01] 4\d\d ", answer), answer[:100]
    finally:
        writer.close()


@pytest.fixture(scope="module", params=["uvloop", "asyncio"])
def tls_gw(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, client_key: ClientKey
) -> Iterator[tuple[GatewayThread, ssl.SSLContext]]:
    """A gateway whose web listener speaks TLS (a 2s header deadline), on each event loop."""
    directory = tmp_path_factory.mktemp(f"web-tls-{request.param}")
    cert, key = web_certificate(directory)
    web = {"tls_cert": str(cert), "tls_key": str(key), "header_timeout": "2s"}
    overrides = {"event_loop": request.param, "sharing": {"open": True, "web": web}}
    with web_gateway(directory / "gw", client_key, overrides) as gateway:
        yield gateway, ssl.create_default_context(cafile=str(cert))


async def test_tls_connections_that_never_handshake_or_never_ask_are_cut(
    tls_gw: tuple[GatewayThread, ssl.SSLContext], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="pairpod")
    gateway, trust = tls_gw
    assert gateway.gateway.web is not None
    port = gateway.gateway.web.port
    silent, silent_writer = await asyncio.open_connection("127.0.0.1", port)  # no TLS handshake at all
    idle, idle_writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=trust, server_hostname="127.0.0.1"
    )
    try:
        async with asyncio.timeout(30):
            assert await ended(silent)
            assert await ended(idle)
        # Cut by the gateway's deadline, both of them (aiohttp's own keepalive timer
        # would close the idle one too, but later, and without counting it).
        wait_until(lambda: len(cut_addresses(caplog)) >= 2, timeout=10, message="both cut at the deadline")
        assert cut_addresses(caplog) == ["127.0.0.1"] * 2
    finally:
        silent_writer.close()
        idle_writer.close()


async def test_tls_connections_are_counted_from_their_accept(
    tls_gw: tuple[GatewayThread, ssl.SSLContext], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Were they counted only once their handshake is done, one address could hold
    # any number of connections that never send a ClientHello, each for the deadline.
    caplog.set_level(logging.INFO, logger="pairpod")
    gateway, trust = tls_gw
    assert gateway.gateway.web is not None
    port = gateway.gateway.web.port
    extra = 8
    held: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    try:
        for _ in range(PER_SOURCE + extra):
            held.append(await asyncio.open_connection("127.0.0.1", port))
        async with asyncio.timeout(30):
            # Those past the address's cap are closed at once, and said so.
            assert all(await asyncio.gather(*(ended(reader) for reader, _ in held[PER_SOURCE:])))
            assert cut_addresses(caplog, "web.too_many_connections") == ["127.0.0.1"] * extra
            # The others at the header deadline, which runs from the accept.
            assert all(await asyncio.gather(*(ended(reader) for reader, _ in held[:PER_SOURCE])))
        wait_until(lambda: len(cut_addresses(caplog)) >= PER_SOURCE, timeout=10, message="all cut")
        assert cut_addresses(caplog) == ["127.0.0.1"] * PER_SOURCE
    finally:
        for _, writer in held:
            writer.close()
    # The address is free again: a browser joins over TLS.
    owner = Tmux("owner", tmp_path).start(gateway.ssh_argv(options=share_options()), 90, 25)
    try:
        url = web_links(owner)["ro"]
        assert url.startswith("https://")
        async with (
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=trust)) as session,
            session.ws_connect(f"{url}/ws", headers={"Origin": origin_of(url)}) as viewer,
        ):
            await messages_until(viewer, '"type": "hello"')
            owner.type("echo over-tls-$((6*7))\n")
            await messages_until(viewer, b"over-tls-42")
    finally:
        owner.close()


async def test_stopping_ends_connections_still_in_their_tls_handshake(
    tmp_path: Path, client_key: ClientKey
) -> None:
    # aiohttp closes the connections it was handed; one still in its handshake is not.
    cert, key = web_certificate(tmp_path)
    web = {"tls_cert": str(cert), "tls_key": str(key), "header_timeout": "5m"}
    with web_gateway(tmp_path / "gw", client_key, {"sharing": {"web": web}}) as gateway:
        assert gateway.gateway.web is not None
        reader, writer = await asyncio.open_connection("127.0.0.1", gateway.gateway.web.port)
        try:
            gateway.call(gateway.gateway.web.stop())
            async with asyncio.timeout(20):
                assert await ended(reader)
        finally:
            writer.close()


@pytest.mark.parametrize("value", ["0", "500ms", "10m", "soon", -1])
def test_a_bad_header_timeout_names_the_key(value: object) -> None:
    with pytest.raises(ConfigError, match=re.escape("sharing.web.header_timeout")):
        validate_config({"sharing": {"web": {"header_timeout": value}}}, "test")
