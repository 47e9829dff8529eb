"""Terminal sizes a client names: bounded before anything is allocated for them."""

from __future__ import annotations

import asyncio
from secrets import token_hex
from typing import Any

import asyncssh
import pytest

from tests.attacks.conftest import ServeGateway, assert_probe_login_prompt
from tests.attacks.sharing_clients import drain, share
from tests.support.client import connect
from tests.support.docker_env import docker_overrides


async def test_a_huge_pty_request_is_refused_with_one_line(serve: ServeGateway) -> None:
    gateway = serve()
    conn = await connect(gateway)
    async with conn:
        # What froze the gateway for 142 s: a shared 65535x65535 terminal and a clear.
        with pytest.raises(asyncssh.ChannelOpenError, match="PTY request failed"):
            await conn.create_process(
                "printf '\\033[2J'", term_type="xterm", term_size=(65535, 65535), env={"PAIRPOD_SHARE": "1"}
            )
        # The connection keeps working: a terminal within the limit is fine.
        result = await conn.run("stty size", term_type="xterm", term_size=(1000, 1000))
        assert result.stdout.strip() == "1000 1000"
    assert "channel.denied" in gateway.log() and "request=pty" in gateway.log()
    await asyncio.to_thread(assert_probe_login_prompt, gateway)


@pytest.mark.parametrize("backend", ["local", "docker"])
async def test_a_window_change_past_the_limit_is_clamped_and_the_session_lives(
    serve: ServeGateway, backend: str
) -> None:
    overrides: dict[str, Any] = {"ssh": {"max_pty": {"cols": 300, "rows": 200}}}
    if backend == "docker":
        # Its own instance id: a gateway reaps the containers of its id that it does not own.
        overrides |= docker_overrides(image="busybox") | {"instance_id": f"attack-{token_hex(4)}"}
    gateway = serve(overrides)
    try:
        async with await connect(gateway) as conn:
            process = await conn.create_process(
                "read line; stty size; exit 3", term_type="xterm", term_size=(80, 24)
            )
            # Sent at once, so it may arrive before the program starts (what killed the relay).
            process.change_terminal_size(70000, 70000, 99999, 99999)
            process.stdin.write("go\n")
            result = await asyncio.wait_for(process.wait(), 60)
        assert result.exit_status == 3
        assert result.stdout.strip().splitlines()[-1] == "200 300"
    finally:
        assert gateway.terminate() == 0  # removes its containers


async def test_clear_screen_floods_on_the_largest_shared_terminal_stall_nobody(serve: ServeGateway) -> None:
    gateway = serve({"sharing": {"open": True}})
    # The largest terminal allowed, shared, with a coloured background (every erased cell
    # painted) and thousands of clear-screens, while viewers keep joining (each join
    # renders the screen from the model, parsing what is pending).
    flood = "printf '\\033[41m'; while :; do printf '\\033[2J\\033[2J\\033[2J\\033[2J'; done"
    conn, owner, links = await share(gateway, flood, cols=1000, rows=1000)
    joined_twice = asyncio.Event()

    async def churn() -> None:
        joins = 0
        while True:
            async with await connect(gateway, user=links["ro"]) as viewer:
                await viewer.create_process(term_type="xterm", term_size=(1000, 1000))
                joins += 1
                if joins == 2:
                    joined_twice.set()

    async with conn:
        pump = asyncio.ensure_future(drain(owner))
        churner = asyncio.ensure_future(churn())
        try:
            await asyncio.wait_for(joined_twice.wait(), 60)  # joining works under the flood
            await asyncio.to_thread(assert_probe_login_prompt, gateway)
        finally:
            churner.cancel()
            pump.cancel()
            await asyncio.gather(churner, pump, return_exceptions=True)
    assert "sharing.join " in gateway.log()
