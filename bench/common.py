"""Shared pieces of the benchmarks: peers they start, timing, and the report."""

from __future__ import annotations

import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

# The repository's root: the benchmarks share the test suite's helpers.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support.gateway import rss

CIPHER = "aes128-gcm@openssh.com"


def machine() -> str:
    """One line describing the machine the figures come from."""
    cpu = "unknown cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    ssh_version = subprocess.run(["ssh", "-V"], capture_output=True, text=True).stderr.strip()
    return (
        f"{cpu}, {os.cpu_count()} cores, {mem_gib:.0f} GiB, Linux {platform.release()}, "
        f"Python {platform.python_version()}, {ssh_version}"
    )


def timed(argv: Sequence[str], stdin: int | None = None, input_file: Path | None = None) -> float:
    """Wall time of a command run to completion (it must succeed)."""
    handle = input_file.open("rb") if input_file else None
    try:
        started = time.perf_counter()
        subprocess.run(
            argv, stdin=handle or stdin or subprocess.DEVNULL, stdout=subprocess.DEVNULL, check=True
        )
        return time.perf_counter() - started
    finally:
        if handle:
            handle.close()


@dataclass
class Report:
    """Rows of ``name, pairpod, reference, ratio, goal``."""

    title: str
    rows: list[tuple[str, str, str, str, str]] = field(default_factory=list)

    def add(self, name: str, ours: float, theirs: float, unit: str, goal: str) -> None:
        """Add a figure pair and their ratio (pairpod / reference)."""
        ratio = ours / theirs if theirs else float("nan")
        verdict = ""
        match = re.match(r"([<>]=?)\s*([\d.]+)", goal)
        if match:
            bound = float(match.group(2))
            ok = ratio >= bound if match.group(1).startswith(">") else ratio <= bound
            verdict = " (met)" if ok else " (NOT met)"
        self.rows.append(
            (name, f"{ours:.3f} {unit}", f"{theirs:.3f} {unit}", f"{ratio:.2f}x", goal + verdict)
        )

    def print(self) -> None:
        """Print a Markdown table."""
        print(f"\n### {self.title}\n")
        print(f"Machine: {machine()}\n")
        header = ("measure", "pairpod", "reference", "ratio", "goal")
        print("| " + " | ".join(header) + " |")
        print("|" + "---|" * len(header))
        for row in self.rows:
            print("| " + " | ".join(row) + " |")
        sys.stdout.flush()


class Workdir:
    """A temporary directory holding keys and configs of one benchmark run."""

    def __init__(self) -> None:
        self.path = Path(tempfile.mkdtemp(prefix="pairpod-bench-"))
        self.key = self.path / "id_ed25519"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.key)], check=True)
        self.public_key = (self.path / "id_ed25519.pub").read_text()

    def cleanup(self) -> None:
        """Remove the directory."""
        shutil.rmtree(self.path, ignore_errors=True)


def ssh_argv(work: Workdir, port: int, *command: str, extra: Sequence[str] = ()) -> list[str]:
    """An ssh client command with the benchmark's key and cipher."""
    return [
        "ssh",
        *extra,
        "-F",
        "/dev/null",
        "-i",
        str(work.key),
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "BatchMode=yes",
        "-o",
        "LogLevel=ERROR",
        "-c",
        CIPHER,
        "-p",
        str(port),
        "root@127.0.0.1",
        *command,
    ]


def free_port() -> int:
    """A free loopback port."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout: float = 30.0) -> None:
    """Wait until something accepts connections on ``port``."""
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}")


class Peer:
    """A server process the benchmark started; stopped with ``stop()``."""

    def __init__(self, argv: Sequence[str], port: int, log: Path) -> None:
        self.port = port
        self._log = log.open("wb")
        self.proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT)
        wait_for_port(port)

    def stop(self) -> None:
        """SIGTERM, then wait."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self._log.close()


def start_sshd(work: Workdir) -> Peer:
    """OpenSSH's sshd with its own config, host key and port."""
    sshd = shutil.which("sshd") or "/usr/sbin/sshd"
    host_key = work.path / "sshd_host_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host_key)], check=True)
    authorized = work.path / "authorized_keys"
    authorized.write_text(work.public_key)
    port = free_port()
    config = work.path / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {host_key}\n"
        f"AuthorizedKeysFile {authorized}\nStrictModes no\nUsePAM no\nPidFile none\n"
        "PermitRootLogin prohibit-password\nPasswordAuthentication no\n"
        f"Ciphers {CIPHER}\nSubsystem sftp internal-sftp\n"
    )
    Path("/run/sshd").mkdir(exist_ok=True)
    return Peer([sshd, "-D", "-e", "-f", str(config)], port, work.path / "sshd.log")


def write_log_payload(path: Path, megabytes: int) -> None:
    """A file of log lines (plain text, as a busy program prints) of about ``megabytes`` MB."""
    line = b"2026-01-01T00:00:00Z info request handled path=/api/v1/items status=200\n"
    with path.open("wb") as handle:
        handle.write(line * (megabytes * 1_000_000 // len(line)))


def start_pairpod(work: Workdir, overrides: dict[str, object] | None = None, name: str = "pairpod") -> Peer:
    """``pairpod serve`` with the benchmark's key, on a free port (``name``: its files)."""
    authorized = work.path / "pairpod_authorized_keys"
    authorized.write_text(work.public_key)
    port = free_port()
    config: dict[str, object] = {
        "listen": f"127.0.0.1:{port}",
        "host_keys": [str(work.path / "pairpod_host_key")],
        "auth": {"authorized_keys": str(authorized)},
        "log": {"level": "warning"},
        # All benchmark clients come from one address and some open many connections
        # at once: the pre-auth limits would drop some (they are not what is measured).
        "ssh": {"max_startups": "1000", "per_source_max_startups": None, "per_source_rate": None},
    }
    config.update(overrides or {})
    path = work.path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return Peer(
        [sys.executable, "-m", "pairpod.cli", "serve", "--config", str(path)], port, work.path / f"{name}.log"
    )


def rss_kib(pid: int) -> int:
    """Resident memory of a process, in KiB."""
    return rss(pid) // 1024
