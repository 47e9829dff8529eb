"""SIGTERM on a real ``pairpod serve``: drain, a second SIGTERM, and a hung Docker engine."""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.docker_env import containers, docker_overrides
from tests.support.engine_proxy import EngineProxy
from tests.support.gateway import ClientKey, GatewayProcess, base_config, wait_until, write_config
from tests.support.http_client import http_get


def _serve(tmp_path: Path, key: ClientKey, overrides: dict) -> GatewayProcess:
    config = base_config(tmp_path, key, overrides)
    path = write_config(tmp_path / "pairpod.yaml", config.model_dump(mode="json"))
    return GatewayProcess(path, key=key).start()


def _session(gateway: GatewayProcess) -> subprocess.Popen[bytes]:
    """A session that runs until it is ended, reporting when it has started."""
    client = subprocess.Popen(
        gateway.ssh_argv("echo up; exec sleep 1000"),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert client.stdout is not None
    assert client.stdout.readline() == b"up\n"
    return client


def _admin_url(gateway: GatewayProcess, path: str) -> str:
    match = wait_until(
        lambda: re.search(r"admin\.listening address=([\d.]+:\d+)", gateway.log()), message="admin listener"
    )
    return f"http://{match.group(1)}{path}"


def test_sigterm_drains_and_a_second_sigterm_ends_at_once(tmp_path: Path, client_key: ClientKey) -> None:
    gateway = _serve(tmp_path, client_key, {"shutdown_grace": "10m", "admin": {"listen": "127.0.0.1:0"}})
    readyz, healthz = _admin_url(gateway, "/readyz"), _admin_url(gateway, "/healthz")
    assert http_get(readyz) == (200, "ready\n")
    client = _session(gateway)
    try:
        assert gateway.proc is not None
        gateway.proc.send_signal(15)
        # The user is told; the session goes on; new connections are refused.
        assert client.stderr is not None
        notice = client.stderr.readline() + client.stderr.readline()
        assert b"pairpod: the gateway is restarting; this session ends within 10m" in notice
        wait_until(lambda: "gateway.stopping" in gateway.log(), message="the drain")
        assert client.poll() is None
        assert gateway.ssh("true", timeout=30).returncode == 255
        # A load balancer probing readiness stops sending users here; the process is alive.
        assert http_get(readyz) == (503, "not ready: the gateway is draining (shutting down)\n")
        assert http_get(healthz) == (200, "ok\n")
        # A second SIGTERM ends the sessions now, not in ten minutes.
        started = time.monotonic()
        gateway.proc.send_signal(15)
        assert gateway.proc.wait(60) == 0
        assert time.monotonic() - started < 30  # liveness only
        client.wait(30)
        assert b"the gateway is restarting, disconnecting" in client.stderr.read()
        assert 'action="end sessions now"' in gateway.log()
    finally:
        client.kill()
        gateway.kill()


def test_sessions_that_end_during_the_grace_let_the_gateway_exit(
    tmp_path: Path, client_key: ClientKey
) -> None:
    gateway = _serve(tmp_path, client_key, {"shutdown_grace": "10m"})
    client = _session(gateway)
    try:
        assert gateway.proc is not None and client.stdin is not None
        gateway.proc.send_signal(15)
        wait_until(lambda: "gateway.stopping" in gateway.log(), message="the drain")
        client.kill()  # the user leaves
        assert gateway.proc.wait(60) == 0
        assert "gateway.ending_sessions" not in gateway.log()
    finally:
        client.kill()
        gateway.kill()


@pytest.fixture
def engine_proxy(tmp_path: Path) -> Iterator[EngineProxy]:
    """The shared Docker engine behind a socket this test can freeze."""
    proxy = EngineProxy(tmp_path / "docker.sock").start()
    try:
        yield proxy
    finally:
        proxy.thaw()
        proxy.stop()


def test_sigterm_with_a_hung_engine_exits_0_and_says_what_was_left(
    tmp_path: Path, client_key: ClientKey, engine_proxy: EngineProxy
) -> None:
    gateway = _serve(
        tmp_path,
        client_key,
        {
            **docker_overrides(image="busybox", host=engine_proxy.host),
            "shutdown_grace": "1s",
        },
    )
    instance = gateway.log().split("instance=")[1].split()[0]
    client = _session(gateway)
    try:
        [container] = wait_until(lambda: containers(instance=instance), message="the container")
        engine_proxy.freeze()  # accepts, never answers
        assert gateway.proc is not None
        started = time.monotonic()
        gateway.proc.send_signal(15)
        assert gateway.proc.wait(120) == 0
        assert time.monotonic() - started < 90  # liveness only
        log = gateway.log()
        assert "Traceback" not in log and "Unclosed client session" not in log
        left = [line for line in log.splitlines() if "gateway.left_behind" in line]
        assert left and container["Names"] in left[0]
        assert "next start's reaper" in left[0]
        assert "gateway.stopped" in log
    finally:
        client.kill()
        gateway.kill()
        engine_proxy.thaw()
        subprocess.run(
            ["docker", "rm", "-f", *(c["ID"] for c in containers(instance=instance))], capture_output=True
        )
