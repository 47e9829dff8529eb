"""OpenSSH's own sshd on loopback: the reference pairpod's sessions are compared with.

The conformance suite asks it what a real sshd gives a client (terminal
modes, login environment) and checks that every backend gives the same.
It runs as the test's user with its own host key, authorized_keys and config.
"""

from __future__ import annotations

import functools
import os
import pwd
import re
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.support.gateway import ClientKey, OpenSSHClient, Tmux, require, wait_until


def free_port() -> int:
    """A free loopback port (for a server that cannot listen on port 0 and tell)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def accepts(port: int) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:``port``."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


class OpenSSHServer(OpenSSHClient):
    """sshd listening on 127.0.0.1, letting ``key`` in as the current user."""

    def __init__(self, directory: Path, key: ClientKey) -> None:
        self.directory = directory
        self.key = key
        self.user = pwd.getpwuid(os.getuid()).pw_name
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> OpenSSHServer:
        """Write the config and start sshd in the foreground (``-D``), logging to a file."""
        self.directory.mkdir(parents=True, exist_ok=True)
        host_key = self.directory / "ssh_host_ed25519_key"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host_key)], check=True)
        authorized = self.directory / "authorized_keys"
        authorized.write_text(self.key.public_line + "\n")
        config = self.directory / "sshd_config"
        config.write_text(
            f"Port {self.port}\nListenAddress 127.0.0.1\nHostKey {host_key}\n"
            f"AuthorizedKeysFile {authorized}\nStrictModes no\nUsePAM no\nPidFile none\n"
            "PermitRootLogin prohibit-password\nPasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\nPrintMotd no\nPrintLastLog no\n"
            "AcceptEnv LANG LC_* TERM TZ\n"
        )
        Path("/run/sshd").mkdir(exist_ok=True)  # its privilege-separation directory
        log = (self.directory / "sshd.log").open("wb")
        self.proc = subprocess.Popen(
            [require("sshd"), "-D", "-e", "-f", str(config)], stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        wait_until(
            lambda: accepts(self.port) or self.proc.poll() is not None,  # type: ignore[union-attr]
            message="sshd listening",
        )
        if self.proc.poll() is not None:
            raise AssertionError((self.directory / "sshd.log").read_text(errors="replace"))
        return self

    def ssh_argv(
        self,
        *command: str,
        user: str | None = None,
        options=(),
        key=None,  # type: ignore[override]
        batch: bool = True,
    ) -> list[str]:
        """``ssh`` argv for a command on this sshd, as its user."""
        return super().ssh_argv(*command, user=user or self.user, options=options, key=key, batch=batch)

    def stop(self) -> None:
        """Stop sshd."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(20)


# --- what a session sees, asked the same way of sshd and of a gateway ---------------------

_END = "END-OF-PROBE"


def parse_stty(text: str) -> dict[str, str]:
    """``stty -a`` output as ``{setting: value}``: flags are ``on``/``off``, characters their value."""
    settings: dict[str, str] = {}
    for part in re.split(r"[;\n]", text):
        part = part.strip()
        if not part:
            continue
        # "intr = ^C", "speed 38400 baud", "rows 24"; else a group of flags.
        if match := re.fullmatch(r"(?:(\w+) = |(speed|rows|columns) )(\S+?)(?: baud)?", part):
            settings[match.group(1) or match.group(2)] = match.group(3)
        else:
            for word in part.split():
                settings[word.lstrip("-")] = "off" if word.startswith("-") else "on"
    return settings


def terminal_modes(client: OpenSSHClient, directory: Path) -> dict[str, str]:
    """``stty -a`` inside a session opened by ssh from a real terminal (tmux).

    ssh sends its full list of terminal modes only when its own stdin is a
    terminal, as it is for a user.
    """
    directory.mkdir(parents=True, exist_ok=True)
    term = Tmux("modes", directory)
    try:
        term.start(
            client.ssh_argv(f"stty -a; echo {_END[:4]}''{_END[4:]}", options=["-t"]), width=200, height=50
        )
        screen = term.wait_for(_END).string
    finally:
        term.close()
    start = screen.index("speed ")
    return parse_stty(screen[start : screen.index(_END)])


@dataclass(frozen=True)
class LoginView:
    """What a command sees of its login: variables, working directory, passwd entry."""

    env: dict[str, str]
    cwd: str
    passwd: list[str]  # name, password, uid, gid, gecos, home, shell


def login_view(client: OpenSSHClient) -> LoginView:
    """Run one command with a terminal (``-tt``) and read its environment."""
    command = 'env; echo "CWD-IS=$(pwd)"; echo "PASSWD-IS=$(grep "^$(id -un):" /etc/passwd)"'
    result = subprocess.run(
        client.ssh_argv(command, options=["-tt"]), capture_output=True, stdin=subprocess.DEVNULL, timeout=60
    )
    lines = result.stdout.decode(errors="replace").replace("\r\n", "\n").splitlines()
    assert any(line.startswith("PASSWD-IS=") for line in lines), result
    env = dict(line.split("=", 1) for line in lines if re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", line))
    cwd = env.pop("CWD-IS", None) or next(ln[7:] for ln in lines if ln.startswith("CWD-IS="))
    passwd = next(ln[10:] for ln in lines if ln.startswith("PASSWD-IS=")).split(":")
    return LoginView(env, cwd, passwd)


class Reference:
    """What sshd gives the test client, asked once and kept (for a whole test run)."""

    def __init__(self, server: OpenSSHServer) -> None:
        self.server = server

    @functools.cached_property
    def modes(self) -> dict[str, str]:
        """``stty -a`` in a session sshd opened for ssh in a real terminal."""
        return terminal_modes(self.server, self.server.directory / "modes")

    @functools.cached_property
    def login(self) -> LoginView:
        """The login environment sshd gives a command run with ``-tt``."""
        return login_view(self.server)
