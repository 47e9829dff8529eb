"""A flood of env requests on one channel: the gateway keeps what sshd would, and no more."""

from __future__ import annotations

import asyncio

from tests.attacks.conftest import ServeGateway, assert_probe_login_prompt
from tests.support.client import connect
from tests.support.gateway import rss

# sshd's number, the default of security.max_env_vars.
MAX_ENV_VARS = 128
NAMES = 5000
# Half the names are allowed by the default env_allow (LC_*), half are not; the
# values are large so that keeping them would show plainly in the gateway's memory
# (50 MiB sent in all).
ALLOWED_VALUE = 4 * 1024
OTHER_VALUE = 16 * 1024
# Loose: what the gateway may grow by while the flooded session runs (it keeps
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


async def test_thousands_of_env_requests_keep_only_allowed_names_up_to_the_bound(serve: ServeGateway) -> None:
    gateway = serve()
    assert gateway.proc is not None
    async with await connect(gateway) as conn:
        assert (await conn.run("true")).exit_status == 0  # the first session's one-off costs
        before = rss(gateway.proc.pid)
        process = await conn.create_process("env | grep FLOOD | sort; echo END; read line", env=flood())
        # The exec request was answered, so every env request before it was handled; the
        # channel is open, so a gateway keeping the requests holds them now.
        grown = rss(gateway.proc.pid) - before
        print(f"gateway RSS grew by {grown / 2**20:.1f} MiB during 5000 env requests (50 MiB sent)")
        assert grown < GROWTH_BOUND, f"gateway grew by {grown} bytes"
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
