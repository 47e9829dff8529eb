"""Web joiners over HTTP and WebSocket with aiohttp as the client: the listener's rules.

The owner is the real OpenSSH client in tmux; the gateway of the module has
``sharing.open`` and web joining on.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from pairpod.config import validate_config
from pairpod.errors import ConfigError
from pairpod.log import JsonFormatter, TextFormatter
from pairpod.web import page
from pairpod.web.addresses import ClientAddresses
from pairpod.web.connections import PER_SOURCE
from tests.support.gateway import ClientKey, GatewayThread, Tmux, wait_until
from tests.support.web import (
    control,
    share_options,
    wait_for_participants,
    web_certificate,
    web_gateway,
    web_links,
)


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, client_key: ClientKey) -> Iterator[GatewayThread]:
    directory = tmp_path_factory.mktemp("web-http")
    overrides = {
        "sharing": {"open": True, "web": {"max_message": 4096}},
        "audit": {"file": str(directory / "audit.jsonl")},
    }
    with web_gateway(directory / "gw", client_key, overrides) as gateway:
        yield gateway


@pytest.fixture
def owner(gw: GatewayThread, tmp_path: Path) -> Iterator[Tmux]:
    term = Tmux("owner", tmp_path).start(gw.ssh_argv(options=share_options()), 90, 25)
    yield term
    term.close()


def origin_of(url: str) -> str:
    return url.split("/s/")[0]


async def messages_until(socket: aiohttp.ClientWebSocketResponse, wanted: bytes | str) -> list[object]:
    """What the socket receives until output holding ``wanted`` (or a text message holding it)."""
    received: list[object] = []
    output = b""
    while True:
        msg = await socket.receive(timeout=20)
        assert msg.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY), msg
        received.append(msg.data)
        if isinstance(msg.data, bytes):
            output += msg.data
            if isinstance(wanted, bytes) and wanted in output:
                return received
        elif isinstance(wanted, str) and wanted in msg.data:
            return received


async def test_page_is_served_with_a_strict_policy_and_no_inline_script(owner: Tmux) -> None:
    url = web_links(owner)["ro"]
    async with aiohttp.ClientSession() as session:
        async with session.get(url) as page:
            assert page.status == 200
            body = await page.text()
            policy = page.headers["Content-Security-Policy"]
            assert page.headers["Referrer-Policy"] == "no-referrer"
            assert page.headers["X-Frame-Options"] == "DENY"
        for name in ("xterm.js", "addon-fit.js", "pairpod.js", "xterm.css"):
            async with session.get(f"{origin_of(url)}/static/{name}") as asset:
                assert asset.status == 200, name
                assert asset.headers["Content-Type"].startswith(("text/javascript", "text/css"))
    assert "script-src 'self';" in policy and "default-src 'none'" in policy
    assert "frame-ancestors 'none'" in policy and "unsafe-eval" not in policy
    scripts = re.findall(r"<script[^>]*>", body)
    assert len(scripts) == 3 and all('src="../static/' in tag for tag in scripts)
    assert "<script>" not in body and "/s/ro-" not in body  # no inline script, no token in the page


async def test_websocket_from_another_origin_is_refused(owner: Tmux) -> None:
    url = web_links(owner)["rw"]
    async with aiohttp.ClientSession() as session:
        for headers in ({"Origin": "http://evil.example"}, {}):
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await session.ws_connect(f"{url}/ws", headers=headers)
            assert refused.value.status == 403
        async with session.ws_connect(f"{url}/ws", headers={"Origin": origin_of(url)}) as socket:
            hello = await socket.receive_json(timeout=20)
    assert hello == {"type": "hello", "owner": "user:alice", "access": "read-write", "cols": 90, "rows": 25}


async def test_bad_links_wait_and_never_log_the_token(
    gw: GatewayThread, owner: Tmux, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="pairpod")
    url = web_links(owner)["ro"]
    token = "ro-" + "b" * 25
    bad = f"{origin_of(url)}/s/{token}"
    async with aiohttp.ClientSession() as session:
        began = time.monotonic()
        async with session.get(bad) as page:
            assert page.status == 404
            assert "pairpod: invalid or expired session" in await page.text()
        assert time.monotonic() - began >= 0.5
        # The socket of a bad link says so, and the page stops there.
        async with session.ws_connect(f"{bad}/ws", headers={"Origin": origin_of(url)}) as socket:
            assert await socket.receive_json(timeout=20) == {
                "type": "end",
                "reason": "invalid or expired session",
            }
        # An ssh link's text is no web link (a capability of its own), nor the other way round.
        ssh_ro = re.search(r"(ro-\w{25})@", owner.screen()).group(1)
        async with session.get(f"{origin_of(url)}/s/{ssh_ro}") as page:
            assert page.status == 404
    assert gw.ssh(user=url.rsplit("/", 1)[1], options=["-tt"], input=b"").returncode == 255
    refused = [r for r in caplog.records if r.getMessage() == "sharing.join_refused"]
    assert any(getattr(r, "pairpod_fields", {}).get("method") == "web" for r in refused)
    rendered = [f.format(r) for r in caplog.records for f in (TextFormatter(), JsonFormatter())]
    for secret in (token, ssh_ro, url.rsplit("/", 1)[1]):
        assert not any(secret in line for line in rendered), [line for line in rendered if secret in line]


async def test_oversized_message_closes_only_that_socket(gw: GatewayThread, owner: Tmux) -> None:
    url = web_links(owner)["rw"]
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(f"{url}/ws", headers={"Origin": origin_of(url)}) as socket:
            await messages_until(socket, "hello")
            await socket.send_bytes(b"x" * 4097)  # sharing.web.max_message is 4096 here
            closed = await socket.receive(timeout=20)
            while closed.type not in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
                closed = await socket.receive(timeout=20)
            assert socket.close_code == aiohttp.WSCloseCode.MESSAGE_TOO_BIG
        wait_for_participants(gw, 0)
        owner.type("echo owner-still-$((4*4))\n")
        owner.wait_for("owner-still-16")
        assert "xxxx" not in owner.screen()
        async with session.ws_connect(f"{url}/ws", headers={"Origin": origin_of(url)}) as socket:
            await socket.send_bytes(b"echo again-$((5*5))\r")
            await messages_until(socket, b"again-25")


async def test_read_only_input_and_size_never_reach_the_program(gw: GatewayThread, owner: Tmux) -> None:
    links = web_links(owner)
    owner.type("clear; echo cleared-$((1+1))\n")
    owner.wait_for("cleared-2")
    async with aiohttp.ClientSession() as session:
        ro = await session.ws_connect(f"{links['ro']}/ws", headers={"Origin": origin_of(links["ro"])})
        await ro.send_bytes(b"echo from-ro-$((1+1))\r")
        await ro.send_str('{"type": "resize", "cols": 30, "rows": 8}')
        # The read-only viewer is told its keys are not sent, in the stream and as a notice.
        await messages_until(ro, "read-only: your keystrokes are not sent")
        rw = await session.ws_connect(f"{links['rw']}/ws", headers={"Origin": origin_of(links["rw"])})
        await rw.send_str('{"type": "resize", "cols": 60, "rows": 15}')
        await rw.send_bytes(b"stty size; echo size-$((3+3))\r")
        # A read-write page counts in the smallest-read-write size; the read-only one does not.
        owner.wait_for(r"15 60\s*\n\s*size-6")
        await messages_until(ro, b"size-6")
        assert "from-ro-2" not in owner.screen()
        await rw.close()
        wait_for_participants(gw, 1)
        owner.type("clear; stty size; echo back-$((4+3))\n")
        owner.wait_for(r"25 90\s*\n\s*back-7")
        await ro.close()


async def test_kick_ends_the_stream_with_the_reason(gw: GatewayThread, owner: Tmux) -> None:
    url = web_links(owner)["ro"]
    audit = Path(str(gw.config.audit.file))
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(f"{url}/ws", headers={"Origin": origin_of(url)}) as socket,
    ):
        (viewer,) = wait_for_participants(gw, 1)
        (shared_id,) = re.findall(
            r"session (\w+)[^\n]*\n(?:  [^\n]*\n)*?  participant \d+\s+web viewer", control(gw, "list")
        )
        owner.wait_for(r"web viewer joined \(read-only\)")
        control(gw, "kick", viewer)
        received = await messages_until(socket, '"type": "end"')
        assert b"pairpod: you were removed from the session by its owner" in b"".join(
            m for m in received if isinstance(m, bytes)
        )
        closed = await socket.receive(timeout=20)
        assert closed.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
    # The audit log has the browser's join and leave (no SSH connection behind them).

    def web_events() -> list[dict[str, Any]]:
        lines = audit.read_text().splitlines() if audit.exists() else []
        events = [json.loads(line) for line in lines]
        return [e for e in events if e.get("medium") == "web" and e.get("session") == shared_id]

    wait_until(lambda: [e["event"] for e in web_events()] == ["share.join", "share.leave"], message="audit")
    joined = web_events()[0]
    assert (joined["access"], joined["name"], joined["participant"]) == ("ro", "web viewer", int(viewer))


async def test_a_browser_that_stops_reading_never_holds_the_owner(gw: GatewayThread, owner: Tmux) -> None:
    url = web_links(owner)["ro"]
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(f"{url}/ws", headers={"Origin": origin_of(url)}) as slow,
    ):
        wait_for_participants(gw, 1)
        # From here on the viewer reads nothing while the owner's program floods.
        owner.type("head -c 8000000 /dev/zero | tr '\\0' x; echo; echo flood-$((7*6))\n")
        owner.wait_for("flood-42", timeout=60)
        # Reading again, the viewer catches up from a redraw of the current screen,
        # not by getting every byte it missed.
        received = await messages_until(slow, b"flood-42")
        assert sum(len(m) for m in received if isinstance(m, bytes)) < 4_000_000


def test_trusted_proxies_alone_set_the_client_address() -> None:
    addresses = ClientAddresses(["10.0.0.0/8", "::1/128"])
    assert addresses.client("10.1.2.3", "203.0.113.9") == "203.0.113.9"
    assert addresses.client("10.1.2.3", "198.51.100.1, 203.0.113.9, 10.9.9.9") == "203.0.113.9"
    assert addresses.client("::1", "2001:db8::5") == "2001:db8::5"
    assert addresses.client("192.0.2.7", "203.0.113.9") == "192.0.2.7"  # not a proxy: header ignored
    assert addresses.client("10.1.2.3", "not-an-address") == "10.1.2.3"
    assert addresses.client("::ffff:10.1.2.3", None) == "10.1.2.3"


async def test_one_address_may_join_only_so_often(
    tmp_path: Path, client_key: ClientKey, caplog: pytest.LogCaptureFixture
) -> None:
    # A join draws a snapshot and tells everyone: a link holder reconnecting in a loop
    # gets 429 once the address's tokens are spent; another address joins meanwhile.
    limits = {"ssh": {"per_source_rate": 0.001, "per_source_burst": 3}}
    with web_gateway(tmp_path / "gw", client_key, {"sharing": {"open": True}, **limits}) as gateway:
        owner = Tmux("owner", tmp_path).start(gateway.ssh_argv(options=share_options()), 90, 25)
        try:
            url = web_links(owner)["ro"]
            statuses = []
            async with aiohttp.ClientSession() as session:
                for _ in range(3):  # the burst: joined, then left
                    async with session.ws_connect(f"{url}/ws", headers={"Origin": origin_of(url)}) as ws:
                        await messages_until(ws, '"type": "hello"')
                with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                    await session.ws_connect(f"{url}/ws", headers={"Origin": origin_of(url)})
                statuses.append(refused.value.status)
            elsewhere = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
            async with (
                aiohttp.ClientSession(connector=elsewhere) as session,
                session.ws_connect(f"{url}/ws", headers={"Origin": origin_of(url)}) as ws,
            ):
                await messages_until(ws, '"type": "hello"')
            assert statuses == [429]
            assert [r for r in caplog.records if r.getMessage() == "web.join_rate"]
        finally:
            owner.close()


def test_restricted_sessions_get_no_read_write_web_link(tmp_path: Path, client_key: ClientKey) -> None:
    with web_gateway(tmp_path / "gw", client_key, {"sharing": {"web": {"auto": True}}}) as gateway:
        plain = Tmux("plain", tmp_path).start(gateway.ssh_argv(options=share_options("rw")), 100, 25)
        try:
            links = web_links(plain)
            assert set(links) == {"ro"}
            plain.wait_for(r"no read-write web link: only open sessions have them")
            result = gateway.ssh("mint", "web-rw", user="alice+ctl")
            assert result.returncode == 2 and b"only for open sessions" in result.stderr
            assert "/s/ro-" in control(gateway, "mint", "web-ro")
        finally:
            plain.close()


async def test_tls_from_the_configured_certificate(tmp_path: Path, client_key: ClientKey) -> None:
    cert, key = web_certificate(tmp_path)
    overrides = {"sharing": {"open": True, "web": {"tls_cert": str(cert), "tls_key": str(key), "auto": True}}}
    with web_gateway(tmp_path / "gw", client_key, overrides) as gateway:
        owner = Tmux("tls", tmp_path).start(gateway.ssh_argv(options=share_options("ro")), 100, 25)
        try:
            url = web_links(owner)["ro"]
            assert url.startswith("https://127.0.0.1:")
            trust = ssl.create_default_context(cafile=str(cert))
            async with aiohttp.ClientSession() as session:
                async with session.get(url, ssl=trust) as page:
                    assert page.status == 200
                async with session.ws_connect(
                    f"{url}/ws", headers={"Origin": origin_of(url)}, ssl=trust
                ) as socket:
                    assert (await socket.receive_json(timeout=20))["type"] == "hello"
                with pytest.raises(aiohttp.ClientConnectorCertificateError):
                    await session.get(url)  # the system's trust store does not know it
        finally:
            owner.close()


async def test_missing_xterm_files_leave_the_gateway_up_and_the_page_says_so(
    tmp_path: Path, client_key: ClientKey, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="pairpod")
    monkeypatch.setitem(page.FILES, "xterm.js", tmp_path / "never-fetched" / "xterm.js")
    with web_gateway(tmp_path / "gw", client_key, {"sharing": {"open": True}}) as gateway:
        owner = Tmux("missing", tmp_path).start(gateway.ssh_argv(options=share_options("ro")), 100, 25)
        try:
            url = web_links(owner)["ro"]
            async with aiohttp.ClientSession() as session:
                async with session.get(f"{origin_of(url)}/static/pairpod.js") as script:
                    assert script.status == 200
                async with session.get(url) as answer:
                    assert answer.status == 503
                    assert "web terminal files (xterm.js) are missing" in await answer.text()
            owner.type("echo ssh-still-$((3*5))\n")
            owner.wait_for("ssh-still-15")
        finally:
            owner.close()
    missing = [r for r in caplog.records if r.getMessage() == "web.assets_missing"]
    assert missing and getattr(missing[0], "pairpod_fields", {})["files"] == "xterm.js"


@pytest.mark.parametrize(
    ("web", "key"),
    [
        ({"listen": "127.0.0.1:8080", "tls_cert": "/x.crt"}, "tls_key go together"),
        ({"public_url": "https://gw.example.com/?a=1"}, "sharing.web.public_url"),
        ({"trusted_proxies": ["10.0.0.0/33"]}, "sharing.web.trusted_proxies"),
        ({"listen": "nowhere"}, "sharing.web.listen"),
    ],
)
def test_config_errors_name_the_key(web: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(key)):
        validate_config({"sharing": {"web": web}}, "test")


async def ended(reader: asyncio.StreamReader) -> bool:
    """Whether the peer closed the connection (at once: nothing is answered before)."""
    try:
        return await reader.read() == b""
    except ConnectionResetError:
        return True


async def test_one_address_cannot_hold_the_listeners_connections(gw: GatewayThread) -> None:
    assert gw.gateway.web is not None
    port = gw.gateway.web.port
    held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(PER_SOURCE * 3)]
    try:
        for _, writer in held:
            writer.write(b"GET /s/")  # half a request line, never finished (slowloris)
        reads = [asyncio.ensure_future(ended(reader)) for reader, _ in held]
        # Past the cap the gateway closes them at once; the others it keeps waiting.
        waiting = set(reads)
        async with asyncio.timeout(20):
            while len(reads) - len(waiting) < PER_SOURCE * 2:
                _, waiting = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        assert all(read.result() for read in reads if read.done())
        assert sum(not read.done() for read in reads) == PER_SOURCE
        # Someone at another address is served meanwhile.
        connector = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
        async with (
            aiohttp.ClientSession(connector=connector) as session,
            session.get(f"http://127.0.0.1:{port}/static/pairpod.js") as answer,
        ):
            assert answer.status == 200
    finally:
        for _, writer in held:
            writer.close()
