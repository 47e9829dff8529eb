"""The Docker backend: login latency, throughput and 100 concurrent connections.

Side by side in one run, several rounds, medians and the ratio pairpod / docker:

- login latency ``ssh gw true`` on a cold start vs ``docker run --rm --network
  none IMAGE true``, and with a warm pool, for the busybox image (the smallest
  the bench can build, where the engine's own start-up dominates least) and
  the Debian one;
- throughput through the gateway vs the ``docker exec`` CLI piping the same
  bytes, with and without a TTY;
- 100 concurrent connections, each with its own container: gateway RSS per
  connection and p99 keystroke echo time.

Images are the locally built test images (nothing is pulled).

    python bench/docker_bench.py [--megabytes 200] [--rounds 5] [--connections 100]
                                 [--skip latency|throughput|connections ...]
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT.parent))

import asyncssh  # noqa: E402
from tests.support.images import busybox_image, debian_image  # noqa: E402

from common import Report, Workdir, machine, rss_kib, ssh_argv, start_pairpod, timed  # noqa: E402


def docker_overrides(image: str, **docker: object) -> dict[str, object]:
    """Config selecting the Docker backend on a local image."""
    return {
        "backend": "docker",
        "log": {"level": "warning"},
        "docker": {"image": image, "pull": "never", **docker},
    }


def alternate(rounds: int, **measures: object) -> dict[str, list[float]]:
    """Run each measure once per round, alternating, so drift affects all alike."""
    figures: dict[str, list[float]] = {name: [] for name in measures}
    for _ in range(rounds):
        for name, measure in measures.items():
            figures[name].append(measure())  # type: ignore[operator]
    return figures


def waiting_pool(instance: str) -> int:
    """How many containers of this gateway's pool wait for a login (running, not handed out)."""
    out = subprocess.run(
        [
            "docker",
            "ps",
            "--filter",
            f"label=pairpod.instance={instance}",
            "--filter",
            "label=pairpod.pool=true",
            "--filter",
            "status=running",
            "--format",
            "{{.Names}}",
        ],
        capture_output=True,
        text=True,
    ).stdout
    # A handed-out container is renamed after its connection; a waiting one is named "-pool-".
    return sum("-pool-" in name for name in out.split())


def wait_pool(instance: str, size: int) -> None:
    """Let a warm pool fill before timing logins from it (and refill between them).

    Only this gateway's own pool counts: other gateways on the same engine
    may keep pools too.
    """
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if waiting_pool(instance) >= size:
            return
        time.sleep(0.05)
    raise RuntimeError("warm pool did not fill")


def latency_section(work: Workdir, image: str, label: str, rounds: int, report: Report) -> None:
    cold = start_pairpod(work, docker_overrides(image), name=f"pairpod-{label}")
    warm_work = Workdir()
    instance = f"bench-{secrets.token_hex(4)}"
    warm = start_pairpod(warm_work, {**docker_overrides(image, warm_pool=3), "instance_id": instance})
    try:
        wait_pool(instance, 3)

        def docker_run() -> float:
            return timed(["docker", "run", "--rm", "--network", "none", image, "true"])

        def cold_login() -> float:
            return timed(ssh_argv(work, cold.port, "true"))

        def warm_login() -> float:
            # Measure only logins the pool served: wait until it is full again.
            wait_pool(instance, 3)
            return timed(ssh_argv(warm_work, warm.port, "true"))

        figures = alternate(rounds, docker=docker_run, cold=cold_login, warm=warm_login)
        reference = statistics.median(figures["docker"])
        report.add(
            f"login `ssh gw true`, cold start, {label} image",
            statistics.median(figures["cold"]),
            reference,
            "s",
            "<= 1.2",
        )
        report.add(
            f"login `ssh gw true`, warm pool, {label} image",
            statistics.median(figures["warm"]),
            reference,
            "s",
            "<= 0.3",
        )
    finally:
        cold.stop()
        warm.stop()
        warm_work.cleanup()


def throughput_section(work: Workdir, image: str, megabytes: int, rounds: int, report: Report) -> None:
    size = megabytes * 1_000_000
    gateway = start_pairpod(work, docker_overrides(image))
    name = f"pairpod-bench-{int(time.time())}"
    subprocess.run(
        ["docker", "run", "-d", "--network", "none", "--name", name, image, "sleep", "100000"],
        check=True,
        capture_output=True,
    )
    payload = work.path / "payload"
    with payload.open("wb") as handle:
        handle.truncate(size)
    # One SSH connection (so one container) for every transfer, each a new
    # channel: like `docker exec`, each transfer is a new exec in a running
    # container, and neither side pays for a login or a container start.
    control = ["-o", f"ControlPath={work.path / 'cm.sock'}"]
    master = subprocess.Popen(
        ssh_argv(work, gateway.port, extra=[*control, "-M", "-N"]), stdin=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 60
    while (
        subprocess.run(
            ssh_argv(work, gateway.port, extra=[*control, "-O", "check"]), capture_output=True
        ).returncode
        != 0
    ):
        if time.monotonic() > deadline:
            raise RuntimeError("ssh control master did not start")
        time.sleep(0.05)
    try:
        download = f"head -c {size} /dev/zero"
        cases = {
            "download, no TTY": (
                lambda: ssh_argv(work, gateway.port, download, extra=control),
                lambda: ["docker", "exec", name, "sh", "-c", download],
                None,
            ),
            "download, TTY": (
                lambda: ssh_argv(work, gateway.port, download, extra=[*control, "-tt"]),
                lambda: ["docker", "exec", "-t", name, "sh", "-c", download],
                None,
            ),
            "upload, no TTY": (
                lambda: ssh_argv(work, gateway.port, "cat > /dev/null", extra=control),
                lambda: ["docker", "exec", "-i", name, "sh", "-c", "cat > /dev/null"],
                payload,
            ),
        }
        for label, (ours, theirs, stdin_file) in cases.items():

            def run_ours(argv=ours, f=stdin_file) -> float:
                return size / 1e6 / timed(argv(), input_file=f)

            def run_theirs(argv=theirs, f=stdin_file) -> float:
                return size / 1e6 / timed(argv(), input_file=f)

            figures = alternate(rounds, ours=run_ours, theirs=run_theirs)
            report.add(
                f"throughput {label} vs `docker exec`",
                statistics.median(figures["ours"]),
                statistics.median(figures["theirs"]),
                "MB/s",
                ">= 1.0",
            )
    finally:
        master.terminate()
        master.wait(10)
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)
        gateway.stop()


async def concurrency_section(work: Workdir, image: str, connections: int) -> list[str]:
    # One user holds every connection here: lift the per-user limits to match.
    limits = {"environments_per_user": connections, "environment_rate": connections}
    gateway = start_pairpod(work, {**docker_overrides(image), "limits": limits})
    lines = []
    try:
        await asyncio.sleep(0.5)  # let the process settle before the baseline reading
        baseline = rss_kib(gateway.proc.pid)

        async def open_one() -> tuple[asyncssh.SSHClientConnection, asyncssh.SSHClientProcess]:
            conn = await asyncssh.connect(
                "127.0.0.1",
                gateway.port,
                username="root",
                client_keys=[str(work.key)],
                known_hosts=None,
                agent_path=None,
                config=None,
                encoding=None,
            )
            process = await conn.create_process(
                "stty raw -echo; echo READY; exec cat", term_type="xterm", encoding=None
            )
            line = b""
            while b"READY" not in line:
                line += await process.stdout.read(64)
            return conn, process

        started = time.perf_counter()
        sessions = []
        for batch in range(0, connections, 25):
            sessions += await asyncio.gather(*(open_one() for _ in range(min(25, connections - batch))))
        opened = time.perf_counter() - started
        await asyncio.sleep(0.5)
        loaded = rss_kib(gateway.proc.pid)
        listing = await asyncio.create_subprocess_exec(
            "docker",
            "ps",
            "-q",
            "--filter",
            "label=pairpod.managed",
            stdout=asyncio.subprocess.PIPE,
        )
        containers = (await listing.communicate())[0].split()

        # Keystroke echo: every connection types, one key at a time, concurrently.
        samples: list[float] = []

        async def type_keys(process: asyncssh.SSHClientProcess) -> None:
            for _ in range(20):
                sent = time.perf_counter()
                process.stdin.write(b"k")
                echoed = await process.stdout.read(1)
                assert echoed == b"k"
                samples.append(time.perf_counter() - sent)
                await asyncio.sleep(0.02)  # typing pace, not synchronisation

        await asyncio.gather(*(type_keys(p) for _, p in sessions))
        samples.sort()
        p50 = samples[len(samples) // 2]
        p99 = samples[int(len(samples) * 0.99) - 1]
        lines.append(
            f"- {connections} connections, each with its own container "
            f"({len(containers)} running), opened in {opened:.1f} s"
        )
        lines.append(
            f"- gateway RSS: {baseline / 1024:.1f} MiB idle, {loaded / 1024:.1f} MiB "
            f"loaded: {(loaded - baseline) / connections:.0f} KiB per connection"
        )
        lines.append(
            f"- keystroke echo over {len(samples)} keystrokes: p50 {p50 * 1000:.1f} ms, "
            f"p99 {p99 * 1000:.1f} ms"
        )
        for conn, _ in sessions:
            conn.close()
        await asyncio.gather(*(conn.wait_closed() for conn, _ in sessions))
    finally:
        gateway.stop()
    return lines


def main() -> None:
    """Run the benchmark and print its report."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--megabytes", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=100)
    parser.add_argument(
        "--skip",
        action="append",
        default=[],
        choices=["latency", "throughput", "connections"],
        help="leave a section out (repeatable)",
    )
    args = parser.parse_args()
    debian = debian_image()
    busybox = busybox_image()
    work = Workdir()
    try:
        report = Report(
            f"Docker backend vs the docker CLI (median of {args.rounds} rounds; "
            f"{args.megabytes} MB per throughput round)"
        )
        if "latency" not in args.skip:
            # The small image first: its `docker run` is fastest, so the gateway's
            # own share of a login shows most there.
            latency_section(work, busybox, "busybox", args.rounds, report)
            latency_section(work, debian, "Debian", args.rounds, report)
        if "throughput" not in args.skip:
            throughput_section(work, debian, args.megabytes, args.rounds, report)
        if report.rows:
            report.print()
        if "connections" not in args.skip and args.connections > 0:
            lines = asyncio.run(concurrency_section(work, busybox, args.connections))
            print(f"\n### {args.connections} concurrent connections (Docker backend)\n")
            print(f"Machine: {machine()}\n")
            print("\n".join(lines))
    finally:
        work.cleanup()


if __name__ == "__main__":
    main()
