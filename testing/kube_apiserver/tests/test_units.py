"""The test server's pure parts, checked without a server: selectors, patches, codecs."""

from __future__ import annotations

from decimal import Decimal

import pytest

from testing.kube_apiserver.container_config import docker_config, parse_quantity
from testing.kube_apiserver.exec_ws import V4, V5, decode_frame, exit_status
from testing.kube_apiserver.patch import json_patch, merge_patch, strategic_merge_patch
from testing.kube_apiserver.selectors import parse_field_selector, parse_label_selector
from testing.kube_apiserver.status import ApiError
from testing.kube_apiserver.tables import human_duration, pod_status_reason

LABELS = {"app": "web", "tier": "front", "n": "7"}


@pytest.mark.parametrize(
    ("selector", "matches"),
    [
        ("", True),
        ("app=web", True),
        ("app==web,tier=front", True),
        ("app=db", False),
        ("app!=db", True),
        ("missing!=x", True),
        ("app in (db, web)", True),
        ("app notin (web)", False),
        ("missing notin (web)", True),
        ("tier", True),
        ("!tier", False),
        ("!missing", True),
        ("n>5,n<8", True),
        ("n>7", False),
        ("app=web,!missing,tier in (front)", True),
    ],
)
def test_label_selectors(selector: str, matches: bool) -> None:
    assert parse_label_selector(selector).matches(LABELS) is matches


@pytest.mark.parametrize(
    "selector", ["app in web", "app=", "=web", "app in (a", "n>x", "app=web,", "bad key=1"]
)
def test_malformed_label_selectors(selector: str) -> None:
    if selector == "app=":
        # An empty value is legal and matches an empty label only.
        assert not parse_label_selector(selector).matches(LABELS)
        assert parse_label_selector(selector).matches({"app": ""})
        return
    with pytest.raises(ApiError) as error:
        parse_label_selector(selector)
    assert error.value.code == 400


def test_field_selectors() -> None:
    supported = frozenset({"metadata.name", "status.phase"})
    selector = parse_field_selector(r"metadata.name=a\,b,status.phase!=Failed", supported)
    assert selector.matches({"metadata.name": "a,b", "status.phase": "Running"})
    assert not selector.matches({"metadata.name": "a,b", "status.phase": "Failed"})
    assert selector.exact_name() == "a,b"
    with pytest.raises(ApiError) as error:
        parse_field_selector("spec.x=1", supported)
    assert error.value.message == "field label not supported: spec.x"


def test_merge_and_json_patch() -> None:
    target = {"a": 1, "b": {"c": 2, "d": 3}, "l": [1, 2]}
    assert merge_patch(target, {"b": {"c": None, "e": 4}, "l": [3]}) == {
        "a": 1,
        "b": {"d": 3, "e": 4},
        "l": [3],
    }
    patched = json_patch(
        target,
        [
            {"op": "add", "path": "/l/-", "value": 9},
            {"op": "replace", "path": "/b/c", "value": 20},
            {"op": "remove", "path": "/a"},
            {"op": "copy", "from": "/b/d", "path": "/z"},
        ],
    )
    assert patched == {"b": {"c": 20, "d": 3}, "l": [1, 2, 9], "z": 3}
    with pytest.raises(ApiError) as failed:
        json_patch(target, [{"op": "test", "path": "/a", "value": 2}])
    assert failed.value.code == 422


def test_strategic_merge_patch_merges_keyed_lists() -> None:
    target = {
        "spec": {
            "containers": [
                {"name": "a", "image": "x:1", "env": [{"name": "K", "value": "1"}]},
                {"name": "b", "image": "y:1"},
            ],
            "finalizers": ["one"],
        }
    }
    patch = {
        "spec": {
            "$setElementOrder/containers": [{"name": "a"}, {"name": "b"}],
            "containers": [
                {"name": "a", "image": "x:2", "env": [{"name": "L", "value": "2"}]},
                {"name": "b", "$patch": "delete"},
            ],
            "finalizers": ["two"],
        }
    }
    assert strategic_merge_patch(target, patch) == {
        "spec": {
            "containers": [
                {
                    "name": "a",
                    "image": "x:2",
                    "env": [{"name": "K", "value": "1"}, {"name": "L", "value": "2"}],
                }
            ],
            "finalizers": ["one", "two"],
        }
    }
    # Unkeyed lists are replaced, and null deletes.
    assert strategic_merge_patch({"args": ["a"], "x": 1}, {"args": ["b"], "x": None}) == {"args": ["b"]}


def test_exec_frames() -> None:
    assert decode_frame(b"\x00abc", V5).kind == "stdin"
    assert decode_frame(b"\x00", V5).kind == "ignore"  # empty stdin is not EOF
    assert decode_frame(b"", V5).kind == "ignore"
    resize = decode_frame(b'\x04{"Width":80,"Height":24}', V4)
    assert (resize.kind, resize.width, resize.height) == ("resize", 80, 24)
    assert decode_frame(b"\x04not json", V5).kind == "ignore"
    close = decode_frame(b"\xff\x00", V5)
    assert (close.kind, close.channel) == ("close", 0)
    assert decode_frame(b"\xff\x00", V4).kind == "ignore"  # v4 cannot close stdin
    assert exit_status(0) == {"metadata": {}, "status": "Success"}
    assert exit_status(2)["details"] == {"causes": [{"reason": "ExitCode", "message": "2"}]}


def test_printing() -> None:
    seconds = (5, 119, 130, 3600, 9000, 12600, 90000, 400 * 86400)
    assert [human_duration(s) for s in seconds] == [
        "5s",
        "119s",
        "2m10s",
        "60m",
        "150m",
        "3h30m",
        "25h",
        "400d",
    ]
    pod = {
        "metadata": {},
        "status": {
            "phase": "Pending",
            "containerStatuses": [{"state": {"waiting": {"reason": "ImagePullBackOff"}}}],
        },
    }
    assert pod_status_reason(pod) == "ImagePullBackOff"
    pod["metadata"]["deletionTimestamp"] = "2024-01-01T00:00:00Z"
    assert pod_status_reason(pod) == "Terminating"


def test_container_config() -> None:
    pod = {
        "metadata": {"name": "p", "namespace": "n", "uid": "u"},
        "spec": {"securityContext": {"runAsUser": 1000, "runAsGroup": 1000}},
    }
    container = {
        "name": "c",
        "image": "img",
        "command": ["sh"],
        "resources": {"limits": {"memory": "512Mi", "cpu": "500m"}},
        "securityContext": {"runAsUser": 2000, "capabilities": {"drop": ["ALL"]}},
    }
    config = docker_config(pod, container, instance="i", pid=1, volumes={})
    # command replaces the entrypoint and drops the image's CMD, as Kubernetes does.
    assert (config["Entrypoint"], config["Cmd"]) == (["sh"], [])
    assert config["User"] == "2000:1000"
    assert config["HostConfig"]["NetworkMode"] == "none"
    assert config["HostConfig"]["Memory"] == 512 * 2**20
    assert config["HostConfig"]["NanoCpus"] == 500_000_000
    assert config["HostConfig"]["CapDrop"] == ["ALL"]
    assert parse_quantity("1Gi") == Decimal(2**30)
    assert parse_quantity("2k") == Decimal(2000)
