"""The Kubernetes backend next to the Docker backend: login latency and throughput.

Side by side in one run, several rounds alternating between the two, medians
and the ratio kubernetes / docker:

- login latency ``ssh gw true``: a new pod (or container) per login, and with
  a warm pool of 3;
- throughput through one connection (so one pod or container), a new channel
  per transfer: download with and without a TTY, upload without.

The Kubernetes side runs on the test API server (``python -m
testing.kube_apiserver``, its own process so it does not share a GIL with the
gateway), whose pods are Docker containers on the same engine: the difference
is what the Kubernetes path adds (API round trips, the watch, the exec
WebSocket through a second process) over talking to the engine directly. On
a real cluster the kubelet, not a Python relay, moves exec bytes.

Images are the locally built test images (nothing is pulled).

    python bench/kubernetes_vs_docker.py [--megabytes 100] [--rounds 5] [--skip latency|throughput]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT.parent))

from tests.support.images import debian_image  # noqa: E402

from common import Peer, Report, Workdir, ssh_argv, start_pairpod, timed  # noqa: E402

NAMESPACE = "bench"
POOL = 3
# The Debian test image's unprivileged user: pods run as it (as an operator
# would configure for a root image), so no login pays for the non-root probe.
TESTER_UID = 1000


class KubeApiServer:
    """The Kubernetes API test server as a separate process."""

    def __init__(self, work: Workdir) -> None:
        self.kubeconfig = work.path / "kubeconfig"
        self._log = (work.path / "kube-apiserver.log").open("wb")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "testing.kube_apiserver",
                "--kubeconfig",
                str(self.kubeconfig),
                "--namespace",
                NAMESPACE,
            ],
            cwd=ROOT.parent,
            stdout=subprocess.PIPE,
            stderr=self._log,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the test API server did not start; see {self._log.name}")
        self.info = json.loads(line)
        # From a manifest: the test server speaks JSON, not the protobuf `create namespace` sends.
        namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}
        self.kubectl("create", "-f", "-", input=json.dumps(namespace))

    def kubectl(self, *args: str, input: str | None = None) -> str:
        """Run kubectl against the server; its output."""
        return subprocess.run(
            ["kubectl", "--kubeconfig", str(self.kubeconfig), *args],
            input=input,
            capture_output=True,
            text=True,
            check=True,
        ).stdout

    def stop(self) -> None:
        """SIGTERM (the server removes its containers), then wait."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self._log.close()


def kubernetes_overrides(server: KubeApiServer, image: str, **kubernetes: object) -> dict[str, object]:
    """Config selecting the Kubernetes backend on the test server."""
    return {
        "backend": "kubernetes",
        "log": {"level": "warning"},
        "kubernetes": {
            "kubeconfig": str(server.kubeconfig),
            "namespace": NAMESPACE,
            "image": image,
            "pod": {"spec": {"securityContext": {"runAsUser": TESTER_UID, "runAsGroup": TESTER_UID}}},
            **kubernetes,
        },
    }


def docker_overrides(image: str, **docker: object) -> dict[str, object]:
    """Config selecting the Docker backend on a local image."""
    return {
        "backend": "docker",
        "log": {"level": "warning"},
        "docker": {"image": image, "pull": "never", **docker},
    }


def alternate(rounds: int, **measures: Callable[[], float]) -> dict[str, list[float]]:
    """Run each measure once per round, alternating, so drift affects all alike."""
    figures: dict[str, list[float]] = {name: [] for name in measures}
    for _ in range(rounds):
        for name, measure in measures.items():
            figures[name].append(measure())
    return figures


def wait_until(check: Callable[[], bool], what: str, limit: float = 120.0) -> None:
    """Poll an observable condition (between timed runs, never inside one)."""
    deadline = time.monotonic() + limit
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.05)


def docker_pool_ready(size: int) -> bool:
    """The Docker warm pool holds ``size`` running, not yet handed-out containers."""
    out = subprocess.run(
        [
            "docker",
            "ps",
            "--filter",
            "label=pairpod.pool=true",
            "--filter",
            "status=running",
            "--format",
            "{{.Names}}",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    # A handed-out container is renamed after its connection; a waiting one is named "-pool-".
    return sum("-pool-" in name for name in out) >= size


def kube_pool_ready(server: KubeApiServer, size: int) -> bool:
    """The Kubernetes warm pool holds ``size`` running pods no user has yet."""
    out = server.kubectl(
        "-n",
        NAMESPACE,
        "get",
        "pods",
        "-o",
        "name",
        "-l",
        "pairpod.pool=true,!pairpod.user",
        "--field-selector",
        "status.phase=Running",
    )
    return len(out.split()) >= size


def latency_section(server: KubeApiServer, image: str, rounds: int, report: Report) -> None:
    works = [Workdir() for _ in range(4)]
    peers: list[Peer] = []
    try:
        kube_cold = start_pairpod(works[0], kubernetes_overrides(server, image))
        peers.append(kube_cold)
        docker_cold = start_pairpod(works[1], docker_overrides(image))
        peers.append(docker_cold)
        kube_warm = start_pairpod(works[2], kubernetes_overrides(server, image, warm_pool=POOL))
        peers.append(kube_warm)
        docker_warm = start_pairpod(works[3], docker_overrides(image, warm_pool=POOL))
        peers.append(docker_warm)

        def login(work: Workdir, peer: Peer) -> Callable[[], float]:
            return lambda: timed(ssh_argv(work, peer.port, "true"))

        def pooled(work: Workdir, peer: Peer, ready: Callable[[], bool]) -> Callable[[], float]:
            def measure() -> float:
                # Time only logins the pool served: wait until it is full again.
                wait_until(ready, "the warm pool to refill")
                return timed(ssh_argv(work, peer.port, "true"))

            return measure

        figures = alternate(
            rounds,
            kube_cold=login(works[0], kube_cold),
            docker_cold=login(works[1], docker_cold),
            kube_warm=pooled(works[2], kube_warm, lambda: kube_pool_ready(server, POOL)),
            docker_warm=pooled(works[3], docker_warm, lambda: docker_pool_ready(POOL)),
        )
        report.add(
            "login `ssh gw true`, new pod vs new container",
            statistics.median(figures["kube_cold"]),
            statistics.median(figures["docker_cold"]),
            "s",
            "<= 2.0",
        )
        report.add(
            f"login `ssh gw true`, warm pool of {POOL}",
            statistics.median(figures["kube_warm"]),
            statistics.median(figures["docker_warm"]),
            "s",
            "<= 2.0",
        )
    finally:
        for peer in peers:
            peer.stop()
        for work in works:
            work.cleanup()


def control_master(work: Workdir, port: int) -> tuple[list[str], subprocess.Popen[bytes]]:
    """One SSH connection (so one environment) that transfers share, a channel each."""
    control = ["-o", f"ControlPath={work.path / 'cm.sock'}"]
    master = subprocess.Popen(
        ssh_argv(work, port, extra=[*control, "-M", "-N"]),
        stdin=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_until(
        lambda: (
            subprocess.run(
                ssh_argv(work, port, extra=[*control, "-O", "check"]), capture_output=True
            ).returncode
            == 0
        ),
        "the ssh control master",
    )
    return control, master


def throughput_section(
    server: KubeApiServer, image: str, megabytes: int, rounds: int, report: Report
) -> None:
    size = megabytes * 1_000_000
    kube_work, docker_work = Workdir(), Workdir()
    peers: list[Peer] = []
    masters: list[subprocess.Popen[bytes]] = []
    try:
        kube = start_pairpod(kube_work, kubernetes_overrides(server, image))
        peers.append(kube)
        docker = start_pairpod(docker_work, docker_overrides(image))
        peers.append(docker)
        kube_control, master = control_master(kube_work, kube.port)
        masters.append(master)
        docker_control, master = control_master(docker_work, docker.port)
        masters.append(master)
        payload = kube_work.path / "payload"
        with payload.open("wb") as handle:
            handle.truncate(size)
        download = f"head -c {size} /dev/zero"
        cases: dict[str, tuple[str, list[str], Path | None]] = {
            "download, no TTY": (download, [], None),
            "download, TTY": (download, ["-tt"], None),
            "upload, no TTY": ("cat > /dev/null", [], payload),
        }
        for label, (command, extra, stdin_file) in cases.items():

            def rate(
                work: Workdir,
                port: int,
                control: list[str],
                command: str = command,
                extra: list[str] = extra,
                stdin_file: Path | None = stdin_file,
            ) -> Callable[[], float]:
                argv = ssh_argv(work, port, command, extra=[*control, *extra])
                return lambda: size / 1e6 / timed(argv, input_file=stdin_file)

            figures = alternate(
                rounds,
                kube=rate(kube_work, kube.port, kube_control),
                docker=rate(docker_work, docker.port, docker_control),
            )
            report.add(
                f"throughput {label}",
                statistics.median(figures["kube"]),
                statistics.median(figures["docker"]),
                "MB/s",
                ">= 0.9",
            )
    finally:
        for master in masters:
            master.terminate()
            master.wait(10)
        for peer in peers:
            peer.stop()
        kube_work.cleanup()
        docker_work.cleanup()


def main() -> None:
    """Run the benchmark and print its report."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--megabytes", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--skip",
        action="append",
        default=[],
        choices=["latency", "throughput"],
        help="leave a section out (repeatable)",
    )
    args = parser.parse_args()
    image = debian_image()
    server_work = Workdir()
    server = KubeApiServer(server_work)
    try:
        report = Report(
            f"Kubernetes backend (pairpod column; on the API test server) vs the Docker backend "
            f"(reference column); median of {args.rounds} rounds, {args.megabytes} MB per "
            f"throughput round"
        )
        if "latency" not in args.skip:
            latency_section(server, image, args.rounds, report)
        if "throughput" not in args.skip:
            throughput_section(server, image, args.megabytes, args.rounds, report)
        report.print()
    finally:
        server.stop()
        server_work.cleanup()


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
