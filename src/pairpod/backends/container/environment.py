"""The part of an Environment the Docker and Kubernetes backends share.

Both modes of both backends track the processes they started, run
housekeeping in the background (and wait for it before removal), close
exactly once, and start every program through the shared wrapper, whose
preamble line says whether the program really started (see :mod:`.wrapper`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import Any, ClassVar, Generic, Protocol, TypeVar

from pairpod.backends.base import Environment, Identity, ProcessSpec
from pairpod.backends.container.backend import ContainerBackend
from pairpod.backends.container.wrapper import Preamble, wrapper_failure
from pairpod.config import DockerSettings, KubernetesSettings
from pairpod.errors import BackendError, StartTimeout
from pairpod.log import fields
from pairpod.tasks import TaskGroup


def process_env(base: Mapping[str, str], identity: Identity, spec: ProcessSpec) -> dict[str, str]:
    """Variables for one process: config, then identity, then the client's."""
    env = {**base, **identity.env, **spec.env}
    if spec.pty is not None:
        env.setdefault("TERM", spec.pty.term or "dumb")
    return env


class WrappedProcess(Protocol):
    """What the shared start-up check needs of a process started through the wrapper."""

    async def preamble(self) -> Preamble:
        """The wrapper's first line (its PID), or why there is none."""
        ...

    def leftover_output(self) -> bytes:
        """Output read while waiting for the preamble (an error message, say)."""
        ...

    async def kill(self) -> None:
        """End the process."""
        ...


ProcessT = TypeVar("ProcessT", bound=WrappedProcess)


class ContainerEnvironment(Environment, Generic[ProcessT]):
    """Base of the Docker and Kubernetes environments: tracks processes, closes once."""

    config_section: ClassVar[str]
    """The config section its settings come from (``docker``, ``kubernetes``), for messages."""
    backend: ContainerBackend[Any, Any]

    def __init__(self, identity: Identity, settings: DockerSettings | KubernetesSettings) -> None:
        self.identity = identity
        self.settings = settings
        self._processes: set[ProcessT] = set()
        self._closed = False
        self._close_task: asyncio.Future[None] | None = None
        self._background = TaskGroup()

    def background(self, work: Coroutine[Any, Any, Any]) -> None:
        """Run housekeeping for this environment; it is waited for before removal."""
        self._background.spawn(work)

    async def _settle(self) -> None:
        await self._background.wait_all(self.settings.timeouts.stop)

    def _check_open(self) -> None:
        if self._closed:
            raise BackendError("environment is closed")

    def _log_fields(self, **extra: Any) -> dict[str, Any]:
        return fields(conn=self.identity.conn_id, user=self.identity.username, **extra)

    async def _await_started(
        self,
        process: ProcessT,
        where: str,
        cannot_run: Callable[[str], Awaitable[BackendError]],
    ) -> None:
        """Wait (up to ``timeouts.start``) for the wrapper to say the program runs.

        ``where`` names the place in messages (``pod X``, ``image Y``);
        ``cannot_run`` turns "nothing could run at all" into the backend's own
        error, which may ask what became of the container or pod.
        """
        self._processes.add(process)
        limit = self.settings.timeouts.start
        try:
            async with asyncio.timeout(limit):
                preamble = await process.preamble()
        except BaseException as error:
            await process.kill()
            if isinstance(error, TimeoutError):
                raise StartTimeout(
                    f"a process in {where} did not start within "
                    f"{self.config_section}.timeouts.start ({limit:g}s)"
                ) from None
            raise
        if preamble.pid is not None:
            if self._closed:
                # The environment closed while this was starting: it must not outlive it.
                await process.kill()
                raise BackendError("environment closed while a process was starting")
            return
        await process.kill()
        text = wrapper_failure(preamble, process.leftover_output(), self.settings.image)
        # Otherwise nothing could run at all: most likely the container or pod is
        # going away (its main process ended, it ran out of memory).
        raise await cannot_run(text or "the process produced no output")

    def _left_pool(self) -> None:
        """Its first process started (or failed to): an environment from the warm
        pool has been taken, so the pool starts a replacement now."""
        if self.from_pool:
            self.from_pool = False
            self.backend.pool_refill()

    def discard(self, process: ProcessT) -> None:
        """A process ended."""
        self._processes.discard(process)

    async def close(self) -> None:
        """End every process and remove the container(s) or pod(s). Idempotent."""
        self._closed = True
        if self._close_task is None:
            self._close_task = asyncio.ensure_future(self._close())
        await asyncio.shield(self._close_task)

    async def _close(self) -> None:
        raise NotImplementedError
