"""Pair mode: keystroke echo latency for a read-write joiner, p50 / p99 over N keys.

Cases, each in ``CASES``: an async context manager that starts its servers
and yields a joined read-write process:

1. ``direct``: a joiner of ``pairpod pair`` (on loopback, ``--open`` so the
   link alone admits: who may join is not what is measured);
2. ``via_gateway``: through a gateway in host mode (``pairpod serve`` and
   ``pairpod pair --via`` on loopback, the joiner on the gateway);
3. ``reference``: OpenSSH sshd + ``tmux attach`` to a tmux session running
   the same program, how people share a shell without tmate.

In every case the joiner is an AsyncSSH client with a PTY, and the shared
terminal runs ``stty raw -echo; exec cat``: a key is echoed by a program, as
in an editor. One key at a time; a key's latency is from its write to its
echo arriving. The cases run side by side and take turns, a batch of keys
each, so that load from elsewhere on the machine falls on all of them alike.
Goals: (1) <= (3); (2) adds <= 2 ms p50 over (1).

    python bench/pair_bench.py [--keys 2000] [--batch 100]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from pathlib import Path

import asyncssh
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import CIPHER, Peer, Workdir, free_port, machine, start_pairpod, start_sshd

#: What the shared terminal runs: keys come back from a program, not the PTY's echo.
PROGRAM = "stty raw -echo; echo READY; exec cat"
_KEY = b"k"
_LINK = re.compile(r"read-write: ssh -p \d+ (rw-\w+)@")
_WAIT = 30.0
_AS_NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]

Joined = asyncssh.SSHClientProcess[bytes]
Case = Callable[[Workdir], AbstractAsyncContextManager[Joined]]


async def _wait_output(process: asyncssh.SSHClientProcess[bytes], marker: bytes) -> None:
    seen = b""
    async with asyncio.timeout(_WAIT):
        while marker not in seen:
            seen = seen[-256:] + await process.stdout.read(4096)


async def echo_latencies(process: asyncssh.SSHClientProcess[bytes], keys: int) -> list[float]:
    """Type ``keys`` keys one at a time; the time each took to come back."""
    samples = []
    for _ in range(keys):
        sent = time.perf_counter()
        process.stdin.write(_KEY)
        async with asyncio.timeout(_WAIT):
            while _KEY not in await process.stdout.read(4096):
                pass
        samples.append(time.perf_counter() - sent)
    return samples


async def _connect(port: int, username: str, key: Path) -> asyncssh.SSHClientConnection:
    return await asyncssh.connect(
        "127.0.0.1",
        port,
        username=username,
        client_keys=[str(key)],
        known_hosts=None,
        agent_path=None,
        config=None,
        encryption_algs=[CIPHER],
    )


def _nobody_home(work: Workdir, name: str) -> tuple[Path, list[str]]:
    """A directory for a ``pairpod pair`` of the bench, and the prefix that runs it as nobody
    when run as root (as root it would make and use the OS user pair: not on a bench machine)."""
    home = work.path / name
    home.mkdir()
    if os.geteuid() != 0:
        return home, []
    work.path.chmod(0o711)
    home.chmod(0o755)
    shutil.chown(home, "nobody")
    return home, _AS_NOBODY


def _read_link(out: Path, what: str) -> str:
    """The read-write link a ``pairpod pair`` printed in ``out``."""
    deadline = time.monotonic() + _WAIT
    while (match := _LINK.search(out.read_text(errors="replace"))) is None:
        if time.monotonic() > deadline:
            raise RuntimeError(f"no join command from {what}:\n{out.read_text(errors='replace')}")
        time.sleep(0.05)
    return match.group(1)


def start_pair(work: Workdir) -> tuple[Peer, str]:
    """``pairpod pair --open`` on a free port (as nobody when run as root); its rw link."""
    home, prefix = _nobody_home(work, "pair")
    port = free_port()
    config = home / "pair.yaml"
    config.write_text(yaml.safe_dump({"host_keys": [str(home / "host_key")], "log": {"level": "warning"}}))
    argv = [*prefix, sys.executable, "-m", "pairpod.cli", "pair", "--open", "--config", str(config)]
    argv += ["--listen", f"127.0.0.1:{port}"]
    out = work.path / "pair.out"
    peer = Peer(argv, port, out)  # stdout and stderr together: the commands are in its log
    return peer, _read_link(out, "pairpod pair")


@asynccontextmanager
async def _joined(port: int, link: str, work: Workdir) -> AsyncIterator[Joined]:
    """A read-write joiner, the shared shell running :data:`PROGRAM`."""
    async with await _connect(port, link, work.key) as conn:
        process = await conn.create_process(term_type="xterm", term_size=(80, 24), encoding=None)
        process.stdin.write(PROGRAM.encode() + b"\n")
        await _wait_output(process, b"READY\n")
        yield process


@asynccontextmanager
async def direct(work: Workdir) -> AsyncIterator[Joined]:
    """(1) A read-write joiner of ``pairpod pair``."""
    peer, link = start_pair(work)
    try:
        async with _joined(peer.port, link, work) as process:
            yield process
    finally:
        peer.stop()


def start_host(work: Workdir, gateway_port: int) -> tuple[subprocess.Popen[bytes], str]:
    """``pairpod pair --via`` the gateway as ``bench`` (as nobody when run as root); its rw link."""
    home, prefix = _nobody_home(work, "host")
    key = home / "id_ed25519"
    shutil.copy(work.key, key)
    if prefix:
        shutil.chown(key, "nobody")
    argv = [*prefix, sys.executable, "-m", "pairpod.cli", "pair", "--via", f"127.0.0.1:{gateway_port}"]
    argv += ["-i", str(key), "-l", "bench", "--accept-new-host-key"]
    out = work.path / "host.out"
    with out.open("wb") as sink:
        env = {**os.environ, "HOME": str(home)}  # its known_hosts
        host = subprocess.Popen(argv, stdout=sink, stderr=subprocess.STDOUT, env=env)
    return host, _read_link(out, "pairpod pair --via")


@asynccontextmanager
async def via_gateway(work: Workdir) -> AsyncIterator[Joined]:
    """(2) A read-write joiner of ``pairpod serve``, the shell on a host in host mode."""
    gateway = start_pairpod(work, {"sharing": {"hosts": ["bench"], "open": True}}, name="gateway")
    try:
        host, link = start_host(work, gateway.port)
        try:
            async with _joined(gateway.port, link, work) as process:
                yield process
        finally:
            host.terminate()
            host.wait(20)
    finally:
        gateway.stop()


@asynccontextmanager
async def reference(work: Workdir) -> AsyncIterator[Joined]:
    """(3) OpenSSH sshd, the joiner attaching to a tmux session on the same machine."""
    sshd = start_sshd(work)
    socket = work.path / "tmux.sock"
    tmux = ["tmux", "-S", str(socket), "-f", "/dev/null"]
    await asyncio.to_thread(
        subprocess.run, [*tmux, "new-session", "-d", "-x", "80", "-y", "24", PROGRAM], check=True
    )
    try:
        async with await _connect(sshd.port, "root", work.key) as conn:
            process = await conn.create_process(
                f"tmux -S {socket} attach", term_type="xterm", term_size=(80, 24), encoding=None
            )
            await _wait_output(process, b"READY")
            yield process
    finally:
        await asyncio.to_thread(subprocess.run, [*tmux, "kill-server"], check=False)
        sshd.stop()


CASES: dict[str, Case] = {"direct": direct, "via_gateway": via_gateway, "reference": reference}


def percentile(samples: list[float], share: float) -> float:
    """The ``share`` percentile (0..1) of ``samples``."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * share))]


async def measure(keys: int, batch: int) -> dict[str, list[float]]:
    """Start every case, then let them type ``batch`` keys in turn until each typed ``keys``."""
    results: dict[str, list[float]] = {name: [] for name in CASES}
    works = [Workdir() for _ in CASES]
    try:
        async with AsyncExitStack() as stack:
            joined = {
                name: await stack.enter_async_context(case(work))
                for (name, case), work in zip(CASES.items(), works, strict=True)
            }
            while len(results["reference"]) < keys:
                count = min(batch, keys - len(results["reference"]))
                for name, process in joined.items():
                    results[name] += await echo_latencies(process, count)
    finally:
        for work in works:
            work.cleanup()
    return results


def main() -> None:
    """Run every case and print the figures and ratios."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--keys", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=100)
    args = parser.parse_args()
    results = asyncio.run(measure(args.keys, args.batch))
    print(f"\n### Pair mode: keystroke echo, {args.keys} keys (`python bench/pair_bench.py`)\n")
    print(f"Machine: {machine()}\n")
    print("| case | p50 | p99 |\n|---|---|---|")
    for name, samples in results.items():
        p50, p99 = percentile(samples, 0.5) * 1000, percentile(samples, 0.99) * 1000
        print(f"| {name} | {p50:.2f} ms | {p99:.2f} ms |")
    base = results["reference"]
    for name, samples in results.items():
        if name == "reference":
            continue
        p50 = percentile(samples, 0.5) / percentile(base, 0.5)
        p99 = percentile(samples, 0.99) / percentile(base, 0.99)
        print(f"\n{name} / reference: p50 {p50:.2f}x, p99 {p99:.2f}x")
    if "via_gateway" in results:
        added = percentile(results["via_gateway"], 0.5) - percentile(results["direct"], 0.5)
        print(f"via_gateway adds {added * 1000:.2f} ms p50 over direct (goal <= 2 ms)")


if __name__ == "__main__":
    main()
