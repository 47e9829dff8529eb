"""The resource types this server knows, and the discovery documents built from them.

One table drives routing, storage and discovery, so a resource cannot be
served without being discoverable or the other way round: kubectl resolves
``pod``, ``po`` and ``pods.v1.`` through discovery before it sends a request.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass, field
from typing import Any

# Verbs a stored-only resource supports; pods add nothing here because exec and
# log are subresources with their own entries.
_ALL_VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")


@dataclass(frozen=True)
class ResourceType:
    """One REST resource: where it lives and what it is called."""

    group: str
    version: str
    kind: str
    plural: str
    singular: str
    namespaced: bool
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    subresources: tuple[str, ...] = ()
    verbs: tuple[str, ...] = _ALL_VERBS

    @property
    def api_version(self) -> str:
        """``v1`` for the core group, ``group/version`` otherwise."""
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def group_version(self) -> tuple[str, str]:
        """The (group, version) pair this resource is served under."""
        return (self.group, self.version)

    @property
    def list_kind(self) -> str:
        """The kind of a list of these objects, e.g. ``PodList``."""
        return f"{self.kind}List"

    @property
    def qualified(self) -> str:
        """``pods`` or ``deployments.apps``, as error messages spell it."""
        return f"{self.plural}.{self.group}" if self.group else self.plural


@dataclass(frozen=True)
class Subresource:
    """A subresource entry in an APIResourceList (``pods/exec``)."""

    name: str
    kind: str
    verbs: tuple[str, ...]
    group: str = ""
    version: str = ""


RESOURCES: tuple[ResourceType, ...] = (
    ResourceType(
        "", "v1", "Namespace", "namespaces", "namespace", False, ("ns",), subresources=("status", "finalize")
    ),
    ResourceType(
        "", "v1", "Pod", "pods", "pod", True, ("po",), ("all",), subresources=("exec", "log", "status")
    ),
    ResourceType("", "v1", "Node", "nodes", "node", False, ("no",), subresources=("status",)),
    ResourceType("", "v1", "Event", "events", "event", True, ("ev",)),
    ResourceType("", "v1", "ServiceAccount", "serviceaccounts", "serviceaccount", True, ("sa",)),
    ResourceType("", "v1", "ConfigMap", "configmaps", "configmap", True, ("cm",)),
    ResourceType("", "v1", "Secret", "secrets", "secret", True),
    ResourceType(
        "", "v1", "Service", "services", "service", True, ("svc",), ("all",), subresources=("status",)
    ),
    ResourceType(
        "apps",
        "v1",
        "Deployment",
        "deployments",
        "deployment",
        True,
        ("deploy",),
        ("all",),
        subresources=("status", "scale"),
    ),
    # Stored only (nothing runs them): what the deploy overlays apply.
    ResourceType(
        "apps",
        "v1",
        "StatefulSet",
        "statefulsets",
        "statefulset",
        True,
        ("sts",),
        ("all",),
        subresources=("status", "scale"),
    ),
    ResourceType(
        "policy", "v1", "PodDisruptionBudget", "poddisruptionbudgets", "poddisruptionbudget", True, ("pdb",)
    ),
    ResourceType(
        "networking.k8s.io", "v1", "NetworkPolicy", "networkpolicies", "networkpolicy", True, ("netpol",)
    ),
    ResourceType("rbac.authorization.k8s.io", "v1", "Role", "roles", "role", True),
    ResourceType("rbac.authorization.k8s.io", "v1", "RoleBinding", "rolebindings", "rolebinding", True),
    ResourceType("rbac.authorization.k8s.io", "v1", "ClusterRole", "clusterroles", "clusterrole", False),
    ResourceType(
        "rbac.authorization.k8s.io",
        "v1",
        "ClusterRoleBinding",
        "clusterrolebindings",
        "clusterrolebinding",
        False,
    ),
)

# Subresources as discovery lists them; verbs as a real API server reports.
_SUBRESOURCE_SHAPES: dict[tuple[str, str], Subresource] = {
    ("pods", "exec"): Subresource("pods/exec", "PodExecOptions", ("create", "get")),
    ("pods", "log"): Subresource("pods/log", "Pod", ("get",)),
    ("pods", "status"): Subresource("pods/status", "Pod", ("get", "patch", "update")),
    ("namespaces", "status"): Subresource("namespaces/status", "Namespace", ("get", "patch", "update")),
    ("namespaces", "finalize"): Subresource("namespaces/finalize", "Namespace", ("update",)),
    ("nodes", "status"): Subresource("nodes/status", "Node", ("get", "patch", "update")),
    ("services", "status"): Subresource("services/status", "Service", ("get", "patch", "update")),
    ("deployments", "status"): Subresource("deployments/status", "Deployment", ("get", "patch", "update")),
    ("statefulsets", "status"): Subresource("statefulsets/status", "StatefulSet", ("get", "patch", "update")),
    ("statefulsets", "scale"): Subresource(
        "statefulsets/scale", "Scale", ("get", "patch", "update"), group="autoscaling", version="v1"
    ),
    ("deployments", "scale"): Subresource(
        "deployments/scale", "Scale", ("get", "patch", "update"), group="autoscaling", version="v1"
    ),
}


@dataclass
class Registry:
    """Lookup of resource types by the ways requests and bodies name them."""

    types: tuple[ResourceType, ...] = RESOURCES
    _by_path: dict[tuple[str, str, str], ResourceType] = field(default_factory=dict)
    _by_kind: dict[tuple[str, str], ResourceType] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for rtype in self.types:
            self._by_path[(rtype.group, rtype.version, rtype.plural)] = rtype
            self._by_kind[(rtype.api_version, rtype.kind)] = rtype

    def by_path(self, group: str, version: str, plural: str) -> ResourceType | None:
        """The type served at ``/api(s)/<group>/<version>/<plural>``."""
        return self._by_path.get((group, version, plural))

    def by_kind(self, api_version: str, kind: str) -> ResourceType | None:
        """The type of a body with this apiVersion and kind."""
        return self._by_kind.get((api_version, kind))

    def group_versions(self) -> list[tuple[str, str]]:
        """Every (group, version) served, core first, in a stable order."""
        seen: list[tuple[str, str]] = []
        for rtype in self.types:
            if rtype.group_version not in seen:
                seen.append(rtype.group_version)
        return seen

    def in_group_version(self, group: str, version: str) -> list[ResourceType]:
        """The types served under one group/version."""
        return [t for t in self.types if t.group_version == (group, version)]


def api_resource_entries(rtype: ResourceType) -> list[dict[str, Any]]:
    """The APIResource entries of one type: the resource itself, then its subresources."""
    main: dict[str, Any] = {
        "name": rtype.plural,
        "singularName": rtype.singular,
        "namespaced": rtype.namespaced,
        "kind": rtype.kind,
        "verbs": list(rtype.verbs),
    }
    if rtype.short_names:
        main["shortNames"] = list(rtype.short_names)
    if rtype.categories:
        main["categories"] = list(rtype.categories)
    # Clients only compare this digest for cache invalidation; it is shaped
    # like the real one (base64 of 8 bytes of a hash).
    digest = hashlib.sha256(f"{rtype.api_version}/{rtype.kind}".encode()).digest()[:8]
    main["storageVersionHash"] = base64.b64encode(digest).decode()
    entries = [main]
    for sub in rtype.subresources:
        shape = _SUBRESOURCE_SHAPES[(rtype.plural, sub)]
        entry: dict[str, Any] = {
            "name": shape.name,
            "singularName": "",
            "namespaced": rtype.namespaced,
            "kind": shape.kind,
            "verbs": list(shape.verbs),
        }
        if shape.group:
            entry["group"] = shape.group
            entry["version"] = shape.version
        entries.append(entry)
    return entries


def api_resource_list(registry: Registry, group: str, version: str) -> dict[str, Any]:
    """GET /api/v1 or /apis/<group>/<version>: an APIResourceList."""
    resources: list[dict[str, Any]] = []
    for rtype in registry.in_group_version(group, version):
        resources.extend(api_resource_entries(rtype))
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": f"{group}/{version}" if group else version,
        "resources": resources,
    }


def api_versions(server_address: str) -> dict[str, Any]:
    """GET /api: the core group's versions."""
    return {
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    }


def api_group(group: str, versions: list[str]) -> dict[str, Any]:
    """One APIGroup entry (also the body of GET /apis/<group>)."""
    gv = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
    return {
        "kind": "APIGroup",
        "apiVersion": "v1",
        "name": group,
        "versions": gv,
        "preferredVersion": gv[0],
    }


def api_group_list(registry: Registry) -> dict[str, Any]:
    """GET /apis: every named group (the core group is at /api)."""
    groups: dict[str, list[str]] = {}
    for group, version in registry.group_versions():
        if group:
            groups.setdefault(group, []).append(version)
    entries = []
    for name, versions in groups.items():
        entry = api_group(name, versions)
        del entry["kind"], entry["apiVersion"]
        entries.append(entry)
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": entries}
