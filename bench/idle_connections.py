"""Many idle connections on the local backend: gateway memory per connection, accept-to-shell latency.

Opens ``--connections`` SSH connections (AsyncSSH clients in this process),
each with an interactive shell on a PTY, and keeps them all open. For each it
times from the TCP connect to the shell's answer to its first command (key
exchange, authentication, the environment, the PTY, the shell's start), while
all those opened before it stay open. Reports the gateway's RSS growth per
connection and the latency percentiles, per event loop asked for.

The gateway's pre-auth and environment limits are for the open internet; this
benchmark raises them for its loopback load (one source address, a thousand
environments). The shell is ``/bin/sh``: the user's login profile is not what
is measured.

    python bench/idle_connections.py [--connections 1000] [--parallel 1] [--loops auto]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

import asyncssh

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import CIPHER, Peer, Workdir, machine, rss_kib, start_pairpod

GOAL_RSS_KIB = 64
GOAL_P99_S = 0.2
MARKER = "READY-42"


async def open_shell(port: int, work: Workdir) -> tuple[float, asyncssh.SSHClientConnection, object]:
    """Connect, start a PTY shell, wait for its answer; the time it took and what to keep open."""
    started = time.perf_counter()
    conn = await asyncssh.connect(
        "127.0.0.1",
        port,
        username="bench",
        client_keys=[str(work.key)],
        known_hosts=None,
        agent_path=None,
        config=None,
        encryption_algs=[CIPHER],
    )
    process = await conn.create_process(term_type="xterm", term_size=(80, 24))
    process.stdin.write("echo READY-$((6*7))\n")
    seen = ""
    while MARKER not in seen:
        chunk = await process.stdout.read(4096)
        if not chunk:
            raise RuntimeError(f"shell ended before answering: {seen!r}")
        seen += chunk
    return time.perf_counter() - started, conn, process


async def measure(peer: Peer, work: Workdir, count: int, parallel: int) -> dict[str, float]:
    """Open ``count`` idle shells on ``peer``; memory and latency figures."""
    pid = peer.proc.pid
    # Warm up (first-use imports, caches), then take the baseline.
    warm = [await open_shell(peer.port, work) for _ in range(3)]
    for _, conn, _ in warm:
        conn.close()
        await conn.wait_closed()
    await asyncio.sleep(1.0)  # let the gateway finish closing the warm-up environments
    before = rss_kib(pid)
    latencies: list[float] = []
    kept: list[tuple[asyncssh.SSHClientConnection, object]] = []
    gate = asyncio.Semaphore(parallel)

    async def one() -> None:
        async with gate:
            elapsed, conn, process = await open_shell(peer.port, work)
        latencies.append(elapsed)
        kept.append((conn, process))

    started = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(count)))
    opened_in = time.perf_counter() - started
    await asyncio.sleep(2.0)  # idle: what stays is what a connection holds
    after = rss_kib(pid)
    for conn, _ in kept:
        conn.close()
    await asyncio.gather(*(conn.wait_closed() for conn, _ in kept), return_exceptions=True)
    latencies.sort()
    return {
        "rss_before_mib": before / 1024,
        "rss_after_mib": after / 1024,
        "rss_per_conn_kib": (after - before) / count,
        "p50": statistics.median(latencies),
        "p99": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
        "max": latencies[-1],
        "opened_in": opened_in,
    }


def main() -> None:
    """Run the benchmark and print its report."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--parallel", type=int, default=1, help="connections being opened at once")
    parser.add_argument("--loops", default="auto", help="comma-separated: auto, asyncio, uvloop")
    args = parser.parse_args()
    work = Workdir()
    limits = {
        "ssh": {
            "max_startups": str(args.connections + 100),
            "per_source_max_startups": None,
            "per_source_rate": None,
        },
        "limits": {
            "environments_per_user": args.connections + 10,
            "environments_total": args.connections + 10,
            "environment_rate": args.connections * 2,
        },
        "local": {"shell": ["/bin/sh"]},
    }
    print(f"\n### {args.connections} idle connections, local backend (PTY shells)\n")
    print(f"Machine: {machine()}\n")
    print(
        "| loop | RSS before | RSS with all open | RSS per connection | p50 | p99 | max | opened in | goal |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    try:
        for loop in args.loops.split(","):
            peer = start_pairpod(work, {**limits, "event_loop": loop}, name=f"idle-{loop}")
            try:
                figures = asyncio.run(measure(peer, work, args.connections, args.parallel))
            finally:
                peer.stop()
            met = figures["rss_per_conn_kib"] <= GOAL_RSS_KIB and figures["p99"] <= GOAL_P99_S
            print(
                f"| {loop} | {figures['rss_before_mib']:.1f} MiB | {figures['rss_after_mib']:.1f} MiB "
                f"| {figures['rss_per_conn_kib']:.1f} KiB | {figures['p50'] * 1000:.0f} ms "
                f"| {figures['p99'] * 1000:.0f} ms | {figures['max'] * 1000:.0f} ms "
                f"| {figures['opened_in']:.1f} s "
                f"| <= {GOAL_RSS_KIB} KiB, p99 <= {GOAL_P99_S * 1000:.0f} ms "
                f"({'met' if met else 'NOT met'}) |",
                flush=True,
            )
    finally:
        work.cleanup()


if __name__ == "__main__":
    main()
