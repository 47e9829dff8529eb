"""Known fields of Pods, Deployments and StatefulSets, for the API server's field validation.

A real server decodes into Go structs: unknown fields are dropped, and with
``fieldValidation=Strict`` (kubectl's default) they are a 400, with ``Warn``
(the API default) a ``Warning`` header. Typos in a pod template (say
``securityContex``) must fail here as they would on a cluster. Only the
types whose bodies tests write by hand are described; other kinds keep
every field.
"""

from __future__ import annotations

from typing import Any

# A schema node: None accepts anything below it; a dict lists the known
# fields (each with its own node); a one-element list describes list items.
Node = dict[str, Any] | list[Any] | None

_META: Node = {
    k: None
    for k in (
        "name",
        "generateName",
        "namespace",
        "selfLink",
        "uid",
        "resourceVersion",
        "generation",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "labels",
        "annotations",
        "ownerReferences",
        "finalizers",
        "managedFields",
    )
}

_SECURITY_CONTEXT: Node = {
    k: None
    for k in (
        "capabilities",
        "privileged",
        "seLinuxOptions",
        "windowsOptions",
        "runAsUser",
        "runAsGroup",
        "runAsNonRoot",
        "readOnlyRootFilesystem",
        "allowPrivilegeEscalation",
        "procMount",
        "seccompProfile",
        "appArmorProfile",
    )
}

_POD_SECURITY_CONTEXT: Node = {
    k: None
    for k in (
        "seLinuxOptions",
        "windowsOptions",
        "runAsUser",
        "runAsGroup",
        "runAsNonRoot",
        "supplementalGroups",
        "supplementalGroupsPolicy",
        "fsGroup",
        "sysctls",
        "fsGroupChangePolicy",
        "seccompProfile",
        "appArmorProfile",
        "seLinuxChangePolicy",
    )
}

_CONTAINER: Node = {
    **{
        k: None
        for k in (
            "name",
            "image",
            "command",
            "args",
            "workingDir",
            "ports",
            "envFrom",
            "env",
            "resizePolicy",
            "restartPolicy",
            "volumeMounts",
            "volumeDevices",
            "livenessProbe",
            "readinessProbe",
            "startupProbe",
            "lifecycle",
            "terminationMessagePath",
            "terminationMessagePolicy",
            "imagePullPolicy",
            "stdin",
            "stdinOnce",
            "tty",
        )
    },
    "resources": {k: None for k in ("limits", "requests", "claims")},
    "securityContext": _SECURITY_CONTEXT,
}

_POD_SPEC: Node = {
    **{
        k: None
        for k in (
            "volumes",
            "ephemeralContainers",
            "restartPolicy",
            "terminationGracePeriodSeconds",
            "activeDeadlineSeconds",
            "dnsPolicy",
            "nodeSelector",
            "serviceAccountName",
            "serviceAccount",
            "automountServiceAccountToken",
            "nodeName",
            "hostNetwork",
            "hostPID",
            "hostIPC",
            "shareProcessNamespace",
            "imagePullSecrets",
            "hostname",
            "subdomain",
            "affinity",
            "schedulerName",
            "tolerations",
            "hostAliases",
            "priorityClassName",
            "priority",
            "dnsConfig",
            "readinessGates",
            "runtimeClassName",
            "enableServiceLinks",
            "preemptionPolicy",
            "overhead",
            "topologySpreadConstraints",
            "setHostnameAsFQDN",
            "os",
            "hostUsers",
            "schedulingGates",
            "resourceClaims",
            "resources",
        )
    },
    "containers": [_CONTAINER],
    "initContainers": [_CONTAINER],
    "securityContext": _POD_SECURITY_CONTEXT,
}


def _workload(*fields: str) -> Node:
    """A kind that runs pods from a template (Deployment, StatefulSet) with its own spec fields."""
    return {
        "apiVersion": None,
        "kind": None,
        "metadata": _META,
        "status": None,
        "spec": {
            **{k: None for k in ("replicas", "selector", "minReadySeconds", "revisionHistoryLimit", *fields)},
            "template": {"metadata": _META, "spec": _POD_SPEC},
        },
    }


SCHEMAS: dict[str, Node] = {
    "Pod": {"apiVersion": None, "kind": None, "metadata": _META, "spec": _POD_SPEC, "status": None},
    "Deployment": _workload("strategy", "paused", "progressDeadlineSeconds"),
    "StatefulSet": _workload(
        "serviceName",
        "volumeClaimTemplates",
        "podManagementPolicy",
        "updateStrategy",
        "persistentVolumeClaimRetentionPolicy",
        "ordinals",
    ),
}


def prune_unknown(kind: str, obj: Any) -> list[str]:
    """Drop the fields of ``obj`` its kind does not have; return their paths."""
    found: list[str] = []
    _prune(SCHEMAS.get(kind), obj, "", found)
    return found


def _prune(node: Node, value: Any, path: str, found: list[str]) -> None:
    if node is None:
        return
    if isinstance(node, list):
        if isinstance(value, list):
            for index, item in enumerate(value):
                _prune(node[0], item, f"{path}[{index}]", found)
        return
    if not isinstance(value, dict):
        return
    for key in list(value):
        where = f"{path}.{key}" if path else key
        if key not in node:
            found.append(where)
            del value[key]
        else:
            _prune(node[key], value[key], where, found)
