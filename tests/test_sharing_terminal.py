"""The shared Terminal, driven by real programs on real PTYs.

Every program here runs under a real pseudo-terminal through the local
backend. Each participant's sink is a "terminal": it keeps the bytes it got
and a screen model fed with them, so tests compare what people would see.
Tests wait for conditions on what the sinks received (woken on every write);
the timeout is only a guard against hanging.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pyte
import pytest

from pairpod.backends.base import ExitStatus, Identity, Process, ProcessSpec, PtySpec, Stream
from pairpod.backends.local import LocalBackend
from pairpod.config import Config, SharingSettings
from pairpod.sharing.screen import ScreenModel, visible_cells
from pairpod.sharing.terminal import (
    KICKED,
    OWNER_LEFT,
    SESSION_ENDED,
    VIEWER_RATE,
    Sink,
    Terminal,
    TerminalEnded,
    strip_terminal_replies,
)
from pairpod.sharing.tokens import Access

BACKLOG = SharingSettings().viewer_backlog
GUARD = 30.0  # seconds; only so that a broken test fails instead of hanging

RO, RW = Access.READ_ONLY, Access.READ_WRITE

# --- programs ------------------------------------------------------------------------

FULLSCREEN = r"""
import os, signal, sys, termios
out = os.fdopen(1, "wb", buffering=0)
label = "start"
def draw(*_):
    cols, rows = os.get_terminal_size(0)
    parts = [b"\x1b[0m\x1b[H\x1b[2J"]
    for y in range(rows - 1):
        parts.append(b"\x1b[%d;1H\x1b[3%dm%3d\x1b[0;1;4%dm %s \xe4\xb8\xad\xe6\x96\x87\x1b[m"
                     % (y + 1, y % 8, y, (y + 3) % 8, label.encode()))
    parts.append(b"\x1b[%d;1H\x1b[7m-- %s -- %dx%d\x1b[m" % (rows, label.encode(), cols, rows))
    parts.append(b"\x1b[3;10H\x1b[32m")  # the cursor mid-screen, a coloured pen
    out.write(b"".join(parts))
signal.signal(signal.SIGWINCH, draw)
attrs = termios.tcgetattr(0)
attrs[3] &= ~termios.ECHO
termios.tcsetattr(0, termios.TCSANOW, attrs)
out.write(b"shell output before the program\r\n\x1b[?1049h\x1b[?1h\x1b=")
draw()
for line in sys.stdin:
    word, _, arg = line.strip().partition(" ")
    if word == "redraw":
        label = arg
        draw()
    elif word == "quit":
        out.write(b"\x1b[m\x1b[?1049l\x1b[?1l\x1b>after the program\r\n")
        break
"""

SIZES = r"""
import os, signal
def report(*_):
    os.write(1, b"SIZE %dx%d\n" % tuple(os.get_terminal_size(0)))
signal.signal(signal.SIGWINCH, report)
report()
while True:
    signal.pause()
"""

RECORDER = r"""
import os, sys, tty
tty.setraw(0)  # discards input typed before: say when we are ready
os.write(1, b"READY\r\n")
total = 0
with open(sys.argv[1], "ab", buffering=0) as record:
    while data := os.read(0, 4096):
        record.write(data)
        total += len(data)
        os.write(1, b"ACK %d\r\n" % total)
"""

GENERATOR = r"""
import os, sys, termios
attrs = termios.tcgetattr(0)
attrs[3] &= ~termios.ECHO
termios.tcsetattr(0, termios.TCSANOW, attrs)
for n, line in enumerate(sys.stdin, 1):
    lines = b"".join(b"%06d %s\n" % (i, b"x" * 90) for i in range(int(line)))
    os.write(1, lines + b"DONE %d\n" % n)
"""


# --- helpers -------------------------------------------------------------------------


class Changes:
    """Wakes waiters whenever any sink receives something."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def poke(self) -> None:
        self._event.set()

    async def until(self, predicate: Callable[[], bool]) -> None:
        async with asyncio.timeout(GUARD):
            while not predicate():
                self._event.clear()
                await self._event.wait()


class TermSink(Sink):
    """A participant's terminal: the bytes it got, and the screen they draw."""

    def __init__(self, changes: Changes, cols: int = 80, rows: int = 24) -> None:
        self.changes = changes
        self.data = bytearray()
        self.notices: list[str] = []
        self.closed: str | None = None
        self.model = ScreenModel(cols, rows, max_pending=1 << 30)

    def write(self, data: bytes) -> None:
        assert self.closed is None, "written after close"
        self.data += data
        self.model.feed(data)
        self.changes.poke()

    def notify(self, text: str) -> None:
        self.notices.append(text)
        self.changes.poke()

    def close(self, reason: str) -> None:
        self.closed = reason
        self.changes.poke()

    def screen(self) -> dict[str, Any]:
        """What this person sees (cells of both buffers, cursor, which buffer)."""
        self.model.catch_up()
        screen = self.model.screen
        return {
            "cells": visible_cells(screen),
            "other": visible_cells(screen, screen.main_buffer if screen.in_alt else screen.alt_buffer),
            "in_alt": screen.in_alt,
            "cursor": (min(screen.cursor.x, screen.columns - 1), screen.cursor.y),
        }

    def rows(self) -> list[str]:
        self.model.catch_up()
        return [
            "".join(c.data for c in row if c is not None).rstrip() for row in visible_cells(self.model.screen)
        ]

    def shows(self, text: str) -> bool:
        return any(text in row for row in self.rows())


class BrokenSink(TermSink):
    """A viewer whose channel fails on write."""

    def write(self, data: bytes) -> None:
        raise ConnectionResetError("channel gone")


class CountingProcess(Process):
    """A real process, with the reads of its output counted."""

    def __init__(self, process: Process) -> None:
        self.inner = process
        self.reads = 0

    async def read(self, stream: Stream, size: int = 65536) -> bytes:
        self.reads += 1
        return await self.inner.read(stream, size)

    async def write(self, data: bytes) -> None:
        await self.inner.write(data)

    async def write_eof(self) -> None:
        await self.inner.write_eof()

    async def close_output(self) -> None:
        await self.inner.close_output()

    async def resize(self, cols: int, rows: int, pixel_width: int = 0, pixel_height: int = 0) -> None:
        await self.inner.resize(cols, rows, pixel_width, pixel_height)

    async def signal(self, name: str) -> None:
        await self.inner.signal(name)

    async def wait(self) -> ExitStatus:
        return await self.inner.wait()

    async def kill(self) -> None:
        await self.inner.kill()


class Session:
    """A Terminal running a real program, with its owner's terminal."""

    def __init__(
        self,
        terminal: Terminal,
        owner: TermSink,
        process: Process,
        task: asyncio.Task[None],
        changes: Changes,
    ) -> None:
        self.terminal = terminal
        self.owner = owner
        self.process = process
        self.task = task
        self.changes = changes

    def join(
        self, name: str, access: Access, cols: int = 80, rows: int = 24, sink: TermSink | None = None
    ) -> tuple[Any, TermSink]:
        sink = sink or TermSink(self.changes, cols, rows)
        return self.terminal.join(sink, name=name, access=access, cols=cols, rows=rows), sink

    async def until(self, predicate: Callable[[], bool]) -> None:
        await self.changes.until(predicate)


MakeSession = Callable[..., Awaitable[Session]]


@pytest.fixture
async def make_session(tmp_path: Path) -> AsyncIterator[MakeSession]:
    config = Config()
    identity = Identity(username="alice", conn_id="sharing-test", remote_addr="127.0.0.1", config=config)
    environment = await LocalBackend(config, "test").open(identity)
    sessions: list[Session] = []
    changes = Changes()

    async def make(
        command: str,
        *,
        program: str | None = None,
        cols: int = 80,
        rows: int = 24,
        backlog: int = BACKLOG,
        notice_seconds: float = 0.0,
        viewer_rate: int = VIEWER_RATE,
        wrap: Callable[[Process], Process] | None = None,
    ) -> Session:
        if program is not None:
            script = tmp_path / f"program{len(sessions)}.py"
            script.write_text(program)
            command = f"exec {sys.executable} {script} {command}"
        process = await environment.start(
            ProcessSpec(command=command, pty=PtySpec("xterm-256color", cols, rows), env={"LANG": "C.UTF-8"})
        )
        if wrap is not None:
            process = wrap(process)
        owner = TermSink(changes, cols, rows)
        terminal = Terminal(
            process,
            owner,
            owner_name="user:alice",
            cols=cols,
            rows=rows,
            viewer_backlog=backlog,
            viewer_rate=viewer_rate,
            notice_seconds=notice_seconds,
        )
        session = Session(terminal, owner, process, asyncio.create_task(terminal.run()), changes)
        sessions.append(session)
        return session

    yield make
    for session in sessions:
        session.terminal.end()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await session.task
    await environment.close()


# --- tests ---------------------------------------------------------------------------


async def test_owner_and_viewers_see_the_same_live_output(make_session: MakeSession) -> None:
    s = await make_session("exec cat")
    bob, bob_term = s.join("github:bob", RO)
    carol, carol_term = s.join("gitlab:carol", RW)
    everyone = (s.owner, bob_term, carol_term)
    await s.terminal.owner.send_input(b"hello from alice\r")  # echoed, then cat's copy
    await s.until(lambda: all(t.rows()[:2] == ["hello from alice"] * 2 for t in everyone))
    await carol.send_input(b"and from carol\r")
    await s.until(
        lambda: all(
            t.rows()[:4] == ["hello from alice", "hello from alice", "and from carol", "and from carol"]
            for t in everyone
        )
    )
    await s.until(lambda: s.owner.screen() == bob_term.screen() == carol_term.screen())
    assert [(p.name, p.access, p.owner) for p in s.terminal.participants()] == [
        ("user:alice", RW, True),
        ("github:bob", RO, False),
        ("gitlab:carol", RW, False),
    ]
    assert s.owner.notices == [
        "pairpod: github:bob joined (read-only); 1 viewer now",
        "pairpod: gitlab:carol joined (read-write); 2 viewers now",
    ]
    bob.leave()
    assert s.owner.notices[-1] == "pairpod: github:bob left; 1 viewer now"
    assert [p.name for p in s.terminal.participants()] == ["user:alice", "gitlab:carol"]


async def test_late_joiner_sees_vim_started_long_before(make_session: MakeSession, tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("".join(f"line {i} of the notes\n" for i in range(1, 8)))
    s = await make_session(
        f"printf 'before vim\\n'; vim -u NONE -i NONE -N -n {text}; echo VIM-DONE; exec cat"
    )
    await s.until(lambda: s.owner.shows("line 7 of the notes") and s.owner.shows("notes.txt"))
    await s.terminal.owner.send_input(b"3GwiXX\x1b")  # move, edit, leave insert mode
    await s.until(lambda: s.owner.shows("line XX3 of the notes"))
    before = s.owner.screen()
    assert before["in_alt"]
    _, bob_term = s.join("github:bob", RO)  # no await since: exactly the same point
    assert bob_term.screen() == before
    # A plain pyte screen fed only what bob got shows the same characters.
    plain = pyte.Screen(80, 24)
    pyte.ByteStream(plain).feed(bytes(bob_term.data))
    assert visible_cells(plain) == before["cells"]
    # Both follow vim from there, and back to the shell when it exits.
    await s.terminal.owner.send_input(b":q!\r")
    await s.until(lambda: s.owner.shows("VIM-DONE") and bob_term.shows("VIM-DONE"))
    await s.until(lambda: s.owner.screen() == bob_term.screen())
    assert not bob_term.screen()["in_alt"]
    assert bob_term.rows()[0] == "before vim"


async def test_read_only_input_never_reaches_the_program(make_session: MakeSession, tmp_path: Path) -> None:
    record = tmp_path / "input.bin"
    s = await make_session(str(record), program=RECORDER)
    bob, bob_term = s.join("github:bob", RO)
    carol, _ = s.join("gitlab:carol", RW)
    await s.until(lambda: b"READY" in s.owner.data)
    await bob.send_input(b"rm -rf / # from bob\r")
    await s.terminal.owner.send_input(b"ALICE")
    await s.until(lambda: b"ACK 5\r\n" in s.owner.data)
    await bob.send_input(b"more from bob")
    # A reply from carol's terminal to some query is not hers to send.
    await carol.send_input(b"\x1b[12;40RCAROL\x1b[?64;1;2c")
    await s.until(lambda: b"ACK 10\r\n" in s.owner.data)
    assert record.read_bytes() == b"ALICECAROL"
    assert bob.ignored_input == len(b"rm -rf / # from bob\r") + len(b"more from bob")
    assert bob_term.notices == ["pairpod: read-only: your keystrokes are not sent"]  # once


async def test_pty_follows_the_smallest_read_write_window(make_session: MakeSession) -> None:
    s = await make_session("", program=SIZES, cols=100, rows=40)
    t = s.terminal
    await s.until(lambda: b"SIZE 100x40" in s.owner.data)
    carol, _ = s.join("gitlab:carol", RW, cols=80, rows=30)
    await t.settle()
    assert t.size == (80, 30)
    await s.until(lambda: b"SIZE 80x30" in s.owner.data)
    assert any("terminal is 80x30" in n for n in s.owner.notices)
    bob, bob_term = s.join("github:bob", RO, cols=40, rows=10)  # read-only: does not count
    bob.resize(30, 8)
    carol.resize(90, 35)
    await t.settle()
    await s.until(lambda: b"SIZE 90x35" in s.owner.data)
    sizes = re.findall(rb"SIZE \d+x\d+", bytes(s.owner.data))
    assert sizes == [b"SIZE 100x40", b"SIZE 80x30", b"SIZE 90x35"]
    # Bob was told once that his window is too small.
    assert [n for n in bob_term.notices if "smaller" in n] == [
        "pairpod: your window (40x10) is smaller than the shared terminal (80x30)"
    ]
    carol.leave()
    await t.settle()
    await s.until(lambda: b"SIZE 100x40\r\n" in s.owner.data.split(b"SIZE 90x35")[-1])
    t.owner.resize(70, 20)
    await t.settle()
    await s.until(lambda: b"SIZE 70x20" in s.owner.data)
    assert t.size == (70, 20)


async def test_a_stalled_viewer_costs_nobody_and_is_redrawn(make_session: MakeSession) -> None:
    s = await make_session("", program=GENERATOR, backlog=4096)
    slow, slow_term = s.join("github:slow", RO)
    _, fast_term = s.join("github:fast", RO)
    slow.pause_writing()  # its channel stopped reading
    received_before = len(slow_term.data)
    await s.terminal.owner.send_input(b"3000\n")  # about 300 kB of output
    # The owner and the other viewer get everything while slow is stalled.
    await s.until(lambda: b"DONE 1\r\n" in s.owner.data and b"DONE 1\r\n" in fast_term.data)
    assert b"002999 " in s.owner.data and b"002999 " in fast_term.data
    assert len(slow_term.data) == received_before
    assert slow.behind and slow.queued == 0 and slow.dropped_bytes > 250_000
    info = {p.name: p for p in s.terminal.participants()}
    assert info["github:slow"].behind and not info["github:fast"].behind
    # Its channel drains: it is redrawn at once, to exactly what the others see.
    slow.resume_writing()
    assert not slow.behind and slow.resyncs == 1
    assert slow_term.screen() == fast_term.screen()
    assert slow_term.shows("DONE 1")
    await s.terminal.owner.send_input(b"2\n")
    await s.until(lambda: b"DONE 2" in slow_term.data and b"DONE 2" in fast_term.data)
    await s.until(lambda: slow_term.screen() == fast_term.screen())


async def test_a_flood_reaches_viewers_as_redraws(make_session: MakeSession) -> None:
    s = await make_session("", program=GENERATOR, viewer_rate=16 * 1024)
    viewer, term = s.join("github:bob", RO)
    await s.terminal.owner.send_input(b"3000\n")  # about 300 kB, far past bob's share
    await s.until(lambda: b"DONE 1\r\n" in s.owner.data)
    assert b"002999 " in s.owner.data  # the owner gets every byte
    # Bob is redrawn to the same screen, from far fewer bytes.
    await s.until(lambda: term.shows("DONE 1") and term.screen() == s.owner.screen())
    assert viewer.resyncs >= 1 and not viewer.behind
    assert len(term.data) < len(s.owner.data) / 3


async def test_a_briefly_paused_viewer_misses_nothing(make_session: MakeSession) -> None:
    s = await make_session("", program=GENERATOR)
    viewer, term = s.join("github:bob", RO)
    viewer.pause_writing()
    await s.terminal.owner.send_input(b"50\n")
    await s.until(lambda: b"DONE 1" in s.owner.data)
    s.terminal.flush()
    assert viewer.queued > 0 and not viewer.behind
    viewer.resume_writing()
    assert viewer.queued == 0
    live = bytes(term.data).split(b"\x1b[?25h")[-1]  # after the snapshot
    assert b"".join(b"%06d %s\r\n" % (i, b"x" * 90) for i in range(50)) in live
    assert viewer.resyncs == 0


async def test_a_paused_owner_pauses_the_program_output(make_session: MakeSession) -> None:
    counted: list[CountingProcess] = []

    def wrap(process: Process) -> Process:
        counted.append(CountingProcess(process))
        return counted[0]

    s = await make_session("exec cat", wrap=wrap)
    process = counted[0]
    owner = s.terminal.owner
    await owner.send_input(b"one\r")
    await s.until(lambda: s.owner.rows()[1] == "one")
    owner.pause_writing()
    reads = process.reads
    await owner.send_input(b"two\r")  # input still flows while output is paused
    # The read already waiting returns "two"; after delivering it the pump
    # must not read again until the owner's channel drains.
    await s.until(lambda: b"two" in s.owner.data)
    assert process.reads == reads
    owner.resume_writing()
    await owner.send_input(b"three\r")
    await s.until(lambda: s.owner.rows()[5] == "three")
    assert process.reads > reads


async def test_kick_one_viewer(make_session: MakeSession) -> None:
    s = await make_session("exec cat")
    bob, bob_term = s.join("github:bob", RO)
    carol, carol_term = s.join("gitlab:carol", RW)
    assert s.terminal.kick(bob.id)
    assert not s.terminal.kick(bob.id)  # already gone
    assert not s.terminal.kick(12345)
    assert bob_term.closed == KICKED
    farewell = bytes(bob_term.data).rsplit(b"\x1b[?25h", 2)[-2:]
    assert farewell[1] == f"pairpod: {KICKED}\r\n".encode()
    assert b"2004l" in farewell[0]  # terminal put back
    assert bob_term.rows()[0] == f"pairpod: {KICKED}"
    assert s.owner.notices[-1] == "pairpod: github:bob was removed; 1 viewer now"
    assert [p.name for p in s.terminal.participants()] == ["user:alice", "gitlab:carol"]
    received = len(bob_term.data)
    await bob.send_input(b"ignored\r")
    await carol.send_input(b"still here\r")
    await s.until(lambda: carol_term.rows()[:2] == ["still here", "still here"])
    assert len(bob_term.data) == received


async def test_owner_leaving_ends_the_session_for_everyone(make_session: MakeSession) -> None:
    s = await make_session("exec cat")
    _, bob_term = s.join("github:bob", RO)
    _, carol_term = s.join("gitlab:carol", RW)
    s.terminal.owner.leave()
    assert bob_term.closed == carol_term.closed == OWNER_LEFT
    assert bytes(bob_term.data).endswith(f"pairpod: {OWNER_LEFT}\r\n".encode())
    assert bob_term.rows()[0] == f"pairpod: {OWNER_LEFT}"
    assert s.terminal.ended and await s.terminal.wait_ended() == OWNER_LEFT
    async with asyncio.timeout(GUARD):
        await s.task  # the pump stops even though cat is still running
    with pytest.raises(TerminalEnded):
        s.join("github:late", RO)
    assert s.owner.closed is None  # the owner's channel is the channel handler's


async def test_program_exit_ends_the_session(make_session: MakeSession) -> None:
    s = await make_session("read line; echo bye")
    _, bob_term = s.join("github:bob", RO)
    await s.terminal.owner.send_input(b"x\r")
    async with asyncio.timeout(GUARD):
        await s.task
    assert bob_term.closed == SESSION_ENDED
    assert bob_term.rows()[:3] == ["x", "bye", f"pairpod: {SESSION_ENDED}"]


async def test_a_broken_viewer_channel_affects_nobody_else(make_session: MakeSession) -> None:
    s = await make_session("exec cat")
    with pytest.raises(ConnectionResetError):
        BrokenSink(s.changes).write(b"")
    broken, _ = s.join("github:broken", RW, cols=60, sink=BrokenSink(s.changes, 60, 24))
    assert broken.left  # its snapshot already failed: it is gone
    assert s.terminal.size == (80, 24)  # and it no longer counts for the size
    _, bob_term = s.join("github:bob", RO)
    await s.terminal.owner.send_input(b"ok\r")
    await s.until(lambda: bob_term.rows()[:2] == ["ok", "ok"])


async def test_join_notice_leaves_a_full_screen_program_intact(make_session: MakeSession) -> None:
    s = await make_session("", program=FULLSCREEN, notice_seconds=0.05)
    await s.until(lambda: s.owner.shows("-- start -- 80x24") and s.owner.screen()["cursor"] == (9, 2))
    before = s.owner.screen()
    assert before["in_alt"] and before["cursor"] == (9, 2)
    pen = s.owner.model.screen.cursor.attrs
    s.join("github:bob", RO)
    # The notice is on the owner's last row; nothing else moved.
    during = s.owner.screen()
    assert s.owner.rows()[23] == "pairpod: github:bob joined (read-only); 1 viewer now"
    assert s.owner.model.screen.buffer[23][0].reverse
    assert during["cells"][:23] == before["cells"][:23]
    assert during["cursor"] == before["cursor"] and during["other"] == before["other"]
    assert s.owner.model.screen.cursor.attrs == pen
    # A few moments later the row is what the program drew there.
    await s.until(lambda: s.owner.screen() == before)
    # And the program keeps drawing normally.
    await s.terminal.owner.send_input(b"redraw again\n")
    await s.until(lambda: s.owner.shows("-- again -- 80x24"))
    await s.terminal.owner.send_input(b"quit\n")
    await s.until(lambda: s.owner.shows("after the program"))
    assert s.owner.rows()[:2] == ["shell output before the program", "after the program"]


async def test_joining_in_the_middle_of_an_escape_sequence(make_session: MakeSession) -> None:
    s = await make_session("exec cat")
    t = s.terminal
    t.publish(b"\x1b[3")  # as if a read ended in the middle of a sequence
    received = len(s.owner.data)
    _, bob_term = s.join("github:bob", RO)
    assert len(s.owner.data) == received  # the notice waits: not inside the sequence
    t.publish(b"1mred\x1b[m")
    t.flush()
    tail = bytes(s.owner.data[received:])
    assert tail.startswith(b"1mred\x1b[m") and b"github:bob joined" in tail
    # Bob's snapshot ended in the same sequence, so he sees red text, not "1m".
    assert bob_term.rows()[0] == "red"
    assert bob_term.model.screen.buffer[0][0].fg == "red"


def test_terminal_replies_are_recognised() -> None:
    assert strip_terminal_replies(b"ls\r") == b"ls\r"
    assert strip_terminal_replies(b"\x1b[24;80R") == b""
    assert strip_terminal_replies(b"a\x1b[?62;22cb\x1b[>1;10;0cc") == b"abc"
    assert strip_terminal_replies(b"\x1b]11;rgb:0000/0000/0000\x07x") == b"x"
    assert strip_terminal_replies(b"\x1bP1+r6b75=1b4f41\x1b\\y") == b"y"
    assert strip_terminal_replies(b"\x1b[?2004;1$y") == b""
    # Keys stay keys.
    for key in (b"\x1b[A", b"\x1bOA", b"\x1b[1;5C", b"\x1b[3~", b"\x1b", b"\x1b[200~x\x1b[201~"):
        assert strip_terminal_replies(key) == key
