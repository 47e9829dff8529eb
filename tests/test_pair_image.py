"""The pair image (deploy/pair/Dockerfile) as a container, joined by real OpenSSH clients in tmux.

Built on the Debian test image with nothing pulled; run with ``--network
host`` so that it listens on loopback and fetches alice's and bob's keys
from a loopback key source. As root in the container, pairpod makes the user
``pair`` with a random password and sudo; everything it prints comes from
``docker logs``.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest

from tests.support.gateway import ClientKey, wait_until, write_config
from tests.support.http_peers import KeySourcePeer
from tests.support.images import pair_image
from tests.support.pair import Announcement, Joinable, key_source, parse_announcement, people
from tests.support.sshd import free_port
from tests.test_sharing_ssh import Terminals, terms

__all__ = ["key_source", "people", "terms"]

pytestmark = pytest.mark.skipif(shutil.which("docker") is None, reason="needs docker")


class PairContainer(Joinable):
    """``docker run --network host IMAGE ARGS`` with a config naming the key source.

    ``options`` go to ``docker run``; ``before`` is a shell command run ahead
    of the image's entrypoint (``pairpod pair``), in the container.
    """

    def __init__(
        self,
        directory: Path,
        image: str,
        key_source: str,
        *args: str,
        key: ClientKey,
        options: Sequence[str] = (),
        port: int = 0,
        before: str | None = None,
    ) -> None:
        self.key = key
        self.name = f"pairpod-test-pair-{secrets.token_hex(4)}"
        config = write_config(
            directory / "pair.yaml", {"auth": {"key_sources": {"github": {"url": key_source}}}}
        )
        pair_args = ["--config", "/etc/pairpod/pair.yaml", "--listen", f"127.0.0.1:{port}", *args]
        if before is not None:
            pair_args = ["-c", f'{before} && exec pairpod pair "$@"', "sh", *pair_args]
            options = [*options, "--entrypoint", "sh"]
        self.argv = [
            *("docker", "run", "-d", "--name", self.name, "--network", "host"),
            *("-v", f"{config}:/etc/pairpod/pair.yaml:ro", *options, image, *pair_args),
        ]
        self.announced: Announcement | None = None
        self.port = 0

    def start(self) -> PairContainer:
        """Run it and wait for the join commands in its log."""
        subprocess.run(self.argv, check=True, capture_output=True, timeout=60)
        found = wait_until(
            lambda: parse_announcement(self.stdout()), message="the join commands in docker logs"
        )
        self.announced = found
        self.port = found.port
        return self

    def stdout(self) -> str:
        """``docker logs``: what it printed on stdout."""
        result = subprocess.run(["docker", "logs", self.name], capture_output=True, text=True, timeout=30)
        return result.stdout

    def wait(self, timeout: float = 30) -> int:
        """The container's exit status, once it exits."""
        result = subprocess.run(
            ["docker", "wait", self.name], capture_output=True, text=True, timeout=timeout
        )
        return int(result.stdout.strip())

    def remove(self) -> None:
        """Remove the container, running or not."""
        subprocess.run(["docker", "rm", "-f", self.name], capture_output=True, timeout=60)


def test_the_image_shares_a_shell_as_pair_with_sudo(
    tmp_path: Path, key_source: KeySourcePeer, people: dict[str, ClientKey], terms: Terminals
) -> None:
    container = PairContainer(tmp_path, pair_image(), key_source.url, "alice", "bob", key=people["alice"])
    try:
        said = container.start().announced
        assert said is not None
        assert said.text.startswith("pairpod: sharing with github:alice, github:bob\n")
        assert said.username == "pair"
        assert said.password is not None and len(said.password) >= 32
        # alice joins read-write: the shell is pair's, and sudo takes the printed password.
        alice = terms.start("alice", container.join_argv(said.rw, people["alice"]), 100, 30)
        alice.type("whoami\n")
        alice.wait_for(r"(?m)^pair\s*$")
        alice.type(f"echo '{said.password}' | sudo -S -p '' id -u; echo sudo-done\n")
        alice.wait_for(r"(?m)^0\n+sudo-done")
        # The controls, from inside the shell.
        alice.type("pairpod ctl list\n")
        alice.wait_for(r"participant \d+  github:alice  read-write")
        # A key nobody named is refused.
        assert container.ssh("true", user=said.rw, key=people["carol"], options=["-tt"]).returncode == 255
        # bob, late and read-only, sees the screen; his keystrokes are dropped.
        bob = terms.start("bob", container.join_argv(said.ro, people["bob"]), 100, 30)
        bob.wait_for("sudo-done")
        bob.type("echo from-bob\n")
        bob.wait_for("read-only: your keystrokes are not sent")
        alice.type("echo mark-$((3*3))\n")
        bob.wait_for("mark-9")
        assert "from-bob" not in alice.screen()
        # Everyone leaves; the shell and its screen are still there.
        alice.close()
        bob.close()
        back = terms.start("back", container.join_argv(said.rw, people["alice"]), 100, 30)
        back.wait_for("mark-9")
        # The shell exits: the joiner is told, the container exits with its status.
        back.type("exit 7\n")
        back.wait_for(r"the shell exited \(status 7\)")
        assert container.wait() == 7
    finally:
        container.remove()


def test_a_named_container_keeps_its_commands_and_the_given_password(
    tmp_path: Path, key_source: KeySourcePeer, people: dict[str, ClientKey]
) -> None:
    options = ["-e", "USER_PASSWORD=correct horse battery staple", "-e", "PAIRPOD_NAME=team-7"]
    container = PairContainer(
        tmp_path,
        pair_image(),
        key_source.url,
        "alice",
        key=people["alice"],
        options=options,
        port=free_port(),  # a fixed port, as a team's notes would have
        before="userdel --remove pair",  # pairpod makes the user when missing
    )
    try:
        said = container.start().announced
        assert said is not None and said.password == "correct horse battery staple"
        made = subprocess.run(
            ["docker", "exec", container.name, "sh", "-c", "id -un pair && cat /etc/sudoers.d/pair"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert made.stdout == "pair\npair ALL=(ALL:ALL) ALL\n", made
        subprocess.run(["docker", "restart", container.name], check=True, capture_output=True, timeout=60)
        # The restarted container prints its commands again (docker logs keeps both runs).
        wait_until(lambda: container.stdout().count("read-write:") == 2, message="the second announcement")
        commands = [line for line in container.stdout().splitlines() if "ssh -p" in line]
        assert len(commands) == 4 and commands[:2] == commands[2:]
    finally:
        container.remove()


def test_a_password_of_several_lines_is_refused_before_it_reaches_chpasswd(
    tmp_path: Path, key_source: KeySourcePeer, people: dict[str, ClientKey]
) -> None:
    # chpasswd reads user:password lines: the second line would set root's password.
    options = ["-e", "USER_PASSWORD=secret\nroot:owned-by-a-newline"]
    container = PairContainer(
        tmp_path, pair_image(), key_source.url, "alice", key=people["alice"], options=options
    )
    try:
        subprocess.run(container.argv, check=True, capture_output=True, timeout=60)
        assert container.wait() == 2
        logs = subprocess.run(["docker", "logs", container.name], capture_output=True, text=True, timeout=30)
        assert "USER_PASSWORD must be one line of printable characters" in logs.stderr
        assert "read-write:" not in logs.stdout
        shadow = subprocess.run(
            ["docker", "cp", f"{container.name}:/etc/shadow", "-"], capture_output=True, timeout=30
        )
        assert shadow.returncode == 0 and b"root:" in shadow.stdout
        assert b"root:$" not in shadow.stdout  # root's password was never set
    finally:
        container.remove()
