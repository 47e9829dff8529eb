"""A hostile web client, on a real gateway over raw sockets: it fills neither the log nor shutdown.

Garbage sent in a loop is refused with one short line per refusal, and only a
few a minute from one address, none with a traceback; a handler's own bug
still logs its traceback. Viewers whose browsers stopped reading (and never
answer a close) do not hold the web listener's stop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web

import pairpod.web.server
from pairpod.log import JsonFormatter, TextFormatter
from pairpod.web.refusals import BURST
from tests.support.gateway import ClientKey, GatewayThread, Tmux
from tests.support.web import share_options, stalled_viewer, wait_for_participants, web_gateway, web_links

# Requests aiohttp cannot parse, each on its own connection; one holds a link-like token.
TOKEN = "rw-" + "q" * 25
GARBAGE = [
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(32)),  # a TLS hello: not HTTP
    f"GET /s/{TOKEN} HTTP/1.1 trailing junk\r\nHost: h\r\n\r\n".encode(),
    b"GET /s/" + b"x" * 4000 + b" HTTP/1.1\r\nHost: h\r\n\r\n",  # a request line past 2 KiB
    b"GET / HTTP/1.1\r\nHost h\r\n\r\n",  # a header without a colon
    b"GET / HTTP/9.9\r\nHost: h\r\n\r\n",
]
# Not the listener's own address: the source of the garbage is counted apart from other tests.
SOURCE = "127.0.0.2"


class HandlerBug(Exception):
    """What the favicon handler of this module's gateway raises."""


async def _broken(request: web.Request) -> web.Response:
    raise HandlerBug("a bug in a handler")


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, client_key: ClientKey) -> Iterator[GatewayThread]:
    # The favicon's handler has a bug here: a real server error, on the real path.
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(pairpod.web.server, "_no_content", _broken)
        with web_gateway(tmp_path_factory.mktemp("web-hostile") / "gw", client_key) as gateway:
            yield gateway


def web_port(gateway: GatewayThread) -> int:
    assert gateway.gateway.web is not None
    return gateway.gateway.web.port


async def answer(port: int, request: bytes, source: str = SOURCE) -> bytes:
    """What the listener answers ``request`` with, up to its closing the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    try:
        writer.write(request)
        async with asyncio.timeout(20):
            return await reader.read()
    finally:
        writer.close()


async def test_garbage_in_a_loop_logs_a_few_short_lines_and_the_listener_serves_on(
    gw: GatewayThread, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    port = web_port(gw)
    for n in range(200):
        refused = await answer(port, GARBAGE[n % len(GARBAGE)])
        assert re.match(rb"HTTP/1\.[01] 400 ", refused), refused[:100]
    lines = [r for r in caplog.records if r.getMessage() == "web.bad_request"]
    assert 1 <= len(lines) <= BURST + 1, len(lines)  # one more were the loop slower than 20 s
    assert {getattr(r, "pairpod_fields", {})["addr"] for r in lines} == {SOURCE}
    assert all(r.levelno == logging.INFO and r.exc_info is None for r in lines)
    assert all(getattr(r, "pairpod_fields", {})["reason"] for r in lines)
    # Nothing else said a word about them: no error, no traceback, no token.
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.WARNING]
    rendered = [f.format(r) for r in caplog.records for f in (TextFormatter(), JsonFormatter())]
    assert not [line for line in rendered if TOKEN in line or "trailing junk" in line]
    # The listener still serves a page, to that address too.
    page = await answer(port, b"GET /static/pairpod.js HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    assert page.startswith(b"HTTP/1.1 200 ") and b"WebSocket" in page


async def test_a_handler_bug_still_logs_its_traceback(
    gw: GatewayThread, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    request = b"GET /favicon.ico HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
    assert (await answer(web_port(gw), request, "127.0.0.3")).startswith(b"HTTP/1.1 500 ")
    errors = [r for r in caplog.records if r.name == "aiohttp.server" and r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert errors[0].exc_info is not None and isinstance(errors[0].exc_info[1], HandlerBug)
    assert "web.bad_request" not in [r.getMessage() for r in caplog.records]


async def test_stopping_closes_many_silent_viewers_at_once(tmp_path: Path, client_key: ClientKey) -> None:
    audit = tmp_path / "audit.jsonl"
    overrides = {"sharing": {"open": True}, "audit": {"file": str(audit)}}
    with web_gateway(tmp_path / "gw", client_key, overrides) as gateway:
        owner = Tmux("owner", tmp_path).start(gateway.ssh_argv(options=share_options()), 90, 25)
        viewers: list[socket.socket] = []
        try:
            url = web_links(owner)["rw"]
            # A program that reads no input, in raw mode: typed keys wait for it, and a
            # page whose keys wait is not reading its socket, so a close waits for the
            # browser's answer (5 s), which these browsers never send.
            owner.type("stty -icanon -echo; sleep 600\n")
            viewers = [await stalled_viewer(web_port(gateway), url, b"x" * 60000) for _ in range(20)]
            wait_for_participants(gateway, 20)
            # The web part stops while the session lives on (as on a replica whose viewers
            # watch a session elsewhere): one bound for all of them, not 5 s each.
            assert gateway.gateway.web is not None
            began = time.monotonic()
            gateway.call(gateway.gateway.web.stop(), timeout=180)
            assert time.monotonic() - began < 15
            wait_for_participants(gateway, 0)
            # Each was audited as leaving, cut or not.
            events = [json.loads(line)["event"] for line in audit.read_text().splitlines()]
            assert events.count("share.leave") == events.count("share.join") == 20
        finally:
            owner.close()
            for viewer in viewers:
                viewer.close()
