"""Join links go through authentication: no credentials, no connection held, no fast guessing."""

from __future__ import annotations

import asyncio
import time

import asyncssh
import pytest

from pairpod.sharing.tokens import ALPHABET, TOKEN_LENGTH
from tests.attacks.conftest import ServeGateway, assert_probe_login_prompt
from tests.attacks.sharing_clients import share
from tests.support.gateway import ClientKey, GatewayProcess, wait_until

# The documented random pause before a refused join is answered (seconds).
REJECT_PAUSE = 0.5


def guess(n: int) -> str:
    """A username shaped like a read-only link that no session has."""
    return "ro-" + (ALPHABET[n % len(ALPHABET)] * TOKEN_LENGTH)


async def refused_after(
    gateway: GatewayProcess, user: str, source: str, key: ClientKey | None = None
) -> float:
    """Try to log in as ``user`` from ``source``; assert the refusal, return how long it took."""
    began = time.monotonic()
    with pytest.raises(asyncssh.PermissionDenied):
        await asyncssh.connect(
            "127.0.0.1",
            gateway.port,
            username=user,
            local_addr=(source, 0),
            client_keys=[str((key or gateway.key).private)],
            known_hosts=None,
            agent_path=None,
            config=None,
        )
    return time.monotonic() - began


async def test_unknown_and_refused_links_get_the_same_slow_no(serve: ServeGateway) -> None:
    gateway = serve({"sharing": {"open": False}})
    conn, owner, links = await share(gateway, "sleep 60")
    async with conn:
        # A link-shaped username that names no session: refused, with no session and no
        # shell, only after the pause, like a live restricted link with a key nobody named.
        unknown = await refused_after(gateway, guess(1), "127.0.0.2")
        mallory = ClientKey.create(gateway.config_path.parent / "mallory")
        known = await refused_after(gateway, links["rw"], "127.0.0.3", mallory)
        assert unknown >= REJECT_PAUSE and known >= REJECT_PAUSE
        print(f"refused unknown link in {unknown:.2f}s, live link with a wrong key in {known:.2f}s")
        owner.close()
    log = gateway.log()
    assert 'reason="invalid link"' in log and 'reason="key not allowed"' in log
    assert "sharing.join " not in log


async def test_link_guesses_count_towards_the_address_lockout(serve: ServeGateway) -> None:
    # Room for forty at once: this is about the lockout, not the pre-auth limits.
    gateway = serve({"auth": {"lockout": {"failures": 4}}, "ssh": {"max_startups": "100"}})
    # Many guessers at once, each from its own address, hold nothing open: none logs in.
    await asyncio.gather(*(refused_after(gateway, guess(n), f"127.0.1.{n}") for n in range(1, 41)))
    # One address guessing: locked after four, then even its valid key is refused.
    for n in range(4):
        await refused_after(gateway, guess(n), "127.0.0.4")
    await refused_after(gateway, "alice", "127.0.0.4")
    log = gateway.log()
    assert "auth.lockout" in log and "method=join" in log
    assert "subject=127.0.0.4" in log
    wait_until(
        lambda: gateway.log().count("connection.open") == gateway.log().count("connection.closed"),
        message="every connection closed",
    )
    await asyncio.to_thread(assert_probe_login_prompt, gateway)
