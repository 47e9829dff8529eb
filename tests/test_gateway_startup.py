"""A gateway whose start fails part-way closes what it had started, and says why;
one still starting is not ready.

Real parts: the admin listener, a real ``redis-server`` for ``cluster.redis``,
the replica listener, the SSH listener, a web listener whose port another
socket holds, and the Docker engine behind a socket a test can freeze.
"""

from __future__ import annotations

import contextlib
import secrets
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from pairpod.config import Config
from pairpod.errors import ConfigError
from tests.support.docker_env import docker_overrides
from tests.support.engine_proxy import EngineProxy
from tests.support.gateway import ClientKey, GatewayThread, base_config, wait_until
from tests.support.http_client import http_get
from tests.support.redis_server import RedisServer, free_port
from tests.support.sshd import accepts


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One ``redis-server`` for the module."""
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    try:
        yield server
    finally:
        server.stop()


def _info(redis: RedisServer, field: str) -> int:
    """A number from ``INFO``."""
    for line in redis.cli("INFO").splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split(":")[1])
    raise AssertionError(f"no {field} in INFO")


def _gateway_clients(redis: RedisServer) -> list[str]:
    """``CLIENT LIST`` without the asking ``redis-cli``."""
    return [line for line in redis.cli("CLIENT", "LIST").splitlines() if "cmd=client|list" not in line]


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


@contextlib.contextmanager
def _failed_start(config: Config, client_key: ClientKey) -> Iterator[str]:
    """Start a gateway that must fail: its error; its loop runs on until the block ends."""
    gateway = GatewayThread(config, client_key)
    try:
        with pytest.raises(ConfigError) as failed:
            gateway.start()
        yield str(failed.value)
    finally:
        gateway.close_loop()


@pytest.mark.parametrize("busy", ["sharing.web.listen", "cluster.listen"])
def test_a_listener_that_cannot_listen_stops_start_and_leaves_nothing_open(
    tmp_path: Path, client_key: ClientKey, redis: RedisServer, busy: str
) -> None:
    # The web listener starts last, the replica listener before the SSH one:
    # each fails after a different set of parts was started.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        taken_address = f"127.0.0.1:{taken.getsockname()[1]}"
        ssh_port, admin_port = free_port(), free_port()
        replica_address = taken_address if busy == "cluster.listen" else f"127.0.0.1:{free_port()}"
        web_address = taken_address if busy == "sharing.web.listen" else f"127.0.0.1:{free_port()}"
        config = base_config(
            tmp_path,
            client_key,
            {
                "listen": f"127.0.0.1:{ssh_port}",
                "admin": {"listen": f"127.0.0.1:{admin_port}"},
                "cluster": {
                    "redis": redis.url,
                    "advertise": replica_address,
                    "listen": replica_address,
                    "secret": secrets.token_hex(16),
                },
                "sharing": {"web": {"listen": web_address}},
            },
        )
        connections_before = _info(redis, "total_connections_received")
        with _failed_start(config, client_key) as error:
            # The failing listener, its address and the reason.
            assert error == f"{busy}: cannot listen on {taken_address}: Address already in use"
            # The gateway's loop still runs: whatever it left open would still be open now.
            assert not accepts(admin_port)
            assert _bindable(ssh_port)
            if busy == "sharing.web.listen":
                # The Redis client had connected by then (redis-server counts it once
                # it takes it from its backlog, which on a busy machine may be later).
                wait_until(
                    lambda: _info(redis, "total_connections_received") > connections_before,
                    message="the gateway connected to Redis",
                )
            wait_until(lambda: not _gateway_clients(redis), message="the gateway's Redis connections closed")


def test_readyz_answers_starting_until_the_gateway_listens(tmp_path: Path, client_key: ClientKey) -> None:
    # The admin listener comes up first; the backend's first reap waits on an engine
    # that does not answer yet, so the gateway is not listening for SSH.
    engine = EngineProxy(tmp_path / "docker.sock").start()
    engine.freeze()
    admin_port = free_port()
    config = base_config(
        tmp_path,
        client_key,
        {
            **docker_overrides(image="busybox", host=engine.host),
            "admin": {"listen": f"127.0.0.1:{admin_port}"},
        },
    )
    gateway = GatewayThread(config, client_key)
    starting = gateway.begin()
    readyz = f"http://127.0.0.1:{admin_port}/readyz"
    try:
        wait_until(lambda: accepts(admin_port), message="the admin listener")
        assert http_get(readyz) == (503, "not ready: the gateway is starting\n")
        assert not starting.done()
        engine.thaw()
        starting.result(60)
        assert http_get(readyz) == (200, "ready\n")
    finally:
        engine.thaw()
        if starting.done() and starting.exception() is None:
            gateway.stop()
        else:
            gateway.close_loop()
        engine.stop()


def test_an_admin_socket_that_cannot_be_made_closes_the_admin_listener(
    tmp_path: Path, client_key: ClientKey
) -> None:
    # The audit log and the admin listener start before the admin socket.
    admin_port = free_port()
    in_the_way = tmp_path / "admin.sock"
    in_the_way.write_text("not a socket\n")
    config = base_config(
        tmp_path,
        client_key,
        {
            "admin": {"listen": f"127.0.0.1:{admin_port}", "socket": str(in_the_way)},
            "audit": {"file": str(tmp_path / "audit.log")},
        },
    )
    with _failed_start(config, client_key) as error:
        assert error == f"admin.socket: {in_the_way} exists and is not a socket"
        # The gateway's loop still runs: a listener left open would still accept now.
        assert not accepts(admin_port)
        assert in_the_way.read_text() == "not a socket\n"
