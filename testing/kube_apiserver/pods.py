"""Pods as real Docker containers: the kubelet's part, reduced to what tests need.

Creating a pod schedules it on one pretend node, checks its images exist
locally (nothing is ever pulled: a missing image gives ErrImagePull then
ImagePullBackOff, as a kubelet that cannot reach a registry reports), starts
one container per pod container (network none), and publishes every state
change through the store so watches see Pending -> Running -> Succeeded or
Failed. Restart policies restart exited containers with a short back-off.
Deleting stops the containers with the pod's grace period and removes them.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiodocker
from aiodocker.containers import DockerContainer
from aiodocker.exceptions import DockerError

from .container_config import (
    LABEL_INSTANCE,
    LABEL_PID,
    LABEL_POD_UID,
    docker_config,
    runs_as_root_refused,
)
from .events import EventRecorder
from .resources import ResourceType
from .store import Store, now_rfc3339

Obj = dict[str, Any]
log = logging.getLogger(__name__)

# The one node every pod is "scheduled" on.
NODE_NAME = "pairpod-test-node"
NODE_IP = "127.0.0.1"

# How long the kubelet would back off before restarting a crashed container
# or reporting ImagePullBackOff, scaled down from minutes to keep tests quick.
DEFAULT_BACKOFF = 0.5
MAX_BACKOFF = 5.0


def docker_time(value: str | None) -> str | None:
    """Docker's nanosecond timestamps as the API server's second-precision RFC 3339."""
    if not value or value.startswith("0001-"):
        return None
    head = value.split(".", 1)[0].rstrip("Z")
    return dt.datetime.fromisoformat(head).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class ContainerRun:
    """What the kubelet knows about one container of a pod."""

    name: str
    image: str
    image_id: str = ""
    docker_id: str | None = None
    state: Obj = field(default_factory=lambda: {"waiting": {"reason": "ContainerCreating"}})
    last_state: Obj = field(default_factory=dict)
    restarts: int = 0
    ready: bool = False
    started: bool = False


@dataclass
class PodRun:
    """One pod's containers, volumes and the tasks that drive them."""

    namespace: str
    name: str
    uid: str
    restart_policy: str
    containers: dict[str, ContainerRun]
    volumes: list[str] = field(default_factory=list)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    terminating: bool = False
    # Set when the pod is being deleted: cuts every back-off wait short.
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    scheduled: bool = False
    conditions_since: dict[tuple[str, str], str] = field(default_factory=dict)


class PodRunner:
    """Runs every pod of one server as Docker containers labelled with its instance id."""

    def __init__(
        self,
        store: Store,
        pods: ResourceType,
        docker: aiodocker.Docker,
        instance: str,
        *,
        events: EventRecorder | None = None,
        backoff: float = DEFAULT_BACKOFF,
    ) -> None:
        self._store = store
        self._pods = pods
        self._events = events
        self._docker = docker
        self._instance = instance
        self._backoff = backoff
        self._runs: dict[str, PodRun] = {}
        self._background: set[asyncio.Task[Any]] = set()

    # --- public surface ------------------------------------------------------

    def start(self, pod: Obj) -> None:
        """Begin running a newly created pod."""
        meta = pod["metadata"]
        spec = pod["spec"]
        run = PodRun(
            namespace=meta["namespace"],
            name=meta["name"],
            uid=meta["uid"],
            restart_policy=spec.get("restartPolicy", "Always"),
            containers={c["name"]: ContainerRun(c["name"], c["image"]) for c in spec["containers"]},
        )
        self._runs[run.uid] = run
        self._spawn(run, self._run_pod(run, pod))

    def running_container(self, uid: str, container: str) -> str | None:
        """The Docker id of a pod's container if it is running now."""
        run = self._runs.get(uid)
        if run is None or run.terminating:
            return None
        state = run.containers.get(container)
        if state is None or "running" not in state.state:
            return None
        return state.docker_id

    def any_container(self, uid: str, container: str) -> str | None:
        """The Docker id of a pod's container if one was ever created (for logs)."""
        run = self._runs.get(uid)
        if run is None:
            return None
        state = run.containers.get(container)
        return state.docker_id if state is not None else None

    def waiting_reason(self, uid: str, container: str) -> str | None:
        """Why a container is not running yet (``ContainerCreating``, ``ErrImagePull``...)."""
        run = self._runs.get(uid)
        if run is None or container not in run.containers:
            return None
        return run.containers[container].state.get("waiting", {}).get("reason")

    def has_pods_in(self, namespace: str) -> bool:
        """Whether any pod of a namespace still has containers being run or removed."""
        return any(run.namespace == namespace for run in self._runs.values())

    async def terminate(self, uid: str, grace: int) -> None:
        """Stop a pod's containers (SIGTERM, then SIGKILL after ``grace`` s) and remove them."""
        run = self._runs.get(uid)
        if run is None:
            return
        run.terminating = True
        run.stopping.set()
        try:
            # Let the start sequence reach its next checkpoint rather than cancel
            # it: a Docker call cut off mid-flight can still create a container
            # that nothing would then know about.
            await asyncio.gather(*[t for t in run.tasks if t.get_name() == "start"], return_exceptions=True)
            for c in run.containers.values():
                if c.docker_id and "running" in c.state:
                    self._event(run, "Killing", f"Stopping container {c.name}", container=c.name)
            stops = [self._stop(c.docker_id, grace) for c in run.containers.values() if c.docker_id]
            await asyncio.gather(*stops, return_exceptions=True)
            # The exit watchers publish the final states; let them finish.
            await asyncio.gather(*list(run.tasks), return_exceptions=True)
            await self._remove_pod_resources(run)
        finally:
            self._runs.pop(uid, None)

    async def close(self) -> None:
        """Stop everything and remove every container and volume of this instance."""
        for run in list(self._runs.values()):
            run.terminating = True
            run.stopping.set()
        # Start sequences end at their next checkpoint (see terminate); exit
        # watchers only wait, so they may be cancelled.
        starts = [t for run in self._runs.values() for t in run.tasks if t.get_name() == "start"]
        await asyncio.gather(*starts, return_exceptions=True)
        for run in self._runs.values():
            for task in run.tasks:
                task.cancel()
        tasks = [t for run in self._runs.values() for t in run.tasks] + list(self._background)
        await asyncio.gather(*tasks, return_exceptions=True)
        self._runs.clear()
        await remove_labelled(self._docker, f"{LABEL_INSTANCE}={self._instance}")

    # --- the pod's life ---------------------------------------------------------

    def _spawn(self, run: PodRun, coro: Awaitable[None], name: str = "start") -> None:
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        run.tasks.add(task)
        task.add_done_callback(run.tasks.discard)
        task.add_done_callback(_log_failure)

    async def _run_pod(self, run: PodRun, pod: Obj) -> None:
        spec = pod["spec"]
        run.scheduled = True
        self._publish(run, scheduled_now=True)
        self._event(
            run,
            "Scheduled",
            f"Successfully assigned {run.namespace}/{run.name} to {NODE_NAME}",
            component="default-scheduler",
        )
        image_users: dict[str, str] = {}
        missing: list[ContainerRun] = []
        for container in run.containers.values():
            try:
                info = await self._docker.images.inspect(container.image)
            except DockerError as error:
                if error.status != 404:
                    raise
                missing.append(container)
                continue
            container.image_id = f"docker://{info['Id']}"
            image_users[container.name] = (info.get("Config") or {}).get("User") or ""
        if run.terminating:
            return
        if missing:
            await self._image_pull_failures(run, missing)
            return
        for spec_container in spec["containers"]:
            image_user = image_users[spec_container["name"]]
            refusal = runs_as_root_refused(spec, spec_container, image_user)
            if refusal is not None:
                detail = (
                    f'{refusal} (pod: "{run.name}_{run.namespace}({run.uid})", '
                    f"container: {spec_container['name']})"
                )
                run.containers[spec_container["name"]].state = {
                    "waiting": {"reason": "CreateContainerConfigError", "message": detail}
                }
                self._publish(run)
                self._event(
                    run, "Failed", f"Error: {refusal}", warning=True, container=spec_container["name"]
                )
                return
        volumes = await self._create_volumes(run, spec)
        created: list[tuple[ContainerRun, DockerContainer]] = []
        for spec_container in spec["containers"]:
            if run.terminating:
                return
            container = run.containers[spec_container["name"]]
            config = docker_config(
                pod, spec_container, instance=self._instance, pid=os.getpid(), volumes=volumes
            )
            self._event(
                run,
                "Pulled",
                f'Container image "{container.image}" already present on machine',
                container=container.name,
            )
            try:
                docker_container = await self._docker.containers.create(
                    config, name=f"k8s_{container.name}_{run.name}_{run.namespace}_{run.uid[:8]}"
                )
            except DockerError as error:
                # What the kubelet reports when the runtime refuses a container config.
                container.state = {
                    "waiting": {"reason": "CreateContainerError", "message": str(error.message)}
                }
                self._publish(run)
                self._event(run, "Failed", f"Error: {error.message}", warning=True, container=container.name)
                return
            container.docker_id = docker_container.id
            self._event(run, "Created", f"Created container {container.name}", container=container.name)
            created.append((container, docker_container))
        for container, docker_container in created:
            if run.terminating:
                return
            await self._start_container(run, container, docker_container)
        self._publish(run)

    async def _image_pull_failures(self, run: PodRun, missing: list[ContainerRun]) -> None:
        for container in missing:
            container.state = {
                "waiting": {
                    "reason": "ErrImagePull",
                    "message": f'failed to pull and unpack image "{container.image}": image not '
                    "present on the node and this cluster cannot pull images",
                }
            }
            self._event(
                run,
                "Failed",
                f'Failed to pull image "{container.image}": {container.state["waiting"]["message"]}',
                warning=True,
                container=container.name,
            )
            self._event(run, "Failed", "Error: ErrImagePull", warning=True, container=container.name)
        self._publish(run)
        # The kubelet reports the back-off after its first retry fails.
        if await _stopped_within(run, self._backoff):
            return
        for container in missing:
            container.state = {
                "waiting": {
                    "reason": "ImagePullBackOff",
                    "message": f'Back-off pulling image "{container.image}"',
                }
            }
            self._event(
                run, "BackOff", f'Back-off pulling image "{container.image}"', container=container.name
            )
        self._publish(run)

    async def _create_volumes(self, run: PodRun, spec: Obj) -> dict[str, str]:
        volumes: dict[str, str] = {}
        for volume in spec.get("volumes") or []:
            if "emptyDir" not in volume:
                continue
            if run.terminating:
                break
            docker_name = f"k8s_{run.uid[:8]}_{volume['name']}"
            await self._docker.volumes.create(
                {
                    "Name": docker_name,
                    "Labels": {
                        LABEL_INSTANCE: self._instance,
                        LABEL_PID: str(os.getpid()),
                        LABEL_POD_UID: run.uid,
                    },
                }
            )
            run.volumes.append(docker_name)
            volumes[volume["name"]] = docker_name
        return volumes

    async def _start_container(
        self, run: PodRun, container: ContainerRun, docker_container: DockerContainer
    ) -> None:
        try:
            await docker_container.start()
        except DockerError as error:
            # Upstream reports a command that cannot be run as StartError, exit 128.
            now = now_rfc3339()
            container.state = {
                "terminated": {
                    "exitCode": 128,
                    "reason": "StartError",
                    "message": str(error.message),
                    "startedAt": "1970-01-01T00:00:00Z",
                    "finishedAt": now,
                    "containerID": f"docker://{docker_container.id}",
                }
            }
            container.ready = False
            self._spawn(run, self._restart_or_finish(run, container, docker_container, 128), name="restart")
            return
        self._event(run, "Started", f"Started container {container.name}", container=container.name)
        info = await docker_container.show()
        container.state = {"running": {"startedAt": docker_time(info["State"]["StartedAt"]) or now_rfc3339()}}
        container.ready = True
        container.started = True
        self._spawn(run, self._watch_exit(run, container, docker_container), name="exit")

    async def _watch_exit(
        self, run: PodRun, container: ContainerRun, docker_container: DockerContainer
    ) -> None:
        result = await docker_container.wait()
        code = int(result.get("StatusCode", -1))
        info = await docker_container.show()
        state = info["State"]
        reason = "OOMKilled" if state.get("OOMKilled") else "Completed" if code == 0 else "Error"
        container.state = {
            "terminated": {
                "exitCode": code,
                "reason": reason,
                "startedAt": docker_time(state.get("StartedAt")),
                "finishedAt": docker_time(state.get("FinishedAt")) or now_rfc3339(),
                "containerID": f"docker://{docker_container.id}",
            }
        }
        container.ready = False
        container.started = False
        self._publish(run)
        if not run.terminating:
            await self._restart_or_finish(run, container, docker_container, code)

    async def _restart_or_finish(
        self, run: PodRun, container: ContainerRun, docker_container: DockerContainer, code: int
    ) -> None:
        policy = run.restart_policy
        if run.terminating or policy == "Never" or (policy == "OnFailure" and code == 0):
            self._publish(run)
            return
        container.restarts += 1
        container.last_state = dict(container.state)
        # First restart at once, then an exponential back-off, as the kubelet does.
        delay = (
            0.0
            if container.restarts == 1
            else min(self._backoff * 2 ** (container.restarts - 2), MAX_BACKOFF)
        )
        if delay:
            self._event(
                run,
                "BackOff",
                "Back-off restarting failed container "
                f"{container.name} in pod {run.name}_{run.namespace}({run.uid})",
                warning=True,
                container=container.name,
            )
            container.state = {
                "waiting": {
                    "reason": "CrashLoopBackOff",
                    "message": f"back-off {delay:g}s restarting failed container={container.name} "
                    f"pod={run.name}_{run.namespace}({run.uid})",
                }
            }
            self._publish(run)
            if await _stopped_within(run, delay):
                return
        if run.terminating:
            return
        await self._start_container(run, container, docker_container)
        self._publish(run)

    async def _stop(self, docker_id: str, grace: int) -> None:
        container = self._docker.containers.container(docker_id)
        with contextlib.suppress(DockerError):
            await container.stop(t=max(grace, 0))

    async def _remove_pod_resources(self, run: PodRun) -> None:
        await remove_labelled(self._docker, f"{LABEL_POD_UID}={run.uid}")

    def _event(
        self,
        run: PodRun,
        reason: str,
        message: str,
        *,
        warning: bool = False,
        container: str | None = None,
        component: str = "kubelet",
    ) -> None:
        if self._events is None:
            return
        pod = self._store.peek(self._pods, run.namespace, run.name)
        if pod is None or pod["metadata"]["uid"] != run.uid:
            return
        namespaces = self._store.peek_namespace(run.namespace)
        if namespaces is None or namespaces["metadata"].get("deletionTimestamp"):
            return
        self._events.record(pod, reason, message, warning=warning, container=container, component=component)

    # --- status ---------------------------------------------------------------------

    def _phase(self, run: PodRun) -> str:
        states = list(run.containers.values())
        if not any(c.started or "terminated" in c.state or c.restarts for c in states):
            return "Pending"
        terminated = [c.state["terminated"] for c in states if "terminated" in c.state]
        all_done = len(terminated) == len(states)
        if run.restart_policy == "Never" and all_done:
            return "Failed" if any(t["exitCode"] != 0 for t in terminated) else "Succeeded"
        if run.restart_policy == "OnFailure" and all_done and all(t["exitCode"] == 0 for t in terminated):
            return "Succeeded"
        return "Running"

    def _condition(self, run: PodRun, kind: str, ok: bool, reason: str = "", message: str = "") -> Obj:
        status = "True" if ok else "False"
        # lastTransitionTime moves only when the condition's status changes.
        since = run.conditions_since.setdefault((kind, status), now_rfc3339())
        run.conditions_since.pop((kind, "False" if ok else "True"), None)
        condition: Obj = {"type": kind, "status": status, "lastProbeTime": None, "lastTransitionTime": since}
        if reason:
            condition["reason"] = reason
        if message:
            condition["message"] = message
        return condition

    def _status(self, run: PodRun, old: Obj) -> Obj:
        phase = self._phase(run)
        containers = list(run.containers.values())
        unready = [c.name for c in containers if not c.ready]
        terminal = phase in ("Succeeded", "Failed")
        if terminal:
            ready_reason, ready_msg = "PodCompleted", ""
        elif unready:
            ready_reason = "ContainersNotReady"
            ready_msg = f"containers with unready status: [{' '.join(unready)}]"
        else:
            ready_reason, ready_msg = "", ""
        created = any(c.docker_id for c in containers)
        conditions = [
            self._condition(run, "PodReadyToStartContainers", created and not terminal),
            self._condition(run, "Initialized", True),
            self._condition(run, "Ready", not unready and not terminal, ready_reason, ready_msg),
            self._condition(run, "ContainersReady", not unready and not terminal, ready_reason, ready_msg),
            self._condition(run, "PodScheduled", True),
        ]
        statuses = []
        for c in containers:
            entry: Obj = {
                "name": c.name,
                "state": c.state,
                "lastState": c.last_state,
                "ready": c.ready,
                "restartCount": c.restarts,
                "image": c.image,
                "imageID": c.image_id,
                "started": c.started,
            }
            if c.docker_id:
                entry["containerID"] = f"docker://{c.docker_id}"
            statuses.append(entry)
        status: Obj = {
            "phase": phase,
            "conditions": conditions,
            "hostIP": NODE_IP,
            "hostIPs": [{"ip": NODE_IP}],
            "startTime": old.get("startTime") or now_rfc3339(),
            "containerStatuses": statuses,
            "qosClass": old.get("qosClass", "BestEffort"),
        }
        return status

    def _publish(self, run: PodRun, *, scheduled_now: bool = False) -> None:
        def change(pod: Obj) -> None:
            if scheduled_now:
                pod["spec"]["nodeName"] = NODE_NAME
            pod["status"] = self._status(run, pod.get("status") or {})

        self._store.mutate(self._pods, run.namespace, run.name, _same_uid(run.uid, change))


def _same_uid(uid: str, change: Callable[[Obj], None]) -> Callable[[Obj], None]:
    """Guard a status write against a newer pod that reuses the name."""

    def guarded(pod: Obj) -> None:
        if pod["metadata"].get("uid") == uid:
            change(pod)

    return guarded


async def _stopped_within(run: PodRun, delay: float) -> bool:
    """Wait out a kubelet back-off; True when the pod started terminating meanwhile."""
    try:
        await asyncio.wait_for(run.stopping.wait(), delay)
    except TimeoutError:
        return False
    return True


def _log_failure(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("pod task failed", exc_info=task.exception())


async def remove_labelled(docker: aiodocker.Docker, label: str) -> None:
    """Force-remove every container, then every volume, carrying ``label`` (``key=value``)."""
    containers = await docker.containers.list(all=True, filters={"label": [label]})
    await asyncio.gather(*(c.delete(force=True, v=True) for c in containers), return_exceptions=True)
    volumes = await docker.volumes.list(filters={"label": [label]})
    for volume in volumes.get("Volumes") or []:
        with contextlib.suppress(DockerError):
            await aiodocker.volumes.DockerVolume(docker, volume["Name"]).delete()


async def reap_orphans(docker: aiodocker.Docker) -> int:
    """Remove containers and volumes left by test servers whose process has died.

    Returns how many containers were removed.
    """
    containers = await docker.containers.list(all=True, filters={"label": [LABEL_PID]})
    dead: set[str] = set()
    for container in containers:
        pid = (container._container.get("Labels") or {}).get(LABEL_PID, "")
        if pid.isdigit() and not _alive(int(pid)):
            dead.add(pid)
    volumes = await docker.volumes.list(filters={"label": [LABEL_PID]})
    for volume in volumes.get("Volumes") or []:
        pid = (volume.get("Labels") or {}).get(LABEL_PID, "")
        if pid.isdigit() and not _alive(int(pid)):
            dead.add(pid)
    removed = 0
    for pid in dead:
        before = await docker.containers.list(all=True, filters={"label": [f"{LABEL_PID}={pid}"]})
        removed += len(before)
        await remove_labelled(docker, f"{LABEL_PID}={pid}")
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
