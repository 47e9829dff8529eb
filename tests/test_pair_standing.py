"""The standing session: a real shell on a real PTY in an ownerless shared Terminal.

Joiners here are plain sinks (see test_sharing_terminal); the SSH side is
tested in test_pair_cli.
"""

from __future__ import annotations

import asyncio
import os
import pwd

from pairpod.config import Config
from pairpod.pair import ShellUser, Standing
from pairpod.sharing.tokens import Access
from tests.test_sharing_terminal import Changes, TermSink


def _me() -> ShellUser:
    entry = pwd.getpwuid(os.getuid())
    return ShellUser(entry.pw_name, "/bin/sh")


async def test_joiners_share_the_shell_until_it_exits_with_its_status() -> None:
    changes = Changes()
    standing = await Standing.start(Config(), _me(), cols=90, rows=30, env={"MARK": "standing"})
    runner = asyncio.ensure_future(standing.run())
    alice, bob = TermSink(changes, 100, 40), TermSink(changes, 70, 20)
    # No owner's window counts: the read-write joiner alone sizes the PTY.
    writer = standing.terminal.join(alice, name="github:alice", access=Access.READ_WRITE, cols=100, rows=40)
    await standing.terminal.settle()
    await writer.send_input(b"echo one-$MARK; stty size\n")
    await changes.until(lambda: alice.shows("one-standing") and alice.shows("40 100"))
    # A late joiner sees the screen at once (a small read-only one shrinks nobody);
    # the first is told who came.
    viewer = standing.terminal.join(bob, name="github:bob", access=Access.READ_ONLY, cols=70, rows=20)
    assert standing.terminal.size == (100, 40)
    await changes.until(lambda: bob.shows("one-standing"))
    await changes.until(lambda: any("github:bob joined" in n for n in alice.notices))
    await viewer.send_input(b"echo dropped\n")
    await writer.send_input(b"exit 3\n")
    status = await runner
    assert status is not None and status.code == 3
    assert alice.closed == bob.closed == "the shell exited (status 3); the shared session has ended"
    assert b"dropped" not in bytes(alice.data)


async def test_respawn_starts_a_fresh_shell_for_the_same_joiners() -> None:
    changes = Changes()
    standing = await Standing.start(Config(), _me(), respawn=True)
    runner = asyncio.ensure_future(standing.run())
    alice = TermSink(changes)
    writer = standing.terminal.join(alice, name="github:alice", access=Access.READ_WRITE, cols=80, rows=24)
    await writer.send_input(b"exit 4\n")
    await changes.until(lambda: alice.shows("the shell exited (status 4); a fresh one starts"))
    await writer.send_input(b"echo again-$((40+2))\n")
    await changes.until(lambda: alice.shows("again-42"))
    assert alice.closed is None
    standing.stop()
    assert await runner is None
    assert alice.closed == "pairpod was stopped; the shared session has ended"
