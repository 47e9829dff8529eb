"""The server through kubernetes_asyncio, the library the pairpod backend uses."""

from __future__ import annotations

import asyncio
import json

import pytest
from kubernetes_asyncio import client, config, watch
from kubernetes_asyncio.client.exceptions import ApiException
from kubernetes_asyncio.stream import WsApiClient

from testing.kube_apiserver.fixture import KubeApiServerThread

from ..kubetools import SERVE, WAIT, pod_manifest, start_pod


async def test_create_list_watch_delete(core: client.CoreV1Api, kube_namespace: str, busybox: str) -> None:
    listing = await core.list_namespaced_pod(kube_namespace)
    assert listing.items == []
    start = listing.metadata.resource_version

    created = await core.create_namespaced_pod(
        kube_namespace, pod_manifest("k", busybox, SERVE, labels={"who": "k"})
    )
    assert created.metadata.name == "k"
    assert created.status.phase == "Pending"

    seen: list[tuple[str, str | None]] = []
    stream = watch.Watch().stream(
        core.list_namespaced_pod,
        kube_namespace,
        label_selector="who=k",
        resource_version=start,
        timeout_seconds=int(WAIT),
    )
    async with asyncio.timeout(WAIT), stream:
        async for event in stream:
            seen.append((event["type"], event["object"].status.phase))
            if event["object"].status.phase == "Running":
                break
    assert seen[0] == ("ADDED", "Pending")
    assert seen[-1] == ("MODIFIED", "Running")

    pods = await core.list_namespaced_pod(kube_namespace, label_selector="who=k")
    assert [p.metadata.name for p in pods.items] == ["k"]
    assert pods.items[0].status.container_statuses[0].ready is True

    running = await core.read_namespaced_pod("k", kube_namespace)
    deleting = await core.delete_namespaced_pod("k", kube_namespace, grace_period_seconds=5)
    assert deleting.metadata.deletion_timestamp is not None
    assert deleting.metadata.deletion_grace_period_seconds == 5

    stream = watch.Watch().stream(
        core.list_namespaced_pod,
        kube_namespace,
        field_selector="metadata.name=k",
        resource_version=running.metadata.resource_version,
        timeout_seconds=int(WAIT),
    )
    kinds = []
    async with asyncio.timeout(WAIT), stream:
        async for event in stream:
            kinds.append(event["type"])
            if event["type"] == "DELETED":
                break
    assert kinds[-1] == "DELETED" and set(kinds[:-1]) == {"MODIFIED"}
    with pytest.raises(ApiException) as gone:
        await core.read_namespaced_pod("k", kube_namespace)
    assert gone.value.status == 404


async def test_api_errors(core: client.CoreV1Api, kube_namespace: str, busybox: str) -> None:
    await core.create_namespaced_pod(kube_namespace, pod_manifest("e", busybox, ["true"]))
    with pytest.raises(ApiException) as error:
        await core.create_namespaced_pod(kube_namespace, pod_manifest("e", busybox, ["true"]))
    assert error.value.status == 409
    with pytest.raises(ApiException) as error:
        await core.create_namespaced_pod(
            kube_namespace, pod_manifest("x", busybox, ["true"], restart_policy="No")
        )
    assert error.value.status == 422
    status = json.loads(error.value.body)
    assert status["reason"] == "Invalid"
    assert status["details"]["causes"] == [
        {
            "reason": "FieldValueNotSupported",
            "message": 'Unsupported value: "No": supported values: "Always", "OnFailure", "Never"',
            "field": "spec.restartPolicy",
        }
    ]
    with pytest.raises(ApiException) as error:
        await core.delete_namespaced_pod("nobody", kube_namespace)
    assert error.value.status == 404


async def test_dry_run_and_conflicts(core: client.CoreV1Api, kube_namespace: str) -> None:
    body = {"metadata": {"name": "cm"}, "data": {"a": "1"}}
    dry = await core.create_namespaced_config_map(kube_namespace, body, dry_run="All")
    assert dry.metadata.uid and not dry.metadata.resource_version
    with pytest.raises(ApiException):
        await core.read_namespaced_config_map("cm", kube_namespace)
    real = await core.create_namespaced_config_map(kube_namespace, body)
    real.data["a"] = "2"
    updated = await core.replace_namespaced_config_map("cm", kube_namespace, real)
    assert int(updated.metadata.resource_version) > int(real.metadata.resource_version)
    # A write based on the old version conflicts.
    real.data["a"] = "3"
    with pytest.raises(ApiException) as error:
        await core.replace_namespaced_config_map("cm", kube_namespace, real)
    assert error.value.status == 409
    assert "the object has been modified" in error.value.body
    patched = await core.patch_namespaced_config_map("cm", kube_namespace, {"data": {"b": "x"}})
    assert patched.data == {"a": "2", "b": "x"}


async def test_watch_from_a_compacted_version_is_gone(
    core: client.CoreV1Api, kube_namespace: str, kube_apiserver: KubeApiServerThread
) -> None:
    old = (await core.list_namespaced_pod(kube_namespace)).metadata.resource_version
    await core.create_namespaced_config_map(kube_namespace, {"metadata": {"name": "bump"}})
    kube_apiserver.compact()
    stream = watch.Watch().stream(
        core.list_namespaced_pod, kube_namespace, resource_version=old, timeout_seconds=int(WAIT)
    )
    with pytest.raises(ApiException) as error:
        async with asyncio.timeout(WAIT), stream:
            async for _event in stream:
                pass
    assert error.value.status == 410


async def test_pods_across_namespaces(core: client.CoreV1Api, kube_namespace: str, busybox: str) -> None:
    await start_pod(
        core, kube_namespace, pod_manifest("here", busybox, SERVE, labels={"mark": kube_namespace})
    )
    everywhere = await core.list_pod_for_all_namespaces(label_selector=f"mark={kube_namespace}")
    assert [(p.metadata.namespace, p.metadata.name) for p in everywhere.items] == [(kube_namespace, "here")]
    page = await core.list_namespaced_service_account(kube_namespace, limit=1)
    assert [sa.metadata.name for sa in page.items] == ["default"]


async def test_exec_through_the_library(
    kube_apiserver: KubeApiServerThread, core: client.CoreV1Api, kube_namespace: str, busybox: str
) -> None:
    await start_pod(core, kube_namespace, pod_manifest("lib", busybox, SERVE))
    configuration = client.Configuration()
    await config.load_kube_config(
        config_file=str(kube_apiserver.kubeconfig), client_configuration=configuration
    )
    async with WsApiClient(configuration) as ws_client:
        ws_core = client.CoreV1Api(ws_client)
        output = await ws_core.connect_get_namespaced_pod_exec(
            "lib",
            kube_namespace,
            command=["sh", "-c", "echo out; echo err >&2"],
            stdout=True,
            stderr=True,
            stdin=False,
            tty=False,
        )
    assert sorted(output.splitlines()) == ["err", "out"]
