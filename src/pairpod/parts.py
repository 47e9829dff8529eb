"""Parts started in order: stopped in reverse, at a failed start or at shutdown.

One list serves both ends, so a failure at any step of start-up closes exactly
what was started before it (and nothing that was not), and shutdown closes the
same parts in the same reverse order. The gateway keeps one for its parts;
its operations side (admin listener, socket, audit log) keeps one of its own
for the parts it is made of. Each stop has its own time bound and its
failure is logged, never raised: one part that hangs or fails cannot keep the
others open.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from pairpod.log import fields, get_logger

log = get_logger("server")

#: How long one part's stop may take unless it is given its own bound.
STOP_TIMEOUT = 10.0

Step = Callable[[], Awaitable[Any]]


@dataclass(frozen=True)
class _Part:
    name: str
    stop: Step
    timeout: float | None


class StartedParts:
    """What has been started, in order; :meth:`stop_all` stops it in reverse."""

    def __init__(self) -> None:
        self._parts: list[_Part] = []

    async def start(
        self, name: str, start: Step | None, stop: Step, *, stop_timeout: float | None = STOP_TIMEOUT
    ) -> None:
        """Run ``start`` (if any); once it returned, ``stop`` is owed at :meth:`stop_all`.

        A part whose ``start`` raises is not added: it cleans up after itself.
        ``stop_timeout`` bounds ``stop`` (None: ``stop`` bounds itself).
        """
        if start is not None:
            await start()
        self._parts.append(_Part(name, stop, stop_timeout))

    async def stop_all(self) -> list[str]:
        """Stop every part, the last started first; the names of those that did not finish.

        Never raises; calling it again stops nothing twice.
        """
        unfinished = []
        while self._parts:
            part = self._parts.pop()
            if not await bounded(part.name, part.stop(), part.timeout):
                unfinished.append(part.name)
        return unfinished


async def bounded(step: str, work: Awaitable[Any], seconds: float | None) -> bool:
    """Await ``work`` (a shutdown ``step``) for up to ``seconds`` (None: no bound).

    ``False``, logged, if it failed or had to be abandoned; never raises.
    """
    try:
        await asyncio.wait_for(work, seconds)
    except TimeoutError:
        log.warning("gateway.stop_step_timeout", extra=fields(step=step, seconds=seconds))
        return False
    except Exception:
        log.warning("gateway.stop_step_failed", extra=fields(step=step), exc_info=True)
        return False
    return True
