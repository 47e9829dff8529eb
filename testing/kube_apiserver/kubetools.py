"""Clients of the Kubernetes API test server (kubectl, a raw HTTP client) and waiting helpers, for tests."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import shutil
import ssl
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from kubernetes_asyncio import client, watch

# One bound for anything a test waits for; generous because it only matters
# when something is broken.
WAIT = 30.0

KUBECTL = shutil.which("kubectl") or "/usr/bin/kubectl"

# kubectl's WebSocket exec client starts reading frames before it has registered
# its streams, so the empty "ready" frame a server sends on the first output
# channel right after the handshake (as a kubelet does) can arrive first: kubectl
# drops it and logs this line. The race is inside kubectl and loses nothing (the
# frame is empty; tests still compare every byte of output), so the line is
# taken out of the stderr tests compare. Any other diagnostic stays.
_KUBECTL_READY_FRAME_RACE = re.compile(
    r"^E\d{4} [\d:.]+ +\d+ websocket\.go:\d+\] Unknown stream id [12], discarding message\n",
    re.MULTILINE,
)


def pod_manifest(
    name: str,
    image: str,
    command: list[str] | None = None,
    *,
    labels: dict[str, str] | None = None,
    restart_policy: str = "Never",
    grace: int = 5,
    **spec: Any,
) -> dict[str, Any]:
    """A one-container pod."""
    container: dict[str, Any] = {"name": "main", "image": image}
    if command is not None:
        container["command"] = command
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels or {}},
        "spec": {
            "containers": [container],
            "restartPolicy": restart_policy,
            "terminationGracePeriodSeconds": grace,
            **spec,
        },
    }


# A command that runs until told to stop and stops at once on SIGTERM (as PID 1
# a plain ``sleep`` would ignore TERM and hold deletion for the grace period).
SERVE = ["sh", "-c", "trap 'exit 0' TERM; sleep 3600 & wait"]


@dataclass
class Kubectl:
    """The real kubectl pointed at the test server and one namespace."""

    kubeconfig: Path
    cache_dir: Path
    binary: str = KUBECTL

    def run(
        self,
        *args: str,
        input: str | None = None,
        check: bool = True,
        timeout: float = WAIT,
    ) -> subprocess.CompletedProcess[str]:
        """Run kubectl; with ``check`` a non-zero exit fails the test with its stderr."""
        argv = [self.binary, f"--kubeconfig={self.kubeconfig}", f"--cache-dir={self.cache_dir}", *args]
        result = subprocess.run(
            argv, input=input, capture_output=True, text=True, timeout=timeout, check=False, env=self._env()
        )
        result.stderr = _KUBECTL_READY_FRAME_RACE.sub("", result.stderr)
        if check and result.returncode != 0:
            pytest.fail(
                f"kubectl {' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
            )
        return result

    def popen(self, *args: str) -> subprocess.Popen[str]:
        """Start kubectl in the background (for --watch)."""
        argv = [self.binary, f"--kubeconfig={self.kubeconfig}", f"--cache-dir={self.cache_dir}", *args]
        return subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=self._env()
        )

    def json(self, *args: str, input: str | None = None) -> Any:
        """Run kubectl with ``-o json`` and decode its output."""
        return json.loads(self.run(*args, "-o", "json", input=input).stdout)

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("KUBE")}
        # Keep kubectl from writing to the real home directory.
        env["HOME"] = str(self.cache_dir)
        return env


class RawApi:
    """aiohttp against the server with the kubeconfig's CA and token, for wire details."""

    def __init__(self, kubeconfig: Path) -> None:
        data = yaml.safe_load(kubeconfig.read_text())
        cluster = data["clusters"][0]["cluster"]
        self.url = cluster["server"]
        self.ssl = ssl.create_default_context(
            cadata=base64.b64decode(cluster["certificate-authority-data"]).decode()
        )
        self.headers = {"Authorization": f"Bearer {data['users'][0]['user']['token']}"}
        self.session = aiohttp.ClientSession(headers=self.headers)

    async def json(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        content_type: str = "application/json",
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any]:
        """One request; returns (status, decoded JSON body)."""
        data = None if body is None else json.dumps(body)
        merged = {"Content-Type": content_type, **(headers or {})}
        async with self.session.request(
            method, self.url + path, data=data, ssl=self.ssl, headers=merged
        ) as response:
            return response.status, await response.json(content_type=None)

    async def watch(
        self, path: str, *, until: Callable[[list[dict[str, Any]]], bool] | None = None
    ) -> list[dict[str, Any]]:
        """Read a watch stream's events until it ends or ``until(events)`` holds."""
        events: list[dict[str, Any]] = []
        async with asyncio.timeout(WAIT):
            async with self.session.get(self.url + path, ssl=self.ssl) as response:
                assert response.status == 200, await response.text()
                async for line in response.content:
                    if line.strip():
                        events.append(json.loads(line))
                        if until is not None and until(events):
                            break
        return events

    def ws_connect(self, path: str, protocols: tuple[str, ...]) -> Any:
        """Open a WebSocket (the exec subresource)."""
        return self.session.ws_connect(self.url + path, protocols=protocols, ssl=self.ssl)

    async def close(self) -> None:
        """Close the session."""
        await self.session.close()


async def wait_for_pod(
    core: client.CoreV1Api,
    namespace: str,
    name: str,
    condition: Callable[[Any], bool],
) -> Any:
    """Watch one pod until ``condition(pod)`` holds; return that pod (bounded by WAIT)."""
    async with asyncio.timeout(WAIT):
        while True:
            listing = await core.list_namespaced_pod(namespace, field_selector=f"metadata.name={name}")
            for pod in listing.items:
                if condition(pod):
                    return pod
            stream = watch.Watch().stream(
                core.list_namespaced_pod,
                namespace,
                field_selector=f"metadata.name={name}",
                resource_version=listing.metadata.resource_version,
                timeout_seconds=int(WAIT),
            )
            async with stream:
                async for event in stream:
                    if event["type"] != "DELETED" and condition(event["object"]):
                        return event["object"]


def phase_is(*phases: str) -> Callable[[Any], bool]:
    """A pod condition: its phase is one of ``phases``."""
    return lambda pod: pod.status is not None and pod.status.phase in phases


def waiting_reason_is(reason: str) -> Callable[[Any], bool]:
    """A pod condition: its first container is waiting for ``reason``."""

    def check(pod: Any) -> bool:
        statuses = (pod.status and pod.status.container_statuses) or []
        return (
            bool(statuses)
            and statuses[0].state.waiting is not None
            and statuses[0].state.waiting.reason == reason
        )

    return check


async def start_pod(core: client.CoreV1Api, namespace: str, manifest: dict[str, Any]) -> Any:
    """Create a pod and wait until it runs; fail at once if it ends instead."""
    await core.create_namespaced_pod(namespace, manifest)
    name = manifest["metadata"]["name"]
    pod = await wait_for_pod(core, namespace, name, phase_is("Running", "Succeeded", "Failed"))
    assert pod.status.phase == "Running", pod.status
    return pod


async def wait_for_deletion(core: client.CoreV1Api, namespace: str, name: str) -> None:
    """Wait (by watch) until a pod is gone."""
    listing = await core.list_namespaced_pod(namespace, field_selector=f"metadata.name={name}")
    if not listing.items:
        return
    stream = watch.Watch().stream(
        core.list_namespaced_pod,
        namespace,
        field_selector=f"metadata.name={name}",
        resource_version=listing.metadata.resource_version,
        timeout_seconds=int(WAIT),
    )
    async with asyncio.timeout(WAIT), stream:
        async for event in stream:
            if event["type"] == "DELETED":
                return
    raise AssertionError(f"pod {name} was not deleted within {WAIT}s")
