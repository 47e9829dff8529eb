"""Helpers for tests of the Docker backend: the engine, configs, and what is left on it.

Tests observe the engine with the docker CLI (the gateway itself never uses it).
"""

from __future__ import annotations

import json
import subprocess
from typing import Any

from pairpod.config import Config, validate_config
from tests.support.images import busybox_image, debian_image


def require_engine() -> None:
    """Fail with the fix when no Docker engine answers (the test command starts one)."""
    result = subprocess.run(
        ["docker", "version", "--format", "{{.Server.Version}}"], capture_output=True, check=False
    )
    if result.returncode != 0:
        raise AssertionError(
            "no Docker engine answers: run scripts/test-deps.sh, which starts one\n"
            + result.stderr.decode(errors="replace")
        )


def docker_overrides(mode: str = "connection", image: str = "debian", **docker: Any) -> dict[str, Any]:
    """Config overrides selecting the Docker backend on a locally built test image."""
    require_engine()
    tag = (
        {"debian": debian_image, "busybox": busybox_image}[image]()
        if image in ("debian", "busybox")
        else image
    )
    settings: dict[str, Any] = {"image": tag, "pull": "never", "mode": mode}
    settings.update(docker)
    return {"backend": "docker", "docker": settings}


def docker_config(mode: str = "connection", image: str = "debian", **docker: Any) -> Config:
    """A whole validated Config for the Docker backend."""
    return validate_config(docker_overrides(mode, image, **docker), "test config")


def containers(**labels: str) -> list[dict[str, Any]]:
    """Containers (running or not) carrying all the given ``pairpod.<key>`` labels."""
    argv = ["docker", "ps", "-a", "--no-trunc", "--format", "{{json .}}"]
    for key, value in labels.items():
        argv += ["--filter", f"label=pairpod.{key}={value}"]
    out = subprocess.run(argv, capture_output=True, check=True).stdout.decode()
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def inspect(name: str) -> dict[str, Any]:
    """``docker inspect`` of one container."""
    out = subprocess.run(["docker", "inspect", name], capture_output=True, check=True).stdout
    return dict(json.loads(out)[0])


def remove_all(**labels: str) -> None:
    """Clean up after a test that failed half-way (never needed when tests pass)."""
    names = [c["Names"] for c in containers(**labels)]
    if names:
        subprocess.run(["docker", "rm", "-f", *names], capture_output=True, check=False)


def remove_volume(name: str) -> None:
    """Remove a named volume (tests of ``home_volume`` clean up after themselves)."""
    subprocess.run(["docker", "volume", "rm", "-f", name], capture_output=True, check=False)
