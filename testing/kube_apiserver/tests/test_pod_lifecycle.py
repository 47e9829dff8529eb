"""Pods as Docker containers: phases, image errors, restarts, security, deletion."""

from __future__ import annotations

import json
import subprocess
from typing import Any

from kubernetes_asyncio import client

from ..kubetools import (
    SERVE,
    Kubectl,
    pod_manifest,
    start_pod,
    wait_for_deletion,
    wait_for_pod,
    waiting_reason_is,
)
from ..kubetools import phase_is as phase


def docker_containers(pod_uid: str) -> list[dict[str, Any]]:
    """The Docker containers of a pod, as the engine reports them."""
    ids = subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"label=io.pairpod.test.kube-apiserver.pod-uid={pod_uid}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    if not ids:
        return []
    return json.loads(
        subprocess.run(["docker", "inspect", *ids], capture_output=True, text=True, check=True).stdout
    )


async def test_exit_codes_give_phases(core: client.CoreV1Api, kube_namespace: str, busybox: str) -> None:
    await core.create_namespaced_pod(kube_namespace, pod_manifest("ok", busybox, ["true"]))
    await core.create_namespaced_pod(kube_namespace, pod_manifest("bad", busybox, ["sh", "-c", "exit 4"]))
    ok = await wait_for_pod(core, kube_namespace, "ok", phase("Succeeded", "Failed"))
    bad = await wait_for_pod(core, kube_namespace, "bad", phase("Succeeded", "Failed"))
    assert ok.status.phase == "Succeeded"
    assert bad.status.phase == "Failed"
    done = ok.status.container_statuses[0].state.terminated
    assert (done.exit_code, done.reason) == (0, "Completed")
    failed = bad.status.container_statuses[0].state.terminated
    assert (failed.exit_code, failed.reason) == (4, "Error")
    ready = {c.type: (c.status, c.reason) for c in ok.status.conditions}
    assert ready["Ready"] == ("False", "PodCompleted")
    # An OnFailure pod that succeeds is done too.
    await core.create_namespaced_pod(
        kube_namespace, pod_manifest("once", busybox, ["true"], restart_policy="OnFailure")
    )
    once = await wait_for_pod(core, kube_namespace, "once", phase("Succeeded", "Failed"))
    assert once.status.phase == "Succeeded"


async def test_missing_image_is_never_pulled(core: client.CoreV1Api, kube_namespace: str) -> None:
    manifest = pod_manifest("nopull", "registry.invalid/nothing:1", ["true"])
    created = await core.create_namespaced_pod(kube_namespace, manifest)
    pulled = await wait_for_pod(core, kube_namespace, "nopull", waiting_reason_is("ErrImagePull"))
    assert "registry.invalid/nothing:1" in pulled.status.container_statuses[0].state.waiting.message
    backoff = await wait_for_pod(core, kube_namespace, "nopull", waiting_reason_is("ImagePullBackOff"))
    assert backoff.status.phase == "Pending"
    assert docker_containers(created.metadata.uid) == []
    events = await core.list_namespaced_event(
        kube_namespace, field_selector=f"involvedObject.uid={created.metadata.uid},type=Warning"
    )
    messages = [e.message for e in events.items]
    assert messages[0].startswith('Failed to pull image "registry.invalid/nothing:1"')
    assert messages[1] == "Error: ErrImagePull"


async def test_restart_policy_always_restarts(
    core: client.CoreV1Api, kube_namespace: str, busybox: str
) -> None:
    manifest = pod_manifest("crash", busybox, ["sh", "-c", "exit 1"], restart_policy="Always")
    await core.create_namespaced_pod(kube_namespace, manifest)
    crashed = await wait_for_pod(
        core,
        kube_namespace,
        "crash",
        lambda p: bool(p.status.container_statuses) and p.status.container_statuses[0].restart_count >= 2,
    )
    status = crashed.status.container_statuses[0]
    assert crashed.status.phase == "Running"
    assert status.last_state.terminated.exit_code == 1
    await wait_for_pod(core, kube_namespace, "crash", waiting_reason_is("CrashLoopBackOff"))


async def test_command_args_env_and_workdir(
    core: client.CoreV1Api, kube_namespace: str, busybox: str, kubectl: Kubectl
) -> None:
    manifest = pod_manifest("env", busybox, None)
    container = manifest["spec"]["containers"][0]
    # args without command run under the image's entrypoint (none: args is the command).
    container["args"] = ["sh", "-c", 'echo "$GREETING $POD_NAME $(pwd) $(hostname)"']
    container["env"] = [
        {"name": "GREETING", "value": "hello"},
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
    ]
    container["workingDir"] = "/tmp"
    await core.create_namespaced_pod(kube_namespace, manifest)
    await wait_for_pod(core, kube_namespace, "env", phase("Succeeded", "Failed"))
    assert kubectl.run("logs", "env").stdout == "hello env /tmp env\n"


async def test_security_context(
    core: client.CoreV1Api, kube_namespace: str, busybox: str, kubectl: Kubectl
) -> None:
    refused = pod_manifest("rootful", busybox, SERVE)
    refused["spec"]["securityContext"] = {"runAsNonRoot": True}
    await core.create_namespaced_pod(kube_namespace, refused)
    pod = await wait_for_pod(core, kube_namespace, "rootful", waiting_reason_is("CreateContainerConfigError"))
    assert "runAsNonRoot and image will run as root" in pod.status.container_statuses[0].state.waiting.message

    locked = pod_manifest("locked", busybox, SERVE)
    locked["spec"]["automountServiceAccountToken"] = False
    locked["spec"]["securityContext"] = {"runAsNonRoot": True, "runAsUser": 1000}
    locked["spec"]["containers"][0]["securityContext"] = {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    await start_pod(core, kube_namespace, locked)
    # The bounding set shows dropped capabilities even for a non-root user.
    script = (
        "id -u; grep -E '^(CapBnd|NoNewPrivs)' /proc/self/status; "
        "touch /x 2>/dev/null && echo writable || echo read-only"
    )
    out = kubectl.run("exec", "locked", "--", "sh", "-c", script).stdout.split()
    assert out == ["1000", "CapBnd:", "0000000000000000", "NoNewPrivs:", "1", "read-only"]
    stored = await core.read_namespaced_pod("locked", kube_namespace)
    # No token volume was added for a pod that opted out.
    assert not stored.spec.volumes


async def test_two_containers_share_an_empty_dir(
    core: client.CoreV1Api, kube_namespace: str, busybox: str, kubectl: Kubectl
) -> None:
    manifest = pod_manifest("pair", busybox, SERVE)
    first = manifest["spec"]["containers"][0]
    first["volumeMounts"] = [{"name": "scratch", "mountPath": "/scratch"}]
    second = {**first, "name": "side"}
    manifest["spec"]["containers"].append(second)
    manifest["spec"]["volumes"] = [{"name": "scratch", "emptyDir": {}}]
    pod = await start_pod(core, kube_namespace, manifest)
    assert [c.ready for c in pod.status.container_statuses] == [True, True]
    kubectl.run("exec", "pair", "-c", "main", "--", "sh", "-c", "echo shared > /scratch/f")
    assert kubectl.run("exec", "pair", "-c", "side", "--", "cat", "/scratch/f").stdout == "shared\n"
    ambiguous = kubectl.run("exec", "pair", "--", "true", check=False)
    assert ambiguous.returncode == 0  # kubectl picks the first container and says so
    assert 'Defaulted container "main"' in ambiguous.stderr


async def test_deletion_honours_the_grace_period(
    core: client.CoreV1Api, kube_namespace: str, busybox: str
) -> None:
    # PID 1 ignores SIGTERM here, so only the SIGKILL after the grace period ends it.
    stubborn = pod_manifest("stubborn", busybox, ["sleep", "3600"], grace=1)
    pod = await start_pod(core, kube_namespace, stubborn)
    assert len(docker_containers(pod.metadata.uid)) == 1
    await core.delete_namespaced_pod("stubborn", kube_namespace)
    final = await wait_for_pod(
        core,
        kube_namespace,
        "stubborn",
        lambda p: p.status.container_statuses[0].state.terminated is not None,
    )
    assert final.metadata.deletion_timestamp is not None
    assert final.status.container_statuses[0].state.terminated.exit_code == 137
    await wait_for_deletion(core, kube_namespace, "stubborn")
    assert docker_containers(pod.metadata.uid) == []


async def test_force_delete_during_graceful_delete(
    core: client.CoreV1Api, kube_namespace: str, busybox: str
) -> None:
    # Ignores SIGTERM and has a long grace period: only a forced delete ends it soon.
    await start_pod(core, kube_namespace, pod_manifest("slow", busybox, ["sleep", "3600"], grace=600))
    marked = await core.delete_namespaced_pod("slow", kube_namespace)
    assert marked.metadata.deletion_grace_period_seconds == 600
    # A second graceful delete changes nothing...
    again = await core.delete_namespaced_pod("slow", kube_namespace)
    assert again.metadata.deletion_timestamp == marked.metadata.deletion_timestamp
    # ...a forced one removes the pod at once, and its container soon after.
    await core.delete_namespaced_pod("slow", kube_namespace, grace_period_seconds=0)
    await wait_for_deletion(core, kube_namespace, "slow")
    listing = await core.list_namespaced_pod(kube_namespace)
    assert listing.items == []
    # That the container went is checked by the namespace fixture on teardown,
    # which waits for every pod deletion of the namespace to finish.


async def test_runtime_refusal_is_create_container_error(
    core: client.CoreV1Api, kube_namespace: str, busybox: str
) -> None:
    # The engine refuses a memory limit this small when it creates the container.
    tiny = pod_manifest("tiny", busybox, SERVE)
    tiny["spec"]["containers"][0]["resources"] = {"limits": {"memory": "1Mi"}}
    await core.create_namespaced_pod(kube_namespace, tiny)
    pod = await wait_for_pod(core, kube_namespace, "tiny", waiting_reason_is("CreateContainerError"))
    assert "memory" in pod.status.container_statuses[0].state.waiting.message.lower()
    assert pod.status.phase == "Pending"
