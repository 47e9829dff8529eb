"""The Kubernetes environments: one pod per connection, or one per channel."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING

from pairpod.backends.base import Identity, Process, ProcessSpec
from pairpod.backends.container.environment import ContainerEnvironment, process_env
from pairpod.backends.container.wrapper import exportable, wrapped_command
from pairpod.backends.kubernetes.pod import PodHandle, container_of
from pairpod.backends.kubernetes.process import KubernetesProcess
from pairpod.backends.kubernetes.stream import ExecRefused
from pairpod.config import KubernetesSettings
from pairpod.errors import BackendError, EnvironmentGone, PairpodError, StartTimeout
from pairpod.log import get_logger

if TYPE_CHECKING:
    from pairpod.backends.kubernetes.backend import KubernetesBackend

log = get_logger("backend.kubernetes")

# --- environments --------------------------------------------------------------------------


class KubernetesEnvironment(ContainerEnvironment["KubernetesProcess"]):
    """Base of both modes: starts processes as execs, tracks them, closes once."""

    config_section = "kubernetes"
    settings: KubernetesSettings
    backend: KubernetesBackend

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
        return wrapped_command(self.settings.shell, spec, exports, cd_home="workingDir" not in container)

    async def exec_process(
        self, handle: PodHandle, spec: ProcessSpec, on_done: Callable[[KubernetesProcess], None]
    ) -> KubernetesProcess:
        """Start ``spec`` as an exec in a pod and wait until the wrapper reports its PID.

        Bounded by ``timeouts.start``, like starting the pod.
        """
        command = self.command_for(spec)
        limit = self.settings.timeouts.start
        try:
            async with asyncio.timeout(limit):
                stream = await self.backend.api.exec(
                    handle.namespace,
                    handle.name,
                    handle.container,
                    command,
                    stdin=True,
                    tty=spec.pty is not None,
                )
        except TimeoutError:
            raise StartTimeout(
                f"exec in pod {handle.key} did not start within kubernetes.timeouts.start ({limit:g}s)"
            ) from None
        except ExecRefused as error:
            if error.status in (401, 403):
                raise BackendError(
                    f"{error.operator_message} (does the gateway's role allow create on pods/exec?)"
                ) from None
            raise await self._environment_gone(handle, error.operator_message) from None
        process = KubernetesProcess(self.backend, handle, stream, spec.pty, on_done)
        await self._await_started(
            process, f"pod {handle.key}", lambda detail: self._environment_gone(handle, detail)
        )
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
            return EnvironmentGone(
                f"pod {handle.key} is no longer running ({progress.describe()}): {detail}",
                user_message=f"environment stopped ({progress.reason})",
            )
        return BackendError(f"pod {handle.key} cannot run processes: {detail}")


class KubernetesConnectionEnvironment(KubernetesEnvironment):
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
            self._left_pool()

    async def _close(self) -> None:
        for process in list(self._processes):
            process.abandon()
        await self._settle()
        await self.backend.remove_pod(self.pod, self.settings.timeouts.stop)
        self.backend.forget(self)
        log.info("kubernetes.pod_deleted", extra=self._log_fields(pod=self.pod.key))


class KubernetesSessionEnvironment(KubernetesEnvironment):
    """``mode: session``: each process gets a pod of its own, deleted when it ends."""

    shares_filesystem = False

    def __init__(self, backend: KubernetesBackend, identity: Identity, settings: KubernetesSettings) -> None:
        super().__init__(backend, identity, settings)
        self._count = 0
        self._pods: dict[KubernetesProcess, PodHandle] = {}
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

    def _ended(self, process: KubernetesProcess) -> None:
        self.discard(process)
        handle = self._pods.pop(process, None)
        if handle is not None:
            self.background(self.backend.remove_pod(handle, self.settings.timeouts.stop))

    async def _close(self) -> None:
        pods = list(self._pods.values())
        self._pods.clear()
        for process in list(self._processes):
            process.abandon()
        await asyncio.gather(
            *(self.backend.remove_pod(h, self.settings.timeouts.stop) for h in pods), return_exceptions=True
        )
        await self._settle()
        self.backend.forget(self)
