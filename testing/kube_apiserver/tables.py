"""Server-side printing: the meta.k8s.io/v1 Table that ``kubectl get`` asks for.

kubectl sends ``Accept: application/json;as=Table;v=v1;g=meta.k8s.io`` and
prints the cells it gets back, so the columns and the pod STATUS logic here
follow the real server's printers (a subset of ``printPod``).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from .resources import ResourceType

Obj = dict[str, Any]

_NAME_COLUMN = {
    "name": "Name",
    "type": "string",
    "format": "name",
    "priority": 0,
    "description": "Name must be unique within a namespace. Is required when creating "
    "resources, although some resources may allow a client to request the "
    "generation of an appropriate name automatically.",
}
_AGE_COLUMN = {
    "name": "Age",
    "type": "string",
    "format": "",
    "priority": 0,
    "description": "CreationTimestamp is a timestamp representing the server time when this "
    "object was created.",
}


def _column(name: str, kind: str, description: str, priority: int = 0) -> Obj:
    return {"name": name, "type": kind, "format": "", "description": description, "priority": priority}


_POD_COLUMNS = [
    _NAME_COLUMN,
    _column("Ready", "string", "The aggregate readiness state of this pod for accepting traffic."),
    _column("Status", "string", "The aggregate status of the containers in this pod."),
    _column(
        "Restarts",
        "string",
        "The number of times the containers in this pod have been "
        "restarted and when the last container in this pod has restarted.",
    ),
    _AGE_COLUMN,
    _column(
        "IP",
        "string",
        "IP address allocated to the pod. Routable at least within the cluster. Empty if not yet allocated.",
        1,
    ),
    _column("Node", "string", "NodeName is a request to schedule this pod onto a specific node.", 1),
    _column(
        "Nominated Node",
        "string",
        "nominatedNodeName is set only when this pod preempts other pods on the node.",
        1,
    ),
    _column(
        "Readiness Gates",
        "string",
        "If specified, all readiness gates will be evaluated for pod readiness.",
        1,
    ),
]

_NAMESPACE_COLUMNS = [
    _NAME_COLUMN,
    _column("Status", "string", "The status of the namespace"),
    _AGE_COLUMN,
]

_DEFAULT_COLUMNS = [
    _NAME_COLUMN,
    {
        "name": "Created At",
        "type": "date",
        "format": "",
        "priority": 0,
        "description": "CreationTimestamp is a timestamp representing the server time when this "
        "object was created.",
    },
]


def human_duration(seconds: float) -> str:
    """The short age kubectl shows (``k8s.io/apimachinery/pkg/util/duration.HumanDuration``)."""
    if seconds < -1:
        return "<invalid>"
    if seconds < 0:
        return "0s"
    secs = int(seconds)
    if secs < 120:
        return f"{secs}s"
    minutes = secs // 60
    if minutes < 10:
        rest = secs % 60
        return f"{minutes}m{rest}s" if rest else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    hours = minutes // 60
    if hours < 8:
        rest = minutes % 60
        return f"{hours}h{rest}m" if rest else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        rest = hours % 24
        return f"{hours // 24}d{rest}h" if rest else f"{hours // 24}d"
    days = hours // 24
    if days < 365 * 2:
        return f"{days}d"
    return f"{days // 365}y"


def _age(obj: Obj) -> str:
    stamp = obj.get("metadata", {}).get("creationTimestamp")
    if not stamp:
        return "<unknown>"
    created = dt.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)
    return human_duration((dt.datetime.now(dt.UTC) - created).total_seconds())


def pod_status_reason(pod: Obj) -> str:
    """The STATUS column of ``kubectl get pods``, as the server's pod printer computes it."""
    status = pod.get("status") or {}
    reason = status.get("reason") or status.get("phase") or "Unknown"
    has_running = False
    for container in reversed(status.get("containerStatuses") or []):
        state = container.get("state") or {}
        if state.get("waiting", {}).get("reason"):
            reason = state["waiting"]["reason"]
        elif "terminated" in state:
            terminated = state["terminated"]
            if terminated.get("reason"):
                reason = terminated["reason"]
            elif terminated.get("signal"):
                reason = f"Signal:{terminated['signal']}"
            else:
                reason = f"ExitCode:{terminated.get('exitCode', 0)}"
        elif container.get("ready") and "running" in state:
            has_running = True
    if reason == "Completed" and has_running:
        reason = "Running"
    if pod.get("metadata", {}).get("deletionTimestamp"):
        reason = "Terminating"
    return reason


def _pod_cells(pod: Obj) -> list[Any]:
    spec = pod.get("spec") or {}
    status = pod.get("status") or {}
    statuses = status.get("containerStatuses") or []
    ready = sum(1 for c in statuses if c.get("ready"))
    restarts = sum(int(c.get("restartCount", 0)) for c in statuses)
    return [
        pod["metadata"]["name"],
        f"{ready}/{len(spec.get('containers') or [])}",
        pod_status_reason(pod),
        restarts,
        _age(pod),
        status.get("podIP") or "<none>",
        spec.get("nodeName") or "<none>",
        status.get("nominatedNodeName") or "<none>",
        "<none>",
    ]


def _row_object(obj: Obj, include: str) -> Obj | None:
    if include == "None":
        return None
    if include == "Object":
        return obj
    return {
        "kind": "PartialObjectMetadata",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": obj.get("metadata", {}),
    }


def columns_for(rtype: ResourceType) -> list[Obj]:
    """The column definitions of a resource's table."""
    if rtype.kind == "Pod":
        return _POD_COLUMNS
    if rtype.kind == "Namespace":
        return _NAMESPACE_COLUMNS
    return _DEFAULT_COLUMNS


def row_for(rtype: ResourceType, obj: Obj, include: str = "Metadata") -> Obj:
    """One table row: its cells and the object (or its metadata) it came from."""
    if rtype.kind == "Pod":
        cells = _pod_cells(obj)
    elif rtype.kind == "Namespace":
        cells = [obj["metadata"]["name"], (obj.get("status") or {}).get("phase", ""), _age(obj)]
    else:
        cells = [obj["metadata"]["name"], obj["metadata"].get("creationTimestamp")]
    row: Obj = {"cells": cells}
    embedded = _row_object(obj, include)
    if embedded is not None:
        row["object"] = embedded
    return row


def to_table(
    rtype: ResourceType,
    objects: list[Obj],
    list_meta: Obj,
    include: str = "Metadata",
    *,
    with_columns: bool = True,
) -> Obj:
    """A Table of ``objects``; ``with_columns=False`` for watch events after the first."""
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": list_meta,
        "columnDefinitions": columns_for(rtype) if with_columns else None,
        "rows": [row_for(rtype, obj, include) for obj in objects],
    }
