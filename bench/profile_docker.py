"""Where the CPU goes on a bulk transfer into a container, without a TTY.

Runs one large download (``head -c N /dev/zero``) and one large upload
(``cat > /dev/null``) through ``pairpod serve`` into one container, and for
each:

- samples the gateway with py-spy (``pip install py-spy``, the ``bench``
  extra) and writes a flame graph (SVG) and the collapsed stacks beside it;
- counts the CPU seconds every process on the path used (the gateway, the
  ``ssh`` client, dockerd, containerd-shim, the program) per GB moved, from
  /proc, so the figures add up to the whole cost of a GB;
- prints the gateway's profile summarised: the share of its samples in
  encryption, socket system calls, AsyncSSH's packet handling, pairpod's
  own code and the event loop.

The same transfers through the ``docker exec`` CLI are counted alike, as the
reference. ``--backend kubernetes`` runs the gateway's Kubernetes backend on
the API test server instead (whose pods are containers on the same engine),
and counts that server's CPU as well.

    python bench/profile_docker.py [--megabytes 1000] [--out DIR] [--rate 250]
                                   [--backend docker|kubernetes]
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT.parent))

from tests.support.images import debian_image  # noqa: E402

from common import Workdir, machine, ssh_argv, start_pairpod  # noqa: E402
from docker_bench import docker_overrides  # noqa: E402
from kubernetes_vs_docker import KubeApiServer, kubernetes_overrides  # noqa: E402

# Summary buckets, first match wins: (name, test on a frame "function (file:line)").
BUCKETS: tuple[tuple[str, Callable[[str], bool]], ...] = (
    ("encryption (AES-GCM, cryptography)", lambda f: "cryptography" in f or "encrypt" in f or "decrypt" in f),
    (
        "socket send/recv (system calls)",
        lambda f: f.startswith(("send ", "recv ", "_write_ready", "_read_ready")),
    ),
    ("TLS to the API server (asyncio's ssl layer)", lambda f: "sslproto" in f or "ssl.py" in f),
    ("WebSocket framing (aiohttp)", lambda f: "aiohttp/" in f),
    ("pairpod backend (engine stream, demux, output pipe)", lambda f: "pairpod/backends" in f),
    ("pairpod ssh (channel relay, transport tuning)", lambda f: "pairpod/ssh" in f),
    ("AsyncSSH packet and channel handling", lambda f: "asyncssh" in f),
    ("event loop (asyncio)", lambda f: "asyncio" in f),
)


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pids_named(*names: str) -> list[int]:
    """Processes whose command name is one of ``names``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() in names:
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


class CpuMeter:
    """CPU seconds used by the engine's processes and by processes started for a run."""

    ENGINE = ("dockerd", "containerd", "containerd-shim", "containerd-shim-runc-v2")

    def __init__(self, gateway: int | None, api_server: int | None = None) -> None:
        self._fixed = {"gateway": [gateway] if gateway else [], "engine": pids_named(*self.ENGINE)}
        if api_server is not None:
            self._fixed["API test server"] = [api_server]
        self._before = {name: sum(map(cpu_seconds, pids)) for name, pids in self._fixed.items()}

    def done(self, children: float) -> dict[str, float]:
        """CPU seconds per part since this meter started (``children``: the clients and programs)."""
        used = {name: sum(map(cpu_seconds, pids)) - self._before[name] for name, pids in self._fixed.items()}
        used["client and program"] = children
        return used


def children_cpu() -> float:
    """CPU seconds of this process's waited-for children (the ssh / docker clients)."""
    usage = os.times()
    return usage.children_user + usage.children_system


def run_measured(
    argv: Sequence[str], stdin: Path | None, gateway: int | None, api_server: int | None = None
) -> tuple[float, dict[str, float]]:
    """Run a transfer; its wall time and CPU seconds per part."""
    meter = CpuMeter(gateway, api_server)
    before = children_cpu()
    handle = stdin.open("rb") if stdin else None
    started = time.perf_counter()
    try:
        subprocess.run(argv, stdin=handle or subprocess.DEVNULL, stdout=subprocess.DEVNULL, check=True)
    finally:
        if handle:
            handle.close()
    wall = time.perf_counter() - started
    return wall, meter.done(children_cpu() - before)


def profile(pid: int, out: Path, rate: int, fmt: str) -> subprocess.Popen[bytes]:
    """Start py-spy sampling ``pid`` into ``out`` (``raw``: collapsed stacks, or
    ``flamegraph``: SVG); it writes when stopped with SIGINT."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    return subprocess.Popen(
        [
            spy,
            "record",
            "--pid",
            str(pid),
            "--rate",
            str(rate),
            "--format",
            fmt,
            "--output",
            str(out),
            "--nonblocking",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def read_stacks(path: Path) -> list[tuple[list[str], int]]:
    """Collapsed stacks: frames (outermost first) and a sample count per line."""
    stacks = []
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            stacks.append((stack.split(";"), int(count)))
    return stacks


def summarise(stacks: Iterable[tuple[list[str], int]]) -> tuple[dict[str, int], list[tuple[str, int]], int]:
    """Samples per bucket (by the innermost frame that matches one), the top leaf frames, the total."""
    buckets: collections.Counter[str] = collections.Counter()
    leaves: collections.Counter[str] = collections.Counter()
    total = 0
    for frames, count in stacks:
        total += count
        leaves[frames[-1]] += count
        for frame in reversed(frames):
            name = next((name for name, test in BUCKETS if test(frame)), None)
            if name is not None:
                buckets[name] += count
                break
        else:
            buckets["other"] += count
    return dict(buckets), leaves.most_common(12), total


def report_run(label: str, megabytes: int, wall: float, cpu: dict[str, float]) -> None:
    """Print one transfer's rate and CPU seconds per GB by part."""
    gb = megabytes / 1000
    parts = ", ".join(f"{name} {seconds / gb:.2f}" for name, seconds in cpu.items())
    print(f"- {label}: {megabytes / wall:.0f} MB/s; CPU s/GB: {parts}; total {sum(cpu.values()) / gb:.2f}")


def main() -> None:
    """Profile and print the summary."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--megabytes", type=int, default=1000)
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--out", type=Path, default=Path("profile-docker"))
    parser.add_argument(
        "--backend",
        choices=["docker", "kubernetes"],
        default="docker",
        help="kubernetes: the Kubernetes backend on the API test server (counted too)",
    )
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    size = args.megabytes * 1_000_000
    image = debian_image()
    work = Workdir()
    server_work = Workdir()
    server = KubeApiServer(server_work) if args.backend == "kubernetes" else None
    api_server = server.proc.pid if server is not None else None
    overrides = kubernetes_overrides(server, image) if server is not None else docker_overrides(image)
    gateway = start_pairpod(work, overrides)
    name = f"pairpod-profile-{os.getpid()}"
    subprocess.run(
        ["docker", "run", "-d", "--network", "none", "--name", name, image, "sleep", "100000"],
        check=True,
        capture_output=True,
    )
    control = ["-o", f"ControlPath={work.path / 'cm.sock'}"]
    master = subprocess.Popen(
        ssh_argv(work, gateway.port, extra=[*control, "-M", "-N"]), stdin=subprocess.DEVNULL
    )
    try:
        while subprocess.run(
            ssh_argv(work, gateway.port, extra=[*control, "-O", "check"]), capture_output=True
        ).returncode:
            time.sleep(0.05)
        payload = work.path / "payload"
        with payload.open("wb") as handle:
            handle.truncate(size)
        download = f"head -c {size} /dev/zero"
        cases = {
            "download": (download, ["docker", "exec", name, "sh", "-c", download], None),
            "upload": (
                "cat > /dev/null",
                ["docker", "exec", "-i", name, "sh", "-c", "cat > /dev/null"],
                payload,
            ),
        }
        print(f"Machine: {machine()}\n")
        for label, (command, reference, stdin) in cases.items():
            # The client of a shared connection is the master: count its CPU too.
            ours = ssh_argv(work, gateway.port, command, extra=control)
            wall, cpu = run_measured(reference, stdin, None, api_server)
            report_run(f"{label}, `docker exec`", args.megabytes, wall, cpu)
            master_before = cpu_seconds(master.pid)
            wall, cpu = run_measured(ours, stdin, gateway.proc.pid, api_server)
            cpu["client and program"] += cpu_seconds(master.pid) - master_before
            report_run(f"{label}, pairpod ({args.backend} backend)", args.megabytes, wall, cpu)
            raw = args.out / f"{label}.txt"
            svg = args.out / f"{label}.svg"
            for fmt, path in (("raw", raw), ("flamegraph", svg)):
                # py-spy writes one format per recording: one transfer for each.
                spy = profile(gateway.proc.pid, path, args.rate, fmt)
                time.sleep(0.5)  # py-spy attaches
                run_measured(ours, stdin, gateway.proc.pid)
                spy.send_signal(2)
                spy.wait(30)
            buckets, leaves, total = summarise(read_stacks(raw))
            print(f"  gateway samples ({total}):")
            for bucket, count in sorted(buckets.items(), key=lambda item: -item[1]):
                print(f"    {100 * count / total:5.1f}%  {bucket}")
            print("  top frames:")
            for frame, count in leaves:
                print(f"    {100 * count / total:5.1f}%  {frame}")
    finally:
        master.terminate()
        master.wait(10)
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)
        gateway.stop()
        work.cleanup()
        if server is not None:
            server.stop()
        server_work.cleanup()


if __name__ == "__main__":
    main()
