"""A set of tasks owned together: all of them are cancelled with their owner."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

from pairpod.errors import PairpodError
from pairpod.log import fields, get_logger

log = get_logger("tasks")


class TaskGroup:
    """Tasks owned by one connection (or the gateway): all of them are cancelled with it."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run ``coro`` as a task of this group."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled() or (error := task.exception()) is None:
            return
        if isinstance(error, PairpodError):
            # Expected failures (backend down, image missing) were logged where they
            # happened, with their detail; a traceback would only bury them.
            log.debug("task.failed", extra=fields(error=error.operator_message, kind=type(error).__name__))
        else:
            log.error("task.failed", exc_info=error)

    def __len__(self) -> int:
        return len(self._tasks)

    async def wait_all(self, grace: float | None) -> None:
        """Wait up to ``grace`` seconds (``None``: as long as it takes) for the current tasks."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=grace)

    async def cancel_all(self) -> None:
        """Cancel every task and wait until each has ended."""
        while self._tasks:
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
