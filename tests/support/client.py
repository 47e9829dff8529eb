"""AsyncSSH as a test client of a gateway."""

from __future__ import annotations

from typing import Any

import asyncssh

from tests.support.gateway import OpenSSHClient


async def connect(gw: OpenSSHClient, user: str = "alice", **options: Any) -> asyncssh.SSHClientConnection:
    """An AsyncSSH client connection to ``gw`` with the test key."""
    return await asyncssh.connect(
        "127.0.0.1",
        gw.port,
        username=user,
        client_keys=[str(gw.key.private)],
        known_hosts=None,
        agent_path=None,
        config=None,
        **options,
    )
