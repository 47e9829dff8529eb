"""A read-write joiner typing faster than the shared program reads is held back, not buffered."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from tests.attacks.conftest import ServeGateway, assert_probe_login_prompt
from tests.attacks.sharing_clients import drain, share
from tests.support.client import connect
from tests.support.gateway import rss

FLOOD = 64 << 20


async def test_a_joiners_input_to_a_program_that_does_not_read_stays_with_the_joiner(
    serve: ServeGateway,
) -> None:
    gateway = serve({"sharing": {"open": True}})
    conn, owner, links = await share(gateway, "stty raw -echo; echo READY; sleep 600")
    async with conn:
        seen = b""
        while b"READY" not in seen:  # the terminal is raw: a full input buffer blocks the writer
            seen += await asyncio.wait_for(owner.stdout.read(4096), 30)
        pump = asyncio.ensure_future(drain(owner))
        attacker = await connect(gateway, user=links["rw"])
        async with attacker:
            joiner = await attacker.create_process(term_type="xterm", term_size=(80, 24), encoding=None)
            before = rss(gateway.proc.pid)
            chunk = b"a" * (1 << 20)
            for _ in range(FLOOD // len(chunk)):
                joiner.stdin.write(chunk)
            # The program reads nothing: the gateway must stop reading the joiner (the SSH
            # window), so what was sent stays in the joiner's own send buffer.
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(joiner.stdin.drain(), 3)
            held = joiner.stdin.channel.get_write_buffer_size()
            grown = rss(gateway.proc.pid) - before
            print(f"held by the joiner: {held >> 20} MiB; gateway grew {grown >> 20} MiB")
            assert held > FLOOD - (16 << 20)
            assert grown < 16 << 20
            assert_probe_login_prompt(gateway)
            joiner.close()
        pump.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await pump
