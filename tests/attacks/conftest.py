"""The attack suite: what a hostile client on the open internet tries, against a real gateway.

Every test here starts a real ``pairpod serve`` on loopback, attacks it in a
bounded way (a fixed count of connections, channels or requests, each with a
timeout), and asserts two things: the limit under attack holds, and an
ordinary user still logs in promptly meanwhile (``probe_login``).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pairpod.config import merge
from tests.support.gateway import ClientKey, GatewayProcess, write_config

# An ordinary login during an attack must still complete within this. The attacks
# this suite reproduces stalled the gateway for 4.8 s to 142 s; an idle login takes
# about 0.3 s. The bound is a liveness check, loose enough for a loaded CI machine,
# not a speed goal (the figure is printed, so a regression is visible in the log).
PROBE_LOGIN_SECONDS = 5.0

ServeGateway = Callable[..., GatewayProcess]


def attack_config(tmp: Path, key: ClientKey, overrides: dict[str, Any] | None = None) -> Path:
    """A ``pairpod serve`` config on a free loopback port that lets ``key`` in as anyone."""
    authorized = tmp / "authorized_keys"
    authorized.write_text(key.public_line + "\n")
    authorized.chmod(0o600)
    data: dict[str, Any] = {
        "listen": "127.0.0.1:0",
        # Unique per gateway: runs sharing one Docker engine must not reap each other's.
        "instance_id": f"attack-{secrets.token_hex(6)}",
        "host_keys": [str(tmp / "host_key")],
        "auth": {"authorized_keys": str(authorized)},
        "backend": "local",
        "log": {"level": "info"},
    }
    return write_config(tmp / "pairpod.yaml", merge(data, overrides or {}))


@pytest.fixture
def serve(tmp_path: Path, client_key: ClientKey) -> Iterator[ServeGateway]:
    """Start real ``pairpod serve`` processes with config overrides; killed at the end."""
    started: list[GatewayProcess] = []

    def start(overrides: dict[str, Any] | None = None, *args: str) -> GatewayProcess:
        directory = tmp_path / f"serve{len(started)}"
        directory.mkdir(mode=0o700)
        gateway = GatewayProcess(attack_config(directory, client_key, overrides), *args, key=client_key)
        started.append(gateway)
        return gateway.start()

    yield start
    for gateway in started:
        gateway.kill()


# Where the probe comes from: an address no attack here uses, as an
# ordinary user elsewhere on the internet would, so per-source limits that rightly
# hold back the attacker's address do not count against it.
PROBE_SOURCE = "127.0.9.9"


def probe_login(gateway: GatewayProcess, user: str = "probe") -> float:
    """Log in as an ordinary user and run ``true``; return how long it took (asserts success)."""
    began = time.monotonic()
    result = gateway.ssh("true", user=user, timeout=30, options=["-b", PROBE_SOURCE])
    elapsed = time.monotonic() - began
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    return elapsed


def assert_probe_login_prompt(gateway: GatewayProcess) -> None:
    """An ordinary login still completes within the bar while an attack runs."""
    elapsed = probe_login(gateway)
    print(f"probe login under attack: {elapsed:.3f}s")
    assert elapsed < PROBE_LOGIN_SECONDS, f"probe login took {elapsed:.2f}s under attack"
