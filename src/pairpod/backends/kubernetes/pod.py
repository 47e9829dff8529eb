"""What the Kubernetes backend asks of a pod, and how it reads one: dicts in, dicts out.

- :func:`build_pod`: pairpod's secure defaults, the operator's template
  (``kubernetes.pod``) deep-merged over them (:func:`merge_pod`), then the
  fields pairpod always sets itself (name, namespace, its labels, the shell
  container's command) and the non-root policy.
- :func:`pod_progress`: a pod's status as far as starting its shell container
  goes: running, on its way, stuck, or never going to run;
  :func:`start_failure` turns that into the typed error whose short line the
  user reads.
"""

from __future__ import annotations

import copy
import math
import os
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from pairpod.backends.container.wrapper import DEFAULT_IDLE_COMMAND
from pairpod.config import KubernetesSettings
from pairpod.errors import (
    BackendError,
    EnvironmentExited,
    EnvironmentStartFailed,
    ImagePullFailed,
    StartTimeout,
)

Obj = dict[str, Any]

# --- constants --------------------------------------------------------------------------

# The user's name as typed (label values cannot hold every character).
ANNOTATION_USER = "pairpod.user"
# Set by the gateway's Deployment through the downward API (see .kubernetes).
OWNER_ENV = ("PAIRPOD_POD_NAME", "PAIRPOD_POD_NAMESPACE", "PAIRPOD_POD_UID")

# Waiting reasons that no amount of waiting cures.
_PERMANENT_REASONS = frozenset(
    {
        "InvalidImageName",
        "ErrImageNeverPull",
        "CreateContainerConfigError",
        "CreateContainerError",
        "RunContainerError",
        "StartError",
        "ContainerCannotRun",
    }
)
_IMAGE_PULL_REASONS = frozenset({"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"})
# How registries and runtimes say an image does not exist or may not be pulled:
# retrying will not help, so the login fails at once.
_IMAGE_GONE = re.compile(
    r"not found|manifest unknown|does not exist|denied|unauthorized|invalid reference|"
    r"repository name must|name unknown",
    re.IGNORECASE,
)
_NON_ROOT_REFUSAL = re.compile(r"runAsNonRoot|non-root policy")
# How a container that started and ended is described.
_EXITED_REASONS = frozenset(
    {"Completed", "Error", "OOMKilled", "Succeeded", "Failed", "StartError", "ContainerCannotRun"}
)


def dns_label(text: str, limit: int = 63) -> str:
    """``text`` as a DNS-1123 label: lower-case letters, digits and ``-``."""
    label = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")[:limit].strip("-")
    return label or "x"


def label_value(text: str) -> str:
    """``text`` as a valid label value (63 characters, alphanumeric at both ends)."""
    value = re.sub(r"[^A-Za-z0-9_.-]+", "_", text)[:63]
    return re.sub(r"^[^A-Za-z0-9]+|[^A-Za-z0-9]+$", "", value)


def merge_pod(base: Any, override: Any) -> Any:
    """Deep-merge a pod template over pairpod's defaults.

    Mappings merge key by key. Lists whose items are all mappings with a
    ``name`` (containers, volumes, env, ...) merge item by item on the name,
    new names appended. Anything else in ``override`` replaces ``base``.
    """
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for key, value in override.items():
            merged[key] = merge_pod(base[key], value) if key in base else copy.deepcopy(value)
        return merged
    if _named_list(base) and _named_list(override):
        merged_list = [copy.deepcopy(item) for item in base]
        index = {item["name"]: i for i, item in enumerate(merged_list)}
        for item in override:
            if item["name"] in index:
                merged_list[index[item["name"]]] = merge_pod(merged_list[index[item["name"]]], item)
            else:
                merged_list.append(copy.deepcopy(item))
        return merged_list
    return copy.deepcopy(override)


def _named_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(i, dict) and "name" in i for i in value)


def container_of(pod: Obj, name: str) -> Obj | None:
    for container in (pod.get("spec") or {}).get("containers") or []:
        if isinstance(container, dict) and container.get("name") == name:
            return container
    return None


def explicit_non_root(template: Obj, container: str) -> bool | None:
    """``runAsNonRoot`` as the operator's template sets it for the shell container, if at all."""
    own = ((container_of(template, container) or {}).get("securityContext") or {}).get("runAsNonRoot")
    if own is not None:
        return bool(own)
    pod_level = ((template.get("spec") or {}).get("securityContext") or {}).get("runAsNonRoot")
    return None if pod_level is None else bool(pod_level)


def gateway_owner() -> Obj | None:
    """The gateway's own pod, from the downward-API variables its Deployment sets."""
    name, namespace, uid = (os.environ.get(key, "") for key in OWNER_ENV)
    if not (name and namespace and uid):
        return None
    return {"name": name, "namespace": namespace, "uid": uid}


# --- the pod pairpod asks for ------------------------------------------------------------------


def build_pod(
    settings: KubernetesSettings,
    *,
    name: str,
    labels: Mapping[str, str],
    annotations: Mapping[str, str],
    hostname: str,
    owner: Mapping[str, str] | None = None,
    root_images: Collection[str] = (),
) -> Obj:
    """The pod for these settings: pairpod's defaults, the template over them, pairpod's own fields.

    ``labels`` and ``annotations`` are pairpod's (they win over the
    template's); ``owner`` the gateway's own pod (an ownerReference when it
    is in the same namespace); ``root_images`` the images found to run as
    root, whose pods no longer ask for non-root.
    """
    limits = {
        key: value
        for key, value in (
            ("memory", settings.limits.memory),
            ("cpu", settings.limits.cpu),
            ("ephemeral-storage", settings.limits.ephemeral_storage),
        )
        if value is not None
    }
    container: Obj = {
        "name": settings.container,
        "image": settings.image,
        "imagePullPolicy": "IfNotPresent",
        # The idle command may block on stdin when the image has no sleep.
        "stdin": True,
        "securityContext": {
            "runAsNonRoot": True,
            "allowPrivilegeEscalation": False,
            "privileged": False,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    if limits:
        container["resources"] = {"limits": limits}
    defaults: Obj = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {},
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            # Service addresses in the environment tell a user about the cluster.
            "enableServiceLinks": False,
            "hostname": hostname,
            "terminationGracePeriodSeconds": max(1, math.ceil(settings.timeouts.stop)),
            "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [container],
        },
    }
    pod: Obj = merge_pod(defaults, settings.pod)
    meta = pod.setdefault("metadata", {})
    meta["name"] = name
    meta["namespace"] = settings.namespace
    meta.pop("generateName", None)
    meta["labels"] = {**(meta.get("labels") or {}), **labels}
    if annotations:
        meta["annotations"] = {**(meta.get("annotations") or {}), **annotations}
    if owner is not None and owner["namespace"] == settings.namespace:
        # Only in the same namespace: the garbage collector would take an owner
        # elsewhere for a missing one, and delete the pod at once.
        reference = {"apiVersion": "v1", "kind": "Pod", "name": owner["name"], "uid": owner["uid"]}
        meta["ownerReferences"] = [*(meta.get("ownerReferences") or []), reference]
    shell = container_of(pod, settings.container)
    assert shell is not None  # the defaults hold it and merging keeps it
    shell["command"] = list(settings.idle_command or DEFAULT_IDLE_COMMAND)
    shell.pop("args", None)
    _non_root_policy(settings, pod, shell, root_images)
    return pod


def _non_root_policy(
    settings: KubernetesSettings, pod: Obj, shell: Obj, root_images: Collection[str]
) -> None:
    """Keep ``runAsNonRoot`` only where it is pairpod's default and can hold."""
    context = shell.get("securityContext") or {}
    if explicit_non_root(settings.pod, settings.container) is not None:
        own = (container_of(settings.pod, settings.container) or {}).get("securityContext") or {}
        if "runAsNonRoot" not in own:
            # The template's pod-level setting must not be overridden by our container default.
            context.pop("runAsNonRoot", None)
        return
    pod_context = (pod.get("spec") or {}).get("securityContext") or {}
    user = context.get("runAsUser", pod_context.get("runAsUser"))
    if user == 0 or shell.get("image") in root_images:
        context.pop("runAsNonRoot", None)


# --- what a pod is doing ------------------------------------------------------------------


@dataclass(frozen=True)
class PodProgress:
    """Where a starting pod is, from its status.

    ``ready``: the shell container runs. ``permanent``: it never will (the
    pod is to be deleted now). Otherwise it is on its way, or stuck: ``reason``
    and ``message`` say where (for the message if the start times out).
    """

    ready: bool = False
    permanent: bool = False
    runs_as_root: bool = False
    deleted: bool = False
    reason: str = "Pending"
    message: str = ""

    def describe(self) -> str:
        """``reason: message`` for logs."""
        return f"{self.reason}: {self.message}" if self.message else self.reason


def pod_progress(pod: Obj, container: str) -> PodProgress:
    """Read a pod's status as far as starting its shell container goes."""
    status = pod.get("status") or {}
    phase = status.get("phase") or "Pending"
    if (pod.get("metadata") or {}).get("deletionTimestamp"):
        return PodProgress(
            permanent=True, deleted=True, reason="Terminating", message="the pod is being deleted"
        )
    statuses = status.get("containerStatuses") or []
    own = next((c for c in statuses if isinstance(c, dict) and c.get("name") == container), {})
    state = own.get("state") or {}
    if "terminated" in state or phase in ("Succeeded", "Failed"):
        ended = state.get("terminated") or {}
        reason = str(ended.get("reason") or status.get("reason") or phase)
        detail = []
        if ended.get("exitCode") is not None:
            detail.append(f"exit code {ended['exitCode']}")
        if ended.get("message") or status.get("message"):
            detail.append(str(ended.get("message") or status.get("message")).strip())
        return PodProgress(permanent=True, reason=reason, message="; ".join(detail))
    if "running" in state and phase == "Running":
        return PodProgress(ready=True, reason="Running")
    waiting = state.get("waiting") or {}
    reason = str(waiting.get("reason") or "")
    message = str(waiting.get("message") or "")
    if reason:
        if reason == "CreateContainerConfigError" and _NON_ROOT_REFUSAL.search(message):
            return PodProgress(permanent=True, runs_as_root=True, reason=reason, message=message)
        permanent = reason in _PERMANENT_REASONS or (
            reason in _IMAGE_PULL_REASONS and bool(_IMAGE_GONE.search(message))
        )
        return PodProgress(permanent=permanent, reason=reason, message=message)
    for condition in status.get("conditions") or []:
        if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
            return PodProgress(
                reason=str(condition.get("reason") or "Unschedulable"),
                message=str(condition.get("message") or ""),
            )
    return PodProgress(reason="ContainerCreating" if status.get("conditions") else "Pending")


def start_failure(progress: PodProgress, name: str, image: str, timeout: float | None = None) -> BackendError:
    """The typed error for a pod that cannot start (``timeout``: it ran out of time)."""
    late = f" within kubernetes.timeouts.start ({timeout:g}s)" if timeout is not None else ""
    detail = f"pod {name} (image {image}) did not start{late}: {progress.describe()}"
    reason = progress.reason
    if reason in _IMAGE_PULL_REASONS:
        return ImagePullFailed(
            detail, user_message=f"environment image {image} could not be pulled ({reason})"
        )
    if progress.runs_as_root:
        return EnvironmentStartFailed(
            detail, user_message="environment image runs as root, which this gateway does not allow"
        )
    if timeout is not None:
        if reason == "Unschedulable":
            return StartTimeout(
                detail, user_message="no room for the environment in the cluster right now, try again later"
            )
        return StartTimeout(detail, user_message=f"environment did not start in time ({reason})")
    if progress.deleted:
        return EnvironmentStartFailed(detail, user_message="environment was removed while starting")
    if reason in _EXITED_REASONS:
        return EnvironmentExited(detail, user_message=f"environment stopped right after starting ({reason})")
    return EnvironmentStartFailed(detail, user_message=f"environment failed to start ({reason})")


@dataclass(frozen=True)
class PodHandle:
    """A pod this backend started: where it is and which container to exec into."""

    namespace: str
    name: str
    uid: str
    container: str

    @property
    def key(self) -> str:
        """``namespace/name``."""
        return f"{self.namespace}/{self.name}"


DELETED = PodProgress(permanent=True, deleted=True, reason="Deleted", message="the pod was deleted")
