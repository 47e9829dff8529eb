"""The pure parts of the Kubernetes backend: the pod it asks for, and how it reads a pod's status."""

from __future__ import annotations

from typing import Any

import pytest

from pairpod.backends.kubernetes import KubernetesBackend
from pairpod.backends.kubernetes.pod import (
    PodProgress,
    dns_label,
    explicit_non_root,
    label_value,
    merge_pod,
    pod_progress,
    start_failure,
)
from pairpod.config import validate_config
from pairpod.errors import EnvironmentStartFailed, ImagePullFailed, StartTimeout
from tests.support.identity import identity

Obj = dict[str, Any]


def _backend(**kubernetes: Any) -> KubernetesBackend:
    config = validate_config({"backend": "kubernetes", "kubernetes": kubernetes}, "test config")
    return KubernetesBackend(config, "inst01")


def _shell(pod: Obj) -> Obj:
    return next(c for c in pod["spec"]["containers"] if c["name"] == "shell")


def test_default_pod_is_hardened_and_labelled() -> None:
    backend = _backend()
    config = backend.config
    pod = backend.pod_manifest(
        config.kubernetes,
        name="p",
        identity=identity(config, "Alice O'Neil@x", conn="c0ffee"),
        mode="connection",
    )
    meta, spec, shell = pod["metadata"], pod["spec"], _shell(pod)
    assert meta["name"] == "p" and meta["namespace"] == "pairpod"
    assert meta["labels"] == {
        "pairpod.managed": "true",
        "pairpod.instance": "inst01",
        "pairpod.mode": "connection",
        "pairpod.connection": "c0ffee",
        "pairpod.user": "Alice_O_Neil_x",
    }
    assert meta["annotations"] == {"pairpod.user": "Alice O'Neil@x"}
    assert spec["restartPolicy"] == "Never"
    assert spec["automountServiceAccountToken"] is False
    assert spec["enableServiceLinks"] is False
    assert spec["hostname"] == "alice-o-neil-x"
    assert spec["terminationGracePeriodSeconds"] == 30
    assert spec["securityContext"] == {"seccompProfile": {"type": "RuntimeDefault"}}
    assert shell["image"] == "debian:bookworm-slim"
    assert shell["securityContext"] == {
        "runAsNonRoot": True,
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "capabilities": {"drop": ["ALL"]},
    }
    assert shell["resources"] == {"limits": {"memory": "512Mi", "cpu": "1", "ephemeral-storage": "1Gi"}}
    assert shell["command"][0] == "/bin/sh"
    assert "ownerReferences" not in meta


def test_template_merges_over_the_defaults_but_not_over_pairpods_own_fields() -> None:
    template = {
        "metadata": {"name": "mine", "labels": {"team": "a", "pairpod.instance": "someone-else"}},
        "spec": {
            "nodeSelector": {"pool": "users"},
            "containers": [
                {
                    "name": "shell",
                    "command": ["evil"],
                    "env": [{"name": "A", "value": "1"}],
                    "resources": {"requests": {"cpu": "100m"}},
                    "securityContext": {"capabilities": {"add": ["NET_BIND_SERVICE"]}},
                },
                {"name": "sidecar", "image": "helper:1"},
            ],
        },
    }
    backend = _backend(pod=template, limits={"memory": "1Gi", "cpu": None, "ephemeral_storage": None})
    pod = backend.pod_manifest(
        backend.config.kubernetes, name="p", identity=None, mode="connection", pool=True
    )
    shell = _shell(pod)
    assert pod["metadata"]["name"] == "p"
    assert pod["metadata"]["labels"]["team"] == "a"
    assert pod["metadata"]["labels"]["pairpod.instance"] == "inst01"
    assert pod["metadata"]["labels"]["pairpod.pool"] == "true"
    assert pod["spec"]["nodeSelector"] == {"pool": "users"}
    assert pod["spec"]["hostname"] == "pairpod"
    assert [c["name"] for c in pod["spec"]["containers"]] == ["shell", "sidecar"]
    assert shell["command"] != ["evil"]  # the idle command is pairpod's
    assert shell["env"] == [{"name": "A", "value": "1"}]
    assert shell["resources"] == {"limits": {"memory": "1Gi"}, "requests": {"cpu": "100m"}}
    assert shell["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}
    assert shell["securityContext"]["runAsNonRoot"] is True


def test_merge_by_name_and_replacement() -> None:
    base = {"a": {"b": 1, "c": [1, 2]}, "l": [{"name": "x", "v": 1}, {"name": "y"}]}
    over = {"a": {"c": [3]}, "l": [{"name": "y", "v": 2}, {"name": "z"}], "n": None}
    assert merge_pod(base, over) == {
        "a": {"b": 1, "c": [3]},
        "l": [{"name": "x", "v": 1}, {"name": "y", "v": 2}, {"name": "z"}],
        "n": None,
    }
    assert base["l"][1] == {"name": "y"}  # the inputs are left alone


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ({}, None),
        ({"spec": {"securityContext": {"runAsNonRoot": False}}}, False),
        (
            {
                "spec": {
                    "securityContext": {"runAsNonRoot": False},
                    "containers": [{"name": "shell", "securityContext": {"runAsNonRoot": True}}],
                }
            },
            True,
        ),
    ],
)
def test_explicit_non_root(template: Obj, expected: bool | None) -> None:
    assert explicit_non_root(template, "shell") is expected


def test_non_root_is_dropped_for_root_images_and_explicit_root_only() -> None:
    backend = _backend(image="img:1")
    settings = backend.config.kubernetes
    assert (
        _shell(backend.pod_manifest(settings, name="p", identity=None, mode="connection"))["securityContext"][
            "runAsNonRoot"
        ]
        is True
    )
    backend._root_images.add("img:1")
    assert (
        "runAsNonRoot"
        not in _shell(backend.pod_manifest(settings, name="p", identity=None, mode="connection"))[
            "securityContext"
        ]
    )
    explicit_root = _backend(pod={"spec": {"securityContext": {"runAsUser": 0}}})
    assert (
        "runAsNonRoot"
        not in _shell(
            explicit_root.pod_manifest(
                explicit_root.config.kubernetes, name="p", identity=None, mode="connection"
            )
        )["securityContext"]
    )
    pod_level = _backend(pod={"spec": {"securityContext": {"runAsNonRoot": False}}})
    pod = pod_level.pod_manifest(pod_level.config.kubernetes, name="p", identity=None, mode="connection")
    assert "runAsNonRoot" not in _shell(pod)["securityContext"]
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is False


def test_owner_reference_to_the_gateway_pod_in_its_own_namespace(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PAIRPOD_POD_NAME", "gw-0")
    monkeypatch.setenv("PAIRPOD_POD_NAMESPACE", "pairpod")
    monkeypatch.setenv("PAIRPOD_POD_UID", "1234")
    backend = _backend()
    pod = backend.pod_manifest(backend.config.kubernetes, name="p", identity=None, mode="connection")
    assert pod["metadata"]["ownerReferences"] == [
        {"apiVersion": "v1", "kind": "Pod", "name": "gw-0", "uid": "1234"}
    ]
    # An owner in another namespace would make the garbage collector delete the pod at once.
    elsewhere = _backend(namespace="users")
    pod = elsewhere.pod_manifest(elsewhere.config.kubernetes, name="p", identity=None, mode="connection")
    assert "ownerReferences" not in pod["metadata"]


def test_names_and_label_values() -> None:
    assert dns_label("Conn_ID.7") == "conn-id-7"
    assert dns_label("---") == "x"
    assert label_value("alice@example.com") == "alice_example.com"
    assert label_value("_x_") == "x"
    assert len(label_value("a" * 100)) == 63
    name = _backend().pod_name(identity(_backend().config, conn="ABCDEF012345"), "s1")
    assert name.startswith("pairpod-inst01-abcdef012345-") and name.endswith("-s1")
    assert len(name) <= 63


# --- reading a pod's status ------------------------------------------------------------------


def _pod(
    phase: str = "Pending", state: Obj | None = None, conditions: list[Obj] | None = None, **meta: Any
) -> Obj:
    status: Obj = {"phase": phase}
    if state is not None:
        status["containerStatuses"] = [
            {"name": "sidecar", "state": {"running": {}}},
            {"name": "shell", "state": state},
        ]
    if conditions is not None:
        status["conditions"] = conditions
    return {"metadata": {"name": "p", **meta}, "status": status}


def _waiting(reason: str, message: str = "") -> Obj:
    return {"waiting": {"reason": reason, "message": message}}


# Messages as kubelets and container runtimes write them.
NOT_FOUND = (
    "rpc error: code = NotFound desc = failed to pull and unpack image "
    '"docker.io/library/nope:1": failed to resolve reference "docker.io/library/nope:1": '
    "docker.io/library/nope:1: not found"
)
DENIED = (
    'failed to pull and unpack image "registry.example/private/x:1": failed to authorize: '
    "failed to fetch anonymous token: unexpected status: 401 Unauthorized"
)
FLAKY = (
    'rpc error: code = Unknown desc = failed to pull and unpack image "x:1": failed to copy: '
    "httpReadSeeker: failed open: dial tcp 10.0.0.1:443: i/o timeout"
)


@pytest.mark.parametrize(
    ("pod", "ready", "permanent", "reason"),
    [
        (_pod(), False, False, "Pending"),
        (
            _pod(
                conditions=[
                    {
                        "type": "PodScheduled",
                        "status": "False",
                        "reason": "Unschedulable",
                        "message": "0/3 nodes are available: 3 Insufficient memory.",
                    }
                ]
            ),
            False,
            False,
            "Unschedulable",
        ),
        (_pod(state=_waiting("ContainerCreating"), conditions=[]), False, False, "ContainerCreating"),
        (_pod(state=_waiting("ErrImagePull", NOT_FOUND)), False, True, "ErrImagePull"),
        (_pod(state=_waiting("ImagePullBackOff", DENIED)), False, True, "ImagePullBackOff"),
        (_pod(state=_waiting("ErrImagePull", FLAKY)), False, False, "ErrImagePull"),
        (
            _pod(state=_waiting("ImagePullBackOff", 'Back-off pulling image "x:1"')),
            False,
            False,
            "ImagePullBackOff",
        ),
        (
            _pod(state=_waiting("InvalidImageName", "couldn't parse image reference")),
            False,
            True,
            "InvalidImageName",
        ),
        (
            _pod(state=_waiting("CreateContainerConfigError", 'secret "s" not found')),
            False,
            True,
            "CreateContainerConfigError",
        ),
        (_pod("Running", {"running": {"startedAt": "2026-01-01T00:00:00Z"}}), True, False, "Running"),
        (_pod("Failed", {"terminated": {"exitCode": 127, "reason": "Error"}}), False, True, "Error"),
        (
            _pod("Running", {"running": {}}, deletionTimestamp="2026-01-01T00:00:00Z"),
            False,
            True,
            "Terminating",
        ),
    ],
)
def test_pod_progress(pod: Obj, ready: bool, permanent: bool, reason: str) -> None:
    progress = pod_progress(pod, "shell")
    assert (progress.ready, progress.permanent, progress.reason) == (ready, permanent, reason)


def test_the_kubelets_non_root_refusal_is_recognised() -> None:
    for message in (
        'container has runAsNonRoot and image will run as root (pod: "p_ns(uid)", container: shell)',
        "container has runAsNonRoot and image has non-numeric user (app), cannot verify user is non-root",
    ):
        progress = pod_progress(_pod(state=_waiting("CreateContainerConfigError", message)), "shell")
        assert progress.runs_as_root and progress.permanent


def test_start_failures_tell_the_user_why() -> None:
    pull = start_failure(PodProgress(reason="ImagePullBackOff", message="Back-off"), "p", "x:1", 120)
    assert isinstance(pull, ImagePullFailed)
    assert pull.user_message == "environment image x:1 could not be pulled (ImagePullBackOff)"
    assert "timeouts.start (120s)" in str(pull)
    full = start_failure(PodProgress(reason="Unschedulable", message="Insufficient memory"), "p", "x:1", 5)
    assert isinstance(full, StartTimeout)
    assert "no room" in full.user_message and "Insufficient memory" in str(full)
    slow = start_failure(PodProgress(reason="ContainerCreating"), "p", "x:1", 5)
    assert slow.user_message == "environment did not start in time (ContainerCreating)"
    root = start_failure(
        PodProgress(permanent=True, runs_as_root=True, reason="CreateContainerConfigError"), "p", "x:1"
    )
    assert isinstance(root, EnvironmentStartFailed)
    assert root.user_message == "environment image runs as root, which this gateway does not allow"
    exited = start_failure(
        pod_progress(_pod("Failed", {"terminated": {"exitCode": 1, "reason": "Error"}}), "shell"), "p", "x:1"
    )
    assert exited.user_message == "environment stopped right after starting (Error)"
    assert "exit code 1" in str(exited)
