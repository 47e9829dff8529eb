"""What the API server does to an object between decoding and storage.

Defaulting (the fields a real server fills in, so ``kubectl get -o yaml``
and typed clients see the usual shape), validation (422 Invalid with the
upstream field paths and messages) and the update rules that make pods
mostly immutable and keep ``status`` out of reach of the main resource.
"""

from __future__ import annotations

import base64
import copy
import ipaddress
import re
import secrets
from collections.abc import Callable
from typing import Any

from .resources import ResourceType
from .status import ApiError, bad_request, invalid

Obj = dict[str, Any]
Cause = dict[str, str]

_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")

_SUBDOMAIN_MSG = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, "
    "'-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', "
    "regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*"
    "[a-z0-9])?)*')"
)
_LABEL_MSG = (
    "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', "
    "and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', "
    "regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"
)
_DNS1035_MSG = (
    "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with "
    "an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or "
    "'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')"
)

# Kinds whose status only the /status subresource may write.
STATUS_KINDS = frozenset({"Pod", "Namespace", "Service", "Deployment"})

# Where service cluster IPs come from; any stable, valid-looking range will do.
_SERVICE_NET = ipaddress.ip_network("10.96.0.0/16")


def required(field: str, detail: str = "") -> Cause:
    """A FieldValueRequired cause."""
    message = "Required value" + (f": {detail}" if detail else "")
    return {"reason": "FieldValueRequired", "message": message, "field": field}


def invalid_value(field: str, value: Any, detail: str) -> Cause:
    """A FieldValueInvalid cause, quoting the value as Go's %q would."""
    shown = f'"{value}"' if isinstance(value, str) else str(value)
    return {"reason": "FieldValueInvalid", "message": f"Invalid value: {shown}: {detail}", "field": field}


def not_supported(field: str, value: str, supported: list[str]) -> Cause:
    """A FieldValueNotSupported cause."""
    allowed = ", ".join(f'"{s}"' for s in supported)
    return {
        "reason": "FieldValueNotSupported",
        "message": f'Unsupported value: "{value}": supported values: {allowed}',
        "field": field,
    }


def _name_causes(rtype: ResourceType, meta: Obj) -> list[Cause]:
    name = meta.get("name")
    if not name:
        return [required("metadata.name", "name or generateName is required")]
    if rtype.kind == "Namespace":
        pattern, message, limit = _DNS1123_LABEL, _LABEL_MSG, 63
    elif rtype.kind == "Service":
        pattern, message, limit = _DNS1035_LABEL, _DNS1035_MSG, 63
    else:
        pattern, message, limit = _DNS1123_SUBDOMAIN, _SUBDOMAIN_MSG, 253
    if rtype.group == "rbac.authorization.k8s.io":
        # RBAC names only need to be valid path segments.
        if name in (".", "..") or "/" in name or "%" in name:
            return [invalid_value("metadata.name", name, 'may not contain "/" or "%"')]
        return []
    if len(name) > limit:
        return [invalid_value("metadata.name", name, f"must be no more than {limit} characters")]
    if not pattern.match(name):
        return [invalid_value("metadata.name", name, message)]
    return []


def check_body_identity(rtype: ResourceType, obj: Any, namespace: str | None) -> Obj:
    """The checks a request body must pass before anything else (400s, as upstream)."""
    if not isinstance(obj, dict):
        raise bad_request("the body of the request must be a JSON or YAML object")
    kind = obj.get("kind")
    api_version = obj.get("apiVersion")
    if kind and kind != rtype.kind:
        raise bad_request(
            f'{kind} in version "{rtype.version}" cannot be handled as a {rtype.kind}: '
            f"the kind in the data ({kind}) does not match the expected kind ({rtype.kind})"
        )
    if api_version and api_version != rtype.api_version:
        raise bad_request(
            f"the API version in the data ({api_version}) does not match the expected API "
            f"version ({rtype.api_version})"
        )
    obj["kind"] = rtype.kind
    obj["apiVersion"] = rtype.api_version
    meta = obj.setdefault("metadata", {})
    if not isinstance(meta, dict):
        raise bad_request("metadata must be an object")
    if rtype.namespaced:
        body_ns = meta.get("namespace")
        if body_ns and namespace and body_ns != namespace:
            raise bad_request(
                "the namespace of the provided object does not match the namespace sent on the request"
            )
        if namespace:
            meta["namespace"] = namespace
    else:
        meta.pop("namespace", None)
    return obj


# --- pods ------------------------------------------------------------------------


def _container_defaults(container: Obj) -> None:
    container.setdefault("terminationMessagePath", "/dev/termination-log")
    container.setdefault("terminationMessagePolicy", "File")
    # Upstream: "Always" for an untagged or ":latest" image, else "IfNotPresent".
    image = str(container.get("image", ""))
    last = image.rsplit("/", 1)[-1]
    if "@" in image:
        policy = "IfNotPresent"
    elif ":" in last:
        policy = "Always" if last.split(":", 1)[1] == "latest" else "IfNotPresent"
    else:
        policy = "Always"
    container.setdefault("imagePullPolicy", policy)
    resources = container.setdefault("resources", {})
    limits = resources.get("limits") or {}
    if limits:
        requests = resources.setdefault("requests", {})
        for name, value in limits.items():
            requests.setdefault(name, value)
    for port in container.get("ports") or []:
        port.setdefault("protocol", "TCP")


def _qos_class(spec: Obj) -> str:
    containers = list(spec.get("containers") or []) + list(spec.get("initContainers") or [])
    any_set = False
    guaranteed = True
    for container in containers:
        resources = container.get("resources") or {}
        requests = resources.get("requests") or {}
        limits = resources.get("limits") or {}
        if requests or limits:
            any_set = True
        for name in ("cpu", "memory"):
            if name not in limits or requests.get(name, limits.get(name)) != limits.get(name):
                guaranteed = False
    if not any_set:
        return "BestEffort"
    return "Guaranteed" if guaranteed else "Burstable"


def default_pod_spec(spec: Obj) -> None:
    """Fill in what a real server defaults in a PodSpec (also used for pod templates)."""
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("securityContext", {})
    spec.setdefault("schedulerName", "default-scheduler")
    spec.setdefault("enableServiceLinks", True)
    for container in spec.get("containers") or []:
        if isinstance(container, dict):
            _container_defaults(container)
    for container in spec.get("initContainers") or []:
        if isinstance(container, dict):
            _container_defaults(container)


def _admit_service_account(spec: Obj) -> None:
    """What the ServiceAccount admission plugin adds: the account and its token volume."""
    account = spec.get("serviceAccountName") or spec.get("serviceAccount") or "default"
    spec["serviceAccountName"] = account
    spec["serviceAccount"] = account
    if spec.get("automountServiceAccountToken") is False:
        return
    volume = "kube-api-access-" + "".join(secrets.choice("bcdfghjklmnpqrstvwxz2456789") for _ in range(5))
    spec.setdefault("volumes", []).append(
        {
            "name": volume,
            "projected": {
                "defaultMode": 420,
                "sources": [
                    {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                    {
                        "configMap": {
                            "name": "kube-root-ca.crt",
                            "items": [{"key": "ca.crt", "path": "ca.crt"}],
                        }
                    },
                    {
                        "downwardAPI": {
                            "items": [
                                {
                                    "path": "namespace",
                                    "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"},
                                }
                            ]
                        }
                    },
                ],
            },
        }
    )
    for container in spec.get("containers") or []:
        container.setdefault("volumeMounts", []).append(
            {
                "name": volume,
                "readOnly": True,
                "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount",
            }
        )


def _validate_pod_spec(spec: Any, path: str) -> list[Cause]:
    causes: list[Cause] = []
    if not isinstance(spec, dict):
        return [required(path)]
    containers = spec.get("containers")
    if not containers:
        causes.append(required(f"{path}.containers"))
        return causes
    seen: set[str] = set()
    for i, container in enumerate(containers):
        where = f"{path}.containers[{i}]"
        if not isinstance(container, dict):
            causes.append(required(where))
            continue
        name = container.get("name")
        if not name:
            causes.append(required(f"{where}.name"))
        elif not _DNS1123_LABEL.match(name):
            causes.append(invalid_value(f"{where}.name", name, _LABEL_MSG))
        elif name in seen:
            causes.append(
                {
                    "reason": "FieldValueDuplicate",
                    "message": f'Duplicate value: "{name}"',
                    "field": f"{where}.name",
                }
            )
        else:
            seen.add(name)
        if not container.get("image"):
            causes.append(required(f"{where}.image"))
    policy = spec.get("restartPolicy", "Always")
    if policy not in ("Always", "OnFailure", "Never"):
        causes.append(not_supported(f"{path}.restartPolicy", policy, ["Always", "OnFailure", "Never"]))
    grace = spec.get("terminationGracePeriodSeconds")
    if grace is not None and (not isinstance(grace, int) or isinstance(grace, bool)):
        causes.append(invalid_value(f"{path}.terminationGracePeriodSeconds", grace, "must be an integer"))
    return causes


def _admit_pod(obj: Obj) -> list[Cause]:
    spec = obj.get("spec")
    causes = _validate_pod_spec(spec, "spec")
    if causes:
        return causes
    default_pod_spec(spec)
    spec.setdefault("preemptionPolicy", "PreemptLowerPriority")
    spec.setdefault("priority", 0)
    spec.setdefault(
        "tolerations",
        [
            {
                "key": "node.kubernetes.io/not-ready",
                "operator": "Exists",
                "effect": "NoExecute",
                "tolerationSeconds": 300,
            },
            {
                "key": "node.kubernetes.io/unreachable",
                "operator": "Exists",
                "effect": "NoExecute",
                "tolerationSeconds": 300,
            },
        ],
    )
    _admit_service_account(spec)
    obj["status"] = {"phase": "Pending", "qosClass": _qos_class(spec)}
    return []


# --- other kinds -------------------------------------------------------------------


def _admit_namespace(obj: Obj) -> list[Cause]:
    name = obj["metadata"]["name"]
    obj["metadata"].setdefault("labels", {})["kubernetes.io/metadata.name"] = name
    obj["spec"] = {"finalizers": ["kubernetes"]}
    obj["status"] = {"phase": "Active"}
    return []


def _admit_deployment(obj: Obj) -> list[Cause]:
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return [required("spec.selector"), required("spec.template.metadata.labels")]
    causes: list[Cause] = []
    selector = spec.get("selector") or {}
    template = spec.get("template") or {}
    labels = (template.get("metadata") or {}).get("labels") or {}
    match_labels = selector.get("matchLabels") or {}
    if not selector:
        causes.append(required("spec.selector"))
    elif not all(labels.get(k) == v for k, v in match_labels.items()):
        causes.append(
            invalid_value(
                "spec.template.metadata.labels", str(labels), "`selector` does not match template `labels`"
            )
        )
    causes.extend(_validate_pod_spec(template.get("spec"), "spec.template.spec"))
    if causes:
        return causes
    spec.setdefault("replicas", 1)
    spec.setdefault("revisionHistoryLimit", 10)
    spec.setdefault("progressDeadlineSeconds", 600)
    spec.setdefault(
        "strategy", {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}}
    )
    default_pod_spec(template["spec"])
    obj["status"] = {}
    return causes


class _ServiceIPs:
    """Hands out distinct cluster IPs, as the service IP allocator does."""

    def __init__(self) -> None:
        self._next = 10

    def allocate(self) -> str:
        address = _SERVICE_NET.network_address + self._next
        self._next += 1
        return str(address)


_service_ips = _ServiceIPs()


def _admit_service(obj: Obj) -> list[Cause]:
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return [required("spec.ports")]
    kind = spec.setdefault("type", "ClusterIP")
    if kind not in ("ClusterIP", "NodePort", "LoadBalancer", "ExternalName"):
        return [not_supported("spec.type", kind, ["ClusterIP", "ExternalName", "LoadBalancer", "NodePort"])]
    ports = spec.get("ports") or []
    if kind != "ExternalName" and not ports and spec.get("clusterIP") != "None":
        return [required("spec.ports")]
    for i, port in enumerate(ports):
        if not isinstance(port, dict) or not isinstance(port.get("port"), int):
            return [required(f"spec.ports[{i}].port")]
        port.setdefault("protocol", "TCP")
        port.setdefault("targetPort", port["port"])
    spec.setdefault("sessionAffinity", "None")
    if kind != "ExternalName":
        if not spec.get("clusterIP"):
            spec["clusterIP"] = _service_ips.allocate()
        spec.setdefault("clusterIPs", [spec["clusterIP"]])
        spec.setdefault("ipFamilies", ["IPv4"])
        spec.setdefault("ipFamilyPolicy", "SingleStack")
        spec.setdefault("internalTrafficPolicy", "Cluster")
    obj["status"] = {"loadBalancer": {}}
    return []


def _admit_secret(obj: Obj) -> list[Cause]:
    obj.setdefault("type", "Opaque")
    string_data = obj.pop("stringData", None) or {}
    if string_data:
        data = obj.setdefault("data", {})
        for key, value in string_data.items():
            data[key] = base64.b64encode(str(value).encode()).decode()
    for key, value in (obj.get("data") or {}).items():
        try:
            base64.b64decode(value, validate=True)
        except (ValueError, TypeError):
            raise bad_request(
                f'Secret in version "v1" cannot be handled as a Secret: illegal base64 data '
                f"at input byte 0 (data[{key}])"
            ) from None
    return []


def _admit_role_binding(obj: Obj) -> list[Cause]:
    ref = obj.get("roleRef")
    if not isinstance(ref, dict):
        return [required("roleRef")]
    causes: list[Cause] = []
    if ref.get("kind") not in ("Role", "ClusterRole"):
        causes.append(not_supported("roleRef.kind", str(ref.get("kind", "")), ["Role", "ClusterRole"]))
    if not ref.get("name"):
        causes.append(required("roleRef.name"))
    for i, subject in enumerate(obj.get("subjects") or []):
        if not subject.get("name"):
            causes.append(required(f"subjects[{i}].name"))
    return causes


_ADMITTERS: dict[str, Callable[[Obj], list[Cause]]] = {
    "Pod": _admit_pod,
    "Namespace": _admit_namespace,
    "Deployment": _admit_deployment,
    "Service": _admit_service,
    "Secret": _admit_secret,
    "RoleBinding": _admit_role_binding,
    "ClusterRoleBinding": _admit_role_binding,
}


def admit_create(rtype: ResourceType, obj: Obj) -> Obj:
    """Validate and default a new object; 422 Invalid with every cause found."""
    meta = obj["metadata"]
    causes = _name_causes(rtype, meta)
    if not causes:
        admitter = _ADMITTERS.get(rtype.kind)
        if admitter is not None:
            causes = admitter(obj)
    if causes:
        raise invalid(rtype.kind, meta.get("name", ""), causes, rtype.group)
    return obj


# --- updates ---------------------------------------------------------------------

_POD_MUTABLE_NOTE = (
    "pod updates may not change fields other than `spec.containers[*].image`,"
    "`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` "
    "(only additions to existing tolerations),`spec.terminationGracePeriodSeconds` "
    "(allow it to be set to 1 if it was previously negative)"
)


def admit_update(rtype: ResourceType, old: Obj, new: Obj, *, subresource: str | None) -> Obj:
    """Apply the update rules: status only through /status, pods mostly immutable."""
    name = old["metadata"]["name"]
    if new["metadata"].get("name") != name:
        raise bad_request(
            "the name of the object "
            f"({new['metadata'].get('name')}) does not match the name on the URL ({name})"
        )
    if rtype.kind in STATUS_KINDS:
        if subresource == "status":
            # Only status changes through /status; everything else is kept.
            status = new.get("status")
            new = copy.deepcopy(old) | {"status": status}
            new["metadata"]["resourceVersion"] = (
                new["metadata"].get("resourceVersion") or old["metadata"]["resourceVersion"]
            )
        elif "status" in old:
            new["status"] = copy.deepcopy(old["status"])
        else:
            new.pop("status", None)
    if rtype.kind == "Pod" and subresource != "status":
        _check_pod_update(old, new)
    if rtype.kind == "Namespace" and subresource != "status":
        new["spec"] = copy.deepcopy(old.get("spec", {}))
        labels = new["metadata"].setdefault("labels", {})
        labels["kubernetes.io/metadata.name"] = name
    if rtype.kind == "Secret":
        _admit_secret(new)
    return new


def _check_pod_update(old: Obj, new: Obj) -> None:
    old_spec = copy.deepcopy(old.get("spec") or {})
    new_spec = new.get("spec") or {}
    # Let through what upstream lets through, then require the rest to be equal.
    for list_name in ("containers", "initContainers"):
        old_list = old_spec.get(list_name) or []
        new_list = new_spec.get(list_name) or []
        if len(old_list) == len(new_list):
            for before, after in zip(old_list, new_list, strict=True):
                if isinstance(after, dict) and "image" in after:
                    before["image"] = after["image"]
    for field in ("activeDeadlineSeconds", "tolerations"):
        if field in new_spec:
            old_spec[field] = new_spec[field]
        else:
            old_spec.pop(field, None)
    if old_spec != new_spec:
        raise ApiError(
            422,
            "Invalid",
            f'Pod "{old["metadata"]["name"]}" is invalid: spec: Forbidden: {_POD_MUTABLE_NOTE}',
            {
                "name": old["metadata"]["name"],
                "kind": "Pod",
                "causes": [
                    {
                        "reason": "FieldValueForbidden",
                        "message": f"Forbidden: {_POD_MUTABLE_NOTE}",
                        "field": "spec",
                    }
                ],
            },
        )
