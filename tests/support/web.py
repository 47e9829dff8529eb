"""Web joiners in tests: a gateway with sharing.web on, an owner in tmux, its web links."""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pairpod.config import merge
from testing.kube_apiserver.tls import self_signed
from tests.support.gateway import ClientKey, GatewayThread, Tmux, base_config, wait_until


def share_options(web: str = "rw") -> list[str]:
    """ssh options that share the session and ask for web links (one SetEnv: OpenSSH keeps the first)."""
    return ["-tt", "-o", f"SetEnv=PAIRPOD_SHARE=1 PAIRPOD_SHARE_WEB={web}"]


@contextmanager
def web_gateway(
    directory: Path, key: ClientKey, overrides: dict[str, Any] | None = None
) -> Iterator[GatewayThread]:
    """A gateway on loopback with web joiners on a free port."""
    directory.mkdir(parents=True, exist_ok=True)
    settings = merge(
        {
            "sharing": {"web": {"listen": "127.0.0.1:0"}},
            # A shell that reads no profile: what the screens show depends on nothing
            # of this machine's user (whose login scripts may be slow or print things).
            "local": {"shell": ["/bin/bash", "--noprofile", "--norc"]},
        },
        overrides or {},
    )
    gateway = GatewayThread(base_config(directory, key, settings), key).start()
    try:
        yield gateway
    finally:
        gateway.stop()


def web_links(owner: Tmux) -> dict[str, str]:
    """The web links in an owner's share notice: ``{"ro": URL, "rw": URL}`` (rw when printed).

    Returns once the owner's shell shows its prompt: typing earlier may be
    discarded by the shell setting up its terminal.
    """
    owner.wait_for(r"web read-only:\s+http")
    owner.wait_for(r"(?m)[$#] ?$")
    screen = owner.screen()
    found = {"ro": re.search(r"web read-only:\s+(https?://\S+)", screen)}
    found["rw"] = re.search(r"web read-write:\s+(https?://\S+)", screen)
    return {access: match.group(1) for access, match in found.items() if match is not None}


def control(gateway: GatewayThread, *command: str) -> str:
    """Run an owner control command (``alice+ctl``) and return its output."""
    result = gateway.ssh(*command, user="alice+ctl")
    assert result.returncode == 0, result.stderr
    return result.stdout.decode()


def participant_ids(gateway: GatewayThread, name: str = "web viewer") -> list[str]:
    """Ids of the participants called ``name`` in the owner's listing."""
    return re.findall(rf"participant (\d+)\s+{name}\s", control(gateway, "list"))


def wait_for_participants(gateway: GatewayThread, count: int, name: str = "web viewer") -> list[str]:
    """Wait until exactly ``count`` participants called ``name`` are joined; their ids."""
    wait_until(lambda: len(participant_ids(gateway, name)) == count, message=f"{count} {name}(s) joined")
    return participant_ids(gateway, name)


async def stalled_viewer(port: int, url: str, keys: bytes = b"") -> socket.socket:
    """A browser that opens the terminal's WebSocket of web link ``url`` on ``port``, types
    ``keys`` (if any, in one message), then never reads nor answers again (its receive
    window, 4 KiB, is soon shut)."""
    stalled = socket.socket()
    try:
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.setblocking(False)
        loop = asyncio.get_running_loop()
        await loop.sock_connect(stalled, ("127.0.0.1", port))
        handshake = (
            f"GET {urlsplit(url).path}/ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Origin: {url.split('/s/')[0]}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        await loop.sock_sendall(stalled, handshake.encode() + (_client_frame(keys) if keys else b""))
    except BaseException:
        stalled.close()
        raise
    return stalled


def _client_frame(data: bytes) -> bytes:
    """One binary WebSocket message as a browser sends it (masked, here with a zero key)."""
    assert len(data) < 1 << 16
    head = (
        bytes([0x82, 0x80 | 126]) + len(data).to_bytes(2, "big")
        if len(data) > 125
        else bytes([0x82, 0x80 | len(data)])
    )
    return head + b"\0\0\0\0" + data


def web_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for the web listener and its key, written in ``directory``."""
    serving = self_signed()
    cert, key = directory / "web.crt", directory / "web.key"
    cert.write_bytes(serving.cert_pem)
    key.write_bytes(serving.key_pem)
    return cert, key
