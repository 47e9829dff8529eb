"""Translate a pod's container spec into a Docker Engine container config.

Pure functions, so the mapping from Kubernetes semantics (command replaces
ENTRYPOINT, args replace CMD, securityContext of the pod under that of the
container, resource quantities) to Docker's fields is checked without an engine.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

Obj = dict[str, Any]

# Every container this server makes carries this label (value: the server
# instance), so shutdown and the orphan reaper find exactly its own.
LABEL_INSTANCE = "io.pairpod.test.kube-apiserver.instance"
LABEL_PID = "io.pairpod.test.kube-apiserver.pid"
LABEL_NAMESPACE = "io.pairpod.test.kube-apiserver.namespace"
LABEL_POD = "io.pairpod.test.kube-apiserver.pod"
LABEL_POD_UID = "io.pairpod.test.kube-apiserver.pod-uid"
LABEL_CONTAINER = "io.pairpod.test.kube-apiserver.container"

_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "": Decimal(1),
    "k": Decimal(10**3),
    "M": Decimal(10**6),
    "G": Decimal(10**9),
    "T": Decimal(10**12),
    "P": Decimal(10**15),
    "E": Decimal(10**18),
}
_QUANTITY = re.compile(r"^([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E)?$")


def parse_quantity(value: str | int | float) -> Decimal:
    """A resource.Quantity (``512Mi``, ``500m``, ``1``) as a number."""
    if isinstance(value, int | float):
        return Decimal(str(value))
    match = _QUANTITY.match(value.strip())
    if match is None:
        raise ValueError(f"quantities must match the regular expression '{_QUANTITY.pattern}'")
    number, suffix = Decimal(match.group(1)), match.group(2) or ""
    if suffix in _BINARY:
        return number * _BINARY[suffix]
    return number * _DECIMAL[suffix]


def _merged_security(pod_spec: Obj, container: Obj) -> Obj:
    """The effective securityContext: the container's fields win over the pod's."""
    merged: Obj = {}
    pod_ctx = pod_spec.get("securityContext") or {}
    for key in ("runAsUser", "runAsGroup", "runAsNonRoot", "supplementalGroups", "seccompProfile"):
        if key in pod_ctx:
            merged[key] = pod_ctx[key]
    merged.update(container.get("securityContext") or {})
    return merged


def user_of(pod_spec: Obj, container: Obj) -> str | None:
    """The Docker ``User`` for a container: ``uid[:gid]``, or None for the image's."""
    ctx = _merged_security(pod_spec, container)
    uid = ctx.get("runAsUser")
    gid = ctx.get("runAsGroup")
    if uid is None:
        # Docker cannot take a group without a user; the image's user stands.
        return None
    return f"{uid}:{gid}" if gid is not None else str(uid)


def runs_as_root_refused(pod_spec: Obj, container: Obj, image_user: str) -> str | None:
    """The kubelet's runAsNonRoot check; returns its error text when it refuses."""
    ctx = _merged_security(pod_spec, container)
    if not ctx.get("runAsNonRoot"):
        return None
    uid = ctx.get("runAsUser")
    if uid is not None:
        return "container's runAsUser breaks non-root policy" if uid == 0 else None
    user = image_user.split(":", 1)[0]
    if user in ("", "0", "root"):
        return "container has runAsNonRoot and image will run as root"
    if not user.isdigit():
        return (
            f"container has runAsNonRoot and image has non-numeric user ({user}), "
            "cannot verify user is non-root"
        )
    return None


def env_list(container: Obj, pod: Obj) -> list[str]:
    """``NAME=value`` for literal env entries and the downward-API fields we can resolve."""
    out: list[str] = []
    meta = pod.get("metadata") or {}
    for entry in container.get("env") or []:
        name = entry.get("name")
        if not name:
            continue
        if "value" in entry:
            out.append(f"{name}={entry.get('value') or ''}")
            continue
        field = ((entry.get("valueFrom") or {}).get("fieldRef") or {}).get("fieldPath")
        known = {
            "metadata.name": meta.get("name", ""),
            "metadata.namespace": meta.get("namespace", ""),
            "metadata.uid": meta.get("uid", ""),
            "spec.nodeName": (pod.get("spec") or {}).get("nodeName", ""),
            "spec.serviceAccountName": (pod.get("spec") or {}).get("serviceAccountName", ""),
        }
        if field in known:
            out.append(f"{name}={known[field]}")
    return out


def docker_config(
    pod: Obj,
    container: Obj,
    *,
    instance: str,
    pid: int,
    volumes: dict[str, str],
) -> Obj:
    """The body of ``POST /containers/create`` for one container of a pod.

    ``volumes`` maps pod volume names to Docker volume names (emptyDir only).
    """
    spec = pod.get("spec") or {}
    meta = pod["metadata"]
    ctx = _merged_security(spec, container)
    limits = (container.get("resources") or {}).get("limits") or {}
    host: Obj = {"NetworkMode": "none", "Init": False}
    if "memory" in limits:
        host["Memory"] = int(parse_quantity(limits["memory"]))
    if "cpu" in limits:
        host["NanoCpus"] = int(parse_quantity(limits["cpu"]) * 10**9)
    caps = ctx.get("capabilities") or {}
    if caps.get("drop"):
        host["CapDrop"] = ["ALL" if c == "ALL" else f"CAP_{c}" for c in caps["drop"]]
    if caps.get("add"):
        host["CapAdd"] = [f"CAP_{c}" for c in caps["add"]]
    if ctx.get("privileged"):
        host["Privileged"] = True
    if ctx.get("readOnlyRootFilesystem"):
        host["ReadonlyRootfs"] = True
    if ctx.get("allowPrivilegeEscalation") is False:
        host["SecurityOpt"] = ["no-new-privileges"]
    if ctx.get("supplementalGroups"):
        host["GroupAdd"] = [str(g) for g in ctx["supplementalGroups"]]
    mounts = []
    for mount in container.get("volumeMounts") or []:
        source = volumes.get(mount.get("name", ""))
        if source is not None:
            mounts.append(
                {
                    "Type": "volume",
                    "Source": source,
                    "Target": mount["mountPath"],
                    "ReadOnly": bool(mount.get("readOnly")),
                }
            )
    if mounts:
        host["Mounts"] = mounts
    config: Obj = {
        "Image": container["image"],
        "Hostname": (spec.get("hostname") or meta["name"])[:63],
        "Env": env_list(container, pod),
        "Tty": bool(container.get("tty")),
        "OpenStdin": bool(container.get("stdin")),
        "StdinOnce": bool(container.get("stdinOnce")),
        "AttachStdin": False,
        "AttachStdout": False,
        "AttachStderr": False,
        "Labels": {
            LABEL_INSTANCE: instance,
            LABEL_PID: str(pid),
            LABEL_NAMESPACE: meta.get("namespace", ""),
            LABEL_POD: meta["name"],
            LABEL_POD_UID: meta["uid"],
            LABEL_CONTAINER: container["name"],
        },
        "HostConfig": host,
    }
    # Kubernetes: command replaces the ENTRYPOINT and drops the image's CMD;
    # args replace the CMD. Docker's merge rules do the same given these fields.
    if container.get("command"):
        config["Entrypoint"] = list(container["command"])
    if container.get("args"):
        config["Cmd"] = list(container["args"])
    elif container.get("command"):
        config["Cmd"] = []
    if container.get("workingDir"):
        config["WorkingDir"] = container["workingDir"]
    user = user_of(spec, container)
    if user is not None:
        config["User"] = user
    return config
