"""``pairpod pair`` for tests: as a process on this machine, and what it prints.

The tests run as root, and ``pairpod pair`` run as root makes (and changes)
the OS user ``pair``: that path is for the container (tests/test_pair_image.py).
On this machine it runs as ``nobody`` instead, the path of anyone starting
it on their own laptop: the shell is their own, with no password.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.gateway import ClientKey, OpenSSHClient, wait_until, write_config
from tests.support.http_peers import KeySourcePeer, served_in_thread

AS_NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]


@dataclass(frozen=True)
class Announcement:
    """What ``pairpod pair`` printed on stdout."""

    text: str
    port: int
    ro: str
    rw: str
    username: str
    password: str | None


def parse_announcement(text: str) -> Announcement | None:
    """The announcement in ``text``, once both commands are printed."""
    ro = re.search(r"^pairpod: read-only:  ssh -p (\d+) (ro-\w+)@\S+$", text, re.M)
    rw = re.search(r"^pairpod: read-write: ssh -p (\d+) (rw-\w+)@\S+$", text, re.M)
    user = re.search(r"^   username: '([^']*)'$", text, re.M)
    if not (ro and rw and user):
        return None
    password = re.search(r"^   password: '([^']*)'$", text, re.M)
    return Announcement(
        text, int(rw.group(1)), ro.group(2), rw.group(2), user.group(1), password and password.group(1)
    )


def shared_dir() -> Path:
    """A directory the pairpod process (as nobody) may write its host key in; remove it after."""
    path = Path(tempfile.mkdtemp(prefix="pairpod-pair-test-"))
    path.chmod(0o755)
    shutil.chown(path, "nobody")
    return path


class Joinable(OpenSSHClient):
    """A pair session on loopback, for OpenSSH clients joining it with a link."""

    def join_argv(self, link: str, key: ClientKey, extra: Sequence[str] = ()) -> list[str]:
        """``ssh -tt`` joining with ``link`` and ``key``."""
        return self.ssh_argv(user=link, key=key, options=["-tt", *extra])


class PairProcess(Joinable):
    """``pairpod pair ARGS`` as nobody on loopback; ``ssh*`` join with a link as ``user``."""

    def __init__(
        self,
        directory: Path,
        key_source: str,
        *args: str,
        key: ClientKey,
        settings: dict[str, Any] | None = None,
    ) -> None:
        self.key = key
        self.directory = directory
        self.args = args
        self.config_path = write_config(
            directory / "pair.yaml",
            {
                "host_keys": [str(directory / "host_key")],
                "auth": {"key_sources": {"github": {"url": key_source}, "gitlab": {"url": key_source}}},
                "ssh": {"per_source_max_startups": None, "per_source_rate": None},
                "log": {"level": "debug"},
                **(settings or {}),
            },
        )
        self.proc: subprocess.Popen[bytes] | None = None
        self.out_path = directory / "pair.out"
        self.err_path = directory / "pair.err"
        self.announced: Announcement | None = None
        self.port = 0

    def argv(self) -> list[str]:
        """The command line run."""
        return [
            *AS_NOBODY,
            sys.executable,
            "-m",
            "pairpod.cli",
            "pair",
            "--config",
            str(self.config_path),
            "--listen",
            "127.0.0.1:0",
            *self.args,
        ]

    def start(self) -> PairProcess:
        """Start it and wait for the two commands on stdout."""
        with self.out_path.open("wb") as out, self.err_path.open("wb") as err:
            self.proc = subprocess.Popen(self.argv(), stdout=out, stderr=err, cwd="/")
        found = wait_until(
            lambda: (
                parse_announcement(self.stdout()) or (self.proc is not None and self.proc.poll() is not None)
            ),
            message="pairpod pair's join commands",
        )
        if not isinstance(found, Announcement):
            raise AssertionError(f"pairpod pair exited early:\n{self.stdout()}\n{self.log()}")
        self.announced = found
        self.port = found.port
        return self

    def stdout(self) -> str:
        """What it printed on stdout so far."""
        return self.out_path.read_text(errors="replace") if self.out_path.exists() else ""

    def log(self) -> str:
        """Its log (stderr) so far."""
        return self.err_path.read_text(errors="replace") if self.err_path.exists() else ""

    def control_socket(self) -> Path:
        """The control socket, as the shell's PAIRPOD_CONTROL names it (from the log)."""
        found = wait_until(
            lambda: re.search(r"admin\.socket path=(\S+)", self.log()), message="control socket"
        )
        return Path(found.group(1))

    def ctl(self, *command: str) -> subprocess.CompletedProcess[str]:
        """``pairpod ctl --socket ... COMMAND``."""
        argv = [sys.executable, "-m", "pairpod.cli", "ctl", "--socket", str(self.control_socket()), *command]
        return subprocess.run(argv, capture_output=True, text=True, timeout=30)

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM, and its exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def wait(self, timeout: float = 30) -> int:
        """Its exit code, once it exits by itself."""
        assert self.proc is not None
        return self.proc.wait(timeout)

    def kill(self) -> None:
        """SIGKILL, if still running."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture(scope="module")
def people(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ClientKey]:
    """Keys of alice and bob (whose keys the key source serves) and carol (nobody's)."""
    keys = tmp_path_factory.mktemp("keys")
    return {name: ClientKey.create(keys / name) for name in ("alice", "bob", "carol")}


@pytest.fixture(scope="module")
def key_source(people: dict[str, ClientKey]) -> Iterator[KeySourcePeer]:
    """A loopback GitHub/GitLab key source serving alice's and bob's keys."""
    peer = KeySourcePeer()
    peer.keys = {"alice": people["alice"].public_line + "\n", "bob": people["bob"].public_line + "\n"}
    with served_in_thread(peer):
        yield peer
