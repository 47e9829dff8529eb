"""A flood of env requests on one channel: the gateway keeps what sshd would, and no more."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncssh

from tests.attacks.conftest import ServeGateway, assert_probe_login_prompt
from tests.attacks.sharing_clients import share
from tests.support.client import connect
from tests.support.gateway import GatewayProcess, rss

# sshd's number, the default of security.max_env_vars.
MAX_ENV_VARS = 128
NAMES = 5000
# Half the names are allowed by the default env_allow (LC_*), half are not; the
# values are large so that keeping them would show plainly in the gateway's memory
# (50 MiB sent in all).
ALLOWED_VALUE = 4 * 1024
OTHER_VALUE = 16 * 1024
# Loose: what the gateway may grow by while a flooded channel is open (it keeps
# 128 x 4 KiB; a gateway keeping every request grows by the 50 MiB sent).
GROWTH_BOUND = 16 * 1024 * 1024


def flood() -> dict[str, str]:
    env: dict[str, str] = {}
    for i in range(NAMES):
        if i % 2 == 0:
            env[f"LC_FLOOD_{i:04d}"] = f"{i:04d}".ljust(ALLOWED_VALUE, "a")
        else:
            env[f"FLOOD_{i:04d}"] = f"{i:04d}".ljust(OTHER_VALUE, "d")
    return env


async def open_flooded(
    gateway: GatewayProcess, conn: asyncssh.SSHClientConnection, *command: str, **options: Any
) -> asyncssh.SSHClientProcess[Any]:
    """A session channel opened with :func:`flood`; asserts the gateway did not keep it."""
    assert gateway.proc is not None
    before = rss(gateway.proc.pid)
    process = await conn.create_process(*command, env=flood(), **options)
    # The channel's exec or shell request was answered, so every env request before it
    # was handled; the channel is open, so a gateway keeping the requests holds them now.
    grown = rss(gateway.proc.pid) - before
    print(f"gateway RSS grew by {grown / 2**20:.1f} MiB during {NAMES} env requests (50 MiB sent)")
    assert grown < GROWTH_BOUND, f"gateway grew by {grown} bytes"
    return process


async def test_thousands_of_env_requests_keep_only_allowed_names_up_to_the_bound(serve: ServeGateway) -> None:
    gateway = serve()
    async with await connect(gateway) as conn:
        assert (await conn.run("true")).exit_status == 0  # the first session's one-off costs
        process = await open_flooded(gateway, conn, "env | grep FLOOD | sort; echo END; read line")
        listed = await asyncio.wait_for(process.stdout.readuntil("END\n"), 60)
        process.stdin.write("\n")
        result = await asyncio.wait_for(process.wait(), 60)
    assert result.exit_status == 0
    seen = dict(line.split("=", 1) for line in listed.splitlines()[:-1])
    # The first 128 allowed names, in the order sent, and none of the rest.
    expected = [f"LC_FLOOD_{i:04d}" for i in range(0, 2 * MAX_ENV_VARS, 2)]
    assert sorted(seen) == expected
    assert all(value == name[-4:].ljust(ALLOWED_VALUE, "a") for name, value in seen.items())
    assert "channel.env_limit" in gateway.log()
    await asyncio.to_thread(assert_probe_login_prompt, gateway)


async def test_a_joiners_channel_keeps_no_flood_either(serve: ServeGateway) -> None:
    gateway = serve()
    owner_conn, _, links = await share(gateway, "echo SHARED-SCREEN; cat")
    async with owner_conn, await connect(gateway, user=links["ro"]) as conn:
        terminal: dict[str, Any] = {"term_type": "xterm", "term_size": (80, 24)}
        first = await conn.create_process(**terminal)  # the first join's one-off costs
        await asyncio.wait_for(first.stdout.readuntil("SHARED-SCREEN"), 30)
        viewer = await open_flooded(gateway, conn, **terminal)
        # The flooded joiner is on the shared session all the same.
        await asyncio.wait_for(viewer.stdout.readuntil("SHARED-SCREEN"), 30)
