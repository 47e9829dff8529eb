"""A private Docker engine that a test may stop and start.

Stopping the shared engine would take every other test's containers with it,
so tests of "the engine goes away and comes back" run their own dockerd: its
own socket, data root and exec root, no bridge network, no firewall changes.
The test images are copied into it from the shared engine (``docker save`` /
``load``, no registry involved).
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
from pathlib import Path

from tests.support.gateway import require, wait_until

ROOT = Path("/var/lib/pairpod-test-engines")


class PrivateEngine:
    """A dockerd of the test's own, stopped and started at will."""

    def __init__(self) -> None:
        token = secrets.token_hex(4)
        self.root = ROOT / token
        # Unix socket paths are limited to ~108 bytes: keep these short.
        self.run_dir = Path(f"/run/pp-{token}")
        self.socket = self.run_dir / "docker.sock"
        self.host = f"unix://{self.socket}"
        self.log_path = self.root / "dockerd.log"
        self._proc: subprocess.Popen[bytes] | None = None

    def _cli(
        self,
        *args: str,
        input: bytes | None = None,
        check: bool = True,
    ) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            ["docker", "-H", self.host, *args], input=input, capture_output=True, check=check
        )

    def answers(self) -> bool:
        """True when the engine answers its API."""
        return self._cli("version", "--format", "{{.Server.Version}}", check=False).returncode == 0

    def start(self) -> PrivateEngine:
        """Start dockerd and wait until it answers."""
        dockerd = require("dockerd")
        self.root.mkdir(parents=True, exist_ok=True)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self._proc = subprocess.Popen(
            [
                dockerd,
                "--data-root",
                str(self.root / "data"),
                "--exec-root",
                str(self.run_dir / "exec"),
                "--pidfile",
                str(self.run_dir / "docker.pid"),
                "-H",
                self.host,
                "--bridge=none",
                "--iptables=false",
                "--ip6tables=false",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        try:
            wait_until(
                lambda: self.answers() or self._proc.poll() is not None,
                timeout=60,
                message="the private dockerd to answer",
            )
        except AssertionError:
            self.stop()
            raise
        if not self.answers():
            raise AssertionError(f"private dockerd exited:\n{self.log_path.read_text()[-3000:]}")
        return self

    def stop(self) -> None:
        """Stop dockerd (and the containerd it runs) and wait for it to exit."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        # The socket file goes with the daemon; an engine that is down is down.
        wait_until(
            lambda: not self.socket.exists() or not self.answers(),
            timeout=10,
            message="the private engine to stop answering",
        )

    def load_image(self, tag: str) -> None:
        """Copy an image from the shared engine."""
        saved = subprocess.run(["docker", "save", tag], capture_output=True, check=True).stdout
        self._cli("load", "-q", input=saved)

    def containers(self) -> list[str]:
        """Names of every container on this engine."""
        out = self._cli("ps", "-a", "--format", "{{.Names}}").stdout.decode()
        return [line for line in out.splitlines() if line]

    def destroy(self) -> None:
        """Stop and delete everything this engine had."""
        self.stop()
        # dockerd unmounts its layers when it stops; what is left are plain files.
        shutil.rmtree(self.root, ignore_errors=True)
        shutil.rmtree(self.run_dir, ignore_errors=True)
