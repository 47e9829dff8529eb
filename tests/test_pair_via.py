"""Host mode end to end: ``pairpod pair --via`` through a real ``pairpod serve`` on loopback.

The host runs as ``nobody`` (the laptop case: its own shell, no password);
joiners are real OpenSSH clients in tmux proving a GitHub identity with keys
a loopback key source serves.
"""

from __future__ import annotations

import contextlib
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

# Seconds a hosted session waits for its host (the production default is 2 minutes): room for
# a gateway restart on a busy machine; and a brief one, for a restart that outlasts it.
GRACE = 12
BRIEF_GRACE = 2


class Site:
    """A gateway that lets alice host, a key source serving bob's key, and people's keys."""

    def __init__(
        self, tmp: Path, key_source: str, grace: int, people: tuple[ClientKey, ClientKey] | None = None
    ) -> None:
        self.tmp = tmp
        self.alice, self.bob = people or (ClientKey.create(tmp / "alice"), ClientKey.create(tmp / "bob"))
        self.port = free_port()
        authorized = tmp / "authorized_keys"
        authorized.write_text(self.alice.public_line + "\n")
        self.config = write_config(
            tmp / "gw.yaml",
            {
                "listen": f"127.0.0.1:{self.port}",
                "host_keys": [str(tmp / "host_key")],
                "auth": {"authorized_keys": str(authorized), "key_sources": {"github": {"url": key_source}}},
                "sharing": {"hosts": ["alice"], "host_grace": f"{grace}s"},
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
def github() -> Iterator[KeySourcePeer]:
    peer = KeySourcePeer()
    with served_in_thread(peer):
        yield peer


@contextlib.contextmanager
def serving(site: Site, github: KeySourcePeer) -> Iterator[Site]:
    github.keys["bob"] = site.bob.public_line + "\n"
    site.start()
    try:
        yield site
    finally:
        site.gateway.kill()
        shutil.rmtree(site.home, ignore_errors=True)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, github: KeySourcePeer) -> Iterator[Site]:
    with serving(Site(tmp_path_factory.mktemp("via"), github.url, GRACE), github) as site:
        yield site


@pytest.fixture
def brief_site(tmp_path: Path, github: KeySourcePeer, site: Site) -> Iterator[Site]:
    """A second gateway, with a brief grace period, for the same people."""
    (tmp_path / "brief").mkdir()
    with serving(Site(tmp_path / "brief", github.url, BRIEF_GRACE, (site.alice, site.bob)), github) as brief:
        yield brief


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


def _assert_refused(site: Site, link: str, key: ClientKey) -> None:
    """A join refused with the one line joiners get (OpenSSH shows banners from LogLevel INFO)."""
    refused = site.gateway.ssh(user=link, key=key, options=["-tt", "-o", "LogLevel=INFO"], timeout=20)
    assert refused.returncode == 255
    assert b"pairpod: invalid or expired session" in refused.stderr, refused.stderr


def _newest_session(site: Site) -> str:
    """The id of alice's newest shared session (``list`` shows the oldest first)."""
    listing = site.gateway.ssh("list", user="alice+ctl", key=site.alice).stdout.decode()
    sessions = re.findall(r"(?m)^session (\w+)", listing)
    assert sessions, listing
    return sessions[-1]


def _mint(site: Site, session: str, access: str) -> tuple[str, str]:
    """``+ctl mint``: the new link's id and its username."""
    minted = site.gateway.ssh("mint", session, access, user="alice+ctl", key=site.alice)
    assert minted.returncode == 0, minted.stderr
    found = re.search(rf"link (\w+): ssh -p \d+ ({access}-\w+)@127\.0\.0\.1", minted.stdout.decode())
    assert found, minted.stdout
    return found.group(1), found.group(2)


def test_links_minted_on_a_hosted_session_survive_a_gateway_restart(
    site: Site, terms: Terminals, hosts: list[Host]
) -> None:
    host = Host(site, "-l", "alice", "--accept-new-host-key", "bob", name="mints")
    hosts.append(host)
    host.links()
    session = _newest_session(site)
    _, kept = _mint(site, session, "rw")
    dropped_id, dropped = _mint(site, session, "ro")
    revoked = site.gateway.ssh("revoke", session, dropped_id, user="alice+ctl", key=site.alice)
    assert revoked.returncode == 0, revoked.stderr

    assert site.gateway.proc is not None
    site.gateway.proc.send_signal(signal.SIGKILL)
    site.gateway.proc.wait(10)
    site.start()
    host.wait_for(r"^pairpod: reconnected to 127\.0\.0\.1:\d+; the same links work again$")
    writer = join(site, terms, "minted", kept)
    writer.type("echo minted-$((3+4))\n")
    writer.wait_for("minted-7")
    _assert_refused(site, dropped, site.bob)
    after = site.gateway.ssh("list", user="alice+ctl", key=site.alice).stdout.decode()
    assert after.count("  link ") == 3, after  # the session's own two and the minted one
    host.proc.send_signal(signal.SIGTERM)
    assert host.proc.wait(10) == 0


def test_a_gateway_restart_past_the_grace_period_gives_new_links(
    brief_site: Site, terms: Terminals, hosts: list[Host]
) -> None:
    site = brief_site
    host = Host(site, "-l", "alice", "--accept-new-host-key", "bob", name="outlasted")
    hosts.append(host)
    ro, rw = host.links()
    writer = join(site, terms, "rw", rw)
    writer.type("echo before-$((2+3))\n")
    writer.wait_for("before-5")
    assert site.gateway.proc is not None
    site.gateway.proc.send_signal(signal.SIGKILL)
    down = time.monotonic()
    site.gateway.proc.wait(10)
    writer.wait_for("PANE-EXIT=255")
    # The outage is what is tested: the gateway stays down past the grace period.
    wait_until(lambda: time.monotonic() - down > BRIEF_GRACE, timeout=BRIEF_GRACE + 5, message="grace over")
    site.start()
    host.wait_for(
        rf"^pairpod: away from 127\.0\.0\.1:\d+ longer than its grace period \({BRIEF_GRACE}s\): "
        r"the links have expired; new ones follow once it is back$"
    )
    wait_until(lambda: host.stdout().count("sharing through") == 2, timeout=30, message="new commands")
    printed = host.stdout().split("sharing through")[-1]
    new = re.findall(r"(?m)^pairpod: read-(?:only|write): +ssh -p \d+ (r[ow]-\w+)@", printed)
    assert len(new) == 2 and not {ro, rw} & set(new), printed
    for old in (ro, rw):
        _assert_refused(site, old, site.bob)
    again = join(site, terms, "rw-new", new[1])
    again.wait_for("before-5")  # the same shell, its screen: only the links are new
    host.proc.send_signal(signal.SIGTERM)
    assert host.proc.wait(10) == 0


def test_a_host_naming_nobody_admits_its_own_login_alone(
    site: Site, terms: Terminals, hosts: list[Host]
) -> None:
    # The README: with nobody named only LOGIN may join (the gateway is not sharing.open).
    host = Host(site, "-l", "alice", "--accept-new-host-key", name="alone")
    hosts.append(host)
    host.wait_for(r"^pairpod: sharing through 127\.0\.0\.1:\d+ with user:alice$")
    ro, rw = host.links()
    for link in (ro, rw):
        _assert_refused(site, link, site.bob)
    alice = terms.start("alice", site.gateway.ssh_argv(user=rw, key=site.alice, options=["-tt"]), 90, 25)
    alice.type("echo alone-$((3*3))\n")
    alice.wait_for("alone-9")
    host.proc.send_signal(signal.SIGTERM)
    assert host.proc.wait(10) == 0
    alice.wait_for("PANE-EXIT=")
