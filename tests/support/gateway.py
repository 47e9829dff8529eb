"""Run a real pairpod gateway for tests, and drive it with the real OpenSSH client.

``GatewayThread`` runs the Gateway in a thread with its own event loop, so
tests can call blocking tools (ssh, scp, tmux) freely and still look inside
the gateway (its tasks, its connections). ``GatewayProcess`` runs
``pairpod serve`` as a real subprocess, for CLI and signal behaviour.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pairpod.config import Config, merge, validate_config
from pairpod.eventloop import new_event_loop
from pairpod.ssh import Gateway

DEFAULT_WAIT = 20.0


def wait_until(
    predicate: Callable[[], Any],
    timeout: float = DEFAULT_WAIT,
    interval: float = 0.02,
    message: str = "condition",
) -> Any:
    """Poll an observable condition until it holds; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


@dataclass(frozen=True)
class ClientKey:
    """An OpenSSH client key pair made with ssh-keygen."""

    private: Path
    public_line: str

    @classmethod
    def create(cls, directory: Path, name: str = "id_ed25519") -> ClientKey:
        """Generate a fresh ed25519 key in ``directory``."""
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / name
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(path)], check=True
        )
        return cls(path, (directory / f"{name}.pub").read_text().strip())


# The pre-auth limits switched off: every test client comes from 127.0.0.1, and
# tests that are not about those limits open many connections at once.
NO_ADMISSION_LIMITS: dict[str, Any] = {
    "max_startups": "1000",
    "per_source_max_startups": None,
    "per_source_rate": None,
}


def base_config(tmp: Path, key: ClientKey, overrides: dict[str, Any] | None = None) -> Config:
    """A config listening on a free loopback port, letting ``key`` in as anyone."""
    authorized = tmp / "authorized_keys"
    authorized.write_text(key.public_line + "\n")
    data: dict[str, Any] = {
        "listen": "127.0.0.1:0",
        # Tests run many gateways on one host: each its own instance.
        "instance_id": f"test-{secrets.token_hex(6)}",
        "host_keys": [str(tmp / "host_key")],
        "auth": {"authorized_keys": str(authorized)},
        # Every test client comes from 127.0.0.1, and some open fifty connections at
        # once: the pre-auth limits (tested in tests/attacks) would drop some at random.
        "ssh": {"login_timeout": "20s", **NO_ADMISSION_LIMITS},
        "log": {"level": "debug"},
        # Stopping a test's gateway must not wait the production grace for open sessions.
        "shutdown_grace": "1s",
    }
    return validate_config(merge(data, overrides or {}), "test config")


class OpenSSHClient:
    """The real OpenSSH client aimed at a gateway on loopback (``key``, ``port``)."""

    key: ClientKey
    port: int

    def ssh_options(
        self, user: str = "alice", key: ClientKey | None = None, extra: Sequence[str] = (), batch: bool = True
    ) -> list[str]:
        """Options common to ssh, scp and sftp (without the port flag)."""
        # ssh takes the first value of an option: the caller's come first.
        return [
            *extra,
            "-F",
            "/dev/null",
            "-i",
            str((key or self.key).private),
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            f"BatchMode={'yes' if batch else 'no'}",
            "-o",
            "LogLevel=ERROR",
            "-o",
            f"User={user}",
        ]

    def ssh_argv(
        self,
        *command: str,
        user: str = "alice",
        options: Sequence[str] = (),
        key: ClientKey | None = None,
        batch: bool = True,
    ) -> list[str]:
        """``ssh`` argv for a command on this gateway (``batch=False`` allows prompts)."""
        return [
            "ssh",
            *self.ssh_options(user, key, options, batch),
            "-p",
            str(self.port),
            "127.0.0.1",
            *command,
        ]

    def ssh(
        self,
        *command: str,
        input: bytes | None = None,
        user: str = "alice",
        options: Sequence[str] = (),
        timeout: float = 60,
        key: ClientKey | None = None,
    ) -> subprocess.CompletedProcess[bytes]:
        """Run ``ssh`` to completion and capture its output."""
        return subprocess.run(
            self.ssh_argv(*command, user=user, options=options, key=key),
            input=input,
            capture_output=True,
            timeout=timeout,
        )


class GatewayThread(OpenSSHClient):
    """A Gateway served from a background thread's event loop."""

    def __init__(self, config: Config, key: ClientKey) -> None:
        self.config = config
        self.key = key
        self.loop = new_event_loop(config.event_loop)  # the config's choice: the default, as served
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.gateway = Gateway(config)
        self.port = 0
        self.baseline_tasks = 0

    def call(self, coro: Coroutine[Any, Any, Any], timeout: float = 60) -> Any:
        """Run a coroutine on the gateway's loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def begin(self) -> concurrent.futures.Future[Any]:
        """Start the loop and the gateway's start, without waiting for it."""
        self._thread.start()
        return asyncio.run_coroutine_threadsafe(self.gateway.start(), self.loop)

    def start(self) -> GatewayThread:
        """Start the loop and the gateway."""
        self.begin().result(60)
        self.port = self.gateway.port
        self.baseline_tasks = self.task_count()
        return self

    def stop(self) -> None:
        """Stop the gateway and its loop."""
        try:
            self.call(self.gateway.stop())
        finally:
            self.close_loop()

    def close_loop(self) -> None:
        """Stop and close the loop (after a gateway that failed to start, or stopped)."""
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()

    def task_count(self) -> int:
        """How many asyncio tasks exist on the gateway's loop (not counting the asker)."""

        async def count() -> int:
            return len(asyncio.all_tasks()) - 1

        return int(self.call(count()))

    def connection_count(self) -> int:
        """Live SSH connections."""

        async def count() -> int:
            return len(self.gateway.connections)

        return int(self.call(count()))


class GatewayProcess(OpenSSHClient):
    """``pairpod serve`` as a real subprocess; the port is read from its log.

    ``key`` (when given) is the client key its ``ssh*`` helpers log in with.
    """

    def __init__(
        self, config_path: Path, *args: str, key: ClientKey | None = None, pass_fds: Sequence[int] = ()
    ) -> None:
        if key is not None:
            self.key = key
        self.pass_fds = tuple(pass_fds)  # descriptors the gateway inherits, as from its launcher
        self.config_path = config_path
        self.args = args
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.log_path = config_path.with_suffix(".log")

    def start(self) -> GatewayProcess:
        """Start and wait for the listening line."""
        log_file = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pairpod.cli", "serve", "--config", str(self.config_path), *self.args],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            pass_fds=self.pass_fds,
        )
        match = wait_until(lambda: self._listening() or self._exited(), message="gateway start")
        if isinstance(match, str):
            raise AssertionError(f"gateway exited early:\n{match}")
        self.port = int(match.group(1))
        return self

    def _listening(self) -> re.Match[str] | None:
        # Text ("address=127.0.0.1:PORT") or JSON ("address": "127.0.0.1:PORT").
        return re.search(r'gateway\.listening.*?address\W+[^\s"]*:(\d+)', self.log())

    def _exited(self) -> str | None:
        assert self.proc is not None
        return self.log() or "(no output)" if self.proc.poll() is not None else None

    def log(self) -> str:
        """Everything the gateway printed so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def terminate(self, timeout: float = 30) -> int:
        """SIGTERM, and wait for exit."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        """SIGKILL, if still running."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def write_config(path: Path, data: dict[str, Any]) -> Path:
    """Write a YAML config file."""
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


class Tmux:
    """A real terminal: a tmux session whose pane runs a command."""

    def __init__(self, name: str, socket_dir: Path) -> None:
        self.name = name
        self.socket = str(socket_dir / "tmux.sock")

    def _tmux(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["tmux", "-S", self.socket, *args], capture_output=True, text=True, check=check)

    def start(self, argv: Sequence[str], width: int = 100, height: int = 30) -> Tmux:
        """Run ``argv`` in a detached session of the given size."""
        cmd = " ".join(_shell_quote(a) for a in argv)
        self._tmux(
            "-f",
            "/dev/null",
            "new-session",
            "-d",
            "-s",
            self.name,
            "-x",
            str(width),
            "-y",
            str(height),
            f"{cmd}; echo PANE-EXIT=$?; sleep 600",
        )
        self._tmux("set-option", "-g", "remain-on-exit", "on", check=False)
        return self

    def send(self, *keys: str) -> None:
        """Type keys (tmux key names such as Enter or C-c, or literal text with -l)."""
        self._tmux("send-keys", "-t", self.name, *keys)

    def type(self, text: str) -> None:
        """Type literal text."""
        self._tmux("send-keys", "-t", self.name, "-l", text)

    def screen(self) -> str:
        """The visible screen."""
        return self._tmux("capture-pane", "-p", "-t", self.name).stdout

    def wait_for(self, pattern: str, timeout: float = DEFAULT_WAIT) -> re.Match[str]:
        """Wait until the screen matches ``pattern``."""
        try:
            return wait_until(
                lambda: re.search(pattern, self.screen()), timeout, message=f"screen to match {pattern!r}"
            )
        except AssertionError as error:
            raise AssertionError(f"{error}\n--- screen ---\n{self.screen()}") from None

    def resize(self, width: int, height: int) -> None:
        """Resize the terminal window (the client sends window-change)."""
        self._tmux("resize-window", "-t", self.name, "-x", str(width), "-y", str(height))

    def type_once_width(self, width: int, text: str) -> None:
        """Type a shell command line that runs ``text`` once the remote terminal is ``width`` wide.

        After :meth:`resize`, keys typed at once may reach the server before the
        window change: OpenSSH's client sends what it read from the terminal
        before the window change it noticed in the same round of its loop.
        """
        self.type(f"until stty size | grep -q ' {width}$'; do :; done; {text}")

    def close(self) -> None:
        """Kill the tmux server."""
        self._tmux("kill-server", check=False)


def _shell_quote(text: str) -> str:
    import shlex

    return shlex.quote(text)


def unique_sleep(seconds: int = 3000) -> str:
    """A ``sleep`` command line no other test run on this machine has (``sleep 3000.417``).

    Tests find remote programs by their command line; two runs of the suite at
    once must never see each other's.
    """
    return f"sleep {seconds}.{secrets.randbelow(10**9):09d}"


def processes_matching(marker: str) -> list[int]:
    """PIDs whose command line contains ``marker`` (for orphan checks)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmdline:
            pids.append(int(entry.name))
    return pids


def zombie_children(pid: int) -> list[int]:
    """Zombie processes whose parent is ``pid``."""
    zombies = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # Fields after the parenthesised command: state, ppid, ...
        state, ppid = stat.rsplit(")", 1)[1].split()[:2]
        if state == "Z" and int(ppid) == pid:
            zombies.append(int(entry.name))
    return zombies


def require(tool: str) -> str:
    """The path of a tool the tests need (the test command installs them)."""
    path = shutil.which(tool) or (f"/usr/sbin/{tool}" if Path(f"/usr/sbin/{tool}").exists() else None)
    if path is None:
        raise AssertionError(f"{tool} is missing: run the README test command, which installs it")
    return path


def iter_lines(path: Path) -> Iterator[str]:
    """Lines of a text file, or none if it does not exist."""
    if path.exists():
        yield from path.read_text().splitlines()


def rss(pid: int) -> int:
    """Resident memory of a process, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")
