"""Live terminal sharing end to end: several real OpenSSH clients in real terminals."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import MakeGateway
from tests.support.gateway import ClientKey, GatewayThread, Tmux, wait_until
from tests.support.http_peers import KeySourcePeer, served_in_thread

SHARE = ["-tt", "-o", "SetEnv=PAIRPOD_SHARE=1"]


class Terminals:
    """tmux terminals of one test, each with its own server; all closed at the end."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.open: list[Tmux] = []

    def start(self, name: str, argv: list[str], width: int = 100, height: int = 30) -> Tmux:
        directory = self.tmp / f"tmux-{name}"
        directory.mkdir()
        term = Tmux(name, directory).start(argv, width, height)
        self.open.append(term)
        return term

    def close(self) -> None:
        for term in self.open:
            term.close()


@pytest.fixture
def terms(tmp_path: Path) -> Iterator[Terminals]:
    terminals = Terminals(tmp_path)
    yield terminals
    terminals.close()


def links(owner: Tmux) -> tuple[str, str]:
    """The read-only and read-write join usernames from the owner's banner."""
    ro = owner.wait_for(r"read-only:\s+ssh -p \d+ (ro-\w+)@").group(1)
    rw = owner.wait_for(r"read-write:\s+ssh -p \d+ (rw-\w+)@").group(1)
    return ro, rw


def control(gw: GatewayThread, *command: str) -> str:
    result = gw.ssh(*command, user="alice+ctl")
    assert result.returncode == 0, result.stderr
    return result.stdout.decode()


@pytest.fixture
def open_gw(make_gateway: MakeGateway) -> GatewayThread:
    return make_gateway({"sharing": {"open": True, "public_host": "gw.example.test", "public_port": 2222}})


def test_owner_sees_join_commands_before_the_shell(open_gw: GatewayThread, terms: Terminals) -> None:
    owner = terms.start("owner", open_gw.ssh_argv(options=SHARE))
    owner.wait_for("pairpod: this session is shared")
    ro, rw = links(owner)
    screen = owner.screen()
    assert f"ssh -p 2222 {ro}@gw.example.test" in screen
    assert f"ssh -p 2222 {rw}@gw.example.test" in screen
    assert len(ro) - 3 == 25 and ro != rw.replace("rw-", "ro-")
    owner.type("echo shell-$((20+1))\n")
    owner.wait_for("shell-21")


def test_unshared_sessions_print_no_links(open_gw: GatewayThread, terms: Terminals) -> None:
    owner = terms.start("plain", open_gw.ssh_argv(options=["-tt"]))
    owner.type("echo plain-$((2+2))\n")
    owner.wait_for("plain-4")
    assert "shared" not in owner.screen()
    assert "no shared sessions" in control(open_gw, "list")


def test_read_only_input_never_reaches_the_program(
    open_gw: GatewayThread, terms: Terminals, tmp_path: Path
) -> None:
    record = tmp_path / "typed.txt"
    owner = terms.start("owner", open_gw.ssh_argv(f"cat > {record}", options=SHARE))
    ro, rw = links(owner)
    reader = terms.start("ro", open_gw.ssh_argv(user=ro, options=["-tt"]))
    writer = terms.start("rw", open_gw.ssh_argv(user=rw, options=["-tt"]))
    wait_until(lambda: control(open_gw, "list").count("participant") == 3, message="joined")
    reader.type("from-read-only\r")
    writer.type("from-read-write\r")
    owner.type("from-owner\r")
    # The program's echo reaches every participant, read-only ones included.
    reader.wait_for("from-owner")
    reader.wait_for("from-read-write")
    owner.send("C-d")
    wait_until(lambda: record.exists() and "from-owner" in record.read_text(), message="recorded input")
    text = record.read_text()
    assert "from-read-write" in text
    assert "from-read-only" not in text


def test_late_joiner_sees_the_current_screen_of_a_full_screen_program(
    open_gw: GatewayThread, terms: Terminals, tmp_path: Path
) -> None:
    document = tmp_path / "doc.txt"
    document.write_text("".join(f"line {n:03d} of the document\n" for n in range(1, 400)))
    owner = terms.start("owner", open_gw.ssh_argv(options=SHARE), width=90, height=25)
    ro, _ = links(owner)
    owner.type(f"less {document}\n")
    owner.wait_for("line 001 of the document")
    owner.send("G")  # jump to the end: what is on screen now is far from the start
    owner.wait_for("line 399 of the document")
    late = terms.start("late", open_gw.ssh_argv(user=ro, options=["-tt"]), width=90, height=25)
    late.wait_for("line 399 of the document")

    def rows(term: Tmux) -> list[str]:
        return [row.rstrip() for row in term.screen().splitlines() if "of the document" in row]

    # The owner's screen shows a join notice on one row for a few seconds; after
    # that both screens hold the same full page.
    wait_until(lambda: rows(late) == rows(owner) and len(rows(late)) == 24, message="the same screen on both")
    assert "line 001 of the document" not in late.screen()
    owner.type("q")


def test_size_follows_the_smallest_read_write_client(open_gw: GatewayThread, terms: Terminals) -> None:
    owner = terms.start("owner", open_gw.ssh_argv(options=SHARE), width=100, height=30)
    ro, rw = links(owner)
    terms.start("ro-small", open_gw.ssh_argv(user=ro, options=["-tt"]), width=50, height=12)
    wait_until(lambda: "read-only" in control(open_gw, "list").split("link")[-1], message="ro joined")
    owner.type("clear; stty size; echo SIZE-A\n")
    size = owner.wait_for(r"(\d+) (\d+)\s*\n.*SIZE-A")
    assert int(size.group(2)) == 100  # a small read-only viewer shrinks nobody
    small_rw = terms.start("rw-small", open_gw.ssh_argv(user=rw, options=["-tt"]), width=60, height=15)
    small_rw.wait_for(r"SIZE-A")
    owner.type("clear; stty size; echo SIZE-B\n")
    size = owner.wait_for(r"(\d+) (\d+)\s*\n.*SIZE-B")
    assert int(size.group(2)) == 60
    assert int(size.group(1)) in (14, 15)


def test_owner_controls_list_kick_and_revoke(open_gw: GatewayThread, terms: Terminals) -> None:
    owner = terms.start("owner", open_gw.ssh_argv(options=SHARE))
    ro, rw = links(owner)
    viewer = terms.start("viewer", open_gw.ssh_argv(user=ro, options=["-tt"]))
    owner.wait_for("joined")  # the owner is told
    listing = control(open_gw, "list")
    participant = re.search(r"participant (\d+)\s+guest@127\.0\.0\.1\s+read-only", listing)
    assert participant, listing
    assert "kicked" not in listing
    assert control(open_gw, "kick", participant.group(1)).startswith("participant")
    viewer.wait_for("removed from the session")
    viewer.wait_for("PANE-EXIT=0")
    # Revoking the read-write link stops it admitting anyone.
    link_id = re.search(r"link (\w+)\s+read-write", control(open_gw, "list")).group(1)
    assert "revoked" in control(open_gw, "revoke", link_id)
    assert_join_refused(open_gw, rw)
    # A new link works.
    minted = control(open_gw, "mint", "rw")
    new_rw = re.search(r"(rw-\w+)@gw\.example\.test", minted).group(1)
    joiner = terms.start("new", open_gw.ssh_argv(user=new_rw, options=["-tt"]))
    owner.type("echo after-mint-$((3*3))\n")
    joiner.wait_for("after-mint-9")


def test_control_errors_are_clear(open_gw: GatewayThread) -> None:
    result = open_gw.ssh("kick 7", user="alice+ctl")
    assert result.returncode == 2
    assert b"pairpod: you have no shared session" in result.stderr
    result = open_gw.ssh("frobnicate", user="alice+ctl")
    assert result.returncode == 2 and b"unknown command 'frobnicate'" in result.stderr


def test_owner_leaving_ends_the_joiners(open_gw: GatewayThread, terms: Terminals) -> None:
    owner = terms.start("owner", open_gw.ssh_argv(options=SHARE))
    ro, _ = links(owner)
    viewer = terms.start("viewer", open_gw.ssh_argv(user=ro, options=["-tt"]))
    owner.wait_for("joined")
    owner.type("exit\n")
    viewer.wait_for("the shared session has ended")
    viewer.wait_for("PANE-EXIT=0")
    assert_join_refused(open_gw, ro)


def assert_join_refused(gw: GatewayThread, link: str) -> None:
    """A dead link fails authentication like a refused key, with one line (a banner)."""
    # LogLevel=INFO: OpenSSH shows auth banners only from that level on.
    result = gw.ssh(user=link, options=["-tt", "-o", "LogLevel=INFO"], input=b"")
    assert result.returncode == 255
    assert b"pairpod: invalid or expired session" in result.stderr
    assert b"Permission denied" in result.stderr


def test_unknown_link_gets_one_line(open_gw: GatewayThread) -> None:
    assert_join_refused(open_gw, "ro-" + "a" * 25)


def test_restricted_session_admits_only_named_people(
    make_gateway: MakeGateway, terms: Terminals, tmp_path: Path
) -> None:
    bob = ClientKey.create(tmp_path / "bob")
    mallory = ClientKey.create(tmp_path / "mallory")
    gw = make_gateway({"auth": {"users": {"bob": {"keys": [bob.public_line]}}}})
    owner = terms.start(
        "owner", gw.ssh_argv(options=["-tt", "-o", "SetEnv=PAIRPOD_SHARE=1 PAIRPOD_SHARE_WITH=user:bob"])
    )
    ro, _ = links(owner)
    refused = gw.ssh(user=ro, key=mallory, options=["-tt"], input=b"")
    assert refused.returncode == 255
    assert b"Permission denied" in refused.stderr
    viewer = terms.start("bob", gw.ssh_argv(user=ro, key=bob, options=["-tt"]))
    owner.wait_for(r"user:bob joined \(read-only\)")
    owner.type("echo for-bob-$((5+5))\n")
    viewer.wait_for("for-bob-10")


def test_a_github_user_joins_with_the_keys_github_serves(
    make_gateway: MakeGateway, terms: Terminals, tmp_path: Path
) -> None:
    bob = ClientKey.create(tmp_path / "bob")
    mallory = ClientKey.create(tmp_path / "mallory")
    github = KeySourcePeer()
    github.keys["bob-gh"] = bob.public_line + "\n"
    with served_in_thread(github):
        gw = make_gateway({"auth": {"key_sources": {"github": {"url": github.url}}}})
        owner = terms.start(
            "owner",
            gw.ssh_argv(options=["-tt", "-o", "SetEnv=PAIRPOD_SHARE=1 PAIRPOD_SHARE_WITH=github:bob-gh"]),
        )
        _, rw = links(owner)
        # Only bob's GitHub keys open the link; another key is refused.
        refused = gw.ssh(user=rw, key=mallory, options=["-tt"], input=b"")
        assert refused.returncode == 255
        joiner = terms.start("bob", gw.ssh_argv(user=rw, key=bob, options=["-tt"]))
        owner.wait_for(r"github:bob-gh joined \(read-write\)")
        joiner.type("echo typed-by-bob-$((6+6))\n")
        owner.wait_for("typed-by-bob-12")
        assert github.counts["bob-gh"] >= 1
