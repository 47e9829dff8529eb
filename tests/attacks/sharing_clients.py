"""AsyncSSH clients for attacks on sharing: an owner who shares, and the links it prints."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import asyncssh

from tests.support.client import connect
from tests.support.gateway import GatewayProcess

_LINK = re.compile(rb"(r[ow]-[A-Za-z0-9]{25})@")


async def share(
    gateway: GatewayProcess, command: str, *, cols: int = 80, rows: int = 24, **options: Any
) -> tuple[asyncssh.SSHClientConnection, asyncssh.SSHClientProcess[bytes], dict[str, str]]:
    """Log in, run ``command`` on a shared PTY of ``cols`` x ``rows``; its links by access."""
    conn = await connect(gateway, user="owner", **options)
    process = await conn.create_process(
        command, term_type="xterm", term_size=(cols, rows), env={"PAIRPOD_SHARE": "1"}, encoding=None
    )
    seen = b""
    while len(links := _LINK.findall(seen)) < 2:
        seen += await asyncio.wait_for(process.stdout.read(4096), 30)
    return conn, process, {link[:2].decode(): link.decode() for link in links}


async def drain(process: asyncssh.SSHClientProcess[bytes]) -> None:
    """Read and drop a process's output until it ends (keeps its channel flowing)."""
    while await process.stdout.read(65536):
        pass
