"""pairpod (local backend) vs OpenSSH's sshd: throughput and connection latency.

Starts the servers on loopback, measures each figure on all of them in the
same run, several rounds alternating, and prints the medians and the ratio
pairpod / OpenSSH. pairpod runs once per event loop asked for (``--loops
asyncio,uvloop`` compares the two; the report then also gives uvloop / asyncio).
``--each-round`` prints every round's ratios too (the goal holds in every run).

    python bench/throughput.py [--megabytes 500] [--rounds 5] [--loops auto]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Report, Workdir, ssh_argv, start_pairpod, start_sshd, timed


def main() -> None:
    """Run the benchmark and print its report."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--megabytes", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--loops", default="auto", help="comma-separated: auto, asyncio, uvloop")
    parser.add_argument("--each-round", action="store_true", help="print every round's ratios")
    args = parser.parse_args()
    size = args.megabytes * 1_000_000
    work = Workdir()
    sshd = start_sshd(work)
    loops = args.loops.split(",")
    pairpods = {loop: start_pairpod(work, {"event_loop": loop}, name=f"pairpod-{loop}") for loop in loops}
    try:
        payload = work.path / "payload"
        with payload.open("wb") as handle:
            handle.truncate(size)  # zeros; no compression is negotiated
        servers = {f"pairpod-{loop}": peer.port for loop, peer in pairpods.items()}
        servers["openssh"] = sshd.port

        def download(port: int) -> float:
            return size / 1e6 / timed(ssh_argv(work, port, f"head -c {size} /dev/zero"))

        def upload(port: int) -> float:
            return size / 1e6 / timed(ssh_argv(work, port, "cat > /dev/null"), input_file=payload)

        def latency(port: int) -> float:
            return timed(ssh_argv(work, port, "true"))

        report = Report(
            f"Local backend vs OpenSSH sshd ({args.megabytes} MB, median of {args.rounds} rounds)"
        )
        for name, measure, unit, goal in (
            ("download throughput", download, "MB/s", ">= 1.0"),
            ("upload throughput", upload, "MB/s", ">= 1.0"),
            ("connection latency (ssh host true)", latency, "s", "<= 0.5"),
        ):
            # Alternate the servers round by round so drift affects both alike.
            figures: dict[str, list[float]] = {server: [] for server in servers}
            for _ in range(args.rounds):
                for server, port in servers.items():
                    figures[server].append(measure(port))
            openssh = figures["openssh"]
            for loop in loops:
                ours = figures[f"pairpod-{loop}"]
                label = name if len(loops) == 1 else f"{name}, {loop}"
                report.add(label, statistics.median(ours), statistics.median(openssh), unit, goal)
                if args.each_round:
                    rounds = " ".join(f"{a / b:.2f}" for a, b in zip(ours, openssh, strict=True))
                    print(f"{label}: ratio per round {rounds}", flush=True)
            if {"asyncio", "uvloop"} <= set(loops):
                report.add(
                    f"{name}: uvloop (pairpod) vs asyncio (reference)",
                    statistics.median(figures["pairpod-uvloop"]),
                    statistics.median(figures["pairpod-asyncio"]),
                    unit,
                    "",
                )
        report.print()
    finally:
        for peer in pairpods.values():
            peer.stop()
        sshd.stop()
        work.cleanup()


if __name__ == "__main__":
    main()
