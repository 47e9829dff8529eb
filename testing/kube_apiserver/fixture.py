"""Run a test API server on its own thread and event loop, plus pytest fixtures.

The server lives on a private loop in a daemon thread, so it serves sync and
async tests alike and outlives any one test's event loop. Test code talks to
it over HTTP like any client; ``call`` runs a coroutine on the server's loop
for the few things a client cannot do (compaction, counting containers).

Fixtures (import them into a ``conftest.py``)::

    from testing.kube_apiserver.fixture import kube_apiserver, kube_namespace

- ``kube_apiserver`` (session): a started :class:`KubeApiServerThread`;
  ``.kubeconfig`` is a kubeconfig file path, ``.url`` the server URL.
- ``kube_namespace`` (function): a fresh namespace name, deleted after the
  test together with its pods; the test fails if a container is left.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import subprocess
import threading
import uuid
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from .container_config import LABEL_INSTANCE, LABEL_NAMESPACE
from .server import KubeApiServer

T = TypeVar("T")

# Bounds on the server's own housekeeping, so a wedged engine fails a test
# instead of hanging the run.
_START_TIMEOUT = 60.0
_CALL_TIMEOUT = 120.0


class KubeApiServerThread:
    """A :class:`KubeApiServer` running on a background thread with its own loop."""

    def __init__(self, workdir: Path, **server_options: Any) -> None:
        self.workdir = workdir
        self._options = server_options
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="kube-apiserver", daemon=True)
        self.server: KubeApiServer | None = None
        self.kubeconfig: Path = workdir / "kubeconfig"

    def start(self) -> KubeApiServerThread:
        """Start the thread and the server; write the kubeconfig."""
        self._thread.start()
        server = KubeApiServer(**self._options)
        try:
            self.call(server.start(), timeout=_START_TIMEOUT)
        except BaseException:
            # Nothing to close but the loop and its thread.
            self.stop()
            raise
        self.server = server
        server.write_kubeconfig(self.kubeconfig)
        return self

    def stop(self) -> None:
        """Close the server (removing its containers) and end the thread."""
        try:
            if self.server is not None:
                self.call(self.server.close())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=_CALL_TIMEOUT)
            self._loop.close()

    def __enter__(self) -> KubeApiServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """The server's base URL."""
        return self._server().url

    @property
    def token(self) -> str | None:
        """The bearer token clients must present."""
        return self._server().token

    def _server(self) -> KubeApiServer:
        assert self.server is not None, "the server is not started"
        return self.server

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = _CALL_TIMEOUT) -> T:
        """Run a coroutine on the server's loop and wait for its result (from sync code)."""
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise

    async def acall(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine on the server's loop from another event loop."""
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        async with asyncio.timeout(_CALL_TIMEOUT):
            return await asyncio.wrap_future(future)

    # Conveniences, each one call on the server's loop.

    def kubeconfig_for(self, namespace: str) -> Path:
        """A kubeconfig whose context defaults to ``namespace``."""
        path = self.workdir / f"kubeconfig-{namespace}"
        if not path.exists():
            self._server().write_kubeconfig(path, namespace=namespace)
        return path

    def create_namespace(self, name: str) -> None:
        """Create a namespace."""
        self.call(self._server().create_namespace(name))

    def delete_namespace(self, name: str) -> None:
        """Delete a namespace and wait until it and its pods' containers are gone."""
        self.call(self._server().delete_namespace(name))

    def compact(self) -> int:
        """Drop the event history; watches from older resourceVersions then get 410."""

        async def compact() -> int:
            return self._server().store.compact()

        return self.call(compact())

    def containers(self) -> list[str]:
        """Docker ids of the containers this server has running or stopped."""
        return self.call(self._server().containers())

    def pod_containers(self, namespace: str) -> list[str]:
        """Docker ids of the containers of one namespace's pods."""
        server = self._server()

        async def listing() -> list[str]:
            found = await server.docker.containers.list(
                all=True,
                filters={"label": [f"{LABEL_INSTANCE}={server.instance}", f"{LABEL_NAMESPACE}={namespace}"]},
            )
            return [c.id for c in found]

        return self.call(listing())


@pytest.fixture(scope="session")
def kube_apiserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeApiServerThread]:
    """A running test API server for the whole session; removes its containers at the end."""
    running = KubeApiServerThread(tmp_path_factory.mktemp("kube-apiserver")).start()
    instance = running._server().instance
    try:
        yield running
    finally:
        running.stop()
    # Asked of the engine directly: the server's own client is closed by now.
    left = subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"label={LABEL_INSTANCE}={instance}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert left == [], f"the test API server left containers behind: {left}"


@pytest.fixture
def kube_namespace(kube_apiserver: KubeApiServerThread) -> Iterator[str]:
    """A fresh namespace, deleted after the test; fails the test if containers remain."""
    name = f"t-{uuid.uuid4().hex[:10]}"
    kube_apiserver.create_namespace(name)
    yield name
    kube_apiserver.delete_namespace(name)
    left = kube_apiserver.pod_containers(name)
    assert left == [], f"containers left behind in namespace {name}: {left}"
