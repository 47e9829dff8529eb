"""Fixtures for the Kubernetes API test server's own tests.

Every test gets a fresh namespace on one session-wide server; clients are the
real ``kubectl``, kubernetes_asyncio, and plain aiohttp for the wire details.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from kubernetes_asyncio import client, config
from tests.support.images import busybox_image

from testing.kube_apiserver.fixture import KubeApiServerThread, kube_apiserver, kube_namespace

from ..kubetools import Kubectl, RawApi

__all__ = ["kube_apiserver", "kube_namespace"]


@pytest.fixture(scope="session")
def busybox() -> str:
    """The locally built busybox image's tag."""
    return busybox_image()


@pytest.fixture
def kubectl(kube_apiserver: KubeApiServerThread, kube_namespace: str, tmp_path: Path) -> Kubectl:
    """kubectl whose current namespace is this test's namespace."""
    return Kubectl(kube_apiserver.kubeconfig_for(kube_namespace), tmp_path / "kubectl-cache")


@pytest.fixture
async def api(kube_apiserver: KubeApiServerThread) -> AsyncIterator[client.ApiClient]:
    """A kubernetes_asyncio client configured from the kubeconfig file."""
    configuration = client.Configuration()
    await config.load_kube_config(
        config_file=str(kube_apiserver.kubeconfig), client_configuration=configuration
    )
    async with client.ApiClient(configuration) as api_client:
        yield api_client


@pytest.fixture
def core(api: client.ApiClient) -> client.CoreV1Api:
    """The core/v1 API."""
    return client.CoreV1Api(api)


@pytest.fixture
async def raw(kube_apiserver: KubeApiServerThread) -> AsyncIterator[RawApi]:
    """A raw HTTP client of the server."""
    api_client = RawApi(kube_apiserver.kubeconfig)
    try:
        yield api_client
    finally:
        await api_client.close()
