"""One user opening environment after environment: the ``limits.*`` caps and ``first_channel``.

Before, one user opened 100 connections without a channel and got 100
containers (512 MB limit each), held as long as the connections stayed up.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import subprocess
from typing import Any

import asyncssh

from tests.attacks.conftest import ServeGateway, assert_probe_login_prompt
from tests.support.client import connect
from tests.support.docker_env import containers, docker_overrides, remove_all
from tests.support.gateway import NO_ADMISSION_LIMITS, GatewayProcess, wait_until

ATTACK_CONNECTIONS = 100
PER_USER_DEFAULT = 10  # limits.environments_per_user's documented default


async def open_connection(gateway: GatewayProcess, user: str) -> asyncssh.SSHClientConnection:
    """An authenticated AsyncSSH connection that opens no channel."""
    return await connect(gateway, user)


async def run(conn: asyncssh.SSHClientConnection, command: str) -> asyncssh.SSHCompletedProcess:
    """Run ``command`` on an open connection (bytes out)."""
    return await conn.run(command, encoding=None, check=False)


def refusals(gateway: GatewayProcess, setting: str) -> int:
    """How many environments the log says were refused for ``limits.<setting>``."""
    return len(re.findall(rf"environment\.failed .*limits\.{setting}", gateway.log()))


def docker_gateway(serve: ServeGateway, **overrides: Any) -> tuple[GatewayProcess, str]:
    """A docker-backed gateway with an instance id of its own (the engine is shared).

    The pre-auth limits are off: this attacker has logged in, many times at once.
    """
    instance = f"attack-env-{secrets.token_hex(4)}"
    return serve(
        {**docker_overrides("connection"), "instance_id": instance, "ssh": NO_ADMISSION_LIMITS, **overrides}
    ), instance


def test_one_user_gets_only_the_per_user_cap_of_containers(serve: ServeGateway) -> None:
    gateway, instance = docker_gateway(serve)

    async def attack() -> None:
        conns = []
        try:
            for start in range(0, ATTACK_CONNECTIONS, 25):
                conns += await asyncio.gather(
                    *(
                        open_connection(gateway, "mallory")
                        for _ in range(start, min(start + 25, ATTACK_CONNECTIONS))
                    )
                )
            refused = ATTACK_CONNECTIONS - PER_USER_DEFAULT
            # Each refused connection is told why as soon as it asks for anything.
            told = await asyncio.gather(*(run(conn, "true") for conn in conns))
            failed = [r for r in told if r.exit_status != 0]
            assert len(failed) == refused
            assert all(
                r.stderr == b"pairpod: too many environments open for mallory "
                b"(at most 10); close one and try again\r\n"
                for r in failed
            )
            # Every connection has had its answer: the containers are the cap, no more.
            assert len(containers(instance=instance)) == PER_USER_DEFAULT
            # The operator's log names the limit (a flood of refusals is summarised).
            assert refusals(gateway, "environments_per_user") >= 1
            # Another user is not held back by mallory's cap.
            await asyncio.to_thread(assert_probe_login_prompt, gateway)
        finally:
            for conn in conns:
                conn.close()

    try:
        asyncio.run(attack())
        wait_until(lambda: not containers(instance=instance), message="the containers to be removed")
    finally:
        remove_all(instance=instance)


def test_connection_without_a_channel_is_closed_and_its_container_removed(serve: ServeGateway) -> None:
    gateway, instance = docker_gateway(serve, timeouts={"first_channel": "2s"})
    # ssh -N authenticates and opens no session channel.
    client = subprocess.Popen(
        gateway.ssh_argv(options=["-N", "-o", "LogLevel=INFO"], user="idler"),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_until(lambda: containers(instance=instance), message="the container")
        _, stderr = client.communicate(timeout=30)  # closed by the gateway, saying why
        assert b"pairpod: no session opened within 2s" in stderr
        assert "connection.no_channel" in gateway.log()
        wait_until(lambda: not containers(instance=instance), message="the container to be removed")
        assert_probe_login_prompt(gateway)
    finally:
        client.kill()
        client.wait()
        remove_all(instance=instance)


def test_environment_rate_per_user(serve: ServeGateway) -> None:
    gateway = serve({"limits": {"environment_rate": 3}})
    for _ in range(3):
        assert gateway.ssh("true", user="quick").returncode == 0
    result = gateway.ssh("true", user="quick")
    assert result.returncode == 1
    assert re.match(
        rb"pairpod: too many new environments for quick \(at most 3 a minute\); "
        rb"try again in \d+s\r\n$",
        result.stderr,
    ), result.stderr
    assert refusals(gateway, "environment_rate") == 1
    assert_probe_login_prompt(gateway)  # another user's rate is their own


def test_environments_total(serve: ServeGateway) -> None:
    gateway = serve({"limits": {"environments_total": 2}})

    async def fill() -> None:
        held = [await open_connection(gateway, user) for user in ("ann", "ben")]
        try:
            for conn in held:
                assert (await run(conn, "true")).exit_status == 0
            third = await open_connection(gateway, "cat")
            try:
                result = await run(third, "true")
            finally:
                third.close()
            assert result.exit_status == 1
            assert (
                result.stderr == b"pairpod: the gateway is at its limit of environments, try again later\r\n"
            )
        finally:
            for conn in held:
                conn.close()

    asyncio.run(fill())
    assert refusals(gateway, "environments_total") == 1
    # The two held environments are released with their connections.
    wait_until(lambda: gateway.ssh("true", user="dan").returncode == 0, message="a free slot")
