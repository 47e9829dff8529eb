"""Values past their limits get one clear line, never "internal error" or a dead connection."""

from __future__ import annotations

import asyncio

import asyncssh
import pytest

from tests.attacks.conftest import ServeGateway, assert_probe_login_prompt
from tests.support.client import connect


async def test_an_oversized_command_environment_value_or_subsystem_is_refused_clearly(
    serve: ServeGateway,
) -> None:
    gateway = serve()
    async with await connect(gateway) as conn:
        result = await conn.run("echo " + "x" * 250_000)
        assert result.exit_status == 1
        assert result.stderr == "pairpod: command too long (250005 bytes, max 65536)\r\n"

        result = await conn.run("echo never", env={"LANG": "y" * 200_000})
        assert result.exit_status == 1
        assert result.stderr == ("pairpod: environment variable LANG too long (200000 bytes, max 65536)\r\n")

        result = await conn.run(subsystem="s" * 5000)
        assert result.exit_status == 1
        assert "pairpod: subsystem name too long (5000 bytes, max 64)" in result.stderr

        with pytest.raises(asyncssh.ChannelOpenError, match="PTY request failed"):
            await conn.create_process("true", term_type="t" * 5000)

        # The same connection still runs what is within the limits.
        result = await conn.run('printf %s "$LANG" | wc -c', env={"LANG": "z" * 60_000})
        assert result.exit_status == 0 and result.stdout.strip() == "60000"
    assert "internal error" not in gateway.log()
    await asyncio.to_thread(assert_probe_login_prompt, gateway)
