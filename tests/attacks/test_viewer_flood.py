"""A read-only joiner opening thousands of viewer channels slows nobody."""

from __future__ import annotations

import asyncio
import re

import asyncssh

from tests.attacks.conftest import ServeGateway, assert_probe_login_prompt
from tests.attacks.sharing_clients import drain, share
from tests.support.client import connect


async def test_five_thousand_viewer_channels_are_capped(serve: ServeGateway) -> None:
    gateway = serve({"sharing": {"open": True, "max_participants": 4}})
    # The owner prints about 50 lines a second.
    conn, owner, links = await share(gateway, "i=0; while :; do echo line $i; i=$((i+1)); sleep 0.02; done")
    async with conn:
        pump = asyncio.ensure_future(drain(owner))
        attacker = await connect(gateway, user=links["ro"])
        try:
            opened = await asyncio.gather(
                *(attacker.create_process(term_type="xterm", term_size=(80, 24)) for _ in range(5000)),
                return_exceptions=True,
            )
            viewers = [v for v in opened if isinstance(v, asyncssh.SSHClientProcess)]
            refused = [v for v in opened if isinstance(v, asyncssh.ChannelOpenError)]
            # ssh.max_sessions (10) channels per connection, joiners' too.
            assert len(viewers) == 10 and len(refused) == 4990, {type(v) for v in opened}
            # sharing.max_participants (4) joined at once; the others are told and end.
            ended = await asyncio.gather(
                *(asyncio.wait_for(v.wait(), 5) for v in viewers), return_exceptions=True
            )
            full = [r for r in ended if isinstance(r, asyncssh.SSHCompletedProcess)]
            assert len(full) == 6
            assert all(r.exit_status == 1 and "this shared session is full (max 4" in r.stderr for r in full)
            listing = (await asyncio.to_thread(gateway.ssh, "list", user="owner+ctl")).stdout
            assert len(re.findall(rb"participant \d+\s+guest@", listing)) == 4
            await asyncio.to_thread(assert_probe_login_prompt, gateway)
        finally:
            attacker.close()
            pump.cancel()
            await asyncio.gather(pump, return_exceptions=True)
