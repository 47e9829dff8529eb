"""Sharing through the real gateway: the owner's throughput with viewers joined over SSH.

Starts ``pairpod serve`` (local backend, ``sharing.open``) and measures, with
real OpenSSH clients on both sides, how fast the owner's terminal receives a
``cat`` of a large file, alone (unshared) and shared with N read-only viewers
(each an ``ssh -tt`` on the read-only link, so each viewer costs the gateway
its own SSH channel and encryption). Rounds alternate; medians and the ratio
shared / unshared are printed beside the goal (>= 0.8x).

    python bench/sharing_ssh.py [--rounds 5] [--viewers 10] [--megabytes 64]
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Workdir, machine, ssh_argv, start_pairpod, write_log_payload

_LINK = re.compile(rb"ssh -p \d+ (ro-[A-Za-z0-9]+)@")
_WAIT = 30.0


def wait_for(predicate: Callable[[], bool], what: str) -> None:
    """Poll an observable condition (files other processes write) until it holds."""
    deadline = time.monotonic() + _WAIT
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.02)


def one_round(work: Workdir, port: int, payload: Path, viewers: int) -> tuple[float, float]:
    """MB/s the owner's terminal receives ``cat payload`` at, with ``viewers`` joined,
    and the MB the median viewer received meanwhile."""
    out = work.path / "owner.out"
    extra = ["-tt", "-o", "SetEnv=PAIRPOD_SHARE=1"] if viewers else ["-tt"]
    # The program waits for a line, so everyone can join first.
    with out.open("wb") as sink:
        owner = subprocess.Popen(
            ssh_argv(work, port, f"read go; exec cat {payload}", extra=extra),
            stdin=subprocess.PIPE,
            stdout=sink,
            stderr=subprocess.DEVNULL,
        )
    joined: list[subprocess.Popen[bytes]] = []
    try:
        if viewers:
            wait_for(lambda: _LINK.search(out.read_bytes()) is not None, "the share links")
            match = _LINK.search(out.read_bytes())
            assert match is not None
            link = match.group(1).decode()
            for i in range(viewers):
                argv = [
                    link + "@127.0.0.1" if a == "root@127.0.0.1" else a
                    for a in ssh_argv(work, port, extra=["-tt"])
                ]
                with (work.path / f"viewer{i}.out").open("wb") as sink:
                    joined.append(
                        subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=sink, stderr=subprocess.DEVNULL)
                    )
            # A viewer has joined when its first screen has arrived.
            wait_for(
                lambda: all((work.path / f"viewer{i}.out").stat().st_size > 0 for i in range(viewers)),
                "every viewer's first screen",
            )
        assert owner.stdin is not None
        started = time.perf_counter()
        owner.stdin.write(b"\n")
        owner.stdin.flush()
        owner.wait(timeout=600)
        elapsed = time.perf_counter() - started
        received = [(work.path / f"viewer{i}.out").stat().st_size / 1e6 for i in range(viewers)]
        return payload.stat().st_size / elapsed / 1e6, statistics.median(received or [0.0])
    finally:
        for process in (owner, *joined):
            if process.poll() is None:
                process.kill()
            process.wait()


def main() -> None:
    """Run the benchmark and print its report."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--viewers", type=int, default=10)
    parser.add_argument("--megabytes", type=int, default=64)
    args = parser.parse_args()
    work = Workdir()
    gateway = start_pairpod(work, {"sharing": {"open": True}})
    try:
        payload = work.path / "payload.txt"
        write_log_payload(payload, args.megabytes)
        alone: list[float] = []
        shared: list[float] = []
        seen: list[float] = []
        for _ in range(args.rounds):
            alone.append(one_round(work, gateway.port, payload, 0)[0])
            rate, viewer_mb = one_round(work, gateway.port, payload, args.viewers)
            shared.append(rate)
            seen.append(viewer_mb)
        ratio = statistics.median(shared) / statistics.median(alone)
        print(f"\n### Sharing through the gateway (median of {args.rounds} rounds)\n")
        print(f"Machine: {machine()}\n")
        print("| measure | figure | goal |\n|---|---|---|")
        verdict = "met" if ratio >= 0.8 else "NOT met"
        print(
            f"| owner's throughput, `cat` of {args.megabytes} MB on the PTY, shared with "
            f"{args.viewers} ssh viewers / unshared | {statistics.median(shared):.1f} / "
            f"{statistics.median(alone):.1f} MB/s = {ratio:.2f}x | >= 0.8x ({verdict}) |"
        )
        print(
            f"\nEach viewer received {statistics.median(seen):.1f} MB (median) of the "
            f"{args.megabytes} MB: past its share a viewer is redrawn from snapshots."
        )
    finally:
        gateway.stop()
        work.cleanup()


if __name__ == "__main__":
    main()
