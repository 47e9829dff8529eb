"""The cost of session recording: a PTY `cat` of a log file, recording on vs off.

Starts two gateways (local backend) on loopback, one with `recording.dir`
set, and alternates them round by round; prints the medians and the ratio
on / off (the goal: recording costs at most 5% of throughput).

    python bench/recording_bench.py [--megabytes 64] [--rounds 7]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Report, Workdir, ssh_argv, start_pairpod, timed, write_log_payload


def main() -> None:
    """Run the benchmark and print its report."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--megabytes", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    plain, recorded = Workdir(), Workdir()
    recordings = recorded.path / "recordings"
    peers = {
        "off": (plain, start_pairpod(plain)),
        "on": (
            recorded,
            start_pairpod(
                recorded,
                {
                    "recording": {"dir": str(recordings), "max_bytes": 4 * args.megabytes * 1_000_000},
                },
            ),
        ),
    }
    try:
        payload = plain.path / "payload.log"
        write_log_payload(payload, args.megabytes)
        size = payload.stat().st_size

        def throughput(name: str) -> float:
            work, peer = peers[name]
            seconds = timed(ssh_argv(work, peer.port, f"cat {payload}", extra=["-tt"]))
            if name == "on":
                # A recording that dropped events would make a cheap but useless figure.
                casts = list(recordings.glob("*/*.cast"))
                written = sum(path.stat().st_size for path in casts)
                lost = any(b"events lost here" in path.read_bytes() for path in casts)
                if lost or written < size:
                    print(f"warning: recording incomplete ({written} bytes for {size})")
                shutil.rmtree(recordings, ignore_errors=True)  # bounded disk use across rounds
            return size / 1e6 / seconds

        figures: dict[str, list[float]] = {"on": [], "off": []}
        for round_number in range(args.rounds):
            # Alternate, and swap who goes first each round, so drift affects both alike.
            order = ("off", "on") if round_number % 2 == 0 else ("on", "off")
            for name in order:
                figures[name].append(throughput(name))
        report = Report(
            f"Recording on vs off: PTY cat of {args.megabytes} MB "
            f"(median of {args.rounds} rounds; reference = recording off)"
        )
        report.add(
            "PTY output throughput",
            statistics.median(figures["on"]),
            statistics.median(figures["off"]),
            "MB/s",
            ">= 0.95",
        )
        report.print()
    finally:
        for work, peer in peers.values():
            peer.stop()
            work.cleanup()


if __name__ == "__main__":
    main()
