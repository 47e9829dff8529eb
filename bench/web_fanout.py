"""Web joiners at scale: fan-out delay to browsers' WebSockets, and the cost to the owner.

Starts ``pairpod serve`` (local backend, ``sharing.open``, ``sharing.web`` on)
and an owner (the real OpenSSH client) sharing a session with a read-only web
link, and joins N WebSocket viewers (aiohttp clients, as the page's socket,
in this process; no browser). The figures:

* owner -> viewer delay: the full-screen writer of bench/fanout.py redraws
  one row per update with its CLOCK_MONOTONIC time in it; each viewer
  subtracts that from the arrival time of the WebSocket message holding it.
  p99 over every update seen by every viewer (goal < 50 ms).
* throughput: the owner's terminal receiving ``cat`` of a large file, alone
  (unshared) and shared with N web viewers reading as fast as they can; the
  ratio of the two (goal >= 0.8x).

Medians of several rounds; unshared and shared rounds alternate.

    python bench/web_fanout.py [--rounds 3] [--viewers 50] [--rate 100] [--megabytes 32]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Peer, Workdir, free_port, machine, ssh_argv, start_pairpod, write_log_payload
from fanout import WRITER, percentile

_WEB_LINK = re.compile(rb"web read-only:\s+(http://\S+)")
_STAMP = re.compile(rb"T(\d{6,})\.")
_WAIT = 30.0
SHARE = ["-tt", "-o", "SetEnv=PAIRPOD_SHARE=1 PAIRPOD_SHARE_WEB=ro"]


async def wait_for(predicate: Callable[[], bool], what: str) -> None:
    """Poll an observable condition until it holds."""
    deadline = time.monotonic() + _WAIT
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


class Viewer:
    """One WebSocket viewer: reads everything, timing the writer's stamps after ``since``."""

    def __init__(self, socket: aiohttp.ClientWebSocketResponse) -> None:
        self.socket = socket
        self.received = 0
        self.delays: list[float] = []
        self.since = 1 << 64  # stamps in the first screen are older than the start
        self.timing = False  # only count bytes (throughput rounds)
        self._carry = b""

    async def read(self) -> None:
        async for msg in self.socket:
            if msg.type is not aiohttp.WSMsgType.BINARY:
                continue
            now = time.monotonic_ns()
            self.received += len(msg.data)
            if not self.timing:
                continue
            text = self._carry + msg.data
            self.delays.extend(
                (now - int(m.group(1))) / 1e6 for m in _STAMP.finditer(text) if int(m.group(1)) >= self.since
            )
            self._carry = text[-32:] if _STAMP.search(text[-32:]) is None else b""


class Owner:
    """The owner's ``ssh -tt`` running ``command``, its terminal output in a file."""

    def __init__(self, work: Workdir, port: int, command: str, shared: bool, name: str) -> None:
        self.out = work.path / f"{name}.out"
        with self.out.open("wb") as sink:
            self.proc = subprocess.Popen(
                ssh_argv(work, port, command, extra=SHARE if shared else ["-tt"]),
                stdin=subprocess.PIPE,
                stdout=sink,
                stderr=subprocess.DEVNULL,
            )

    def say(self, line: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line)
        self.proc.stdin.flush()

    async def web_link(self) -> str:
        await wait_for(lambda: _WEB_LINK.search(self.out.read_bytes()) is not None, "the web link")
        match = _WEB_LINK.search(self.out.read_bytes())
        assert match is not None
        return match.group(1).decode()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


async def join(
    session: aiohttp.ClientSession, link: str, count: int
) -> tuple[list[Viewer], list[asyncio.Task[None]]]:
    """``count`` viewers on ``link``, each once its first screen arrived."""
    origin = link.split("/s/")[0]
    viewers = [
        Viewer(await session.ws_connect(f"{link}/ws", headers={"Origin": origin}, max_msg_size=0))
        for _ in range(count)
    ]
    tasks = [asyncio.create_task(viewer.read()) for viewer in viewers]
    await wait_for(lambda: all(v.received > 0 for v in viewers), "every viewer's first screen")
    return viewers, tasks


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def latency_round(
    work: Workdir, gateway: Peer, script: Path, args: argparse.Namespace
) -> tuple[list[float], float]:
    """Every delay seen by every viewer (ms), and the share of a core the gateway used."""
    owner = Owner(work, gateway.port, f"exec {sys.executable} {script} {1 / args.rate}", True, "writer")
    try:
        link = await owner.web_link()
        async with aiohttp.ClientSession() as session:
            viewers, tasks = await join(session, link, args.viewers)
            start = time.monotonic_ns()
            for viewer in viewers:
                viewer.since = start
                viewer.timing = True
            cpu, wall = cpu_seconds(gateway.proc.pid), time.perf_counter()
            owner.say(b"go\n")
            await asyncio.sleep(args.seconds)  # the writer draws at its rate meanwhile
            owner.say(b"stop\n")
            busy = (cpu_seconds(gateway.proc.pid) - cpu) / (time.perf_counter() - wall)
            await wait_for(lambda: owner.proc.poll() is not None, "the writer's end")
            for viewer in viewers:
                await viewer.socket.close()
            await asyncio.gather(*tasks, return_exceptions=True)
        return [delay for viewer in viewers for delay in viewer.delays], busy
    finally:
        owner.stop()


async def throughput_round(
    work: Workdir, gateway: Peer, payload: Path, size: int, viewers: int
) -> tuple[float, float, float]:
    """MB/s the owner's terminal receives ``cat payload`` (``size`` bytes) at, with ``viewers``
    on the web; and the CPU seconds the gateway and the viewers (this process) used meanwhile."""
    owner = Owner(work, gateway.port, f"read go; exec cat {payload}", viewers > 0, "cat")
    try:
        async with aiohttp.ClientSession() as session:
            tasks: list[asyncio.Task[None]] = []
            if viewers:
                _, tasks = await join(session, await owner.web_link(), viewers)
            started = time.perf_counter()
            gateway_cpu, own_cpu = cpu_seconds(gateway.proc.pid), time.process_time()
            owner.say(b"\n")
            await wait_for(lambda: owner.proc.poll() is not None, "the owner's end")
            elapsed = time.perf_counter() - started
            gateway_cpu = cpu_seconds(gateway.proc.pid) - gateway_cpu
            own_cpu = time.process_time() - own_cpu
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        return size / elapsed / 1e6, gateway_cpu, own_cpu
    finally:
        owner.stop()


async def run(args: argparse.Namespace, work: Workdir, gateway: Peer) -> None:
    script = work.path / "writer.py"
    script.write_text(WRITER)
    payload = work.path / "payload.txt"
    write_log_payload(payload, args.megabytes)
    size = payload.stat().st_size
    gateway_busy: list[float] = []
    p50s, p99s, worst, alone, shared, cpu_alone, cpu_shared, cpu_viewers = [], [], [], [], [], [], [], []
    for _ in range(args.rounds):
        delays, busy = await latency_round(work, gateway, script, args)
        gateway_busy.append(busy)
        p50s.append(percentile(delays, 0.5))
        p99s.append(percentile(delays, 0.99))
        worst.append(max(delays))
        rate, cpu, _ = await throughput_round(work, gateway, payload, size, 0)
        alone.append(rate)
        cpu_alone.append(cpu)
        rate, cpu, viewers_cpu = await throughput_round(work, gateway, payload, size, args.viewers)
        shared.append(rate)
        cpu_shared.append(cpu)
        cpu_viewers.append(viewers_cpu)
    p99 = statistics.median(p99s)
    ratio = statistics.median(shared) / statistics.median(alone)
    rows = [
        (
            f"owner -> web viewer delay, {args.viewers} WebSocket viewers, {args.rate:g} updates/s",
            f"p99 {p99:.1f} ms (p50 {statistics.median(p50s):.1f} ms, worst {max(worst):.1f} ms; "
            f"gateway CPU {100 * statistics.median(gateway_busy):.0f} % of a core)",
            "p99 < 50 ms",
            p99 < 50,
        ),
        (
            f"owner's throughput, `cat` of {args.megabytes} MB on the PTY, shared with "
            f"{args.viewers} web viewers / unshared",
            f"{statistics.median(shared):.1f} / {statistics.median(alone):.1f} MB/s = {ratio:.2f}x",
            ">= 0.8x",
            ratio >= 0.8,
        ),
    ]
    lines = [
        f"### Web joiners (median of {args.rounds} rounds)",
        "",
        f"Machine: {machine()}; load average {os.getloadavg()[0]:.1f}",
        "",
        "| measure | figure | goal |",
        "|---|---|---|",
    ]
    lines += [
        f"| {what} | {figure} | {goal} ({'met' if ok else 'NOT met'}) |" for what, figure, goal, ok in rows
    ]
    lines += [
        "",
        f"Gateway CPU for the `cat`: {statistics.median(cpu_shared):.2f} s shared vs "
        f"{statistics.median(cpu_alone):.2f} s alone; the {args.viewers} viewers (this process) "
        f"used {statistics.median(cpu_viewers):.2f} s of the same 2 cores meanwhile.",
    ]
    print("\n" + "\n".join(lines))


def main() -> None:
    """Run the benchmark and print its report."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--viewers", type=int, default=50)
    parser.add_argument("--rate", type=float, default=100.0, help="screen updates per second")
    parser.add_argument("--seconds", type=float, default=5.0, help="of updates per round")
    parser.add_argument("--megabytes", type=int, default=32)
    args = parser.parse_args()
    work = Workdir()
    web_port = free_port()
    gateway = start_pairpod(
        work,
        {
            "sharing": {
                "open": True,
                "max_participants": args.viewers,
                # Every viewer comes from 127.0.0.1, which holds at most 32 web connections
                # unless, as a reverse proxy would be, it is trusted (then only the total caps it).
                "web": {"listen": f"127.0.0.1:{web_port}", "trusted_proxies": ["127.0.0.1/32"]},
            },
            "local": {"shell": ["/bin/sh"]},
        },
    )
    try:
        asyncio.run(run(args, work, gateway))
    finally:
        gateway.stop()
        work.cleanup()


if __name__ == "__main__":
    main()
