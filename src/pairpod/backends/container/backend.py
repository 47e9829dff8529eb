"""The part of a Backend the Docker and Kubernetes backends share.

Both keep a set of the environments they own (by name, so the reaper spares
them), reap their instance's leftovers at start-up and then periodically, keep
a warm pool topped up in the background with a back-off after failures, and at
shutdown cancel that work, close every environment, release the pool and reap
one last time. What a container or a pod *is* stays in the subclasses.
"""

from __future__ import annotations

import asyncio
import contextlib
from abc import abstractmethod
from collections import deque
from collections.abc import Coroutine
from typing import Any, ClassVar, Generic, Protocol, TypeVar

from pairpod.backends.base import Backend
from pairpod.config import Config
from pairpod.errors import PairpodError
from pairpod.log import fields, get_logger
from pairpod.tasks import TaskGroup

# How often leftovers nobody owns are looked for (start-up always looks once).
REAP_INTERVAL = 60.0
# Pool refill back-off after failures (seconds, doubled up to the maximum).
POOL_RETRY_MIN, POOL_RETRY_MAX = 1.0, 30.0


class Closable(Protocol):
    """An environment as the backend sees it at shutdown."""

    async def close(self) -> None:
        """Remove the environment."""
        ...


EnvT = TypeVar("EnvT", bound=Closable)
PoolItemT = TypeVar("PoolItemT")


class ContainerBackend(Backend, Generic[EnvT, PoolItemT]):
    """Base of the Docker and Kubernetes backends: reaping, the pool loop, shutdown."""

    reap_interval: float = REAP_INTERVAL
    log_prefix: ClassVar[str]
    """First part of this backend's log event names (``docker``, ``kubernetes``)."""

    def __init__(self, config: Config, instance_id: str) -> None:
        super().__init__(config, instance_id)
        self.log = get_logger(f"backend.{self.log_prefix}")
        # Names of what a live connection (or the pool) owns, including what is
        # being created right now: the reaper leaves these alone.
        self._live: set[str] = set()
        self._environments: set[EnvT] = set()
        self._pool: deque[PoolItemT] = deque()  # started, ready to hand out
        self._pool_filling = 0
        self._pool_wakeup = asyncio.Event()
        self._tasks = TaskGroup()
        self._stopping = False

    # --- what each backend says for itself ------------------------------------------

    @property
    @abstractmethod
    def warm_pool(self) -> int:
        """How many ready environments the pool keeps (0: no pool)."""

    @abstractmethod
    async def reap_orphans(self) -> list[str]:
        """Remove this instance's leftovers that nothing live owns; their names.

        Raises BackendUnavailable when the engine or API server is down.
        """

    @abstractmethod
    async def _pool_one(self) -> None:
        """Start one pool environment and append it to ``self._pool``."""

    @abstractmethod
    async def _release_pool(self, pool: list[PoolItemT]) -> None:
        """Give up pool environments nobody took (at shutdown)."""

    @abstractmethod
    async def _close_client(self) -> None:
        """Close the connection to the engine or API server."""

    # --- lifecycle ------------------------------------------------------------------

    async def _start_housekeeping(self) -> None:
        """Reap once now (an unreachable peer is only a warning), then keep
        reaping and, when there is one, keep the pool full."""
        try:
            removed = await self.reap_orphans()
            if removed:
                self.log.info(f"{self.log_prefix}.reaped", extra=fields(count=len(removed), at="start"))
        except PairpodError as error:
            self.log.warning(
                f"{self.log_prefix}.unavailable_at_start", extra=fields(error=error.operator_message)
            )
        self._spawn(self._reap_loop())
        if self.warm_pool:
            self._spawn(self._pool_loop())

    async def stop(self) -> None:
        """Remove every environment this backend created (and any its instance left)."""
        self._stopping = True
        try:
            await self._tasks.cancel_all()
            await asyncio.gather(*(env.close() for env in list(self._environments)), return_exceptions=True)
            pool, self._pool = list(self._pool), deque()
            await self._release_pool(pool)
            with contextlib.suppress(PairpodError):
                await self.reap_orphans()
        finally:
            # Also when the gateway gives up waiting on a hung peer (stop is cancelled).
            await self._close_client()

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run background work that ``stop`` cancels and waits for."""
        return self._tasks.spawn(coro)

    async def _reap_loop(self) -> None:
        while True:
            await asyncio.sleep(self.reap_interval)
            try:
                removed = await self.reap_orphans()
            except PairpodError as error:
                self.log.warning(f"{self.log_prefix}.reap_failed", extra=fields(error=error.operator_message))
                continue
            if removed:
                self.log.info(
                    f"{self.log_prefix}.reaped", extra=fields(count=len(removed), names=",".join(removed))
                )

    # --- the warm pool ----------------------------------------------------------------

    def pool_refill(self) -> None:
        """Ask the pool to top itself up now."""
        self._pool_wakeup.set()

    async def _pool_loop(self) -> None:
        """Keep ``warm_pool`` environments ready; refill in the background."""
        retry = POOL_RETRY_MIN
        while True:
            self._pool_wakeup.clear()
            missing = self.warm_pool - len(self._pool) - self._pool_filling
            if missing <= 0:
                await self._pool_wakeup.wait()
                continue
            results = await asyncio.gather(
                *(self._pool_one() for _ in range(missing)), return_exceptions=True
            )
            failures = [r for r in results if isinstance(r, BaseException)]
            if not failures:
                retry = POOL_RETRY_MIN
                continue
            self.log.warning(
                f"{self.log_prefix}.pool_refill_failed",
                extra=fields(failed=len(failures), error=str(failures[0]), retry_in=retry),
            )
            await asyncio.sleep(retry)
            retry = min(retry * 2, POOL_RETRY_MAX)

    def pool_size(self) -> int:
        """How many warm environments are ready now."""
        return len(self._pool)

    def live_names(self) -> frozenset[str]:
        """Names of what this backend currently owns (containers; ``namespace/name`` of pods)."""
        return frozenset(self._live)

    def forget(self, environment: EnvT) -> None:
        """An environment closed."""
        self._environments.discard(environment)
