"""kubectl exec (WebSocket, v5 protocol since kubectl 1.30) against pods run in Docker."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from ..kubetools import SERVE, WAIT, Kubectl, pod_manifest


@pytest.fixture
def shell_pod(kubectl: Kubectl, busybox: str) -> str:
    """A running pod to exec into."""
    kubectl.run("create", "-f", "-", input=json.dumps(pod_manifest("shell", busybox, SERVE)))
    kubectl.run("wait", "--for=condition=Ready", "pod/shell", "--timeout=30s")
    return "shell"


def test_exit_code_and_streams(kubectl: Kubectl, shell_pod: str) -> None:
    out = kubectl.run("exec", shell_pod, "--", "sh", "-c", "echo hi; echo oops >&2; exit 3", check=False)
    assert out.returncode == 3
    assert out.stdout == "hi\n"
    assert out.stderr.splitlines() == ["oops", "command terminated with exit code 3"]
    ok = kubectl.run("exec", shell_pod, "--", "true", check=False)
    assert (ok.returncode, ok.stdout, ok.stderr) == (0, "", "")


def test_stdin_and_eof(kubectl: Kubectl, shell_pod: str) -> None:
    data = "".join(f"line {i}\n" for i in range(2000))
    # cat ends only when stdin closes: the v5 close frame reached the process.
    out = kubectl.run("exec", "-i", shell_pod, "--", "sh", "-c", "cat; echo done >&2", input=data)
    assert out.stdout == data
    assert out.stderr == "done\n"
    counted = kubectl.run("exec", "-i", shell_pod, "--", "wc", "-c", input=data)
    assert counted.stdout.strip() == str(len(data))


def test_command_that_cannot_start(kubectl: Kubectl, shell_pod: str) -> None:
    out = kubectl.run("exec", shell_pod, "--", "no-such-binary", check=False)
    # As with a kubelet: an InternalError status, which kubectl reports as exit 1.
    assert out.returncode == 1
    assert out.stdout == ""
    assert out.stderr.startswith("error: Internal error occurred: error executing command in container:")
    assert "no-such-binary" in out.stderr


def test_exec_refusals(kubectl: Kubectl, busybox: str, shell_pod: str) -> None:
    out = kubectl.run("exec", "ghost", "--", "true", check=False)
    assert out.returncode == 1
    assert 'pods "ghost" not found' in out.stderr
    out = kubectl.run("exec", shell_pod, "-c", "nope", "--", "true", check=False)
    assert out.returncode == 1
    assert "container nope is not valid for pod shell" in out.stderr
    kubectl.run("create", "-f", "-", input=json.dumps(pod_manifest("done", busybox, ["true"])))
    kubectl.run("wait", "--for=jsonpath={.status.phase}=Succeeded", "pod/done", "--timeout=30s")
    out = kubectl.run("exec", "done", "--", "true", check=False)
    assert out.returncode == 1
    assert "cannot exec into a container in a completed pod; current phase is Succeeded" in out.stderr


@pytest.mark.skipif(shutil.which("script") is None, reason="needs script(1) for a terminal")
def test_tty_exec(kubectl: Kubectl, shell_pod: str, tmp_path: Path) -> None:
    # kubectl only asks for a terminal when its own stdin is one: give it a pty
    # and drive an interactive shell through it.
    argv = " ".join(
        [
            kubectl.binary,
            f"--kubeconfig={kubectl.kubeconfig}",
            f"--cache-dir={kubectl.cache_dir}",
            "exec",
            "-it",
            shell_pod,
            "--",
            "sh",
        ]
    )
    result = subprocess.run(
        ["script", "-qec", f"stty rows 33 cols 101; {argv}", "/dev/null"],
        # kubectl sends the first size and the first input concurrently: wait,
        # inside the container, until the size has landed.
        input='tty; until s=$(stty size 2>/dev/null) && [ "$s" != "0 0" ]; do :; done; '
        'echo "size $s"; exit 7\n',
        capture_output=True,
        text=True,
        timeout=WAIT,
        check=False,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    assert result.returncode == 7, result
    lines = [line.strip() for line in result.stdout.splitlines()]
    assert any(line.startswith("/dev/pts/") for line in lines), result.stdout
    # The size kubectl read from its terminal reached the container's.
    assert "size 33 101" in lines, result.stdout


_SDK_BIN = Path("/usr/lib/google-cloud-sdk/bin")


@pytest.mark.parametrize("version", ["1.30", "1.31", "1.33"])
def test_other_kubectl_versions(kubectl: Kubectl, shell_pod: str, version: str) -> None:
    binary = shutil.which(f"kubectl.{version}") or str(_SDK_BIN / f"kubectl.{version}")
    if not Path(binary).exists():
        pytest.skip(f"kubectl {version} is not installed")
    other = Kubectl(kubectl.kubeconfig, kubectl.cache_dir.with_name(f"cache-{version}"), binary)
    out = other.run("exec", "-i", shell_pod, "--", "sh", "-c", "cat; exit 5", input="abc\n", check=False)
    assert (out.returncode, out.stdout) == (5, "abc\n"), out.stderr
    assert other.run("get", "pods", "-o", "name").stdout.split() == ["pod/shell"]


def test_kubectl_before_websockets_is_told_why(kubectl: Kubectl, shell_pod: str) -> None:
    binary = shutil.which("kubectl.1.29") or str(_SDK_BIN / "kubectl.1.29")
    if not Path(binary).exists():
        pytest.skip("kubectl 1.29 is not installed")
    old = Kubectl(kubectl.kubeconfig, kubectl.cache_dir.with_name("cache-1.29"), binary)
    out = old.run("exec", shell_pod, "--", "true", check=False)
    assert out.returncode == 1
    assert "WebSocket only" in out.stderr
