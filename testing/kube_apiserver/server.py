"""The Kubernetes API test server: routing, REST semantics, and its lifecycle.

It speaks the real wire protocol on loopback (JSON only): discovery, CRUD
with selectors, pagination and dry runs, PATCH in all four flavours, watch
streams, server-side Table printing, and the pods' exec and log
subresources. Pods run as Docker containers (see ``pods``); every other
resource is stored and defaulted but has no controller behind it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import uuid
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiodocker
from aiodocker.exceptions import DockerError
from aiohttp import web

from . import openapi
from .admission import admit_create, admit_update, check_body_identity
from .container_config import LABEL_INSTANCE
from .deletion import Deleter
from .events import EventRecorder
from .kubeconfig import write_kubeconfig
from .params import parse_bool, parse_dry_run, parse_field_validation, parse_int
from .patch import json_patch, merge_patch, strategic_merge_patch
from .pod_api import serve_pod_exec, serve_pod_log
from .pods import DEFAULT_BACKOFF, NODE_IP, NODE_NAME, PodRunner, reap_orphans
from .resources import (
    Registry,
    ResourceType,
    api_group,
    api_group_list,
    api_resource_list,
    api_versions,
)
from .schema import prune_unknown
from .selectors import field_getter, parse_field_selector, parse_label_selector
from .status import (
    ApiError,
    bad_request,
    gone,
    method_not_allowed,
    not_found,
    page_not_found,
    success_body,
    unauthorized,
)
from .store import Store, now_rfc3339
from .tables import to_table
from .tls import ServingCert, self_signed
from .watch import serve_watch
from .wire import (
    decode_continue,
    encode_continue,
    json_response,
    negotiate,
    read_body,
    strip_type_meta,
)

Obj = dict[str, Any]
log = logging.getLogger(__name__)

# The version this server claims; kubectl only warns about skew beyond one minor.
VERSION_INFO = {
    "major": "1",
    "minor": "32",
    "gitVersion": "v1.32.0-pairpod-test",
    "gitCommit": "0000000000000000000000000000000000000000",
    "gitTreeState": "clean",
    "buildDate": "2024-12-11T00:00:00Z",
    "goVersion": "go1.23.4",
    "compiler": "gc",
    "platform": "linux/amd64",
}

# Namespaces every cluster starts with, and those that cannot be deleted.
BOOTSTRAP_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
UNDELETABLE_NAMESPACES = frozenset({"default", "kube-system", "kube-public"})

_UNAUTHENTICATED_PATHS = frozenset({"/version", "/healthz", "/livez", "/readyz"})


@dataclass(frozen=True)
class RequestRecord:
    """One request as the server saw it, kept so tests can check what clients sent."""

    method: str
    path_qs: str
    headers: dict[str, str]


class KubeApiServer:
    """A Kubernetes API server for tests, running pods as Docker containers.

    Start with ``await server.start()``; ``server.url`` is then live and
    ``server.write_kubeconfig(path)`` points any client at it. ``close()``
    ends every watch and exec and removes every container it made.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        token: str | None = "",
        tls: bool = True,
        docker_url: str | None = None,
        bookmark_interval: float = 1.0,
        history_size: int = 5000,
        backoff: float = DEFAULT_BACKOFF,
        instance: str | None = None,
    ) -> None:
        if host not in ("127.0.0.1", "::1", "localhost"):
            raise ValueError("the test API server listens on loopback only")
        # HTTPS by default: kubectl (client-go) sends bearer tokens only over TLS.
        self.host = host
        self.port = port
        # "" means: make one up. None disables authentication.
        self.token = secrets.token_urlsafe(24) if token == "" else token
        self.cert: ServingCert | None = self_signed() if tls else None
        self.instance = instance or uuid.uuid4().hex[:12]
        self.registry = Registry()
        self.store = Store(history_size=history_size)
        self.requests: deque[RequestRecord] = deque(maxlen=2000)
        self._docker_url = docker_url
        self._bookmark_interval = bookmark_interval
        self._backoff = backoff
        self._docker: aiodocker.Docker | None = None
        self._runner: PodRunner | None = None
        self._site_runner: web.AppRunner | None = None
        self._deleter: Deleter | None = None
        self._bookmarks: asyncio.Task[None] | None = None
        self._pods = self._type("", "v1", "pods")
        self._namespaces = self._type("", "v1", "namespaces")

    # --- lifecycle -------------------------------------------------------------

    @property
    def url(self) -> str:
        """The base URL clients use (``http://127.0.0.1:PORT`` or ``https://...``)."""
        scheme = "https" if self.cert else "http"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}"

    @property
    def runner(self) -> PodRunner:
        """The pod runner (after ``start``)."""
        assert self._runner is not None, "the server is not started"
        return self._runner

    @property
    def deleter(self) -> Deleter:
        """Graceful deletion of pods and namespaces (after ``start``)."""
        assert self._deleter is not None, "the server is not started"
        return self._deleter

    @property
    def docker(self) -> aiodocker.Docker:
        """The Docker client pods run through (after ``start``)."""
        assert self._docker is not None, "the server is not started"
        return self._docker

    async def start(self) -> None:
        """Connect to Docker, bootstrap the cluster objects and start listening."""
        try:
            await self._start()
        except BaseException:
            await self.close()
            raise

    async def _start(self) -> None:
        self._docker = aiodocker.Docker(url=self._docker_url)
        try:
            await self._docker.version()
        except (DockerError, OSError) as error:
            raise RuntimeError(f"no Docker engine answers: {error}") from error
        await reap_orphans(self._docker)
        events = EventRecorder(self.store, self._type("", "v1", "events"), NODE_NAME)
        self._runner = PodRunner(
            self.store, self._pods, self._docker, self.instance, events=events, backoff=self._backoff
        )
        self._deleter = Deleter(self.store, self.registry, self._runner)
        self._bootstrap()
        app = web.Application(middlewares=[self._middleware], client_max_size=64 * 2**20)
        app.router.add_get("/version", self._version)
        app.router.add_get("/version/", self._version)
        for probe in ("/healthz", "/livez", "/readyz"):
            app.router.add_get(probe, self._healthz)
        app.router.add_get("/api", self._api)
        app.router.add_get("/apis", self._apis)
        app.router.add_get("/openapi/v2", self._openapi_v2)
        app.router.add_get("/openapi/v3", self._openapi_index)
        app.router.add_get(r"/openapi/v3/{path:.+}", self._openapi_document)
        app.router.add_route("*", r"/api/{version}", self._group_version)
        app.router.add_route("*", r"/api/{version}/{tail:.*}", self._group_version)
        app.router.add_get(r"/apis/{group}", self._group)
        app.router.add_route("*", r"/apis/{group}/{version}", self._group_version)
        app.router.add_route("*", r"/apis/{group}/{version}/{tail:.*}", self._group_version)
        app.router.add_route("*", r"/{tail:.*}", self._not_found)
        # Cancel a handler when its client leaves, so idle watches end at once.
        self._site_runner = web.AppRunner(
            app, handler_cancellation=True, access_log=None, shutdown_timeout=2.0
        )
        await self._site_runner.setup()
        ssl_context = self.cert.server_context() if self.cert else None
        site = web.TCPSite(self._site_runner, self.host, self.port, ssl_context=ssl_context)
        await site.start()
        server = site._server  # the bound socket is the only source of the random port
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        if self._bookmark_interval > 0:
            self._bookmarks = asyncio.ensure_future(self._bookmark_loop())

    async def close(self) -> None:
        """Stop serving and remove every container and volume this server made."""
        if self._bookmarks is not None:
            self._bookmarks.cancel()
            await asyncio.gather(self._bookmarks, return_exceptions=True)
        self.store.close_watchers()
        if self._site_runner is not None:
            await self._site_runner.cleanup()
        if self._deleter is not None:
            await self._deleter.close()
        if self._runner is not None:
            await self._runner.close()
        if self._docker is not None:
            await self._docker.close()

    async def __aenter__(self) -> KubeApiServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def write_kubeconfig(self, path: Path, *, namespace: str = "default") -> Path:
        """Write a kubeconfig for this server (its token and, with TLS, its CA)."""
        return write_kubeconfig(
            path,
            self.url,
            token=self.token,
            namespace=namespace,
            ca_pem=self.cert.cert_pem if self.cert else None,
        )

    async def _bookmark_loop(self) -> None:
        while True:
            await asyncio.sleep(self._bookmark_interval)
            self.store.send_bookmarks()

    def _type(self, group: str, version: str, plural: str) -> ResourceType:
        rtype = self.registry.by_path(group, version, plural)
        assert rtype is not None
        return rtype

    def _bootstrap(self) -> None:
        for name in BOOTSTRAP_NAMESPACES:
            self._create_namespace_object(name)
        node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": NODE_NAME,
                "labels": {"kubernetes.io/hostname": NODE_NAME, "kubernetes.io/os": "linux"},
            },
            "spec": {},
            "status": {
                "addresses": [
                    {"type": "InternalIP", "address": NODE_IP},
                    {"type": "Hostname", "address": NODE_NAME},
                ],
                "conditions": [
                    {
                        "type": "Ready",
                        "status": "True",
                        "reason": "KubeletReady",
                        "message": "kubelet is posting ready status",
                        "lastHeartbeatTime": now_rfc3339(),
                        "lastTransitionTime": now_rfc3339(),
                    }
                ],
                "nodeInfo": {
                    "kubeletVersion": VERSION_INFO["gitVersion"],
                    "containerRuntimeVersion": "docker://",
                    "operatingSystem": "linux",
                    "architecture": "amd64",
                },
            },
        }
        self.store.create(self._type("", "v1", "nodes"), node)

    def _create_namespace_object(self, name: str) -> Obj:
        body = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
        created = self.store.create(self._namespaces, admit_create(self._namespaces, body))
        self._namespace_controllers(name)
        return created

    def _namespace_controllers(self, namespace: str) -> None:
        """What controllers add to every new namespace: its default account and CA bundle."""
        account = {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": "default", "namespace": namespace},
        }
        self.store.create(self._type("", "v1", "serviceaccounts"), account)
        ca = self.cert.cert_pem.decode() if self.cert else ""
        bundle = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": "kube-root-ca.crt",
                "namespace": namespace,
                "annotations": {
                    "kubernetes.io/description": (
                        "Contains a CA bundle that can be used to verify the "
                        "kube-apiserver when using internal endpoints such as the "
                        "internal service IP or kubernetes.default.svc. No other "
                        "usage is guaranteed across distributions of Kubernetes "
                        "clusters."
                    )
                },
            },
            "data": {"ca.crt": ca},
        }
        self.store.create(self._type("", "v1", "configmaps"), bundle)

    # --- helpers for tests (call on the server's loop) -----------------------------

    async def create_namespace(self, name: str) -> Obj:
        """Create a namespace as a client would (with its default account)."""
        if self.store.peek(self._namespaces, None, name) is not None:
            raise ApiError(409, "AlreadyExists", f'namespaces "{name}" already exists')
        return self._create_namespace_object(name)

    async def delete_namespace(self, name: str) -> None:
        """Delete a namespace and everything in it; return once it and its pods are gone."""
        if self.store.peek(self._namespaces, None, name) is None:
            return
        self.deleter.begin_namespace_deletion(name)
        await self.deleter.wait_namespace_gone(name)

    async def containers(self) -> list[str]:
        """Ids of every Docker container this server has made and not removed."""
        found = await self.docker.containers.list(
            all=True, filters={"label": [f"{LABEL_INSTANCE}={self.instance}"]}
        )
        return [c.id for c in found]

    # --- middleware and plain endpoints -----------------------------------------------

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        interesting = ("Accept", "Content-Type", "Upgrade", "Sec-WebSocket-Protocol", "User-Agent")
        self.requests.append(
            RequestRecord(
                request.method,
                request.path_qs,
                {k: request.headers[k] for k in interesting if k in request.headers},
            )
        )
        try:
            if self.token is not None and request.path not in _UNAUTHENTICATED_PATHS:
                expected = f"Bearer {self.token}"
                if not secrets.compare_digest(request.headers.get("Authorization", ""), expected):
                    raise unauthorized()
            return await handler(request)
        except ApiError as error:
            return json_response(error.body(), error.code)
        except web.HTTPException:
            raise
        except Exception as error:
            # A bug here must reach clients as the API's own 500, not a text page.
            log.exception("request failed: %s %s", request.method, request.path_qs)
            return json_response(
                ApiError(500, "InternalError", f"Internal error occurred: {error!r}").body(), 500
            )

    async def _version(self, request: web.Request) -> web.Response:
        return json_response(VERSION_INFO)

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def _not_found(self, request: web.Request) -> web.Response:
        raise page_not_found()

    async def _api(self, request: web.Request) -> web.Response:
        return json_response(api_versions(f"{self.host}:{self.port}"))

    async def _apis(self, request: web.Request) -> web.Response:
        return json_response(api_group_list(self.registry))

    async def _group(self, request: web.Request) -> web.Response:
        group = request.match_info["group"]
        versions = [v for g, v in self.registry.group_versions() if g == group]
        if not versions:
            raise page_not_found()
        return json_response(api_group(group, versions))

    async def _openapi_v2(self, request: web.Request) -> web.Response:
        return web.Response(body=openapi.v2_document(), content_type=openapi.V2_MEDIA_TYPE)

    async def _openapi_index(self, request: web.Request) -> web.Response:
        return json_response(openapi.index(self.registry))

    async def _openapi_document(self, request: web.Request) -> web.Response:
        path = request.match_info["path"]
        for group, version in self.registry.group_versions():
            if openapi.gv_path(group, version) == path:
                return json_response(openapi.gv_document(self.registry, group, version))
        raise page_not_found()

    # --- resource routing -------------------------------------------------------------

    async def _group_version(self, request: web.Request) -> web.StreamResponse:
        group = request.match_info.get("group", "")
        version = request.match_info["version"]
        if (group, version) not in self.registry.group_versions():
            raise page_not_found()
        segments = [s for s in request.match_info.get("tail", "").split("/") if s]
        if not segments:
            if request.method != "GET":
                raise method_not_allowed()
            return json_response(api_resource_list(self.registry, group, version))
        watch_path = segments[0] == "watch"
        if watch_path:
            segments = segments[1:]
        namespace: str | None = None
        if len(segments) >= 3 and segments[0] == "namespaces":
            candidate = self.registry.by_path(group, version, segments[2])
            if candidate is not None and candidate.namespaced:
                namespace = segments[1]
                segments = segments[2:]
        if not segments or len(segments) > 3:
            raise page_not_found()
        rtype = self.registry.by_path(group, version, segments[0])
        if rtype is None:
            raise page_not_found()
        name = segments[1] if len(segments) > 1 else None
        sub = segments[2] if len(segments) > 2 else None
        if rtype.namespaced and name is not None and namespace is None:
            raise page_not_found()
        if sub is not None and sub not in rtype.subresources:
            raise page_not_found()
        return await self._dispatch(request, rtype, namespace, name, sub, watch_path)

    async def _dispatch(
        self,
        request: web.Request,
        rtype: ResourceType,
        namespace: str | None,
        name: str | None,
        sub: str | None,
        watch_path: bool,
    ) -> web.StreamResponse:
        method = request.method
        if sub == "exec" and name is not None and method in ("GET", "POST"):
            return await serve_pod_exec(
                request, self.store, self._pods, self.runner, self.docker, namespace, name
            )
        if sub == "log" and name is not None and method == "GET":
            return await serve_pod_log(
                request, self.store, self._pods, self.runner, self.docker, namespace, name
            )
        if name is None:
            if method == "GET":
                if watch_path or parse_bool(request.query, "watch"):
                    return await self._watch(request, rtype, namespace)
                return await self._list(request, rtype, namespace)
            if method == "POST":
                return await self._create(request, rtype, namespace)
            if method == "DELETE":
                return await self._delete_collection(request, rtype, namespace)
            raise method_not_allowed()
        if method == "GET":
            if watch_path or parse_bool(request.query, "watch"):
                # The deprecated single-object watch is a watch pinned by name.
                return await self._watch(request, rtype, namespace, pinned=name)
            return await self._get(request, rtype, namespace, name)
        if method == "PUT":
            return await self._update(request, rtype, namespace, name, sub)
        if method == "PATCH":
            return await self._patch(request, rtype, namespace, name, sub)
        if method == "DELETE" and sub is None:
            return await self._delete(request, rtype, namespace, name)
        raise method_not_allowed()

    # --- reads -----------------------------------------------------------------------

    def _render_one(self, request: web.Request, rtype: ResourceType, obj: Obj) -> web.Response:
        shape, include = negotiate(request)
        if shape == "table":
            meta = {"resourceVersion": obj["metadata"].get("resourceVersion", "")}
            return json_response(to_table(rtype, [obj], meta, include))
        if shape == "partial":
            return json_response(
                {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": obj["metadata"]}
            )
        return json_response(obj)

    async def _get(
        self, request: web.Request, rtype: ResourceType, namespace: str | None, name: str
    ) -> web.Response:
        return self._render_one(request, rtype, self.store.get(rtype, namespace, name))

    def _selectors(self, request: web.Request, rtype: ResourceType) -> tuple[Any, Any]:
        labels = parse_label_selector(request.query.get("labelSelector"))
        supported, _ = field_getter(rtype.plural)
        fields = parse_field_selector(request.query.get("fieldSelector"), supported)
        return labels, fields

    async def _list(self, request: web.Request, rtype: ResourceType, namespace: str | None) -> web.Response:
        labels, fields = self._selectors(request, rtype)
        shape, include = negotiate(request)
        limit = parse_int(request.query, "limit") or 0
        revision = self.store.revision
        items = self.store.list(rtype, namespace, labels, fields)
        token = request.query.get("continue")
        if token:
            revision, start = decode_continue(token)
            if revision < self.store.compacted:
                raise gone(
                    "The provided continue parameter is too old to display a consistent "
                    "list result. You can start a new list without the continue "
                    "parameter, or use the continue token in this response to retrieve "
                    "the remainder of the results. Continuing with the provided token "
                    "results in an inconsistent list - objects that were created, "
                    "modified, or deleted between the time the first chunk was returned "
                    "and now may show up in the list."
                )
            items = [o for o in items if self._key(rtype, o) > start]
        list_meta: Obj = {"resourceVersion": str(revision)}
        if limit > 0 and len(items) > limit:
            rest = len(items) - limit
            items = items[:limit]
            list_meta["continue"] = encode_continue(revision, self._key(rtype, items[-1]))
            list_meta["remainingItemCount"] = rest
        if shape == "table":
            return json_response(to_table(rtype, items, list_meta, include))
        if shape == "partial":
            return json_response(
                {
                    "kind": "PartialObjectMetadataList",
                    "apiVersion": "meta.k8s.io/v1",
                    "metadata": list_meta,
                    "items": [
                        {
                            "kind": "PartialObjectMetadata",
                            "apiVersion": "meta.k8s.io/v1",
                            "metadata": o["metadata"],
                        }
                        for o in items
                    ],
                }
            )
        return json_response(
            {
                "kind": rtype.list_kind,
                "apiVersion": rtype.api_version,
                "metadata": list_meta,
                "items": [strip_type_meta(o) for o in items],
            }
        )

    @staticmethod
    def _key(rtype: ResourceType, obj: Obj) -> tuple[str, str]:
        meta = obj["metadata"]
        return (meta.get("namespace", "") if rtype.namespaced else "", meta["name"])

    async def _watch(
        self, request: web.Request, rtype: ResourceType, namespace: str | None, pinned: str | None = None
    ) -> web.StreamResponse:
        labels, fields = self._selectors(request, rtype)
        if pinned is not None:
            supported, _ = field_getter(rtype.plural)
            fields = parse_field_selector(f"metadata.name={pinned}", supported)
        shape, include = negotiate(request)
        timeout = parse_int(request.query, "timeoutSeconds")
        send_initial = request.query.get("sendInitialEvents")
        watcher = self.store.watch(
            rtype,
            namespace,
            labels,
            fields,
            resource_version=request.query.get("resourceVersion"),
            allow_bookmarks=parse_bool(request.query, "allowWatchBookmarks"),
            send_initial_events=None
            if send_initial is None
            else parse_bool(request.query, "sendInitialEvents"),
        )
        return await serve_watch(
            request,
            self.store,
            watcher,
            timeout_seconds=float(timeout) if timeout else None,
            table_include=include if shape == "table" else None,
        )

    # --- writes ----------------------------------------------------------------------

    def _check_namespace_open(self, rtype: ResourceType, namespace: str | None, name: str) -> None:
        if not rtype.namespaced:
            return
        ns = self.store.peek(self._namespaces, None, namespace or "")
        if ns is None:
            raise not_found("namespaces", namespace or "")
        if ns["metadata"].get("deletionTimestamp"):
            raise ApiError(
                403,
                "Forbidden",
                f'{rtype.qualified} "{name}" is forbidden: unable to create new content in '
                f"namespace {namespace} because it is being terminated",
                {
                    "name": name,
                    "kind": rtype.plural,
                    "causes": [
                        {
                            "reason": "NamespaceTerminating",
                            "message": f"namespace {namespace} is being terminated",
                            "field": "metadata.namespace",
                        }
                    ],
                },
            )

    async def _create(self, request: web.Request, rtype: ResourceType, namespace: str | None) -> web.Response:
        dry_run = parse_dry_run(request.query)
        body = await read_body(request)
        return self._create_object(request, rtype, namespace, body, dry_run)

    def _validate_fields(self, request: web.Request, rtype: ResourceType, obj: Obj) -> list[str]:
        """Drop unknown fields; 400 under Strict, else the Warning header values."""
        directive = parse_field_validation(request.query)
        unknown = prune_unknown(rtype.kind, obj)
        if not unknown or directive == "Ignore":
            return []
        rendered = [f'unknown field "{path}"' for path in unknown]
        if directive == "Strict":
            raise bad_request(
                f'{rtype.kind} in version "{rtype.version}" cannot be handled as '
                f"a {rtype.kind}: strict decoding error: {', '.join(rendered)}"
            )
        return [f"299 - {json.dumps(text)}" for text in rendered]

    def _create_object(
        self, request: web.Request, rtype: ResourceType, namespace: str | None, body: Any, dry_run: bool
    ) -> web.Response:
        obj = check_body_identity(rtype, body, namespace)
        warnings = self._validate_fields(request, rtype, obj)
        meta = obj["metadata"]
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = self.store.generate_name(rtype, namespace, meta["generateName"])
        admit_create(rtype, obj)
        self._check_namespace_open(rtype, namespace, meta["name"])
        created = self.store.create(rtype, obj, dry_run=dry_run)
        if not dry_run:
            if rtype is self._pods:
                self.runner.start(created)
            elif rtype is self._namespaces:
                self._namespace_controllers(created["metadata"]["name"])
        return json_response(created, 201, warnings)

    async def _update(
        self, request: web.Request, rtype: ResourceType, namespace: str | None, name: str, sub: str | None
    ) -> web.Response:
        if sub not in (None, "status"):
            raise method_not_allowed()
        dry_run = parse_dry_run(request.query)
        body = await read_body(request)
        obj = check_body_identity(rtype, body, namespace)
        warnings = self._validate_fields(request, rtype, obj)
        current = self.store.get(rtype, namespace, name)
        new = admit_update(rtype, current, obj, subresource=sub)
        return json_response(
            self.store.replace(rtype, new, check_version=True, dry_run=dry_run), warnings=warnings
        )

    async def _patch(
        self, request: web.Request, rtype: ResourceType, namespace: str | None, name: str, sub: str | None
    ) -> web.Response:
        if sub not in (None, "status"):
            raise method_not_allowed()
        dry_run = parse_dry_run(request.query)
        content_type = request.content_type
        body = await read_body(request)
        if content_type == "application/apply-patch+yaml":
            if not request.query.get("fieldManager"):
                raise ApiError(
                    422,
                    "Invalid",
                    'PatchOptions.meta.k8s.io "" is invalid: fieldManager: Required '
                    "value: is required for apply patch",
                )
            if self.store.peek(rtype, namespace, name) is None:
                if isinstance(body, dict):
                    body.setdefault("metadata", {}).setdefault("name", name)
                return self._create_object(request, rtype, namespace, body, dry_run)
        current = self.store.get(rtype, namespace, name)
        if content_type == "application/json-patch+json":
            patched = json_patch(current, body)
        elif content_type == "application/merge-patch+json":
            patched = merge_patch(current, body)
        elif content_type in ("application/strategic-merge-patch+json", "application/apply-patch+yaml"):
            patched = strategic_merge_patch(current, body)
        else:
            raise ApiError(
                415,
                "UnsupportedMediaType",
                f'the server does not support the media type "{content_type}" for PATCH',
            )
        obj = check_body_identity(rtype, patched, namespace)
        warnings = self._validate_fields(request, rtype, obj)
        new = admit_update(rtype, current, obj, subresource=sub)
        return json_response(
            self.store.replace(rtype, new, check_version=True, dry_run=dry_run), warnings=warnings
        )

    # --- deletes -----------------------------------------------------------------------

    async def _delete_options(self, request: web.Request) -> Obj:
        body = await read_body(request)
        options: Obj = body if isinstance(body, dict) else {}
        grace = parse_int(request.query, "gracePeriodSeconds")
        if grace is not None:
            options["gracePeriodSeconds"] = grace
        if parse_dry_run(request.query):
            options["dryRun"] = ["All"]
        return options

    def _check_preconditions(self, rtype: ResourceType, obj: Obj, options: Obj) -> None:
        pre = options.get("preconditions") or {}
        meta = obj["metadata"]
        if pre.get("uid") and pre["uid"] != meta.get("uid"):
            raise ApiError(
                409,
                "Conflict",
                f"Precondition failed: UID in precondition: {pre['uid']}, UID in "
                f"object meta: {meta.get('uid')}",
                {"name": meta["name"], "kind": rtype.plural},
            )
        if pre.get("resourceVersion") and pre["resourceVersion"] != meta.get("resourceVersion"):
            raise ApiError(
                409,
                "Conflict",
                f"Precondition failed: ResourceVersion in precondition: "
                f"{pre['resourceVersion']}, ResourceVersion in object meta: "
                f"{meta.get('resourceVersion')}",
                {"name": meta["name"], "kind": rtype.plural},
            )

    async def _delete(
        self, request: web.Request, rtype: ResourceType, namespace: str | None, name: str
    ) -> web.Response:
        options = await self._delete_options(request)
        current = self.store.get(rtype, namespace, name)
        self._check_preconditions(rtype, current, options)
        dry_run = bool(options.get("dryRun"))
        if rtype is self._pods:
            if dry_run:
                return json_response(current)
            pod, _ = self.deleter.delete_pod(current, options.get("gracePeriodSeconds"))
            return json_response(pod)
        if rtype is self._namespaces:
            if name in UNDELETABLE_NAMESPACES:
                raise ApiError(
                    403,
                    "Forbidden",
                    f'namespaces "{name}" is forbidden: this namespace may not be deleted',
                    {"name": name, "kind": "namespaces"},
                )
            if dry_run:
                return json_response(current)
            return json_response(self.deleter.begin_namespace_deletion(name))
        deleted = self.store.delete(rtype, namespace, name, dry_run=dry_run)
        details = {"name": name, "kind": rtype.plural, "uid": deleted["metadata"]["uid"]}
        if rtype.group:
            details["group"] = rtype.group
        return json_response(success_body(details))

    async def _delete_collection(
        self, request: web.Request, rtype: ResourceType, namespace: str | None
    ) -> web.Response:
        options = await self._delete_options(request)
        labels, fields = self._selectors(request, rtype)
        dry_run = bool(options.get("dryRun"))
        items = self.store.list(rtype, namespace, labels, fields)
        out = []
        for obj in items:
            meta = obj["metadata"]
            if dry_run:
                out.append(obj)
            elif rtype is self._pods:
                out.append(self.deleter.delete_pod(obj, options.get("gracePeriodSeconds"))[0])
            elif rtype is self._namespaces:
                if meta["name"] not in UNDELETABLE_NAMESPACES:
                    out.append(self.deleter.begin_namespace_deletion(meta["name"]))
            else:
                out.append(self.store.delete(rtype, meta.get("namespace"), meta["name"]))
        return json_response(
            {
                "kind": rtype.list_kind,
                "apiVersion": rtype.api_version,
                "metadata": {"resourceVersion": str(self.store.revision)},
                "items": [strip_type_meta(o) for o in out],
            }
        )
