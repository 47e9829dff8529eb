"""What running pairpod for a team costs a login: metrics (and the audit log) on vs off.

Starts gateways of its own (local backend) on loopback: two with nothing
configured (their difference is the noise floor), one with the admin
listener scraped once a second as Prometheus would, one with that and the
audit log. Times ``ssh host true`` against each, alternating round by round,
and prints the medians and the ratio to "off".

    python bench/ops_bench.py [--rounds 40]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Report, Workdir, free_port, ssh_argv, start_pairpod, timed


def scrape_every_second(url: str, stop: threading.Event) -> None:
    """What Prometheus does to the gateway meanwhile."""
    while not stop.wait(1.0):
        with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - loopback
            response.read()


def main() -> None:
    """Run the benchmark and print its report."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=40)
    args = parser.parse_args()
    work = Workdir()
    metrics_port, both_port = free_port(), free_port()
    gateways = {
        "off": start_pairpod(work, name="off"),
        # A second identical gateway: how far two gateway processes differ by themselves.
        "off (a second gateway)": start_pairpod(work, name="off2"),
        "metrics": start_pairpod(work, {"admin": {"listen": f"127.0.0.1:{metrics_port}"}}, name="metrics"),
        "metrics+audit": start_pairpod(
            work,
            {
                "admin": {"listen": f"127.0.0.1:{both_port}"},
                "audit": {"file": str(work.path / "audit.jsonl")},
            },
            name="audit",
        ),
    }
    stop = threading.Event()
    scrapers = [
        threading.Thread(
            target=scrape_every_second, daemon=True, args=(f"http://127.0.0.1:{port}/metrics", stop)
        )
        for port in (metrics_port, both_port)
    ]
    try:
        for scraper in scrapers:
            scraper.start()
        figures: dict[str, list[float]] = {name: [] for name in gateways}
        order = list(gateways)
        for round_number in range(args.rounds):
            # Each round starts with the next gateway: none is always first after a pause.
            shift = round_number % len(order)
            for name in order[shift:] + order[:shift]:
                figures[name].append(timed(ssh_argv(work, gateways[name].port, "true")))
        report = Report(f"Login latency, metrics on vs off (ssh host true, median of {args.rounds})")
        off = statistics.median(figures["off"])
        for name in ("off (a second gateway)", "metrics", "metrics+audit"):
            goal = "noise floor" if name.startswith("off") else "<= 1.02"
            report.add(f"login latency, {name} / off", statistics.median(figures[name]), off, "s", goal)
        report.print()
    finally:
        stop.set()
        for peer in gateways.values():
            peer.stop()
        work.cleanup()


if __name__ == "__main__":
    main()
