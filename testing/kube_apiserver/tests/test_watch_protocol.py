"""Watch streams on the wire: resourceVersion, timeouts, bookmarks, 410, selectors."""

from __future__ import annotations

from typing import Any

from testing.kube_apiserver.fixture import KubeApiServerThread

from ..kubetools import RawApi


def _cm(name: str, **labels: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "labels": labels},
        "data": {"k": "v"},
    }


async def _create(raw: RawApi, namespace: str, name: str, **labels: str) -> dict[str, Any]:
    status, body = await raw.json(
        "POST", f"/api/v1/namespaces/{namespace}/configmaps", body=_cm(name, **labels)
    )
    assert status == 201, body
    return body


def _names(events: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(e["type"], e["object"]["metadata"].get("name", "")) for e in events]


async def test_replay_from_a_resource_version(raw: RawApi, kube_namespace: str) -> None:
    base = f"/api/v1/namespaces/{kube_namespace}/configmaps"
    first = await _create(raw, kube_namespace, "one")
    await _create(raw, kube_namespace, "two")
    status, _ = await raw.json("DELETE", f"{base}/one")
    assert status == 200
    # From "one"'s version: exactly what happened after it, in order.
    rv = first["metadata"]["resourceVersion"]
    events = await raw.watch(f"{base}?watch=1&resourceVersion={rv}", until=lambda ev: len(ev) == 2)
    assert _names(events) == [("ADDED", "two"), ("DELETED", "one")]
    deleted = events[1]["object"]
    assert int(deleted["metadata"]["resourceVersion"]) > int(
        events[0]["object"]["metadata"]["resourceVersion"]
    )
    # Without a version: the current state as ADDED events.
    events = await raw.watch(f"{base}?watch=true", until=lambda ev: len(ev) == 2)
    assert sorted(_names(events)) == [("ADDED", "kube-root-ca.crt"), ("ADDED", "two")]


async def test_timeout_ends_the_stream(raw: RawApi, kube_namespace: str) -> None:
    # An empty watch with a timeout ends by itself, cleanly, with no events.
    events = await raw.watch(f"/api/v1/namespaces/{kube_namespace}/pods?watch=true&timeoutSeconds=1")
    assert events == []


async def test_bookmarks(raw: RawApi, kube_namespace: str) -> None:
    _, listing = await raw.json("GET", f"/api/v1/namespaces/{kube_namespace}/pods")
    rv = listing["metadata"]["resourceVersion"]
    events = await raw.watch(
        f"/api/v1/namespaces/{kube_namespace}/pods?watch=true&allowWatchBookmarks=true&resourceVersion={rv}",
        until=lambda ev: ev[-1]["type"] == "BOOKMARK",
    )
    bookmark = events[-1]["object"]
    assert bookmark["kind"] == "Pod" and bookmark["apiVersion"] == "v1"
    assert int(bookmark["metadata"]["resourceVersion"]) >= int(rv)


async def test_send_initial_events(raw: RawApi, kube_namespace: str) -> None:
    await _create(raw, kube_namespace, "init")
    events = await raw.watch(
        f"/api/v1/namespaces/{kube_namespace}/configmaps?watch=true&sendInitialEvents=true"
        "&allowWatchBookmarks=true&resourceVersionMatch=NotOlderThan",
        until=lambda ev: ev[-1]["type"] == "BOOKMARK",
    )
    assert sorted(_names(events[:-1])) == [("ADDED", "init"), ("ADDED", "kube-root-ca.crt")]
    assert events[-1]["object"]["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}


async def test_compacted_version_is_an_error_event(
    raw: RawApi, kube_namespace: str, kube_apiserver: KubeApiServerThread
) -> None:
    old = await _create(raw, kube_namespace, "old")
    await _create(raw, kube_namespace, "new")
    compacted = kube_apiserver.compact()
    events = await raw.watch(
        f"/api/v1/namespaces/{kube_namespace}/configmaps?watch=true"
        f"&resourceVersion={old['metadata']['resourceVersion']}"
    )
    assert events == [
        {
            "type": "ERROR",
            "object": {
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Failure",
                "message": f"too old resource version: {old['metadata']['resourceVersion']} "
                f"({compacted + 1})",
                "reason": "Expired",
                "code": 410,
            },
        }
    ]


async def test_selector_transitions(raw: RawApi, kube_namespace: str) -> None:
    base = f"/api/v1/namespaces/{kube_namespace}/configmaps"
    start = (await raw.json("GET", base))[1]["metadata"]["resourceVersion"]
    await _create(raw, kube_namespace, "moving", team="a")
    await _create(raw, kube_namespace, "staying", team="b")

    async def relabel(team: str) -> None:
        status, body = await raw.json(
            "PATCH",
            f"{base}/moving",
            body={"metadata": {"labels": {"team": team}}},
            content_type="application/merge-patch+json",
        )
        assert status == 200, body

    await relabel("b")
    await relabel("a")
    status, _ = await raw.json("DELETE", f"{base}/moving")
    assert status == 200
    # Leaving the selection is a DELETED for this watch, entering it an ADDED.
    events = await raw.watch(
        f"{base}?watch=true&labelSelector=team%3Da&resourceVersion={start}", until=lambda ev: len(ev) == 4
    )
    assert _names(events) == [
        ("ADDED", "moving"),
        ("DELETED", "moving"),
        ("ADDED", "moving"),
        ("DELETED", "moving"),
    ]


async def test_watch_ends_when_the_client_leaves(
    raw: RawApi, kube_namespace: str, kube_apiserver: KubeApiServerThread
) -> None:
    store = kube_apiserver.server.store if kube_apiserver.server else None
    assert store is not None

    async def count() -> int:
        return store.watcher_count(kube_namespace)

    before = await kube_apiserver.acall(count())
    async with raw.session.get(
        f"{raw.url}/api/v1/namespaces/{kube_namespace}/pods?watch=true", ssl=raw.ssl
    ) as response:
        assert response.status == 200
        assert await kube_apiserver.acall(count()) == before + 1
    # The server notices the closed connection and drops the watcher.
    await kube_apiserver.acall(store.wait_watcher_count(before, kube_namespace))
