"""The server's ways of running: thread, subprocess, plain HTTP, and cleaning up after itself."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from testing.kube_apiserver import KubeApiServerThread
from testing.kube_apiserver.container_config import LABEL_INSTANCE, LABEL_PID

from ..kubetools import SERVE, WAIT, Kubectl, RawApi, pod_manifest

ROOT = Path(__file__).resolve().parents[3]


def _docker_ids(label: str) -> list[str]:
    return subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"label={label}"], capture_output=True, text=True, check=True
    ).stdout.split()


def test_close_removes_running_pods(tmp_path: Path, busybox: str) -> None:
    with KubeApiServerThread(tmp_path) as running:
        kubectl = Kubectl(running.kubeconfig, tmp_path / "cache")
        kubectl.run("create", "-f", "-", input=json.dumps(pod_manifest("p", busybox, SERVE)))
        kubectl.run("wait", "--for=condition=Ready", "pod/p", "--timeout=30s")
        instance = running.server.instance if running.server else ""
        assert len(_docker_ids(f"{LABEL_INSTANCE}={instance}")) == 1
    assert _docker_ids(f"{LABEL_INSTANCE}={instance}") == []


def test_plain_http_without_auth(tmp_path: Path) -> None:
    # kubectl sends bearer tokens only over TLS, so plain HTTP goes without auth.
    with KubeApiServerThread(tmp_path, tls=False, token=None) as running:
        assert running.url.startswith("http://127.0.0.1:")
        config = yaml.safe_load(running.kubeconfig.read_text())
        assert config["users"][0]["user"] == {}
        out = Kubectl(running.kubeconfig, tmp_path / "cache").run("get", "ns", "-o", "name")
        assert "namespace/default" in out.stdout.split()


def test_wrong_token_is_unauthorized(tmp_path: Path, kube_apiserver: KubeApiServerThread) -> None:
    config = yaml.safe_load(kube_apiserver.kubeconfig.read_text())
    config["users"][0]["user"]["token"] = "wrong"
    bad = tmp_path / "kubeconfig"
    bad.write_text(yaml.safe_dump(config))
    out = Kubectl(bad, tmp_path / "cache").run("get", "pods", check=False)
    assert out.returncode == 1
    assert "You must be logged in to the server" in out.stderr


def test_subprocess_mode(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    process = subprocess.Popen(
        [sys.executable, "-m", "testing.kube_apiserver", "--kubeconfig", str(kubeconfig)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        ready = json.loads(process.stdout.readline())
        assert ready["url"].startswith("https://127.0.0.1:")
        assert ready["kubeconfig"] == str(kubeconfig)
        out = Kubectl(kubeconfig, tmp_path / "cache").run("get", "ns", "default", "-o", "name")
        assert out.stdout.strip() == "namespace/default"
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(WAIT) == 0


def test_orphans_of_a_dead_server_are_reaped(tmp_path: Path, busybox: str) -> None:
    # A process that has exited stands for a server that crashed.
    dead = subprocess.Popen(["true"])
    dead.wait()
    assert not _pid_alive(dead.pid)
    orphan = subprocess.run(
        [
            "docker",
            "create",
            "--network",
            "none",
            "--label",
            f"{LABEL_PID}={dead.pid}",
            "--label",
            f"{LABEL_INSTANCE}=crashed",
            busybox,
            "sleep",
            "60",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    try:
        with KubeApiServerThread(tmp_path):
            assert _docker_ids(f"{LABEL_PID}={dead.pid}") == []
    finally:
        subprocess.run(["docker", "rm", "-f", orphan], capture_output=True, check=False)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/watch/namespaces/{ns}/configmaps/kube-root-ca.crt",
        "/api/v1/namespaces/{ns}/configmaps/kube-root-ca.crt?watch=1",
    ],
)
async def test_single_object_watch(path: str, kube_namespace: str, raw: RawApi) -> None:
    events = await raw.watch(path.format(ns=kube_namespace), until=lambda ev: len(ev) == 1)
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [("ADDED", "kube-root-ca.crt")]
