"""Lifecycle of Kubernetes environments: failures, reaping after a crash, an API server that goes away.

Through the real gateway and OpenSSH client where the user's view matters,
on the backend directly where the pods do.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import textwrap
from pathlib import Path

import pytest
from kubernetes_asyncio import watch

from pairpod.backends.kubernetes import KubernetesBackend
from pairpod.errors import ConfigError
from testing.kube_apiserver.fixture import KubeApiServerThread, kube_apiserver, kube_namespace
from testing.kube_apiserver.kubetools import SERVE, pod_manifest
from tests.conftest import MakeGateway
from tests.support.identity import identity, new_instance_id
from tests.support.images import busybox_image
from tests.support.kube_env import (
    WAIT,
    ApiRelay,
    core_api,
    kubernetes_config,
    kubernetes_overrides,
    pods,
    running_backend,
    wait_pod_gone,
)

__all__ = ["kube_apiserver", "kube_namespace"]

MISSING_IMAGE = "pairpod-test/does-not-exist:1"


def test_missing_image_fails_the_login_with_the_reason_and_leaves_no_pod(
    make_gateway: MakeGateway, kube_apiserver: KubeApiServerThread, kube_namespace: str
) -> None:
    # The test cluster cannot pull: ErrImagePull, then ImagePullBackOff, until the start timeout.
    gw = make_gateway(
        kubernetes_overrides(
            kube_apiserver, kube_namespace, image=MISSING_IMAGE, timeouts={"start": "3s", "stop": "10s"}
        )
    )
    result = gw.ssh("true", options=["-tt"])
    # On a terminal: told of the pod's progress while waiting, then why it failed.
    assert b"pairpod: environment: " in result.stderr.partition(b"could not be pulled")[0]
    assert result.returncode != 0
    assert (
        f"environment image {MISSING_IMAGE} could not be pulled (ImagePullBackOff)".encode() in result.stderr
        or f"environment image {MISSING_IMAGE} could not be pulled (ErrImagePull)".encode() in result.stderr
    ), result.stderr

    async def left() -> list[str]:
        async with core_api(kube_apiserver) as core:
            return [p.metadata.name for p in await pods(core, kube_namespace)]

    assert asyncio.run(left()) == []


def test_api_server_down_then_back_without_a_restart(
    make_gateway: MakeGateway, kube_apiserver: KubeApiServerThread, kube_namespace: str, tmp_path: Path
) -> None:
    relay = ApiRelay(kube_apiserver, tmp_path)
    try:
        relay.down()
        # Down at start-up: the gateway serves anyway.
        gw = make_gateway(
            kubernetes_overrides(
                kube_apiserver, kube_namespace, image="busybox", kubeconfig=str(relay.kubeconfig)
            )
        )
        refused = gw.ssh("echo hi")
        assert refused.returncode != 0
        assert b"backend unavailable, try again later" in refused.stderr
        relay.up()
        served = gw.ssh("echo hi")
        assert (served.returncode, served.stdout) == (0, b"hi\n"), served.stderr
        # Down while serving, then back.
        relay.down()
        assert b"backend unavailable" in gw.ssh("true").stderr
        relay.up()
        assert gw.ssh("echo again").stdout == b"again\n"
    finally:
        relay.close()


_CRASHING_GATEWAY = textwrap.dedent("""
    import asyncio, json, sys
    from pairpod.backends.base import Identity
    from pairpod.backends.kubernetes import KubernetesBackend
    from pairpod.config import validate_config

    async def main():
        config = validate_config(json.loads(sys.argv[2]), "child config")
        backend = KubernetesBackend(config, sys.argv[1])
        await backend.start()
        envs = [await backend.open(Identity(f"user{n}", f"c{n}", "127.0.0.1:1", config))
                for n in range(2)]
        print(json.dumps([env.pod.name for env in envs]), flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())
""")


async def test_pods_left_by_a_crash_are_reaped_at_the_next_start(
    kube_apiserver: KubeApiServerThread, kube_namespace: str
) -> None:
    config = kubernetes_config(kube_apiserver, kube_namespace, image="busybox")
    instance = new_instance_id()
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _CRASHING_GATEWAY,
        instance,
        json.dumps(config.model_dump(mode="json")),
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert child.stdout is not None
        names = json.loads(await asyncio.wait_for(child.stdout.readline(), WAIT))
    finally:
        child.send_signal(signal.SIGKILL)
        await child.wait()
    async with core_api(kube_apiserver) as core:
        # Another instance's pod must survive the reaping.
        other = pod_manifest(
            "other-gateway",
            busybox_image(),
            SERVE,
            labels={"pairpod.managed": "true", "pairpod.instance": new_instance_id()},
        )
        await core.create_namespaced_pod(kube_namespace, other)
        left = sorted(p.metadata.name for p in await pods(core, kube_namespace, instance=instance))
        assert left == sorted(names)  # a crash removes nothing
        async with running_backend(config, instance) as backend:
            for name in names:
                await wait_pod_gone(core, kube_namespace, name)
            assert backend.live_names() == frozenset()
        assert [p.metadata.name for p in await pods(core, kube_namespace)] == ["other-gateway"]


class QuickReaper(KubernetesBackend):
    """Reaps every fraction of a second, so the periodic reaping shows within a test."""

    reap_interval = 0.2


async def test_periodic_reaping_spares_live_pods(
    kube_apiserver: KubeApiServerThread, kube_namespace: str
) -> None:
    config = kubernetes_config(kube_apiserver, kube_namespace, image="busybox")
    backend = QuickReaper(config, new_instance_id())
    await backend.start()
    try:
        env = await backend.open(identity(config))
        async with core_api(kube_apiserver) as core:
            stray = pod_manifest(
                "stray", busybox_image(), SERVE, labels={"pairpod.instance": backend.instance_id}
            )
            created = await core.create_namespaced_pod(kube_namespace, stray)
            stream = watch.Watch().stream(
                core.list_namespaced_pod,
                kube_namespace,
                resource_version=created.metadata.resource_version,
                timeout_seconds=int(WAIT),
            )
            async with asyncio.timeout(WAIT), stream:
                async for event in stream:
                    if event["object"].metadata.name == "stray" and event["type"] == "DELETED":
                        break
            assert [p.metadata.name for p in await pods(core, kube_namespace)] == [env.pod.name]
        await env.close()
    finally:
        await backend.stop()


async def test_cancelled_start_and_slow_stop_leave_nothing(
    kube_apiserver: KubeApiServerThread, kube_namespace: str
) -> None:
    # The idle command ignores TERM: deletion waits timeouts.stop, then forces.
    stubborn = ["/bin/sh", "-c", "trap '' TERM; while :; do sleep 1; done"]
    config = kubernetes_config(
        kube_apiserver,
        kube_namespace,
        image="busybox",
        idle_command=stubborn,
        timeouts={"start": "60s", "stop": "1s"},
    )
    async with running_backend(config) as backend, core_api(kube_apiserver) as core:
        env = await backend.open(identity(config))
        await env.close()
        assert await pods(core, kube_namespace) == []

        # A login given up on while its pod is starting: the pod goes too.
        listing = await core.list_namespaced_pod(kube_namespace)
        opening = asyncio.ensure_future(backend.open(identity(config)))
        stream = watch.Watch().stream(
            core.list_namespaced_pod,
            kube_namespace,
            resource_version=listing.metadata.resource_version,
            timeout_seconds=int(WAIT),
        )
        async with asyncio.timeout(WAIT), stream:
            async for event in stream:
                if event["type"] == "ADDED":
                    break
        opening.cancel()
        with pytest.raises(asyncio.CancelledError):
            await opening
        assert await pods(core, kube_namespace) == []
        assert backend.live_names() == frozenset()


async def test_bad_template_or_credentials_are_config_errors(
    kube_apiserver: KubeApiServerThread, kube_namespace: str, tmp_path: Path
) -> None:
    typo = kubernetes_config(kube_apiserver, kube_namespace, pod={"spec": {"securityContex": {}}})
    with pytest.raises(ConfigError) as rejected:
        await KubernetesBackend(typo, new_instance_id()).start()
    assert "kubernetes.pod" in str(rejected.value) and "securityContex" in str(rejected.value)
    missing = kubernetes_config(kube_apiserver, kube_namespace, kubeconfig=str(tmp_path / "nope"))
    with pytest.raises(ConfigError) as unreadable:
        await KubernetesBackend(missing, new_instance_id()).start()
    assert "kubernetes.kubeconfig" in str(unreadable.value)


async def test_a_gateway_in_a_pod_reaps_what_an_earlier_run_in_that_pod_left(
    kube_apiserver: KubeApiServerThread, kube_namespace: str
) -> None:
    config = kubernetes_config(kube_apiserver, kube_namespace, image="busybox")
    gateway_pod = {"name": "pairpod-gateway-0", "namespace": kube_namespace, "uid": "gw-uid-1"}

    def owned_by(name: str, uid: str) -> dict[str, object]:
        # Labelled by an earlier run of the gateway, whose instance id was another.
        manifest = pod_manifest(
            name,
            busybox_image(),
            SERVE,
            labels={"pairpod.managed": "true", "pairpod.instance": new_instance_id()},
        )
        manifest["metadata"]["ownerReferences"] = [
            {"apiVersion": "v1", "kind": "Pod", "name": "pairpod-gateway-0", "uid": uid}
        ]
        return manifest

    async with core_api(kube_apiserver) as core:
        await core.create_namespaced_pod(kube_namespace, owned_by("left-here", "gw-uid-1"))
        await core.create_namespaced_pod(kube_namespace, owned_by("other-replica", "gw-uid-2"))
        backend = KubernetesBackend(config, new_instance_id())
        backend.owner = gateway_pod  # as PAIRPOD_POD_* from the downward API would say
        await backend.start()
        try:
            await wait_pod_gone(core, kube_namespace, "left-here")
            env = await backend.open(identity(config))
            pod = await core.read_namespaced_pod(env.pod.name, kube_namespace)
            assert [(r.kind, r.name, r.uid) for r in pod.metadata.owner_references] == [
                ("Pod", "pairpod-gateway-0", "gw-uid-1")
            ]
            await env.close()
        finally:
            await backend.stop()
        assert [p.metadata.name for p in await pods(core, kube_namespace)] == ["other-replica"]
