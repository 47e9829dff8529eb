"""The config model and the command line, through the real ``pairpod`` entry point."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel

from pairpod.config import Config, load_config, parse_duration
from pairpod.errors import ConfigError
from tests.support.gateway import GatewayProcess, write_config

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "pairpod.yaml"


def pairpod(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pairpod.cli", *args], capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize(
    ("text", "seconds"), [("30s", 30), ("5m", 300), ("1h", 3600), ("250ms", 0.25), (12, 12), ("1.5m", 90)]
)
def test_durations(text: Any, seconds: float) -> None:
    assert parse_duration(text) == seconds


@given(st.integers(min_value=0, max_value=10**6), st.sampled_from(["s", "m", "h"]))
def test_duration_round_trips_through_the_model(value: int, unit: str) -> None:
    config = Config.model_validate({"ssh": {"login_timeout": f"{value}{unit}"}})
    dumped = config.model_dump(mode="json")["ssh"]["login_timeout"]
    assert (
        Config.model_validate({"ssh": {"login_timeout": dumped}}).ssh.login_timeout
        == config.ssh.login_timeout
    )


def test_example_config_is_valid_and_documents_every_key() -> None:
    result = pairpod("check-config", str(EXAMPLE))
    assert result.returncode == 0, result.stderr
    assert yaml.safe_load(result.stdout)["listen"] == "0.0.0.0:2222"
    example = yaml.safe_load(EXAMPLE.read_text())

    def missing(model: type[BaseModel], data: Any, path: str) -> list[str]:
        gaps = []
        for name, field in model.model_fields.items():
            if not isinstance(data, dict) or name not in data:
                gaps.append(f"{path}{name}")
                continue
            annotation = field.annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                gaps += missing(annotation, data[name], f"{path}{name}.")
        return gaps

    assert missing(Config, example, "") == []


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("listen: [unclosed\n", "invalid YAML at line"),
        ("ssh:\n  max_sesions: 3\n", "ssh.max_sesions: unknown key"),
        ("ssh:\n  max_sessions: many\n", "ssh.max_sessions: Input should be a valid integer"),
        ("ssh:\n  login_timeout: soon\n", "ssh.login_timeout: Value error, expected a duration"),
        ("listen: localhost\n", "listen: Value error, expected HOST:PORT"),
        ("backend: podman\n", "backend: Input should be 'local', 'docker' or 'kubernetes'"),
        ("security:\n  env_allow: LANG\n", "security.env_allow: Input should be a valid list"),
        ("- a list\n", "expected a mapping of settings at the top level"),
        ("instance_id: Gateway_1\n", "instance_id: Value error, expected 1-32 lowercase letters"),
    ],
    ids=["yaml", "unknown-key", "wrong-type", "duration", "listen", "backend", "list", "top", "instance-id"],
)
def test_check_config_names_the_key_and_the_problem(tmp_path: Path, content: str, expected: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    result = pairpod("check-config", str(path))
    assert result.returncode == 2
    assert expected in result.stderr
    assert result.stdout == ""


def test_missing_config_file_is_a_clear_error(tmp_path: Path) -> None:
    result = pairpod("check-config", str(tmp_path / "nope.yaml"))
    assert result.returncode == 2
    assert "cannot read: No such file or directory" in result.stderr


def test_version_and_help_on_every_command() -> None:
    version = pairpod("--version")
    assert version.returncode == 0 and "pairpod, version" in version.stdout
    top = pairpod("--help")
    commands = [line.split()[0] for line in top.stdout.split("Commands:")[1].strip().splitlines()]
    assert {"serve", "check-config", "demo-setup"} <= set(commands)
    for command in commands:
        result = pairpod(command, "--help")
        assert result.returncode == 0
        assert f"Usage: python -m pairpod.cli {command}" in result.stdout


def test_cli_flags_override_the_file(tmp_path: Path) -> None:
    path = write_config(tmp_path / "c.yaml", {"listen": "0.0.0.0:2222", "backend": "docker"})
    config = load_config(path, {"listen": "127.0.0.1:2300", "backend": "local"})
    assert config.listen_address == ("127.0.0.1", 2300)
    assert config.backend == "local"
    with pytest.raises(ConfigError, match="listen"):
        load_config(path, {"listen": "nonsense"})


def test_serve_reports_a_port_in_use(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        path = write_config(tmp_path / "c.yaml", {"host_keys": [str(tmp_path / "hk")]})
        result = pairpod("serve", "--config", str(path), "--listen", f"127.0.0.1:{port}")
    assert result.returncode == 2
    assert (
        f"listen: cannot listen on 127.0.0.1:{port}: address already in use"
        in result.stderr.lower().replace("[errno 98] ", "")
    )


def test_serve_reports_an_invalid_host_key(tmp_path: Path) -> None:
    key = tmp_path / "hk"
    key.write_text("not a key\n")
    key.chmod(0o600)  # modes fine, so the content is what is refused
    path = write_config(tmp_path / "c.yaml", {"host_keys": [str(key)], "listen": "127.0.0.1:0"})
    result = pairpod("serve", "--config", str(path))
    assert result.returncode == 2
    assert f"host_keys[0]: {key}: not a valid private key" in result.stderr


def test_serve_generates_a_missing_host_key_with_mode_0600(tmp_path: Path) -> None:
    key = tmp_path / "keys" / "ssh_host_ed25519_key"
    path = write_config(tmp_path / "c.yaml", {"host_keys": [str(key)], "listen": "127.0.0.1:0"})
    server = GatewayProcess(path).start()
    try:
        assert key.stat().st_mode & 0o777 == 0o600
        assert key.read_text().startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
        assert "PRIVATE KEY" not in server.log()  # never logged
    finally:
        assert server.terminate() == 0


def test_json_logs_are_one_object_per_line(tmp_path: Path) -> None:
    path = write_config(
        tmp_path / "c.yaml",
        {
            "host_keys": [str(tmp_path / "hk")],
            "listen": "127.0.0.1:0",
            "log": {"format": "json"},
        },
    )
    server = GatewayProcess(path)
    server.start()
    assert server.terminate() == 0
    import json

    events = [json.loads(line)["event"] for line in server.log().splitlines()]
    assert "gateway.listening" in events and "gateway.stopped" in events


def test_demo_setup_prints_a_working_ssh_command(tmp_path: Path) -> None:
    result = pairpod("demo-setup", str(tmp_path / "demo"), "--port", "2299")
    assert result.returncode == 0
    assert "ssh -i" in result.stdout and "-p 2299 demo@127.0.0.1" in result.stdout
    config = load_config(tmp_path / "demo" / "pairpod.yaml")
    assert config.backend == "local" and config.listen == "127.0.0.1:2299"


def test_default_instance_id_is_the_host_name_made_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("socket.gethostname", lambda: "Build_Host.example.org")
    assert Config().effective_instance_id == "build-host-example-org"
    assert Config(instance_id="gw-2").effective_instance_id == "gw-2"
    # What a host name becomes is itself a valid instance id.
    Config(instance_id=Config().effective_instance_id)
