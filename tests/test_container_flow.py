"""Bulk output from a container through the gateway: a client that stops reading
stops the program, and the gateway's memory does not grow with what passes through.

The gateway runs as its own process (so its memory is its own to measure); the
program is ``cat /dev/zero`` in a Docker container, watched through
``/proc/PID/io`` from a second channel of the same connection.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import asyncssh
import pytest

from tests.support.client import connect
from tests.support.docker_env import docker_overrides
from tests.support.gateway import ClientKey, GatewayProcess, base_config, rss, write_config

MIB = 1 << 20
# What may sit between a program and a client that stopped reading: the
# client's SSH window (2 MiB) and read buffer, the channel's write buffer and
# the output pipe's high-water mark (1 MiB each), kernel socket buffers on the
# engine connection, the engine's own pipes. Without flow control the program
# is never held back and writes gigabytes.
HELD_BACK_WITHIN = 32 * MIB
# Passed through between the two memory readings: far more than every buffer.
TRANSFER = 64 * MIB
# Slack for the allocator between two readings of the gateway's RSS (measured:
# about 2 MiB); keeping what passed through would show as tens of MiB.
RSS_SLACK = 16 * MIB
# Equal write counts in a row that mean the program is held back.
_STEADY_READINGS = 5


@pytest.fixture
def gateway(tmp_path: Path, client_key: ClientKey) -> Iterator[GatewayProcess]:
    config = base_config(tmp_path, client_key, docker_overrides(image="busybox"))
    data = config.model_dump(mode="json")
    data["log"] = {"level": "info"}
    gateway = GatewayProcess(write_config(tmp_path / "pairpod.yaml", data), key=client_key).start()
    try:
        yield gateway
    finally:
        gateway.terminate()


async def written(conn: asyncssh.SSHClientConnection) -> int:
    """How many bytes the program has written so far (from the kernel's count)."""
    result = await conn.run("cat /proc/$(cat /tmp/writer.pid)/io", check=True)
    assert isinstance(result.stdout, bytes)
    for line in result.stdout.decode().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    raise AssertionError(f"no wchar in {result.stdout!r}")


async def held_back(conn: asyncssh.SSHClientConnection) -> int:
    """Wait until the program has stopped writing; how much it wrote."""
    readings = [await written(conn)]
    # Stopped: several readings in a row are equal (each reading is a new exec,
    # tens of milliseconds apart, while an unheld cat writes hundreds of MB/s).
    # Two are not enough on a busy machine: cat, the engine or the gateway may
    # not be scheduled between two readings while data still flows.
    for _ in range(300):
        readings.append(await written(conn))
        if len(readings) >= _STEADY_READINGS and len(set(readings[-_STEADY_READINGS:])) == 1:
            return readings[-1]
    raise AssertionError(f"the program never stopped writing: {readings[-5:]}")


async def test_a_client_that_stops_reading_stops_the_program_and_memory_stays_flat(
    gateway: GatewayProcess,
):
    assert gateway.proc is not None
    pid = gateway.proc.pid
    async with await connect(gateway, encoding=None) as conn:
        writer = await conn.create_process("echo $$ > /tmp/writer.pid; exec cat /dev/zero")
        await conn.run("while [ ! -s /tmp/writer.pid ]; do :; done", check=True)

        # The client reads nothing: the program is stopped within the buffers.
        stalled = await held_back(conn)
        assert 0 < stalled <= HELD_BACK_WITHIN
        before = rss(pid)

        # Reading again lets it run on; pass far more than every buffer through.
        received = 0
        while received < TRANSFER:
            chunk = await writer.stdout.read(MIB)
            assert chunk and not chunk.strip(b"\0")
            received += len(chunk)

        # Stopped again; the gateway kept none of what passed through.
        resumed = await held_back(conn)
        # It wrote what the client read, and at most the buffers' worth more.
        assert received <= resumed <= received + HELD_BACK_WITHIN
        after = rss(pid)
        assert after - before <= RSS_SLACK, f"gateway RSS grew {(after - before) / MIB:.1f} MiB"
