"""Debian's redis-server on loopback, for the cluster tests: stopped and started at will."""

from __future__ import annotations

import subprocess
from pathlib import Path

import redis

from tests.support.gateway import require, wait_until
from tests.support.sshd import free_port


class RedisServer:
    """A redis-server on 127.0.0.1 (no persistence: a restart loses every key, as a crash would)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self._proc: subprocess.Popen[bytes] | None = None
        self.client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)

    @property
    def url(self) -> str:
        """The URL a gateway's ``cluster.redis`` names."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        """Start (again, on the same port) and wait until it answers."""
        self._proc = subprocess.Popen(
            [
                require("redis-server"),
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--save", "",
                "--appendonly", "no",
                "--dir", str(self.directory),
            ],
            stdout=(self.directory / "redis.log").open("ab"),
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        wait_until(self._answers, message="redis-server to answer")
        return self

    def _answers(self) -> bool:
        try:
            return bool(self.client.ping())
        except redis.RedisError:
            return False

    def stop(self) -> None:
        """Stop it (its keys are gone)."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            self._proc.wait(10)
        self._proc = None

    def keys(self, pattern: str = "pairpod:*") -> list[str]:
        """The keys matching ``pattern``."""
        return sorted(key.decode() for key in self.client.keys(pattern))
