"""``pairpod pair`` as a process on this machine, joined by real OpenSSH clients in tmux.

GitHub (alice) and GitLab (bob) keys come from a loopback key source;
carol has a key nobody named. One standing session tells a whole story
per test: each process start costs seconds, as it would for a team.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.gateway import ClientKey, wait_until, write_config
from tests.support.http_peers import KeySourcePeer
from tests.support.pair import PairProcess, key_source, people, shared_dir
from tests.test_event_loop import DEFAULT_LOOP
from tests.test_sharing_ssh import Terminals, terms


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    directory = shared_dir()
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


__all__ = ["key_source", "people", "terms"]


def _pair(
    workdir: Path,
    key_source: KeySourcePeer,
    key: ClientKey,
    *args: str,
    settings: dict[str, Any] | None = None,
) -> PairProcess:
    return PairProcess(workdir, key_source.url, *args, key=key, settings=settings)


def _work_then_stop(pair: PairProcess, link: str, key: ClientKey, terms: Terminals) -> None:
    """A joiner with ``link`` works in the shell; pairpod stopped, it is told why."""
    joiner = terms.start("joiner", pair.join_argv(link, key))
    joiner.type("echo worked-$((2*3))\n")
    joiner.wait_for("worked-6")
    assert pair.stop() == 0
    joiner.wait_for("pairpod was stopped; the shared session has ended")


def test_refuses_to_start_without_anyone_named() -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "pairpod.cli", "pair", "--listen", "127.0.0.1:0", *args]
        return subprocess.run(argv, capture_output=True, text=True, timeout=30)

    nobody = run()
    assert nobody.returncode == 2
    assert "nobody may join: name GitHub logins" in nobody.stderr
    named_open = run("--open", "--name", "team")
    assert named_open.returncode == 2
    assert "--name cannot be used with --open" in named_open.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="the shell user and its password are set up as root only")
def test_pair_and_pair_via_report_a_bad_shell_user_password_alike(tmp_path: Path) -> None:
    # chpasswd reads lines: a newline in the password is refused before anything runs.
    config = write_config(tmp_path / "pairpod.yaml", {"log": {"level": "warning"}})
    env = {**os.environ, "USER_PASSWORD": "one\ntwo"}
    for where in (["--listen", "127.0.0.1:0"], ["--via", "127.0.0.1:1"]):
        argv = [sys.executable, "-m", "pairpod.cli", "pair", "--config", str(config), *where, "alice"]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=30, env=env)
        assert result.returncode == 2, result.stderr
        assert result.stderr == "pairpod: USER_PASSWORD must be one line of printable characters\n"


def test_a_standing_shell_shared_with_the_people_named(
    workdir: Path, key_source: KeySourcePeer, people: dict[str, ClientKey], terms: Terminals
) -> None:
    pair = _pair(workdir, key_source, people["alice"], "alice", "--gitlab", "bob").start()
    try:
        said = pair.announced
        assert said is not None
        assert said.text.startswith("pairpod: sharing with github:alice, gitlab:bob\n")
        assert said.username == "nobody" and said.password is None  # not root: one's own shell
        # The config's default loop, as serve: uvloop when installed.
        assert f"gateway.event_loop loop={DEFAULT_LOOP}" in pair.log()
        # alice joins read-write and works in the shell.
        alice = terms.start("alice", pair.join_argv(said.rw, people["alice"]), 100, 30)
        alice.type("echo $((6*7))-$PAIRPOD_CONTROL\n")
        alice.wait_for(r"42-/\S+/control\.sock")
        # A key nobody named is refused; so is any username but a link (no logins here).
        carol = pair.ssh("true", user=said.ro, key=people["carol"], options=["-tt"])
        assert carol.returncode == 255
        assert pair.ssh("true", user="alice", key=people["alice"]).returncode == 255
        # bob joins late, read-only: he sees the screen at once, and alice is told.
        bob = terms.start("bob", pair.join_argv(said.ro, people["bob"]), 100, 30)
        bob.wait_for(r"42-/")
        alice.wait_for(r"gitlab:bob joined \(read-only\)")
        bob.type("echo from-bob\n")
        bob.wait_for("read-only: your keystrokes are not sent")
        alice.type("echo after-$((1+1))\n")
        bob.wait_for("after-2")
        assert "from-bob" not in alice.screen()
        # The controls: the participants listed, bob kicked.
        listing = pair.ctl("list")
        assert listing.returncode == 0, listing.stderr
        assert "github:alice  read-write" in listing.stdout and "gitlab:bob  read-only" in listing.stdout
        bob_id = next(line.split()[1] for line in listing.stdout.splitlines() if "gitlab:bob" in line)
        assert pair.ctl("kick", bob_id).returncode == 0
        bob.wait_for("you were removed from the session")
        minted = pair.ctl("mint", "ro")
        assert minted.returncode == 0 and f"ssh -p {pair.port} ro-" in minted.stdout
        # Everyone leaves; the shell and its screen stay for the next joiner.
        alice.close()
        wait_until(lambda: "participant" not in pair.ctl("list").stdout, message="alice gone")
        again = terms.start("again", pair.join_argv(said.rw, people["alice"]), 100, 30)
        again.wait_for("after-2")
        # The shell exits: the joiner is told, pairpod exits with its status.
        again.type("exit 5\n")
        again.wait_for(r"the shell exited \(status 5\); the shared session has ended")
        assert pair.wait() == 5
    finally:
        pair.kill()


def test_a_named_session_keeps_its_commands_and_admits_only_the_named(
    workdir: Path, key_source: KeySourcePeer, people: dict[str, ClientKey], terms: Terminals
) -> None:
    first = _pair(workdir, key_source, people["alice"], "--name", "team-1", "alice").start()
    try:
        said = first.announced
        assert said is not None
        assert first.stop() == 0
    finally:
        first.kill()
    second = _pair(workdir, key_source, people["alice"], "--name", "team-1", "alice").start()
    try:
        again = second.announced
        assert again is not None
        assert (again.ro, again.rw) == (said.ro, said.rw)
        refused = second.ssh("true", user=again.rw, key=people["bob"], options=["-tt"])
        assert refused.returncode == 255
        _work_then_stop(second, again.rw, people["alice"], terms)
    finally:
        second.kill()


def test_a_session_on_asyncios_loop_serves_a_joiner(
    workdir: Path, key_source: KeySourcePeer, people: dict[str, ClientKey], terms: Terminals
) -> None:
    # The rest of the module runs on the default loop; event_loop in the config picks the other.
    pair = _pair(workdir, key_source, people["alice"], "alice", settings={"event_loop": "asyncio"}).start()
    try:
        said = pair.announced
        assert said is not None
        assert "gateway.event_loop loop=asyncio" in pair.log()
        _work_then_stop(pair, said.rw, people["alice"], terms)
    finally:
        pair.kill()


def test_respawn_gives_the_joiners_a_fresh_shell(
    workdir: Path, key_source: KeySourcePeer, people: dict[str, ClientKey], terms: Terminals
) -> None:
    pair = _pair(workdir, key_source, people["alice"], "--respawn", "alice").start()
    try:
        said = pair.announced
        assert said is not None
        alice = terms.start("alice", pair.join_argv(said.rw, people["alice"]), 100, 30)
        alice.type("MARK=old-shell; echo set-$((2*4))\n")
        alice.wait_for("set-8")
        alice.type("exit 4\n")
        # The same connection goes on, into a new shell: nothing of the old one's state.
        alice.wait_for(r"pairpod: the shell exited \(status 4\); a fresh one starts")
        alice.type('echo "mark=[$MARK]"\n')
        alice.wait_for(r"mark=\[\]")
        assert pair.proc is not None and pair.proc.poll() is None
        # A joiner arriving now sees the same screen, and the same link still admits.
        late = terms.start("late", pair.join_argv(said.ro, people["alice"]), 100, 30)
        late.wait_for(r"a fresh one starts[\s\S]*mark=\[\]")
        assert pair.stop() == 0
        alice.wait_for("pairpod was stopped; the shared session has ended")
    finally:
        pair.kill()
