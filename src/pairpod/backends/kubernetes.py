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

**Processes** start through the shared POSIX-sh wrapper (:mod:`.common`): the
exec API passes no environment, so the wrapper exports the variables; it
reports the program's PID, which is how signals are delivered: the exec
protocol has no signal channel, so :meth:`KubeProcess.signal` runs a second
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

The pod is described (and its status read) in :mod:`.kube_pod`; the API is
reached through :mod:`.kube_api` (kubernetes_asyncio) and exec through
:mod:`.kube_exec` (WebSocket, ``v5.channel.k8s.io``, v4 fallback).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Callable
from typing import Any

from pairpod.backends.base import (
    ExitStatus,
    Identity,
    Process,
    ProcessSpec,
    PtySpec,
)
from pairpod.backends.common import (
    LABEL_CONNECTION,
    LABEL_INSTANCE,
    LABEL_MANAGED,
    LABEL_MODE,
    LABEL_POOL,
    LABEL_USER,
    exit_status,
    exportable,
    hostname_for,
    kill_tree_command,
    process_env,
    signal_command,
    wrapped_command,
)
from pairpod.backends.container_backend import ContainerBackend
from pairpod.backends.container_env import ContainerEnvironment
from pairpod.backends.container_process import HELPER_TIMEOUT, ContainerProcess
from pairpod.backends.docker_stream import PreambleReader
from pairpod.backends.kube_api import KubeApi, KubeApiError, Obj, WatchExpired
from pairpod.backends.kube_exec import (
    STDERR,
    STDOUT,
    ExecProtocolError,
    ExecRefused,
    ExecResult,
    ExecStream,
    Finished,
    Output,
)
from pairpod.backends.kube_pod import (
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
from pairpod.config import Config, KubernetesSettings
from pairpod.errors import (
    BackendError,
    BackendUnavailable,
    ConfigError,
    EnvironmentGone,
    PairpodError,
    StartTimeout,
)
from pairpod.log import fields, get_logger

log = get_logger("backend.kubernetes")

# --- constants --------------------------------------------------------------------------

# A handed-out pool pod is replaced after the login's first process starts, or
# after this long at the latest.
_POOL_REFILL_DELAY = 2.0
# How long a forced (no grace) deletion may take to show.
_FORCED_DELETE_WAIT = 10.0
# Input is sent in frames of at most this size.
_STDIN_FRAME = 64 * 1024


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
            *(self.api.delete_pod(ns, pod["metadata"]["name"], uid=pod["metadata"].get("uid"))
              for ns, pod in orphans),
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
        """The pod for these settings (see :func:`.kube_pod.build_pod`)."""
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
                            extra=fields(image=image, detail=progress.message,
                                         hint="set runAsUser in kubernetes.pod to run it as non-root"),
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

    async def _delete_and_wait(self, handle: PodHandle, time_limit: float,
                               grace_seconds: int | None = None) -> None:
        """Delete a pod and wait (up to ``time_limit``) until the API says it is gone."""
        async with asyncio.timeout(time_limit):
            gone = await self.api.delete_pod(handle.namespace, handle.name, grace_seconds=grace_seconds,
                                             uid=handle.uid or None)
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
            events = self.api.watch_pod(handle.namespace, handle.name, version,
                                        self.config.kubernetes.timeouts.stop)
            with contextlib.suppress(WatchExpired):
                async with contextlib.aclosing(events):
                    async for kind, obj in events:
                        if kind == "DELETED" and obj["metadata"].get("uid") in (None, "", uid):
                            return

    # --- helpers in a pod ---------------------------------------------------------------

    async def run_helper(self, handle: PodHandle, argv: list[str]) -> int | None:
        """Run a short command in a pod (no TTY, no input); its exit code."""
        async with asyncio.timeout(HELPER_TIMEOUT):
            stream = await self.api.exec(handle.namespace, handle.name, handle.container, argv,
                                         stdin=False, tty=False)
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
            env = SessionEnvironment(self, identity, settings)
        else:
            pooled = await self._take_from_pool(identity)
            if pooled is not None:
                env = pooled
            else:
                handle = await self.start_pod(settings, identity, "connection", status=status)
                log.info(
                    "kubernetes.pod_started",
                    extra=fields(conn=identity.conn_id, user=identity.username, pod=handle.key,
                                 image=settings.image),
                )
                env = ConnectionEnvironment(self, identity, settings, handle)
        self._environments.add(env)
        return env

    # --- warm pool ------------------------------------------------------------------------

    async def _take_from_pool(self, identity: Identity) -> ConnectionEnvironment | None:
        """A running pool pod for this login, if the pool has one that still runs."""
        settings = identity.config.kubernetes
        if settings != self.config.kubernetes or settings.mode != "connection":
            return None
        while self._pool:
            handle = self._pool.popleft()
            # Refill once the login is served: a pod start beside the login's
            # first exec would slow both (and the exec is what the user waits for).
            asyncio.get_running_loop().call_later(_POOL_REFILL_DELAY, self._pool_wakeup.set)
            try:
                progress = await self.describe_pod(handle)
            except BackendUnavailable:
                self._pool.appendleft(handle)
                raise
            except PairpodError:
                progress = None
            if progress is not None and progress.ready:
                env = ConnectionEnvironment(self, identity, settings, handle)
                env.from_pool = True
                env.background(self._claim(handle, identity))
                log.info("kubernetes.pool_handout",
                         extra=fields(conn=identity.conn_id, user=identity.username, pod=handle.key))
                return env
            log.warning("kubernetes.pool_pod_gone", extra=fields(pod=handle.key))
            self._spawn(self.remove_pod(handle, settings.timeouts.stop))
        return None

    async def _claim(self, handle: PodHandle, identity: Identity) -> None:
        """Label a handed-out pool pod with its connection and user, for operators and the reaper."""
        labels = self.labels(identity, "connection")
        labels[LABEL_POOL] = "true"
        try:
            await self.api.patch_pod_labels(handle.namespace, handle.name, labels,
                                            annotations={ANNOTATION_USER: identity.username})
        except PairpodError as error:
            log.warning("kubernetes.pool_label_failed",
                        extra=fields(pod=handle.key, error=error.operator_message))

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


# --- environments --------------------------------------------------------------------------


class KubernetesEnvironment(ContainerEnvironment["KubeProcess"]):
    """Base of both modes: starts processes as execs, tracks them, closes once."""

    config_section = "kubernetes"
    settings: KubernetesSettings

    def __init__(self, backend: KubernetesBackend, identity: Identity, settings: KubernetesSettings) -> None:
        super().__init__(identity, settings)
        self.backend = backend
        self._skipped_logged = False

    def command_for(self, spec: ProcessSpec) -> list[str]:
        """The exec argv for ``spec``: the wrapper, which also exports the environment."""
        env = process_env({}, self.identity, spec)
        exports, skipped = exportable(env)
        if skipped and not self._skipped_logged:
            self._skipped_logged = True
            log.info("kubernetes.env_skipped", extra=self._log_fields(names=",".join(skipped)))
        # Start in $HOME unless the pod template gives the container a working directory.
        container = container_of(self.settings.pod, self.settings.container) or {}
        return wrapped_command(self.settings.shell, spec, exports,
                               cd_home="workingDir" not in container)

    async def exec_process(self, handle: PodHandle, spec: ProcessSpec,
                           on_done: Callable[[KubeProcess], None]) -> KubeProcess:
        """Start ``spec`` as an exec in a pod and wait until the wrapper reports its PID.

        Bounded by ``timeouts.start``, like starting the pod.
        """
        command = self.command_for(spec)
        limit = self.settings.timeouts.start
        try:
            async with asyncio.timeout(limit):
                stream = await self.backend.api.exec(handle.namespace, handle.name, handle.container,
                                                     command, stdin=True, tty=spec.pty is not None)
        except TimeoutError:
            raise StartTimeout(f"exec in pod {handle.key} did not start within "
                               f"kubernetes.timeouts.start ({limit:g}s)") from None
        except ExecRefused as error:
            if error.status in (401, 403):
                raise BackendError(f"{error.operator_message} (does the gateway's role allow "
                                   "create on pods/exec?)") from None
            raise await self._environment_gone(handle, error.operator_message) from None
        process = KubeProcess(self.backend, handle, stream, spec.pty, on_done)
        await self._await_started(process, f"pod {handle.key}",
                                  lambda detail: self._environment_gone(handle, detail))
        if spec.pty is not None:
            # The wrapper set the size already if the image has stty; this covers
            # images without it.
            await process.resize(spec.pty.cols, spec.pty.rows)
        return process

    async def _environment_gone(self, handle: PodHandle, detail: str) -> BackendError:
        """Why a pod could not run a process: asks the API what became of it."""
        try:
            progress = await self.backend.describe_pod(handle)
        except PairpodError as error:
            return BackendError(f"pod {handle.key} cannot run processes: {detail} ({error.operator_message})")
        if progress is None:
            return EnvironmentGone(f"pod {handle.key} is gone: {detail}")
        if not progress.ready:
            return EnvironmentGone(f"pod {handle.key} is no longer running ({progress.describe()}): {detail}",
                                   user_message=f"environment stopped ({progress.reason})")
        return BackendError(f"pod {handle.key} cannot run processes: {detail}")


class ConnectionEnvironment(KubernetesEnvironment):
    """``mode: connection``: one pod; each process is an exec in it."""

    def __init__(
        self, backend: KubernetesBackend, identity: Identity, settings: KubernetesSettings, handle: PodHandle
    ) -> None:
        super().__init__(backend, identity, settings)
        self.pod = handle
        self.description = f"kubernetes pod {handle.key}"
        # Set for a pod taken from the warm pool: its first process starting is
        # the moment to start a replacement.
        self.from_pool = False

    async def start(self, spec: ProcessSpec) -> Process:
        """Run ``spec`` as an exec in the connection's pod."""
        self._check_open()
        try:
            return await self.exec_process(self.pod, spec, self.discard)
        finally:
            if self.from_pool:
                self.from_pool = False
                self.backend.pool_refill()

    async def _close(self) -> None:
        for process in list(self._processes):
            process.abandon()
        await self._settle()
        await self.backend.remove_pod(self.pod, self.settings.timeouts.stop)
        self.backend.forget(self)
        log.info("kubernetes.pod_deleted", extra=self._log_fields(pod=self.pod.key))


class SessionEnvironment(KubernetesEnvironment):
    """``mode: session``: each process gets a pod of its own, deleted when it ends."""

    shares_filesystem = False

    def __init__(self, backend: KubernetesBackend, identity: Identity, settings: KubernetesSettings) -> None:
        super().__init__(backend, identity, settings)
        self._count = 0
        self._pods: dict[KubeProcess, PodHandle] = {}
        self.description = f"kubernetes session pods of {identity.conn_id}"

    async def start(self, spec: ProcessSpec) -> Process:
        """Start a pod for this one process, then run it there."""
        self._check_open()
        self._count += 1
        handle = await self.backend.start_pod(
            self.settings, self.identity, "session", suffix=f"s{self._count}"
        )
        try:
            process = await self.exec_process(handle, spec, self._ended)
        except BaseException:
            await asyncio.shield(self.backend.remove_pod(handle, self.settings.timeouts.stop))
            raise
        if process.done:
            self.background(self.backend.remove_pod(handle, self.settings.timeouts.stop))
        else:
            self._pods[process] = handle
        return process

    def _ended(self, process: KubeProcess) -> None:
        self.discard(process)
        handle = self._pods.pop(process, None)
        if handle is not None:
            self.background(self.backend.remove_pod(handle, self.settings.timeouts.stop))

    async def _close(self) -> None:
        pods = list(self._pods.values())
        self._pods.clear()
        for process in list(self._processes):
            process.abandon()
        await asyncio.gather(*(self.backend.remove_pod(h, self.settings.timeouts.stop) for h in pods),
                             return_exceptions=True)
        await self._settle()
        self.backend.forget(self)


# --- processes ---------------------------------------------------------------------------


class KubeProcess(ContainerProcess):
    """A program in a pod, reached through one exec WebSocket."""

    log_prefix = "kubernetes"

    def __init__(
        self,
        backend: KubernetesBackend,
        handle: PodHandle,
        stream: ExecStream,
        pty: PtySpec | None,
        on_done: Callable[[KubeProcess], None],
    ) -> None:
        super().__init__(pty)
        self._backend = backend
        self._handle = handle
        self._stream = stream
        self._on_done = on_done
        self._preamble_reader = PreambleReader()
        self._preamble_channel = STDOUT if pty is not None else STDERR
        self._result: ExecResult | None = None
        self._reading = asyncio.Event()
        self._reading.set()
        self._pump = asyncio.ensure_future(self._run())

    # --- data from the API server ---------------------------------------------------

    async def _run(self) -> None:
        try:
            while True:
                if not self._reading.is_set():
                    await self._reading.wait()
                event = await self._stream.receive()
                if event is None:
                    break
                if isinstance(event, Output):
                    self._feed(event.channel, event.data)
                elif isinstance(event, Finished):
                    self._result = event.result
                    break
        except asyncio.CancelledError:
            pass  # killed or abandoned: the status says so
        except ExecProtocolError as error:
            log.warning("kubernetes.exec_stream_corrupt",
                        extra=fields(pod=self._handle.key, error=str(error)))
        finally:
            self._conclude()
            # Shielded: a second cancellation must not leave the connection open.
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.shield(self._stream.close())

    def _feed(self, channel: int, data: bytes) -> None:
        if channel == self._preamble_channel and not self._preamble_reader.done:
            preamble, data = self._preamble_reader.feed(data)
            if preamble is not None:
                self._preamble.set_result(preamble)
        self._pipes[channel].feed(data)
        self._hold_back_if_full()

    def _conclude(self) -> None:
        """The stream is over: end the pipes and settle the exit status."""
        if not self._preamble.done():
            self._preamble.set_result(self._preamble_reader.feed_eof())
        for pipe in self._pipes.values():
            pipe.end()
        result = self._result
        if result is not None and result.exit_code is not None:
            status = exit_status(result.exit_code)
        elif self._killed:
            status = ExitStatus(code=None, signal="KILL")
        else:
            if result is not None:
                log.warning("kubernetes.exec_failed", extra=fields(pod=self._handle.key, reason=result.reason,
                                                                   error=result.message))
            else:
                log.warning("kubernetes.exec_status_unknown",
                            extra=fields(pod=self._handle.key, error="the stream ended without a status"))
            status = ExitStatus(code=255)
        if not self._status.done():
            self._status.set_result(status)
        self._on_done(self)

    # --- used by the environment ----------------------------------------------------

    def leftover_output(self) -> bytes:
        """Everything buffered and the status message, for errors when the wrapper did not run."""
        text = self._pipes[STDOUT].drain() + self._pipes[STDERR].drain()
        if self._result is not None and self._result.message:
            text += b"\n" + self._result.message.encode()
        return text

    @property
    def done(self) -> bool:
        """Whether the process has ended."""
        return self._status.done()

    @property
    def protocol(self) -> str:
        """The exec subprotocol in use."""
        return self._stream.protocol

    def abandon(self) -> None:
        """The environment is going away: end the stream now, the exit status is moot."""
        self._killed = True
        self._abandoned = True
        self._pump.cancel()

    # --- Process ---------------------------------------------------------------------

    def _pause_output(self) -> None:
        self._reading.clear()

    def _resume_output(self) -> None:
        self._reading.set()

    async def write(self, data: bytes) -> None:
        """Send input; input to a program that has ended is dropped."""
        if self._eof_sent or self._status.done():
            return
        view = memoryview(data)
        # A closed stream means the program has ended (or is ending): drop the input.
        with contextlib.suppress(ConnectionError):
            for start in range(0, len(view), _STDIN_FRAME):
                await self._stream.send_stdin(bytes(view[start : start + _STDIN_FRAME]))

    async def _close_stdin(self) -> None:
        # On a v4 server stdin cannot be closed: logged, and the program keeps
        # its stdin (ending the channel still ends it).
        try:
            closed = await self._stream.close_stdin()
        except ConnectionError:
            return
        if not closed:
            log.info("kubernetes.stdin_eof_unsupported",
                     extra=fields(pod=self._handle.key, protocol=self._stream.protocol))

    async def resize(self, cols: int, rows: int, pixel_width: int = 0, pixel_height: int = 0) -> None:
        """Resize the TTY (the program gets SIGWINCH)."""
        if self._pty is None or self._status.done():
            return
        with contextlib.suppress(ConnectionError):
            await self._stream.resize(cols, rows)

    def _log_fields(self, **extra: Any) -> dict[str, Any]:
        return fields(pod=self._handle.key, **extra)

    async def _send_signal(self, name: str, pid: int) -> None:
        await self._backend.run_helper(self._handle, signal_command(name, pid))

    async def _end_reader(self, pid: int) -> None:
        await self._backend.run_helper(self._handle, signal_command("KILL", pid))

    async def _kill_tree(self, pid: int | None) -> None:
        if pid is not None and not self._pump.done():
            await self._backend.run_helper(self._handle, kill_tree_command(pid))

    def _stop_stream(self) -> None:
        self._pump.cancel()


__all__ = [
    "ConnectionEnvironment",
    "KubeProcess",
    "KubernetesBackend",
    "KubernetesEnvironment",
    "PodHandle",
    "SessionEnvironment",
]
