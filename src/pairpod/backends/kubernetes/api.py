"""The Kubernetes API as the backend uses it: pods, their watch, exec. Nothing else.

A thin adapter over kubernetes_asyncio (create, get, list, patch, delete, watch)
and :mod:`.stream` (exec). Objects stay plain dicts, as on the wire: the
pod template is merged as a dict, and skipping the generated models keeps the
login path cheap. Failures become pairpod's typed errors here and nowhere
else: an API server that cannot be reached (or answers 5xx / 429) is
BackendUnavailable; any other refusal is :class:`KubeApiError` carrying the
HTTP status and the Status reason.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncGenerator, Awaitable, Mapping
from pathlib import Path
from typing import Any

import aiohttp
from kubernetes_asyncio import client as k8s
from kubernetes_asyncio import config as k8s_config
from kubernetes_asyncio.config.config_exception import ConfigException

from pairpod.backends.kubernetes.stream import PROTOCOLS, ExecClient, ExecStream
from pairpod.config import KubernetesSettings
from pairpod.errors import BackendError, BackendUnavailable, ConfigError

Obj = dict[str, Any]

# Bound on one API request, so a black-holed API server fails a call rather
# than hanging it (logins are bounded by timeouts.start on top of this).
API_TIMEOUT = 30.0
# A watch is asked to end after this long at most (it is reopened if needed).
_WATCH_SECONDS = 300


class KubeApiError(BackendError):
    """The API server refused a request (the Status it returned is in the message)."""

    def __init__(self, operator_message: str, status: int, reason: str = "") -> None:
        super().__init__(operator_message)
        self.status = status
        self.reason = reason


class KubeApiUnavailable(KubeApiError, BackendUnavailable):
    """The API server answered 5xx or 429: it cannot serve right now."""


class WatchExpired(Exception):
    """The watch's resourceVersion is too old (ERROR 410): list or get again."""


def _api_error(what: str, status: int, body: bytes) -> KubeApiError:
    reason, message = "", body[:300].decode(errors="replace")
    try:
        parsed = json.loads(body)
        if isinstance(parsed, dict):
            reason = str(parsed.get("reason") or "")
            message = str(parsed.get("message") or message)
    except ValueError:
        pass
    text = f"kubernetes API: {what}: HTTP {status} {reason}: {message}".replace(" : ", ": ")
    if status >= 500 or status == 429:
        return KubeApiUnavailable(text, status, reason)
    return KubeApiError(text, status, reason)


def _unreachable(what: str, error: BaseException) -> BackendUnavailable:
    return BackendUnavailable(f"kubernetes API unreachable ({what}): {error!r}")


class KubeApi:
    """Pods in namespaces of one cluster, reached through one kubeconfig (or in-cluster)."""

    def __init__(self, settings: KubernetesSettings) -> None:
        self._kubeconfig = settings.kubeconfig
        self._context = settings.context
        self.configuration: k8s.Configuration | None = None
        self._api: k8s.ApiClient | None = None
        self._core: k8s.CoreV1Api | None = None
        self._exec: ExecClient | None = None
        # Tests may narrow this to check the v4 fallback.
        self.exec_protocols: tuple[str, ...] = PROTOCOLS

    # --- connecting -----------------------------------------------------------------

    async def connect(self) -> None:
        """Load credentials: the configured kubeconfig, else in-cluster, else the default.

        Reads files only (no request is made). Raises ConfigError when no usable
        configuration is found: that needs an operator, not a retry.
        """
        if self._core is not None:
            return
        configuration = k8s.Configuration()
        try:
            if self._kubeconfig is not None:
                await k8s_config.load_kube_config(
                    config_file=str(self._kubeconfig),
                    context=self._context,
                    client_configuration=configuration,
                    persist_config=False,
                )
            elif os.environ.get("KUBERNETES_SERVICE_HOST") and self._context is None:
                k8s_config.load_incluster_config(client_configuration=configuration)
            else:
                await k8s_config.load_kube_config(
                    context=self._context, client_configuration=configuration, persist_config=False
                )
        except (ConfigException, OSError, ValueError, TypeError) as error:
            where = self._kubeconfig or os.environ.get("KUBECONFIG") or Path("~/.kube/config")
            raise ConfigError(
                f"kubernetes.kubeconfig: no usable Kubernetes credentials "
                f"(kubeconfig {where}, context {self._context or 'current'}): {error}"
            ) from None
        self.configuration = configuration
        self._api = k8s.ApiClient(configuration)
        self._core = k8s.CoreV1Api(self._api)
        self._exec = ExecClient(configuration)

    async def close(self) -> None:
        """Close the HTTP clients."""
        if self._exec is not None:
            await self._exec.close()
        if self._api is not None:
            await self._api.close()
        self._api = self._core = self._exec = None

    @property
    def core(self) -> k8s.CoreV1Api:
        """The core/v1 API (after :meth:`connect`)."""
        if self._core is None:
            raise BackendUnavailable("the kubernetes API client is not connected")
        return self._core

    # --- requests ---------------------------------------------------------------------

    async def _request(self, what: str, call: Awaitable[Any], ok_missing: bool = False) -> Obj | None:
        try:
            response = await call
            try:
                body = await response.read()
            finally:
                response.release()
        except (aiohttp.ClientError, OSError, TimeoutError) as error:
            raise _unreachable(what, error) from None
        if response.status == 404 and ok_missing:
            return None
        if not 200 <= response.status < 300:
            raise _api_error(what, response.status, body)
        try:
            parsed = json.loads(body)
        except ValueError:
            raise KubeApiError(f"kubernetes API: {what}: not JSON: {body[:200]!r}", response.status) from None
        if not isinstance(parsed, dict):
            raise KubeApiError(f"kubernetes API: {what}: not an object", response.status)
        return parsed

    @staticmethod
    def _options() -> dict[str, Any]:
        return {"_preload_content": False, "_request_timeout": API_TIMEOUT}

    async def version(self) -> Obj:
        """The API server's ``/version`` (any authenticated client may read it)."""
        if self._api is None:
            raise BackendUnavailable("the kubernetes API client is not connected")
        found = await self._request("get version", k8s.VersionApi(self._api).get_code(**self._options()))
        assert found is not None
        return found

    async def create_pod(self, namespace: str, pod: Obj, dry_run: bool = False) -> Obj:
        """Create a pod; the created object.

        ``dry_run``: only validate it, strictly (unknown fields are errors).
        """
        name = pod.get("metadata", {}).get("name", "?")
        extra: dict[str, Any] = {"dry_run": "All", "field_validation": "Strict"} if dry_run else {}
        created = await self._request(
            f"create pod {namespace}/{name}{' (dry run)' if dry_run else ''}",
            # Plain dicts are sent as they are (the client's models are not used).
            self.core.create_namespaced_pod(namespace, pod, **extra, **self._options()),  # type: ignore[arg-type]
        )
        assert created is not None
        return created

    async def get_pod(self, namespace: str, name: str) -> Obj | None:
        """A pod, or None if there is none by that name."""
        return await self._request(
            f"get pod {namespace}/{name}",
            self.core.read_namespaced_pod(name, namespace, **self._options()),
            ok_missing=True,
        )

    async def list_pods(self, namespace: str, label_selector: str) -> tuple[list[Obj], str]:
        """Pods matching a label selector, and the list's resourceVersion."""
        listing = await self._request(
            f"list pods in {namespace}",
            self.core.list_namespaced_pod(namespace, label_selector=label_selector, **self._options()),
        )
        assert listing is not None
        return list(listing.get("items") or []), str(listing.get("metadata", {}).get("resourceVersion", ""))

    async def patch_pod_labels(
        self,
        namespace: str,
        name: str,
        labels: Mapping[str, str],
        annotations: Mapping[str, str] | None = None,
    ) -> None:
        """Set labels (and annotations) on a pod (a merge patch: others stay)."""
        meta: Obj = {"labels": dict(labels)}
        if annotations:
            meta["annotations"] = dict(annotations)
        await self._request(
            f"label pod {namespace}/{name}",
            self.core.patch_namespaced_pod(
                name,
                namespace,
                {"metadata": meta},
                _content_type="application/merge-patch+json",
                **self._options(),  # type: ignore[call-arg]
            ),
        )

    async def delete_pod(
        self, namespace: str, name: str, grace_seconds: int | None = None, uid: str | None = None
    ) -> Obj | None:
        """Ask for a pod's deletion; the object as it now is, None if it was gone already.

        ``uid`` makes it a precondition: a newer pod that took the name is left alone.
        """
        body: Obj = {"apiVersion": "v1", "kind": "DeleteOptions"}
        if grace_seconds is not None:
            body["gracePeriodSeconds"] = grace_seconds
        if uid is not None:
            body["preconditions"] = {"uid": uid}
        try:
            return await self._request(
                f"delete pod {namespace}/{name}",
                self.core.delete_namespaced_pod(name, namespace, body=body, **self._options()),  # type: ignore[arg-type]
                ok_missing=True,
            )
        except KubeApiError as error:
            if error.status == 409 and uid is not None:
                return None  # the precondition failed: our pod is gone, another has its name
            raise

    async def watch_pod(
        self, namespace: str, name: str, resource_version: str, seconds: float
    ) -> AsyncGenerator[tuple[str, Obj], None]:
        """Events of one pod after ``resource_version``, as ``(type, object)``.

        Ends when the server closes the watch (after ``seconds`` at most).
        Raises :class:`WatchExpired` if the version is too old.
        """
        what = f"watch pod {namespace}/{name}"
        timeout = aiohttp.ClientTimeout(total=seconds + API_TIMEOUT, sock_connect=API_TIMEOUT)
        try:
            # Unparsed (_preload_content=False): the aiohttp response, read line by line.
            response: Any = await self.core.list_namespaced_pod(
                namespace,
                field_selector=f"metadata.name={name}",
                resource_version=resource_version,
                watch=True,
                timeout_seconds=max(1, min(int(seconds) + 1, _WATCH_SECONDS)),
                _preload_content=False,
                _request_timeout=timeout,
            )
        except (aiohttp.ClientError, OSError, TimeoutError) as error:
            raise _unreachable(what, error) from None
        try:
            if response.status != 200:
                raise _api_error(what, response.status, await response.read())
            while True:
                try:
                    line = await response.content.readline()
                except (aiohttp.ClientError, OSError, TimeoutError) as error:
                    raise _unreachable(what, error) from None
                if not line:
                    return
                try:
                    event = json.loads(line)
                except ValueError:
                    raise KubeApiError(f"{what}: not JSON: {line[:200]!r}", 200) from None
                kind, obj = event.get("type"), event.get("object") or {}
                if kind == "ERROR":
                    if obj.get("code") == 410:
                        raise WatchExpired(str(obj.get("message", "")))
                    raise _api_error(what, int(obj.get("code") or 500), json.dumps(obj).encode())
                if kind in ("ADDED", "MODIFIED", "DELETED"):
                    yield kind, obj
        finally:
            response.release()

    async def exec(
        self, namespace: str, pod: str, container: str, command: list[str], *, stdin: bool, tty: bool
    ) -> ExecStream:
        """Start an exec session (see :class:`.stream.ExecClient`)."""
        if self._exec is None:
            raise BackendUnavailable("the kubernetes API client is not connected")
        return await self._exec.open(
            namespace, pod, container, command, stdin=stdin, tty=tty, protocols=self.exec_protocols
        )
