"""``pairpod admin list`` and ``pairpod admin end`` against a real ``pairpod serve``."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.gateway import ClientKey, GatewayProcess, unique_sleep, wait_until, write_config


def admin(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pairpod.cli", "admin", "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def served(tmp_path: Path, client_key: ClientKey) -> Iterator[tuple[GatewayProcess, Path]]:
    (tmp_path / "authorized_keys").write_text(client_key.public_line + "\n")
    config = write_config(
        tmp_path / "pairpod.yaml",
        {
            "listen": "127.0.0.1:0",
            "host_keys": [str(tmp_path / "host_key")],
            "auth": {"authorized_keys": str(tmp_path / "authorized_keys")},
            "admin": {"socket": str(tmp_path / "admin.sock")},
        },
    )
    gateway = GatewayProcess(config, key=client_key).start()
    try:
        yield gateway, config
    finally:
        gateway.kill()


def test_list_shows_a_live_connection_and_end_tells_its_user(
    served: tuple[GatewayProcess, Path], tmp_path: Path
) -> None:
    gateway, config = served
    socket_path = tmp_path / "admin.sock"
    assert stat.S_IMODE(os.stat(socket_path).st_mode) == 0o600
    assert admin(config, "list").stdout == "no connections\n"

    marker = unique_sleep(600)
    client = subprocess.Popen(
        gateway.ssh_argv("echo started; " + marker),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    try:
        assert client.stdout is not None
        assert client.stdout.readline() == b"started\n"
        rows = json.loads(admin(config, "list", "--json").stdout)
        assert len(rows) == 1
        row = rows[0]
        assert row["user"] == "alice"
        assert row["remote"].startswith("127.0.0.1:")
        assert row["environment"].startswith("local user=")
        assert row["channels"] == [{"kind": "exec", "command": "echo started; " + marker, "pty": False}]
        assert row["bytes_out"] == len(b"started\n") and row["bytes_in"] == 0
        assert row["started"].endswith("Z")
        table = admin(config, "list").stdout
        assert row["id"] in table and "alice" in table and f"channel exec: echo started; {marker}" in table

        ended = admin(config, "end", row["id"])
        assert ended.returncode == 0 and ended.stdout == f"connection {row['id']} ended\n"
        _, stderr = client.communicate(timeout=30)
        assert b"pairpod: ended by an administrator" in stderr
        assert client.returncode != 0
    finally:
        client.kill()
        client.wait()
    wait_until(lambda: admin(config, "list").stdout == "no connections\n", message="connection gone")
    # Its environment is gone too: the remote sleep no longer runs.
    assert marker.encode() not in subprocess.run(["ps", "-eo", "args"], capture_output=True).stdout


def test_end_of_an_unknown_connection_and_a_gateway_that_is_not_there(
    served: tuple[GatewayProcess, Path], tmp_path: Path
) -> None:
    gateway, config = served
    missing = admin(config, "end", "0123456789ab")
    assert missing.returncode == 1 and missing.stderr == "pairpod: no connection '0123456789ab'\n"
    assert gateway.terminate() == 0
    assert not (tmp_path / "admin.sock").exists()  # removed at shutdown
    gone = admin(config, "list")
    assert gone.returncode == 1 and "no gateway answers at" in gone.stderr


def test_admin_needs_a_socket_in_the_config(tmp_path: Path) -> None:
    config = write_config(tmp_path / "c.yaml", {"listen": "127.0.0.1:0"})
    result = admin(config, "list")
    assert result.returncode == 2
    assert result.stderr.startswith(f"pairpod: admin.socket is not set in {config}")
