"""Events about pods, as the scheduler and kubelet record them.

``kubectl describe pod`` shows these, and a client can read why a pod did not
start (``Failed``: the image could not be pulled) the way it would on a
cluster. One event per occurrence; upstream's aggregation into counts is not
reproduced.
"""

from __future__ import annotations

import time
from typing import Any

from .resources import ResourceType
from .store import Store, now_rfc3339

Obj = dict[str, Any]


class EventRecorder:
    """Writes core/v1 Events into the store."""

    def __init__(self, store: Store, events: ResourceType, node: str) -> None:
        self._store = store
        self._events = events
        self._node = node
        self._last_ns = 0

    def record(
        self,
        pod: Obj,
        reason: str,
        message: str,
        *,
        warning: bool = False,
        container: str | None = None,
        component: str = "kubelet",
    ) -> None:
        """Record one event about ``pod`` (skipped if its namespace is going away)."""
        meta = pod["metadata"]
        now = now_rfc3339()
        involved: Obj = {
            "kind": "Pod",
            "namespace": meta["namespace"],
            "name": meta["name"],
            "uid": meta["uid"],
            "apiVersion": "v1",
            "resourceVersion": meta.get("resourceVersion", ""),
        }
        if container is not None:
            involved["fieldPath"] = f"spec.containers{{{container}}}"
        source: Obj = {"component": component}
        if component == "kubelet":
            source["host"] = self._node
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": f"{meta['name']}.{self._stamp():x}", "namespace": meta["namespace"]},
            "involvedObject": involved,
            "reason": reason,
            "message": message,
            "source": source,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
            "type": "Warning" if warning else "Normal",
            "eventTime": None,
            "reportingComponent": component,
            "reportingInstance": self._node if component == "kubelet" else "",
        }
        self._store.create(self._events, event)

    def _stamp(self) -> int:
        """Upstream names events ``<object>.<hex nanoseconds>``: sorting by name is by time."""
        self._last_ns = max(time.time_ns(), self._last_ns + 1)
        return self._last_ns
