"""What a client sends reaches the text log escaped: no raw control character ever."""

from __future__ import annotations

import re

from tests.attacks.conftest import ServeGateway
from tests.support.client import connect

# Clear screen, move home, backspaces, a bell, DEL and a C1 CSI: what would rewrite
# the operator's terminal if printed raw.
HOSTILE = "\x1b[2J\x1b[Hfake\x08\x08\x08\x07\x7f\x9b31m"


async def test_commands_and_signal_names_are_escaped_in_the_text_log(serve: ServeGateway) -> None:
    gateway = serve()
    async with await connect(gateway) as conn:
        await conn.run("true;" + HOSTILE)  # one word without whitespace
        process = await conn.create_process("echo started; sleep 30")
        assert await process.stdout.readline() == "started\n"
        process.send_signal(HOSTILE.replace("\x9b", ""))  # signal names are ASCII
        process.terminate()
        await process.wait()
    log = gateway.log()
    assert "channel.signal_ignored" in log and "channel.started" in log
    # Every byte of the log is printable, or a line end.
    assert not re.search(r"[\x00-\x09\x0b-\x1f\x7f-\x9f]", log), [
        line for line in log.splitlines() if re.search(r"[\x00-\x1f\x7f-\x9f]", line)
    ]
    started = next(line for line in log.splitlines() if 'command="true;' in line)
    assert r'command="true;\u001b[2J\u001b[Hfake\b\b\b\u0007\u007f\u009b31m"' in started
