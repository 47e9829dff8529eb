"""The Kubernetes backend: a pod per connection (or per channel), through the Kubernetes API.

``mode: connection``: logging in creates one pod running an idle command and
waits, by watching it, until it runs; every channel (shell, exec, sftp) is an
exec in it. ``mode: session``: each channel gets a pod of its own, deleted when
its program ends. Either way pods go when the connection does (deleted, then
watched until gone, within ``timeouts.stop``), and pods of this instance that
no live connection owns (after a crash, say) are deleted at start-up and then
periodically.

**The pod.** pairpod's secure defaults, with ``kubernetes.pod`` deep-merged
over them (mappings merge; lists of named items such as ``containers``,
``volumes`` or ``env`` merge by ``name``; anything else is replaced):
``restartPolicy: Never``, ``automountServiceAccountToken: false``, no service
links, the RuntimeDefault seccomp profile, and for the shell container
``allowPrivilegeEscalation: false``, every capability dropped, resource limits
from ``kubernetes.limits`` (requests default to the limits), stdin held open
for the idle command. pairpod always sets the pod's name, namespace and its
own labels (``pairpod.managed``, ``pairpod.instance``, ``pairpod.connection``,
``pairpod.user``, ``pairpod.mode``, ``pairpod.pool``), the user's name as
typed in the ``pairpod.user`` annotation (labels cannot hold every
character), and the shell container's command (the idle command).

**Non-root where the image allows.** The shell container asks for
``runAsNonRoot: true``. An image whose user is root (or a name the kubelet
cannot check) is refused by the kubelet (``CreateContainerConfigError``);
pairpod then deletes that pod, remembers the image, and starts its pods
without the flag, logging a warning that says how to make it non-root
(``runAsUser`` in ``kubernetes.pod``). When ``kubernetes.pod`` sets
``runAsNonRoot`` itself, its value stands and nothing falls back: with
``true``, a root image fails the login with a clear message.

**Starting.** Pods are watched, not polled. A pod that cannot start for good
(an image that does not exist or may not be pulled, a config the kubelet
refuses, a container that exits) is deleted at once; one still pending when
``timeouts.start`` runs out (an image pull backing off, no node with room) is
deleted then. Either way the user reads why.

**Processes** start through the shared POSIX-sh wrapper (:mod:`pairpod.backends.container.wrapper`): the
exec API passes no environment, so the wrapper exports the variables; it
reports the program's PID, which is how signals are delivered: the exec
protocol has no signal channel, so :meth:`KubernetesProcess.signal` runs a second
exec, ``kill -s NAME PID``. What cannot be carried:

- an exit *by signal* arrives as 128 + N (as with Docker): read as the signal
  when it names one SSH knows, so ``exit 130`` also reads as INT;
- on a ``v4.channel.k8s.io`` server (before Kubernetes 1.30) stdin cannot be
  closed: with a PTY the terminal's EOF character is typed (as always), without
  one the program keeps its stdin open and the log says so
  (``kubernetes.stdin_eof_unsupported``); ending the channel still ends it;
- closing an exec stream does not end its process, so a channel's end runs a
  second exec that kills the process tree (needs ``/bin/sh`` and ``/proc``).

**Owner.** When the gateway runs in a pod and its Deployment passes
``PAIRPOD_POD_NAME``, ``PAIRPOD_POD_NAMESPACE`` and ``PAIRPOD_POD_UID`` (the
downward API), user pods in the same namespace get an ownerReference to the
gateway's pod, so the cluster's garbage collector removes them if that pod is
deleted while the gateway could not clean up.

The pod is described (and its status read) in :mod:`.pod`; the API is
reached through :mod:`.api` (kubernetes_asyncio) and exec through
:mod:`.stream` (WebSocket, ``v5.channel.k8s.io``, v4 fallback); the two
environments are in :mod:`.environment`, processes in :mod:`.process`.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Callable
from typing import Any

from pairpod.backends.base import Identity
from pairpod.backends.container.backend import ContainerBackend
from pairpod.backends.container.names import (
    LABEL_CONNECTION,
    LABEL_INSTANCE,
    LABEL_MANAGED,
    LABEL_MODE,
    LABEL_POOL,
    LABEL_USER,
    hostname_for,
)
from pairpod.backends.container.process import HELPER_TIMEOUT
from pairpod.backends.kubernetes import pool
from pairpod.backends.kubernetes.api import KubeApi, KubeApiError, Obj, WatchExpired
from pairpod.backends.kubernetes.environment import (
    KubernetesConnectionEnvironment,
    KubernetesEnvironment,
    KubernetesSessionEnvironment,
)
from pairpod.backends.kubernetes.pod import (
    ANNOTATION_USER,
    DELETED,
    PodHandle,
    PodProgress,
    build_pod,
    container_of,
    dns_label,
    explicit_non_root,
    gateway_owner,
    label_value,
    pod_progress,
    start_failure,
)
from pairpod.backends.kubernetes.stream import Finished
from pairpod.config import Config, KubernetesSettings
from pairpod.errors import BackendUnavailable, ConfigError, PairpodError
from pairpod.log import fields, get_logger

log = get_logger("backend.kubernetes")

# --- constants --------------------------------------------------------------------------

# How long a forced (no grace) deletion may take to show.
_FORCED_DELETE_WAIT = 10.0


class _StartWatch:
    """The latest progress of a starting pod (for the message if time runs out)."""

    def __init__(self) -> None:
        self.progress = PodProgress(reason="Creating", message="the pod is being created")


# --- the backend -------------------------------------------------------------------------


class KubernetesBackend(ContainerBackend["KubernetesEnvironment", PodHandle]):
    """Environments as pods, with watches, orphan reaping and a warm pool."""

    name = "kubernetes"
    log_prefix = "kubernetes"

    def __init__(self, config: Config, instance_id: str) -> None:
        super().__init__(config, instance_id)
        self.api = KubeApi(config.kubernetes)
        # Live pods are named "namespace/name".
        self._namespaces: set[str] = {config.kubernetes.namespace}
        # Images the kubelet found to run as root: their pods no longer ask for non-root.
        self._root_images: set[str] = set()
        self.owner = gateway_owner()

    # --- lifecycle ------------------------------------------------------------------

    async def start(self) -> None:
        """Load credentials, check the pod template, reap leftovers; then keep reaping and the pool full.

        An API server that does not answer is not fatal: the gateway serves
        anyway, each login reports the backend as unavailable until it is back.
        Credentials that cannot be loaded, or a pod template the API server
        rejects, are configuration errors.
        """
        await self.api.connect()
        try:
            await self.check_template()
        except ConfigError:
            await self.api.close()
            raise
        except PairpodError:
            pass  # the API server did not answer: the reap below logs that once
        await self._start_housekeeping()

    async def check(self) -> None:
        """The API server answers (else BackendUnavailable)."""
        await self.api.version()

    @property
    def warm_pool(self) -> int:
        """Pods kept running ahead of logins (connection mode only)."""
        settings = self.config.kubernetes
        return settings.warm_pool if settings.mode == "connection" else 0

    async def _release_pool(self, pool: list[PodHandle]) -> None:
        stop = self.config.kubernetes.timeouts.stop
        await asyncio.gather(*(self.remove_pod(handle, stop) for handle in pool), return_exceptions=True)

    async def _close_client(self) -> None:
        await self.api.close()

    async def check_template(self) -> None:
        """Have the API server validate the pod template (a dry run, strict field validation).

        A template it rejects is a ConfigError: every login would fail on it.
        """
        settings = self.config.kubernetes
        manifest = self.pod_manifest(settings, name=self.pod_name(None), identity=None, mode="connection")
        try:
            await self.api.create_pod(settings.namespace, manifest, dry_run=True)
        except KubeApiError as error:
            if error.status in (400, 422):
                raise ConfigError(
                    f"kubernetes.pod: the API server rejects the pod template: {error}"
                ) from None
            log.warning("kubernetes.template_unchecked", extra=fields(error=error.operator_message))

    # --- reaping ----------------------------------------------------------------------

    async def reap_orphans(self) -> list[str]:
        """Delete this instance's pods that no live connection or pool owns.

        "This instance's" are the pods labelled with its instance id and, when
        the gateway knows its own pod, the pods that pod owns (left by an earlier
        run of the gateway in the same pod, whose instance id was another).
        Returns their ``namespace/name``. Raises BackendUnavailable if the API is down.
        """
        candidates: dict[str, tuple[str, Obj]] = {}
        for namespace in sorted(self._namespaces):
            pods, _ = await self.api.list_pods(namespace, f"{LABEL_INSTANCE}={label_value(self.instance_id)}")
            candidates.update((f"{namespace}/{p['metadata']['name']}", (namespace, p)) for p in pods)
        if self.owner is not None:
            namespace = self.owner["namespace"]
            pods, _ = await self.api.list_pods(namespace, f"{LABEL_MANAGED}=true")
            owner_uid = self.owner["uid"]
            candidates.update(
                (f"{namespace}/{p['metadata']['name']}", (namespace, p))
                for p in pods
                if any(ref.get("uid") == owner_uid for ref in p["metadata"].get("ownerReferences") or [])
            )
        orphans = [
            (namespace, pod)
            for key, (namespace, pod) in sorted(candidates.items())
            if key not in self._live and not pod["metadata"].get("deletionTimestamp")
        ]
        results = await asyncio.gather(
            *(
                self.api.delete_pod(ns, pod["metadata"]["name"], uid=pod["metadata"].get("uid"))
                for ns, pod in orphans
            ),
            return_exceptions=True,
        )
        removed = []
        for (namespace, pod), result in zip(orphans, results, strict=True):
            key = f"{namespace}/{pod['metadata']['name']}"
            if isinstance(result, BaseException):
                log.warning("kubernetes.reap_failed", extra=fields(pod=key, error=str(result)))
            else:
                removed.append(key)
        return removed

    # --- pods ---------------------------------------------------------------------------

    def pod_name(self, identity: Identity | None, suffix: str = "") -> str:
        """A unique, recognisable pod name (a DNS label, so it can be the hostname too)."""
        owner = dns_label(identity.conn_id, 16) if identity is not None else "pool"
        name = f"pairpod-{dns_label(self.instance_id, 16)}-{owner}-{secrets.token_hex(3)}"
        return f"{name}-{suffix}" if suffix else name

    def labels(self, identity: Identity | None, mode: str, pool: bool = False) -> dict[str, str]:
        """pairpod's labels of a pod."""
        labels = {LABEL_MANAGED: "true", LABEL_INSTANCE: label_value(self.instance_id), LABEL_MODE: mode}
        if identity is not None:
            labels[LABEL_CONNECTION] = label_value(identity.conn_id)
            labels[LABEL_USER] = label_value(identity.username)
        if pool:
            labels[LABEL_POOL] = "true"
        return labels

    def pod_manifest(
        self,
        settings: KubernetesSettings,
        *,
        name: str,
        identity: Identity | None,
        mode: str,
        pool: bool = False,
    ) -> Obj:
        """The pod for these settings (see :func:`.pod.build_pod`)."""
        return build_pod(
            settings,
            name=name,
            labels=self.labels(identity, mode, pool),
            annotations={ANNOTATION_USER: identity.username} if identity is not None else {},
            hostname="pairpod" if identity is None else hostname_for("{username}", identity.username),
            owner=self.owner,
            root_images=self._root_images,
        )

    async def _create(self, namespace: str, manifest: Obj, time_limit: float) -> Obj:
        """Create a pod. Shielded: if the caller gives up mid-call, the API server may
        still make it, and the caller's cleanup must find it."""
        task = asyncio.ensure_future(self.api.create_pod(namespace, manifest))
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(task, time_limit)
            raise

    async def start_pod(
        self,
        settings: KubernetesSettings,
        identity: Identity | None,
        mode: str,
        *,
        pool: bool = False,
        suffix: str = "",
        status: Callable[[str], Any] | None = None,
    ) -> PodHandle:
        """Create a pod and wait, by watch, until its shell container runs.

        Whatever goes wrong (a timeout, a refusal, cancellation) the pod is
        deleted before this returns or raises.
        """
        namespace = settings.namespace
        self._namespaces.add(namespace)
        watch = _StartWatch()
        name = self.pod_name(identity, suffix)
        key = f"{namespace}/{name}"
        self._live.add(key)
        image = settings.image
        try:
            async with asyncio.timeout(settings.timeouts.start):
                for attempt in (1, 2):
                    manifest = self.pod_manifest(settings, name=name, identity=identity, mode=mode, pool=pool)
                    # The template may name another image than kubernetes.image.
                    image = str((container_of(manifest, settings.container) or {}).get("image"))
                    created = await self._create(namespace, manifest, settings.timeouts.stop)
                    uid = str(created["metadata"]["uid"])
                    progress = await self._wait_running(namespace, created, settings, watch, status)
                    if progress.ready:
                        return PodHandle(namespace, name, uid, settings.container)
                    non_root = explicit_non_root(settings.pod, settings.container)
                    if progress.runs_as_root and non_root is None and attempt == 1:
                        # The image runs as root: start its pods without asking for non-root.
                        self._root_images.add(image)
                        log.warning(
                            "kubernetes.image_runs_as_root",
                            extra=fields(
                                image=image,
                                detail=progress.message,
                                hint="set runAsUser in kubernetes.pod to run it as non-root",
                            ),
                        )
                        await self._delete_now(PodHandle(namespace, name, uid, settings.container))
                        self._live.discard(key)
                        name = self.pod_name(identity, suffix)
                        key = f"{namespace}/{name}"
                        self._live.add(key)
                        continue
                    raise start_failure(progress, name, image)
                raise AssertionError("unreachable")
        except BaseException as error:
            # Nothing may be left behind, whatever went wrong (even cancellation).
            await asyncio.shield(self._delete_now(PodHandle(namespace, name, "", settings.container)))
            self._live.discard(key)
            if isinstance(error, TimeoutError):
                raise start_failure(watch.progress, name, image, settings.timeouts.start) from None
            raise

    async def _wait_running(
        self,
        namespace: str,
        pod: Obj,
        settings: KubernetesSettings,
        watch: _StartWatch,
        status: Callable[[str], Any] | None,
    ) -> PodProgress:
        """Watch a pod until it runs or cannot; its progress then."""
        container = settings.container
        name = pod["metadata"]["name"]
        uid = pod["metadata"].get("uid")
        version = str(pod["metadata"].get("resourceVersion", ""))
        progress = pod_progress(pod, container)
        while True:
            watch.progress = progress
            if progress.ready or progress.permanent:
                return progress
            try:
                events = self.api.watch_pod(namespace, name, version, settings.timeouts.start)
                async with contextlib.aclosing(events):
                    async for kind, obj in events:
                        meta = obj.get("metadata") or {}
                        if uid and meta.get("uid") not in (None, uid):
                            continue  # an older pod of that name going away
                        version = str(meta.get("resourceVersion") or version)
                        previous = progress
                        progress = DELETED if kind == "DELETED" else pod_progress(obj, container)
                        if status is not None and progress.reason != previous.reason and not progress.ready:
                            status(f"environment: {progress.reason}")
                        watch.progress = progress
                        if progress.ready or progress.permanent:
                            break
            except WatchExpired:
                # Our version is too old to resume from: read the pod afresh.
                fresh = await self.api.get_pod(namespace, name)
                if fresh is None or (uid and fresh["metadata"].get("uid") != uid):
                    progress = DELETED
                else:
                    version = str(fresh["metadata"].get("resourceVersion", ""))
                    progress = pod_progress(fresh, container)

    async def _delete_now(self, handle: PodHandle) -> None:
        """Delete a pod that never served (no grace) and wait until it is gone."""
        try:
            await self._delete_and_wait(handle, self.config.kubernetes.timeouts.stop, grace_seconds=0)
        except (PairpodError, TimeoutError) as error:
            log.warning("kubernetes.delete_failed", extra=fields(pod=handle.key, error=str(error)))

    async def _delete_and_wait(
        self, handle: PodHandle, time_limit: float, grace_seconds: int | None = None
    ) -> None:
        """Delete a pod and wait (up to ``time_limit``) until the API says it is gone."""
        async with asyncio.timeout(time_limit):
            gone = await self.api.delete_pod(
                handle.namespace, handle.name, grace_seconds=grace_seconds, uid=handle.uid or None
            )
            if gone is not None:
                await self._wait_gone(handle)

    async def remove_pod(self, handle: PodHandle, time_limit: float) -> None:
        """Delete a pod (its processes get TERM) and wait until it is gone.

        If it is not gone within ``time_limit`` it is deleted without grace.
        Failures are logged and left to the reaper.
        """
        try:
            try:
                await self._delete_and_wait(handle, time_limit)
                return
            except TimeoutError:
                log.warning("kubernetes.delete_slow", extra=fields(pod=handle.key, limit=time_limit))
            # Forced: the API object goes at once (the kubelet still kills what runs).
            await self._delete_and_wait(handle, _FORCED_DELETE_WAIT, grace_seconds=0)
        except (PairpodError, TimeoutError) as error:
            log.warning("kubernetes.delete_failed", extra=fields(pod=handle.key, error=str(error)))
        finally:
            self._live.discard(handle.key)

    async def _wait_gone(self, handle: PodHandle) -> None:
        """Return once the pod (this uid of it) no longer exists."""
        while True:
            pod = await self.api.get_pod(handle.namespace, handle.name)
            if pod is None or (handle.uid and pod["metadata"].get("uid") != handle.uid):
                return
            version = str(pod["metadata"].get("resourceVersion", ""))
            uid = pod["metadata"].get("uid")
            events = self.api.watch_pod(
                handle.namespace, handle.name, version, self.config.kubernetes.timeouts.stop
            )
            with contextlib.suppress(WatchExpired):
                async with contextlib.aclosing(events):
                    async for kind, obj in events:
                        if kind == "DELETED" and obj["metadata"].get("uid") in (None, "", uid):
                            return

    # --- helpers in a pod ---------------------------------------------------------------

    async def run_helper(self, handle: PodHandle, argv: list[str]) -> int | None:
        """Run a short command in a pod (no TTY, no input); its exit code."""
        async with asyncio.timeout(HELPER_TIMEOUT):
            stream = await self.api.exec(
                handle.namespace, handle.name, handle.container, argv, stdin=False, tty=False
            )
            try:
                while (event := await stream.receive()) is not None:
                    if isinstance(event, Finished):
                        return event.result.exit_code
            finally:
                await stream.close()
        return None

    async def describe_pod(self, handle: PodHandle) -> PodProgress | None:
        """The pod's progress now (None if it is gone)."""
        pod = await self.api.get_pod(handle.namespace, handle.name)
        if pod is None or (handle.uid and pod["metadata"].get("uid") != handle.uid):
            return None
        return pod_progress(pod, handle.container)

    # --- opening an environment ---------------------------------------------------------

    async def open(
        self, identity: Identity, *, status: Callable[[str], Any] | None = None
    ) -> KubernetesEnvironment:
        """Create the connection's environment.

        ``status``, when given, is called with a line the user should see while
        they wait (the pod's progress).
        """
        if self._stopping:
            raise BackendUnavailable("the kubernetes backend is stopping")
        settings = identity.config.kubernetes
        env: KubernetesEnvironment
        if settings.mode == "session":
            env = KubernetesSessionEnvironment(self, identity, settings)
        else:
            pooled = await pool.take(self, identity)
            if pooled is not None:
                env = pooled
            else:
                handle = await self.start_pod(settings, identity, "connection", status=status)
                log.info(
                    "kubernetes.pod_started",
                    extra=fields(
                        conn=identity.conn_id, user=identity.username, pod=handle.key, image=settings.image
                    ),
                )
                env = KubernetesConnectionEnvironment(self, identity, settings, handle)
        self._environments.add(env)
        return env

    # --- warm pool ------------------------------------------------------------------------

    async def _pool_one(self) -> None:
        settings = self.config.kubernetes
        self._pool_filling += 1
        try:
            handle = await self.start_pod(settings, None, "connection", pool=True)
        finally:
            self._pool_filling -= 1
        if self._stopping:
            await self.remove_pod(handle, settings.timeouts.stop)
            return
        self._pool.append(handle)
