"""Graceful drain at SIGTERM, and a shutdown that always finishes.

Order: the listener is already closed; users are told the gateway is
restarting; sessions may run on for ``shutdown_grace`` (or until a second
SIGTERM); then every connection is ended and every environment removed. Each
step after the grace has its own time bound, so a hung backend (a Docker
engine that accepts but never answers) cannot hold the process: what could not
be removed is logged and left to the next start's reaper.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Collection
from typing import Protocol

from pairpod.admin import Operations
from pairpod.config import Config, format_duration
from pairpod.log import fields, get_logger
from pairpod.parts import StartedParts, bounded

log = get_logger("shutdown")


class Draining(Protocol):
    """A connection as the drain ends it."""

    conn_id: str

    @property
    def cleaned_up(self) -> bool:
        """Whether its environment removal has finished."""

    @property
    def has_environment(self) -> bool:
        """Whether an environment was asked for."""

    def environment_description(self) -> str | None:
        """Its environment's description, once it exists."""

    def notify(self, text: str) -> None:
        """Tell every session one line."""

    async def shutdown(self, message: str) -> None:
        """End the sessions and disconnect."""


class Drained(Protocol):
    """What the drain stops (:class:`pairpod.ssh.gateway.Gateway`)."""

    config: Config
    ops: Operations
    #: What the gateway started; stopped once its sessions are ended.
    parts: StartedParts

    @property
    def connections(self) -> Collection[Draining]:
        """Live connections."""

    async def wait_tasks(self) -> None:
        """Wait for the gateway-level tasks running now."""


# After the grace: how long ending the sessions and removing the environments
# may take, and then the backend's own final cleanup. A Deployment's
# terminationGracePeriodSeconds should leave room for both after shutdown_grace.
END_TIMEOUT = 10.0
BACKEND_TIMEOUT = 10.0
# How often the drain looks whether every connection has gone.
_POLL = 0.2


async def drain(gateway: Drained, hurry: asyncio.Event) -> None:
    """Drain ``gateway`` and stop the parts it started. Never raises."""
    try:
        await _drain(gateway, hurry)
    except Exception:
        log.exception("gateway.stop_failed")
    log.info("gateway.stopped")


async def _drain(gateway: Drained, hurry: asyncio.Event) -> None:
    gateway.ops.draining()
    grace = gateway.config.shutdown_grace
    connections = list(gateway.connections)
    log.info("gateway.stopping", extra=fields(connections=len(connections), grace=format_duration(grace)))
    if connections and grace > 0 and not hurry.is_set():
        for connection in connections:
            connection.notify(f"the gateway is restarting; this session ends within {format_duration(grace)}")
        await _until_gone(gateway, grace, hurry)
    remaining = list(gateway.connections)
    if remaining:
        log.info("gateway.ending_sessions", extra=fields(connections=len(remaining), hurried=hurry.is_set()))
    deadline = time.monotonic() + END_TIMEOUT
    message = "the gateway is restarting, disconnecting"
    await bounded(
        "sessions",
        asyncio.gather(*(c.shutdown(message) for c in remaining), return_exceptions=True),
        deadline - time.monotonic(),
    )
    # Cleanups of connections that ended by themselves run as gateway tasks.
    await bounded("cleanups", gateway.wait_tasks(), max(deadline - time.monotonic(), 0.0))
    left = [
        c.environment_description() or c.conn_id
        for c in remaining + connections
        if not c.cleaned_up and c.has_environment
    ]
    # Then every part the gateway started, in reverse (see Gateway.start for the order).
    backend_done = "backend" not in await gateway.parts.stop_all()
    if left or not backend_done:
        log.warning(
            "gateway.left_behind",
            extra=fields(
                environments=",".join(sorted(set(left))) or None,
                backend="did not finish its cleanup" if not backend_done else None,
                reason="the backend did not answer in time; the next start's reaper removes them",
            ),
        )


async def _until_gone(gateway: Drained, grace: float, hurry: asyncio.Event) -> None:
    """Wait for every connection to end, ``grace`` seconds, or ``hurry``."""
    end = time.monotonic() + grace
    while gateway.connections and not hurry.is_set():
        left = end - time.monotonic()
        if left <= 0:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(hurry.wait(), min(left, _POLL))
