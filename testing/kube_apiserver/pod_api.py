"""The pods' exec and log subresources: checks as the API server makes them, then Docker."""

from __future__ import annotations

import contextlib
import datetime as dt
from typing import Any

import aiodocker
from aiohttp import web

from .exec_ws import parse_exec_options, serve_exec
from .params import parse_bool, parse_int
from .pods import PodRunner
from .resources import ResourceType
from .status import bad_request
from .store import Store

Obj = dict[str, Any]


def pod_container(
    store: Store, pods: ResourceType, namespace: str | None, name: str, container: str | None
) -> tuple[Obj, str]:
    """The pod and the container a request means (404 / 400 as upstream)."""
    pod = store.get(pods, namespace, name)
    names = [c["name"] for c in pod["spec"]["containers"]]
    if container is None:
        default = (pod["metadata"].get("annotations") or {}).get("kubectl.kubernetes.io/default-container")
        if default in names:
            container = default
        elif len(names) == 1:
            container = names[0]
        else:
            raise bad_request(
                f"a container name must be specified for pod {name}, choose one of: [{' '.join(names)}]"
            )
    if container not in names:
        raise bad_request(f"container {container} is not valid for pod {name}")
    return pod, container


async def serve_pod_exec(
    request: web.Request,
    store: Store,
    pods: ResourceType,
    runner: PodRunner,
    docker: aiodocker.Docker,
    namespace: str | None,
    name: str,
) -> web.StreamResponse:
    """``pods/{name}/exec``: refuse what the server would, else relay a Docker exec."""
    options = parse_exec_options(request.query)
    pod, container = pod_container(store, pods, namespace, name, options.container)
    phase = (pod.get("status") or {}).get("phase")
    if phase in ("Succeeded", "Failed"):
        raise bad_request(f"cannot exec into a container in a completed pod; current phase is {phase}")
    docker_id = runner.running_container(pod["metadata"]["uid"], container)
    if docker_id is None:
        raise bad_request(f'unable to upgrade connection: container not found ("{container}")')
    return await serve_exec(request, docker, docker_id, options)


async def serve_pod_log(
    request: web.Request,
    store: Store,
    pods: ResourceType,
    runner: PodRunner,
    docker: aiodocker.Docker,
    namespace: str | None,
    name: str,
) -> web.StreamResponse:
    """``pods/{name}/log``: the container's output as text, followed if asked."""
    pod, container = pod_container(store, pods, namespace, name, request.query.get("container"))
    uid = pod["metadata"]["uid"]
    docker_id = runner.any_container(uid, container)
    if docker_id is None:
        reason = runner.waiting_reason(uid, container) or "ContainerCreating"
        raise bad_request(f'container "{container}" in pod "{name}" is waiting to start: {reason}')
    follow = parse_bool(request.query, "follow")
    tail = parse_int(request.query, "tailLines")
    options: Obj = {"timestamps": parse_bool(request.query, "timestamps")}
    if tail is not None:
        options["tail"] = str(tail)
    since = parse_int(request.query, "sinceSeconds")
    if since is not None:
        options["since"] = int(dt.datetime.now(dt.UTC).timestamp()) - since
    docker_container = docker.containers.container(docker_id)
    response = web.StreamResponse(status=200)
    response.content_type = "text/plain"
    response.enable_chunked_encoding()
    await response.prepare(request)
    with contextlib.suppress(ConnectionResetError):
        if follow:
            async for chunk in docker_container.log(stdout=True, stderr=True, follow=True, **options):
                await response.write(chunk.encode())
        else:
            lines = await docker_container.log(stdout=True, stderr=True, **options)
            await response.write("".join(lines).encode())
        await response.write_eof()
    return response
