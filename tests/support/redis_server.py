"""A real ``redis-server`` (Debian's) on loopback for the cluster tests.

One server per test module, on a free port, with no persistence: ``stop``
and ``start`` again on the same port to play a Redis outage.
"""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.support.gateway import require, wait_until


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """``redis-server`` on 127.0.0.1:``port``, its output in ``directory``."""

    def __init__(self, directory: Path, port: int | None = None) -> None:
        self.directory = directory
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The ``redis://`` URL of database 0."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        """Start and wait until it answers PING."""
        log = (self.directory / f"redis-{self.port}.log").open("ab")
        self.proc = subprocess.Popen(
            [
                require("redis-server"),
                "--bind",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        wait_until(lambda: self.cli("PING") == "PONG" or self.proc.poll() is not None, message="redis up")
        if self.proc.poll() is not None:
            raise AssertionError(f"redis-server exited with {self.proc.returncode}")
        return self

    def stop(self) -> None:
        """Stop it (SIGTERM) and wait."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None

    def cli(self, *args: str) -> str:
        """One ``redis-cli`` command's output ("" when the server does not answer)."""
        result = subprocess.run(
            ["redis-cli", "-h", "127.0.0.1", "-p", str(self.port), *args],
            capture_output=True,
            text=True,
            timeout=10,
        )
        return result.stdout.strip() if result.returncode == 0 else ""


@contextmanager
def redis_server(directory: Path) -> Iterator[RedisServer]:
    """A started server, stopped at the end."""
    server = RedisServer(directory).start()
    try:
        yield server
    finally:
        server.stop()
