"""Host mode end to end: ``pairpod pair --via`` through a real ``pairpod serve`` on loopback.

The host runs as ``nobody`` (the laptop case: its own shell, no password);
joiners are real OpenSSH clients in tmux proving a GitHub identity with keys
a loopback key source serves.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.gateway import ClientKey, GatewayProcess, Tmux, wait_until, write_config
from tests.support.http_peers import KeySourcePeer, served_in_thread
from tests.support.pair import AS_NOBODY, shared_dir
from tests.support.sshd import free_port
from tests.test_event_loop import DEFAULT_LOOP
from tests.test_sharing_ssh import Terminals

GRACE = 6  # seconds a hosted session waits for its host (the production default is 2 minutes)


class Site:
    """A gateway that lets alice host, a key source serving bob's key, and people's keys."""

    def __init__(self, tmp: Path, key_source: str) -> None:
        self.tmp = tmp
        self.alice = ClientKey.create(tmp / "alice")
        self.bob = ClientKey.create(tmp / "bob")
        self.port = free_port()
        authorized = tmp / "authorized_keys"
        authorized.write_text(self.alice.public_line + "\n")
        self.config = write_config(
            tmp / "gw.yaml",
            {
                "listen": f"127.0.0.1:{self.port}",
                "host_keys": [str(tmp / "host_key")],
                "auth": {"authorized_keys": str(authorized), "key_sources": {"github": {"url": key_source}}},
                "sharing": {"hosts": ["alice"], "host_grace": f"{GRACE}s"},
                "ssh": {"per_source_max_startups": None, "per_source_rate": None},
                "log": {"level": "debug"},
                "shutdown_grace": "1s",
            },
        )
        self.gateway = GatewayProcess(self.config, key=self.bob)
        # The host's files: nobody must read its key and write its known_hosts.
        self.home = shared_dir()
        self.host_key = self.home / "id_alice"
        shutil.copy(self.alice.private, self.host_key)
        shutil.chown(self.host_key, "nobody")

    def start(self) -> None:
        self.gateway = GatewayProcess(self.config, key=self.bob).start()

    def known_hosts(self) -> Path:
        return self.home / ".ssh" / "known_hosts"


class Host:
    """``pairpod pair --via`` as nobody; its stdout in a file."""

    def __init__(self, site: Site, *args: str, name: str = "host") -> None:
        self.out = site.tmp / f"{name}.out"
        self.err = site.tmp / f"{name}.err"
        argv = [*AS_NOBODY, sys.executable, "-m", "pairpod.cli", "pair", "--via", f"127.0.0.1:{site.port}"]
        argv += ["-i", str(site.host_key), *args]
        env = {**os.environ, "HOME": str(site.home)}
        with self.out.open("wb") as out, self.err.open("wb") as err:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=err, cwd="/", env=env)

    def stdout(self) -> str:
        return self.out.read_text(errors="replace")

    def log(self) -> str:
        return self.err.read_text(errors="replace")

    def wait_for(self, pattern: str) -> re.Match[str]:
        found = wait_until(
            lambda: re.search(pattern, self.stdout(), re.M) or self.proc.poll() is not None,
            message=f"host output {pattern!r}",
        )
        if not isinstance(found, re.Match):
            found = re.search(pattern, self.stdout(), re.M)  # printed just before exiting
        assert found, f"host exited ({self.proc.returncode}):\n{self.stdout()}\n{self.err.read_text()}"
        return found

    def links(self) -> tuple[str, str]:
        ro = self.wait_for(r"^pairpod: read-only:  ssh -p \d+ (ro-\w+)@127\.0\.0\.1$").group(1)
        rw = self.wait_for(r"^pairpod: read-write: ssh -p \d+ (rw-\w+)@127\.0\.0\.1$").group(1)
        return ro, rw

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    github = KeySourcePeer()
    with served_in_thread(github):
        site = Site(tmp_path_factory.mktemp("via"), github.url)
        github.keys["bob"] = site.bob.public_line + "\n"
        site.start()
        try:
            yield site
        finally:
            site.gateway.kill()
            shutil.rmtree(site.home, ignore_errors=True)


@pytest.fixture
def terms(tmp_path: Path) -> Iterator[Terminals]:
    terminals = Terminals(tmp_path)
    yield terminals
    terminals.close()


@pytest.fixture
def hosts() -> Iterator[list[Host]]:
    started: list[Host] = []
    yield started
    for host in started:
        host.kill()


def test_an_unknown_or_changed_gateway_key_is_refused(site: Site, hosts: list[Host]) -> None:
    site.known_hosts().unlink(missing_ok=True)
    host = Host(site, "-l", "alice", "bob", name="unknown")
    hosts.append(host)
    assert host.proc.wait(30) == 1
    assert re.search(
        r"host key of 127\.0\.0\.1:\d+ is not known \(SHA256:\S+\).*--accept-new-host-key", host.stdout()
    )
    assert not site.known_hosts().exists()
    assert "read-write" not in host.stdout()
    # A different key recorded for the gateway: refused loudly, even when told to accept new keys.
    other = ClientKey.create(site.tmp / "other")
    site.known_hosts().parent.mkdir(exist_ok=True)
    shutil.chown(site.known_hosts().parent, "nobody")
    site.known_hosts().write_text(f"[127.0.0.1]:{site.port} {other.public_line}\n")
    changed = Host(site, "-l", "alice", "--accept-new-host-key", "bob", name="changed")
    hosts.append(changed)
    assert changed.proc.wait(30) == 1
    assert "host key of 127.0.0.1" in changed.stdout() and "has CHANGED" in changed.stdout()
    site.known_hosts().unlink()


def test_a_login_the_gateway_does_not_let_host_is_refused(site: Site, hosts: list[Host]) -> None:
    host = Host(site, "-l", "carol", "--accept-new-host-key", "bob", name="carol")
    hosts.append(host)
    assert host.proc.wait(30) == 1
    assert "pairpod: carol may not host shared sessions on this gateway (sharing.hosts)" in host.stdout()


def join(site: Site, terms: Terminals, name: str, link: str, width: int = 90, height: int = 25) -> Tmux:
    return terms.start(name, site.gateway.ssh_argv(user=link, key=site.bob, options=["-tt"]), width, height)


def test_joiners_reach_only_the_shell_and_keep_their_links_across_a_gateway_restart(
    site: Site, terms: Terminals, hosts: list[Host]
) -> None:
    host = Host(site, "-l", "alice", "--accept-new-host-key", "bob")
    hosts.append(host)
    host.wait_for(r"^pairpod: sharing through 127\.0\.0\.1:\d+ with github:bob, user:alice$")
    ro, rw = host.links()
    # The config's default loop, as serve: uvloop when installed.
    assert f"gateway.event_loop loop={DEFAULT_LOOP}" in host.log()
    writer = join(site, terms, "rw", rw)
    writer.type("echo marker-$((40+2)); whoami\n")
    writer.wait_for(r"marker-42\s+nobody")
    reader = join(site, terms, "ro", ro, width=120, height=40)
    reader.wait_for("marker-42")  # a late joiner sees the screen
    reader.type("echo from-read-only\n")
    reader.wait_for("read-only: your keystrokes are not sent")
    # Nothing but the terminal: no command, no subsystem, no forwarding.
    for options, command, refused in (
        ([], ["id"], "a join link runs no command"),
        (["-s"], ["sftp"], "subsystem request failed"),
        (["-W", "127.0.0.1:22"], [], "stdio forwarding failed"),
        (["-N", "-o", "ExitOnForwardFailure=yes", "-R", "0:127.0.0.1:22"], [], "forwarding failed"),
    ):
        argv = site.gateway.ssh_argv(*command, user=rw, key=site.bob, options=options)
        result = subprocess.run(argv, capture_output=True, timeout=30)
        assert result.returncode != 0, options
        assert refused in result.stderr.decode(), (options, result.stderr)
    assert "from-read-only" not in writer.screen()
    # The host's login controls the session like any of its shared sessions.
    listing = site.gateway.ssh("list", user="alice+ctl", key=site.alice).stdout.decode()
    assert "github:bob" in listing and listing.count("participant") == 2
    viewer = re.search(r"participant (\d+)\s+github:bob\s+read-only", listing)
    assert viewer, listing
    kicked = site.gateway.ssh("kick", viewer.group(1), user="alice+ctl", key=site.alice)
    assert kicked.returncode == 0, kicked.stderr
    reader.wait_for("you were removed from the session by its owner")

    # The gateway dies and comes back: the host reconnects, the same commands work, the screen is there.
    assert site.gateway.proc is not None
    site.gateway.proc.send_signal(signal.SIGKILL)
    site.gateway.proc.wait(10)
    writer.wait_for("PANE-EXIT=255")
    site.start()
    host.wait_for(r"^pairpod: reconnected to 127\.0\.0\.1:\d+; the same links work again$")
    again = join(site, terms, "rw-again", rw)
    again.wait_for(r"marker-42\s+nobody")
    again.type("echo after-$((1+1))\n")
    again.wait_for("after-2")
    join(site, terms, "ro-again", ro).wait_for("after-2")

    # The host dies: joiners are told at once, and ended when it does not come back.
    host.proc.send_signal(signal.SIGKILL)
    killed = time.monotonic()
    again.wait_for("host reconnecting", timeout=5)
    assert time.monotonic() - killed < 2  # a loose liveness bound: told at once, not after a timeout
    again.wait_for(r"did not come back within \d+s; the shared session has ended", timeout=GRACE + 10)
    again.wait_for("PANE-EXIT=")
    assert re.search(
        r"marker-42\s+nobody[\s\S]*after-2", again.screen()
    )  # the farewell is written after, not over
    late = site.gateway.ssh(user=rw, key=site.bob, options=["-tt"])
    assert late.returncode != 0


def test_the_shell_exiting_ends_the_session_for_everyone(
    site: Site, terms: Terminals, hosts: list[Host]
) -> None:
    # On asyncio's loop (the rest of the module runs on the default one).
    host = Host(site, "-l", "alice", "--accept-new-host-key", "--event-loop", "asyncio", "bob", name="exits")
    hosts.append(host)
    _, rw = host.links()
    assert "gateway.event_loop loop=asyncio" in host.log()
    writer = join(site, terms, "rw", rw)
    writer.wait_for(r"(?m)\$ *$")
    writer.type("exit 3\n")
    writer.wait_for(r"pairpod: the shell exited \(status 3\); the shared session has ended")
    writer.wait_for("PANE-EXIT=")
    assert host.proc.wait(10) == 3


def test_a_revoked_link_stays_revoked_after_a_gateway_restart(
    site: Site, terms: Terminals, hosts: list[Host]
) -> None:
    # A hosted session's links are derived from the host's session key, so a restarted
    # gateway makes the same ones again: a revocation must come back with them.
    host = Host(site, "-l", "alice", "--accept-new-host-key", "bob", name="revokes")
    hosts.append(host)
    ro, rw = host.links()
    listing = site.gateway.ssh("list", user="alice+ctl", key=site.alice).stdout.decode()
    block = next(b for b in re.split(r"(?m)^(?=session )", listing) if b.strip() and "participant" not in b)
    session = block.split()[1]
    link = re.search(r"link (\w+)\s+read-write", block)
    assert link, listing
    revoked = site.gateway.ssh("revoke", session, link.group(1), user="alice+ctl", key=site.alice)
    assert revoked.returncode == 0, revoked.stderr
    assert site.gateway.ssh(user=rw, key=site.bob, options=["-tt"]).returncode != 0

    assert site.gateway.proc is not None
    site.gateway.proc.send_signal(signal.SIGKILL)
    site.gateway.proc.wait(10)
    site.start()
    wait_until(
        lambda: "reconnected to" in host.stdout() or host.stdout().count("sharing through") == 2,
        message="the host back",
    )
    late = site.gateway.ssh(user=rw, key=site.bob, options=["-tt"], timeout=20)  # admitted: it stays
    assert late.returncode != 0
    assert "Permission denied" in late.stderr.decode()
    join(site, terms, "ro-after", ro).wait_for(r"(?m)\$ *$")  # the read-only link still works
    # The host printed its commands again: the read-only one alone.
    again = host.stdout().split("sharing through")[-1]
    assert "read-only:" in again and "read-write:" not in again
