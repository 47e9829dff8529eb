"""Helpers for tests of the Kubernetes backend on the Kubernetes API test server.

Tests observe the server as any client would (kubernetes_asyncio here, kubectl
elsewhere); the gateway itself only ever talks to it through its kubeconfig.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import yaml
from kubernetes_asyncio import client, config

from pairpod.backends.kubernetes import KubernetesBackend
from pairpod.config import Config, validate_config
from testing.kube_apiserver.fixture import KubeApiServerThread
from tests.support.identity import new_instance_id
from tests.support.images import busybox_image, debian_image

# The Debian test image's unprivileged user: pods run as it, as a cluster
# operator would configure for an image whose default user is root.
TESTER_UID = 1000
# One bound for anything a test waits for; only reached when something is broken.
WAIT = 60.0


def kubernetes_overrides(
    server: KubeApiServerThread,
    namespace: str,
    mode: str = "connection",
    image: str = "debian",
    **kubernetes: Any,
) -> dict[str, Any]:
    """Config overrides selecting the Kubernetes backend on the test server.

    With the Debian image, pods run as its user ``tester`` (uid 1000) unless
    ``pod`` says otherwise.
    """
    tag = (
        {"debian": debian_image, "busybox": busybox_image}[image]()
        if image in ("debian", "busybox")
        else image
    )
    settings: dict[str, Any] = {
        "kubeconfig": str(server.kubeconfig),
        "namespace": namespace,
        "image": tag,
        "mode": mode,
        # The test server's pods stop at once on TERM: a short stop keeps failures quick.
        "timeouts": {"start": "60s", "stop": "10s"},
    }
    if image == "debian":
        settings["pod"] = {"spec": {"securityContext": {"runAsUser": TESTER_UID, "runAsGroup": TESTER_UID}}}
    settings.update(kubernetes)
    return {"backend": "kubernetes", "kubernetes": settings}


def kubernetes_config(
    server: KubeApiServerThread,
    namespace: str,
    mode: str = "connection",
    image: str = "debian",
    **kubernetes: Any,
) -> Config:
    """A whole validated Config for the Kubernetes backend."""
    return validate_config(kubernetes_overrides(server, namespace, mode, image, **kubernetes), "test config")


@asynccontextmanager
async def core_api(server: KubeApiServerThread) -> AsyncIterator[client.CoreV1Api]:
    """kubernetes_asyncio's core/v1 API on the test server (to observe what the backend did)."""
    configuration = client.Configuration()
    await config.load_kube_config(config_file=str(server.kubeconfig), client_configuration=configuration)
    async with client.ApiClient(configuration) as api_client:
        yield client.CoreV1Api(api_client)


async def pods(core: client.CoreV1Api, namespace: str, **labels: str) -> list[Any]:
    """Pods of a namespace carrying all the given ``pairpod.<key>`` labels (terminating ones too)."""
    selector = ",".join(f"pairpod.{key}={value}" for key, value in labels.items())
    return list((await core.list_namespaced_pod(namespace, label_selector=selector)).items)


async def wait_pod_gone(core: client.CoreV1Api, namespace: str, name: str) -> None:
    """Watch a pod until it is deleted (returns at once if it is not there)."""
    from kubernetes_asyncio import watch
    from kubernetes_asyncio.client.exceptions import ApiException

    try:
        pod = await core.read_namespaced_pod(name, namespace)
    except ApiException as error:
        if error.status == 404:
            return
        raise
    stream = watch.Watch().stream(
        core.list_namespaced_pod,
        namespace,
        field_selector=f"metadata.name={name}",
        resource_version=pod.metadata.resource_version,
        timeout_seconds=int(WAIT),
    )
    async with asyncio.timeout(WAIT), stream:
        async for event in stream:
            if event["type"] == "DELETED":
                return
    raise AssertionError(f"pod {namespace}/{name} still exists")


@asynccontextmanager
async def running_backend(config: Config, instance_id: str | None = None) -> AsyncIterator[KubernetesBackend]:
    """A started backend; stopped after, and nothing of its instance may remain."""
    backend = KubernetesBackend(config, instance_id or new_instance_id())
    await backend.start()
    try:
        yield backend
    finally:
        await backend.stop()
        server_config = config.kubernetes
        async with core_api_from(server_config.kubeconfig) as core:
            left = await pods(core, server_config.namespace, instance=backend.instance_id)
        assert [p.metadata.name for p in left] == [], "pods left behind"


@asynccontextmanager
async def core_api_from(kubeconfig: Any) -> AsyncIterator[client.CoreV1Api]:
    """kubernetes_asyncio's core/v1 API from a kubeconfig path."""
    configuration = client.Configuration()
    await config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
    async with client.ApiClient(configuration) as api_client:
        yield client.CoreV1Api(api_client)


class ApiRelay:
    """A TCP relay in front of the API server that can be taken down and brought back.

    The gateway's kubeconfig points at the relay, so "the API server is
    unreachable" is real (connections refused, open ones cut) without
    touching the shared test server. TLS passes through untouched.
    """

    def __init__(self, server: KubeApiServerThread, workdir: Path) -> None:
        from urllib.parse import urlsplit

        target = urlsplit(server.url)
        self._target = (target.hostname or "127.0.0.1", target.port or 443)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="api-relay", daemon=True)
        self._thread.start()
        self._listener: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.port = 0
        self.up()
        data = yaml.safe_load(server.kubeconfig.read_text())
        data["clusters"][0]["cluster"]["server"] = f"https://127.0.0.1:{self.port}"
        self.kubeconfig = workdir / "kubeconfig-relay"
        self.kubeconfig.write_text(yaml.safe_dump(data))

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(WAIT)

    def up(self) -> None:
        """Accept connections (on the same port as before, if any)."""

        async def listen() -> None:
            self._listener = await asyncio.start_server(self._relay, "127.0.0.1", self.port)
            self.port = self._listener.sockets[0].getsockname()[1]

        self._call(listen())

    def down(self) -> None:
        """Refuse new connections and cut the open ones."""

        async def close() -> None:
            if self._listener is not None:
                self._listener.close()
                await self._listener.wait_closed()
                self._listener = None
            for writer in list(self._writers):
                writer.transport.abort()

        self._call(close())

    def close(self) -> None:
        """Take the relay down for good and end its thread."""
        self.down()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(WAIT)
        self._loop.close()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, up_writer}

        async def pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            try:
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                sink.transport.abort()

        try:
            await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))
        finally:
            self._writers -= {writer, up_writer}
