"""Filling the host's disk from a container: /tmp, the writable layer, the engine's log.

Before, 2 GB written to ``/tmp`` landed on the host's disk, and in session
mode 300 MB of program output made a 301 MB json log on the host.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
from pathlib import Path
from typing import Any

import pytest

from pairpod.backends.docker.disk import driver_supports_size
from tests.attacks.conftest import ServeGateway, assert_probe_login_prompt
from tests.support.docker_env import containers, docker_overrides, inspect, remove_all
from tests.support.gateway import GatewayProcess, wait_until

MIB = 1 << 20


def docker_gateway(serve: ServeGateway, mode: str, **docker: Any) -> tuple[GatewayProcess, str]:
    """A docker-backed gateway with an instance id of its own (the engine is shared)."""
    instance = f"attack-disk-{secrets.token_hex(4)}"
    return serve({**docker_overrides(mode, **docker), "instance_id": instance}), instance


@pytest.mark.parametrize("mode", ["connection", "session"])
def test_tmp_is_a_capped_tmpfs(serve: ServeGateway, mode: str) -> None:
    gateway, instance = docker_gateway(serve, mode, limits={"tmp": "16m"})
    try:
        result = gateway.ssh(
            "head -c 40000000 /dev/zero > /tmp/fill; echo status=$?; df -k /tmp | tail -1; wc -c < /tmp/fill"
        )
        out = result.stdout.decode()
        assert b"No space left on device" in result.stderr
        assert "status=1" in out
        assert "tmpfs" in out  # /tmp is in memory, not on the host's disk
        assert int(out.split()[-1]) <= 16 * MIB
        assert_probe_login_prompt(gateway)
    finally:
        remove_all(instance=instance)


def test_container_gets_log_cap_tmpfs_and_disk_limit_where_supported(serve: ServeGateway) -> None:
    gateway, instance = docker_gateway(serve, "connection")
    client = subprocess.Popen(
        gateway.ssh_argv("sleep 600"),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        found = wait_until(lambda: containers(instance=instance), message="the container")
        host = inspect(found[0]["Names"])["HostConfig"]
        assert host["LogConfig"] == {"Type": "json-file", "Config": {"max-size": "10m", "max-file": "1"}}
        assert host["Tmpfs"] == {"/tmp": "rw,nosuid,nodev,size=256m"}
        info = json.loads(
            subprocess.run(
                ["docker", "info", "--format", "{{json .}}"], capture_output=True, check=True
            ).stdout
        )
        supported, driver = driver_supports_size(info)
        if supported:
            assert host["StorageOpt"] == {"size": "1g"}
        else:
            # Said once in the log, naming the driver; the container runs without the cap.
            assert not host.get("StorageOpt")
            assert "docker.disk_limit_unsupported" in gateway.log()
            assert driver in gateway.log()
    finally:
        client.kill()
        client.wait()
        wait_until(lambda: not containers(instance=instance), message="the container to go")
        remove_all(instance=instance)


def test_session_output_does_not_grow_the_engine_log_past_its_cap(serve: ServeGateway) -> None:
    gateway, instance = docker_gateway(serve, "session", logs={"max_size": "1m"})
    total = 20_000_000
    marker = f"end-{secrets.token_hex(4)}"
    client = subprocess.Popen(
        gateway.ssh_argv(f"yes 0123456789abcdef | head -c {total}; echo {marker}; sleep 600"),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert client.stdout is not None
        received = b""
        while marker.encode() not in received[-64:]:
            chunk = os.read(client.stdout.fileno(), 1 << 20)
            assert chunk, "the session ended early"
            received += chunk
        assert len(received) > total  # all of it went through the engine's log too
        log_path = inspect(containers(instance=instance)[0]["Names"])["LogPath"]
        # The log keeps up with the attach stream: wait for the marker's line to reach it.
        wait_until(lambda: marker.encode() in Path(log_path).read_bytes(), message="the log")
        size = os.path.getsize(log_path)
        print(f"{total} bytes of output, engine log {size} bytes (cap 1m)")
        assert size <= 2 * MIB  # max-size is checked per line: a line past the cap at most
    finally:
        client.kill()
        client.wait()
        remove_all(instance=instance)
