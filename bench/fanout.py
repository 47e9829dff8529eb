"""Live sharing: fan-out delay, a late joiner's first screen, and the cost to the owner.

One writer (a real program on a real PTY, through the local backend) is
shared through a Terminal with many viewers. Each participant's channel is a
Unix socket written through an asyncio transport whose flow control drives
the participant, as an SSH channel's does; the far ends are read by a separate
process (standing in for the viewers' ssh clients), which timestamps what
arrives. The figures:

* writer -> viewer delay: the writer stamps each screen update with its
  CLOCK_MONOTONIC time; the reader subtracts it from the arrival time. p99
  over every update seen by every viewer.
* a late joiner's first full screen: from the join call to the last byte of
  the snapshot arriving, while the writer keeps drawing for everyone else.
* throughput: ``cat`` of a large file on the PTY, with the owner alone
  (the channel handler's plain pump, as for an unshared session) and shared
  with viewers (Terminal.run); the ratio of the two.

Medians of several rounds, printed beside the goals. This measures the
sharing layer without SSH; bench/sharing_ssh.py measures the owner's throughput
through the real gateway with ssh viewers.

    python bench/fanout.py [--rounds 5] [--viewers 100] [--megabytes 64]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import selectors
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine, write_log_payload
from pairpod.backends.base import Identity, Process, ProcessSpec, PtySpec, Stream
from pairpod.backends.local import LocalBackend
from pairpod.config import Config, SharingSettings
from pairpod.sharing.terminal import Participant, Sink, Terminal
from pairpod.sharing.tokens import Access

BACKLOG = SharingSettings().viewer_backlog
# The channel handler's write-buffer limits, so flow control behaves as it will.
HIGH_WATER, LOW_WATER = 1 << 20, 1 << 18

# A full-screen program that redraws one row per tick with its clock in it.
WRITER = r"""
import os, sys, time
period = float(sys.argv[1])
cols, rows = os.get_terminal_size(0)
words = b"".join(b"\x1b[3%dmword " % (i % 7 + 1) for i in range((cols - 32) // 5))
def row(y, tick):
    stamp = b" T%020d. " % time.monotonic_ns()  # 24 cells, then 6 + 1 + words
    return (b"\x1b[%d;1H\x1b[1;3%dm%6d\x1b[0;4%dm%s\x1b[m %s\x1b[m\x1b[K"
            % (y + 1, y % 7 + 1, tick % 1000000, y % 7, stamp, words))
import termios
attrs = termios.tcgetattr(0)
attrs[3] &= ~termios.ECHO
termios.tcsetattr(0, termios.TCSANOW, attrs)
os.write(1, b"\x1b[?1049h\x1b[H\x1b[2J")
for y in range(rows - 1):
    os.write(1, row(y, 0))
import select
sys.stdin.readline()  # "go", once everyone has joined
start = time.monotonic()
tick = 0
while True:  # until a line ("stop") comes
    os.write(1, row(tick % (rows - 1), tick) + b"\x1b[%d;1H\x1b[7m tick %d \x1b[m" % (rows, tick))
    tick += 1
    if select.select([0], [], [], max(0.0, start + tick * period - time.monotonic()))[0]:
        break
os.write(1, b"\x1b[?1049l")
"""


# --- the far side: a separate process reading every socket ---------------------------


def consume(mode: str, fds: list[int], late: set[int]) -> None:
    """Read every fd; on "STOP" from stdin, print what was measured as JSON.

    ``mode`` is ``latency`` (find the writer's stamps and time them) or
    ``drain`` (only read). For fds in ``late``, keep when each byte count
    arrived, to time the snapshot given on stdin as ``JOIN fd bytes t0``.
    """
    selector = selectors.DefaultSelector()
    for fd in fds:
        os.set_blocking(fd, False)
        selector.register(fd, selectors.EVENT_READ)
    selector.register(0, selectors.EVENT_READ)
    stamp = re.compile(rb"T(\d{6,})\.")
    carry = {fd: b"" for fd in fds}
    received = dict.fromkeys(fds, 0)
    arrivals: dict[int, list[tuple[int, int]]] = {fd: [] for fd in late}
    delays: list[int] = []
    joins: list[tuple[int, int, int]] = []
    since = 1 << 64  # no stamp counts before START: snapshots hold older ones
    control = b""
    while True:
        for key, _ in selector.select():
            fd = key.fd
            if fd == 0:
                more = os.read(0, 4096)
                if not more:  # our parent is gone
                    return
                control += more
                while b"\n" in control:
                    line, control = control.split(b"\n", 1)
                    word, *args = line.split()
                    if word == b"START":
                        since = int(args[0])
                    elif word == b"JOIN":
                        joins.append((int(args[0]), int(args[1]), int(args[2])))
                    elif word == b"STOP":
                        report(delays, joins, arrivals)
                        return
                continue
            try:
                data = os.read(fd, 1 << 20)
            except BlockingIOError:
                continue
            now = time.monotonic_ns()
            if not data:
                selector.unregister(fd)
                continue
            received[fd] += len(data)
            if fd in late:
                arrivals[fd].append((received[fd], now))
            elif mode == "latency":
                text = carry[fd] + data
                delays.extend(now - int(m.group(1)) for m in stamp.finditer(text) if int(m.group(1)) >= since)
                carry[fd] = text[-32:] if stamp.search(text[-32:]) is None else b""


def report(
    delays: list[int], joins: list[tuple[int, int, int]], arrivals: dict[int, list[tuple[int, int]]]
) -> None:
    first_screens = []
    for fd, size, started in joins:
        done = next((t for count, t in arrivals.get(fd, []) if count >= size), None)
        if done is not None:
            first_screens.append((done - started) / 1e6)
    print(json.dumps({"delays_ms": [d / 1e6 for d in delays], "first_screen_ms": first_screens}))


# --- our side ------------------------------------------------------------------------


class SocketSink(Sink, asyncio.Protocol):
    """One participant's channel: a socket whose flow control drives the participant."""

    def __init__(self) -> None:
        self.transport: asyncio.WriteTransport | None = None
        self.participant: Participant | None = None
        self.can_write = asyncio.Event()
        self.can_write.set()
        self.bytes = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.WriteTransport)
        transport.set_write_buffer_limits(high=HIGH_WATER, low=LOW_WATER)
        self.transport = transport

    def pause_writing(self) -> None:
        self.can_write.clear()
        if self.participant is not None:
            self.participant.pause_writing()

    def resume_writing(self) -> None:
        self.can_write.set()
        if self.participant is not None:
            self.participant.resume_writing()

    def write(self, data: bytes) -> None:
        assert self.transport is not None
        self.bytes += len(data)
        self.transport.write(data)

    def close(self, reason: str) -> None:
        if self.transport is not None:
            self.transport.close()


class Far:
    """The reading process and the sockets to it."""

    def __init__(self, mode: str, count: int, late: int) -> None:
        normal = [socket.socketpair() for _ in range(count)]
        joiners = [socket.socketpair() for _ in range(late)]
        far_normal = [far.fileno() for _, far in normal]
        far_late = [far.fileno() for _, far in joiners]
        self.proc = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--consume",
                mode,
                ",".join(map(str, far_normal + far_late)),
                ",".join(map(str, far_late)),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            pass_fds=far_normal + far_late,
        )
        for _, far in normal + joiners:
            far.close()  # the reading process has them (with the same numbers)
        self._normal = iter(ours for ours, _ in normal)
        self._late = iter(zip((ours for ours, _ in joiners), far_late, strict=True))

    async def sink(self, late: bool = False) -> tuple[SocketSink, int]:
        """A sink on the next socket, and (for a late joiner) the far end's number."""
        if late:
            sock, far_fd = next(self._late)
        else:
            sock, far_fd = next(self._normal), -1
        sink = SocketSink()
        await asyncio.get_running_loop().connect_accepted_socket(lambda: sink, sock)
        return sink, far_fd

    def tell(self, line: str) -> None:
        """A control line for the reading process."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def kill(self) -> None:
        """End the reading process (after a failure)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def results(self) -> dict[str, list[float]]:
        """Stop the reading process and return what it measured."""
        out, _ = self.proc.communicate(b"STOP\n", timeout=120)
        result: dict[str, list[float]] = json.loads(out)
        return result


async def start(environment: object, command: str, cols: int, rows: int) -> Process:
    assert hasattr(environment, "start")
    return await environment.start(
        ProcessSpec(  # type: ignore[no-any-return]
            command=command, pty=PtySpec("xterm-256color", cols, rows), env={"LANG": "C.UTF-8"}
        )
    )


async def latency_round(
    environment: object,
    script: Path,
    args: argparse.Namespace,
) -> tuple[list[float], list[float], float, float]:
    far = Far("latency", args.viewers + 1, args.joiners)
    try:
        return await _latency_round(far, environment, script, args)
    finally:
        far.kill()


async def _latency_round(
    far: Far,
    environment: object,
    script: Path,
    args: argparse.Namespace,
) -> tuple[list[float], list[float], float, float]:
    cols, rows = args.cols, args.rows
    process = await start(environment, f"exec {sys.executable} {script} {1 / args.rate}", cols, rows)
    owner, _ = await far.sink()
    terminal = Terminal(process, owner, owner_name="user:alice", cols=cols, rows=rows, viewer_backlog=BACKLOG)
    owner.participant = terminal.owner
    pump = asyncio.create_task(terminal.run())
    for i in range(args.viewers):
        sink, _ = await far.sink()
        sink.participant = terminal.join(
            sink, name=f"github:viewer{i}", access=Access.READ_ONLY, cols=cols, rows=rows
        )
    far.tell(f"START {time.monotonic_ns()}")
    cpu, wall = time.process_time(), time.perf_counter()
    await terminal.owner.send_input(b"go\n")
    stop_at = wall + args.seconds
    snapshot_sizes = []
    pause = args.seconds / (args.joiners + 1)
    for i in range(args.joiners):
        await asyncio.sleep(pause)  # let the writer draw for a while between joins
        sink, far_fd = await far.sink(late=True)
        started = time.monotonic_ns()
        sink.participant = terminal.join(
            sink, name=f"github:late{i}", access=Access.READ_ONLY, cols=cols, rows=rows
        )
        snapshot_sizes.append(sink.bytes)
        far.tell(f"JOIN {far_fd} {sink.bytes} {started}")
    await asyncio.sleep(max(0.0, stop_at - time.perf_counter()))
    await terminal.owner.send_input(b"stop\n")
    await process.wait()
    await pump
    busy = (time.process_time() - cpu) / (time.perf_counter() - wall)
    result = far.results()
    return (result["delays_ms"], result["first_screen_ms"], statistics.median(snapshot_sizes), busy)


async def plain_pump(process: Process, sink: SocketSink) -> None:
    """What the channel handler does for an unshared session."""
    while data := await process.read(Stream.STDOUT, 1 << 16):
        sink.write(data)
        if not sink.can_write.is_set():
            await sink.can_write.wait()


async def throughput_round(
    environment: object, payload: Path, shared: int, args: argparse.Namespace
) -> float:
    far = Far("drain", shared + 1, 0)
    try:
        return await _throughput_round(far, environment, payload, shared, args)
    finally:
        far.kill()


async def _throughput_round(
    far: Far, environment: object, payload: Path, shared: int, args: argparse.Namespace
) -> float:
    process = await start(environment, f"exec cat {payload}", args.cols, args.rows)
    owner, _ = await far.sink()
    if shared:
        terminal = Terminal(
            process, owner, owner_name="user:alice", cols=args.cols, rows=args.rows, viewer_backlog=BACKLOG
        )
        owner.participant = terminal.owner
        for i in range(shared):
            sink, _ = await far.sink()
            sink.participant = terminal.join(
                sink, name=f"github:viewer{i}", access=Access.READ_ONLY, cols=args.cols, rows=args.rows
            )
        started = time.perf_counter()
        await terminal.run()
    else:
        started = time.perf_counter()
        await plain_pump(process, owner)
    elapsed = time.perf_counter() - started
    await process.wait()
    far.results()
    return owner.bytes / elapsed / 1e6


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def run(args: argparse.Namespace) -> None:
    config = Config()
    identity = Identity(username="bench", conn_id="bench", remote_addr="127.0.0.1", config=config)
    environment = await LocalBackend(config, "bench").open(identity)
    with tempfile.TemporaryDirectory(prefix="pairpod-fanout-") as directory:
        script = Path(directory) / "writer.py"
        script.write_text(WRITER)
        payload = Path(directory) / "payload.txt"
        write_log_payload(payload, args.megabytes)

        p50s, p99s, maxes, firsts, sizes, cpu = [], [], [], [], [], []
        unshared, shared = [], []
        for _ in range(args.rounds):
            delays, first, size, busy = await latency_round(environment, script, args)
            cpu.append(busy)
            p50s.append(percentile(delays, 0.5))
            p99s.append(percentile(delays, 0.99))
            maxes.append(max(delays))
            firsts.extend(first)
            sizes.append(size)
            # Alternate unshared and shared so drift affects both alike.
            unshared.append(await throughput_round(environment, payload, 0, args))
            shared.append(await throughput_round(environment, payload, args.shared, args))
    await environment.close()

    p99 = statistics.median(p99s)
    first = statistics.median(firsts)
    ratio = statistics.median(shared) / statistics.median(unshared)

    def verdict(ok: bool) -> str:
        return "met" if ok else "NOT met"

    print(f"\n### Live sharing fan-out (median of {args.rounds} rounds)\n")
    print(f"Machine: {machine()}; load average {os.getloadavg()[0]:.1f}\n")
    print("| measure | figure | goal |")
    print("|---|---|---|")
    print(
        f"| writer -> viewer delay, {args.viewers} viewers, {args.rate} updates/s "
        f"| p99 {p99:.1f} ms (p50 {statistics.median(p50s):.1f} ms, "
        f"worst {max(maxes):.1f} ms; gateway CPU {100 * statistics.median(cpu):.0f} %) "
        f"| p99 < 50 ms ({verdict(p99 < 50)}) |"
    )
    print(
        f"| late joiner's first full screen, {args.cols}x{args.rows}, "
        f"{statistics.median(sizes) / 1024:.1f} KiB "
        f"| median {first:.1f} ms (worst {max(firsts):.1f} ms, {len(firsts)} joins) "
        f"| < 200 ms ({verdict(first < 200)}) |"
    )
    print(
        f"| throughput shared with {args.shared} viewers / unshared (cat of "
        f"{args.megabytes} MB on the PTY) | {statistics.median(shared):.1f} / "
        f"{statistics.median(unshared):.1f} MB/s = {ratio:.2f}x "
        f"| >= 0.8x ({verdict(ratio >= 0.8)}) |"
    )
    sys.stdout.flush()


def main() -> None:
    """Run the benchmark and print its report."""
    if len(sys.argv) > 1 and sys.argv[1] == "--consume":
        late = {int(fd) for fd in sys.argv[4].split(",") if fd}
        consume(sys.argv[2], [int(fd) for fd in sys.argv[3].split(",")], late)
        return
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--viewers", type=int, default=100)
    parser.add_argument("--rate", type=int, default=100, help="screen updates per second")
    parser.add_argument("--seconds", type=float, default=4.0, help="per latency round")
    parser.add_argument("--joiners", type=int, default=5, help="late joiners per round")
    parser.add_argument("--shared", type=int, default=10, help="viewers for throughput")
    parser.add_argument("--megabytes", type=int, default=64)
    parser.add_argument("--cols", type=int, default=120)
    parser.add_argument("--rows", type=int, default=40)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
