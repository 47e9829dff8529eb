"""pairpod (local backend) vs OpenSSH's sshd: throughput and connection latency.

Starts both servers on loopback, measures each figure on both in the same run,
several rounds, and prints the medians and the ratio pairpod / OpenSSH.

    python bench/throughput.py [--megabytes 500] [--rounds 5]
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
    args = parser.parse_args()
    size = args.megabytes * 1_000_000
    work = Workdir()
    sshd = start_sshd(work)
    pairpod = start_pairpod(work)
    try:
        payload = work.path / "payload"
        with payload.open("wb") as handle:
            handle.truncate(size)  # zeros; no compression is negotiated
        servers = {"pairpod": pairpod.port, "openssh": sshd.port}

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
            figures: dict[str, list[float]] = {"pairpod": [], "openssh": []}
            for _ in range(args.rounds):
                for server, port in servers.items():
                    figures[server].append(measure(port))
            report.add(
                name, statistics.median(figures["pairpod"]), statistics.median(figures["openssh"]), unit, goal
            )
        report.print()
    finally:
        pairpod.stop()
        sshd.stop()
        work.cleanup()


if __name__ == "__main__":
    main()
