"""The backend conformance suite: every SSH feature, through a real gateway, per backend.

Each backend registers a fixture named ``backend_<name>`` that returns the config
overrides selecting it (and prepares whatever it needs: an engine, images, an
API server). Add its name to ``CONFORMANCE_BACKENDS`` and every test in this
folder runs against it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from testing.kube_apiserver.fixture import KubeApiServerThread, kube_apiserver
from tests.conftest import MakeGateway
from tests.support.docker_env import docker_overrides
from tests.support.gateway import ClientKey, GatewayThread
from tests.support.kube_env import kubernetes_overrides
from tests.support.sshd import OpenSSHServer, Reference

__all__ = ["kube_apiserver"]

CONFORMANCE_BACKENDS = [
    "local",
    "docker-connection",
    "docker-session",
    "kubernetes",
    "kubernetes-session",
]

# Backends where every channel gets an environment of its own, and the tests
# that need one channel to see what another left (a file written, then read).
PER_CHANNEL_ENVIRONMENTS = {"docker-session", "kubernetes-session"}
CROSS_CHANNEL_TESTS = {
    "test_sftp_and_scp_round_trip_files_byte_identical",
    "test_sftp_client_sees_the_environments_files",
}


@pytest.fixture
def backend_local() -> dict[str, Any]:
    """The local backend needs nothing prepared."""
    return {"backend": "local"}


@pytest.fixture
def backend_docker_connection() -> dict[str, Any]:
    """Docker, a container per connection, on a locally built Debian image."""
    return docker_overrides("connection")


@pytest.fixture
def backend_docker_session() -> dict[str, Any]:
    """Docker, a container per channel, on a locally built Debian image."""
    return docker_overrides("session")


@pytest.fixture(scope="session")
def conformance_namespace(kube_apiserver: KubeApiServerThread) -> Iterator[str]:
    """One namespace of the Kubernetes API test server for the whole suite."""
    name = f"conformance-{uuid.uuid4().hex[:8]}"
    kube_apiserver.create_namespace(name)
    yield name
    kube_apiserver.delete_namespace(name)


@pytest.fixture
def backend_kubernetes(kube_apiserver: KubeApiServerThread, conformance_namespace: str) -> dict[str, Any]:
    """Kubernetes, a pod per connection, on the API test server (pods as Docker containers)."""
    return kubernetes_overrides(kube_apiserver, conformance_namespace, "connection")


@pytest.fixture
def backend_kubernetes_session(
    kube_apiserver: KubeApiServerThread, conformance_namespace: str
) -> dict[str, Any]:
    """Kubernetes, a pod per channel, on the API test server."""
    return kubernetes_overrides(kube_apiserver, conformance_namespace, "session")


@pytest.fixture(params=CONFORMANCE_BACKENDS)
def backend_name(request: pytest.FixtureRequest) -> str:
    """The backend under test."""
    name = str(request.param)
    test = getattr(request.node, "originalname", request.node.name)
    if name in PER_CHANNEL_ENVIRONMENTS and test in CROSS_CHANNEL_TESTS:
        pytest.skip(f"{name}: each channel has its own environment, nothing carries over")
    return name


@pytest.fixture
def backend_overrides(request: pytest.FixtureRequest, backend_name: str) -> dict[str, Any]:
    """Config overrides selecting the backend under test."""
    return dict(request.getfixturevalue("backend_" + backend_name.replace("-", "_")))


@pytest.fixture
def gw(make_gateway: MakeGateway, backend_overrides: dict[str, Any]) -> GatewayThread:
    """A gateway on the backend under test."""
    return make_gateway(backend_overrides)


@pytest.fixture(scope="session")
def sshd_reference(tmp_path_factory: pytest.TempPathFactory, client_key: ClientKey) -> Iterator[Reference]:
    """OpenSSH's sshd on loopback, for the whole run: what every backend is compared with."""
    server = OpenSSHServer(tmp_path_factory.mktemp("sshd"), client_key).start()
    yield Reference(server)
    server.stop()
