"""Secrets on disk that others can write or read are refused, as sshd's StrictModes does."""

from __future__ import annotations

from pathlib import Path

import asyncssh
import pytest

from tests.attacks.conftest import ServeGateway, assert_probe_login_prompt, attack_config
from tests.support.gateway import ClientKey, GatewayProcess, wait_until


def gateway_dir(tmp_path: Path) -> Path:
    """A private directory for one gateway's files (its name becomes the instance id)."""
    directory = tmp_path / "gw"
    directory.mkdir(mode=0o700)
    return directory


def test_a_world_writable_authorized_keys_stops_the_start_naming_the_file(
    tmp_path: Path, client_key: ClientKey
) -> None:
    tmp_path = gateway_dir(tmp_path)
    config = attack_config(tmp_path, client_key)
    authorized = tmp_path / "authorized_keys"
    authorized.chmod(0o666)
    gateway = GatewayProcess(config, key=client_key)
    with pytest.raises(AssertionError, match="gateway exited early"):
        gateway.start()
    assert f"file {authorized} is writable by group or others (mode 0666)" in gateway.log()


def test_a_host_key_readable_by_others_stops_the_start(tmp_path: Path, client_key: ClientKey) -> None:
    tmp_path = gateway_dir(tmp_path)
    host_key = tmp_path / "host_key"
    host_key.write_bytes(asyncssh.generate_private_key("ssh-ed25519").export_private_key())
    host_key.chmod(0o644)
    gateway = GatewayProcess(attack_config(tmp_path, client_key), key=client_key)
    with pytest.raises(AssertionError, match="gateway exited early"):
        gateway.start()
    assert f"host_keys[0]: {host_key}: permissions 0644 are too open" in gateway.log()


def test_authorized_keys_made_writable_while_serving_is_refused_at_the_next_login(
    serve: ServeGateway,
) -> None:
    gateway = serve()
    authorized = gateway.config_path.parent / "authorized_keys"
    assert gateway.ssh("true").returncode == 0
    authorized.parent.chmod(0o777)  # the directory: anyone could replace the file
    refused = gateway.ssh("true")
    assert refused.returncode == 255 and b"Permission denied" in refused.stderr
    wait_until(lambda: "keys.file_refused" in gateway.log(), message="refusal logged")
    assert f"directory {authorized.parent} is writable by group or others" in gateway.log()
    authorized.parent.chmod(0o700)
    assert_probe_login_prompt(gateway)


def test_strict_modes_can_be_switched_off(tmp_path: Path, client_key: ClientKey) -> None:
    tmp_path = gateway_dir(tmp_path)
    config = attack_config(tmp_path, client_key, {"security": {"strict_modes": False}})
    (tmp_path / "authorized_keys").chmod(0o666)
    gateway = GatewayProcess(config, key=client_key).start()
    try:
        assert_probe_login_prompt(gateway)
    finally:
        gateway.kill()
