"""Idle timeout and maximum duration of a connection.

A connection is idle when neither its client sent input nor its programs
wrote output for ``session.idle_timeout``; it then ends with "pairpod: idle for
30m, disconnecting". With ``session.max_duration`` the user is warned one
minute before the end (at half-time when the maximum is under two minutes,
so the warning is never at the very start) and the connection then ends.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

from pairpod.backends.base import ExitStatus, Stream
from pairpod.config import Config, format_duration

# How long before the maximum duration the user is warned.
WARNING_LEAD = 60.0


@dataclass(frozen=True)
class SessionLimits:
    """The limits in force for one connection (0: none)."""

    idle_timeout: float
    max_duration: float

    @classmethod
    def for_user(cls, config: Config, username: str | None) -> SessionLimits:
        """The connection config's limits, with ``auth.users.NAME.session`` over them."""
        user = config.auth.users.get(username) if username is not None else None
        per_user = user.session if user is not None else None
        idle, most = config.session.idle_timeout, config.session.max_duration
        if per_user is not None:
            idle = per_user.idle_timeout if per_user.idle_timeout is not None else idle
            most = per_user.max_duration if per_user.max_duration is not None else most
        return cls(idle_timeout=idle, max_duration=most)

    @property
    def active(self) -> bool:
        """Whether any limit applies."""
        return self.idle_timeout > 0 or self.max_duration > 0

    @property
    def warning_lead(self) -> float:
        """How long before the end of ``max_duration`` the user is told."""
        return WARNING_LEAD if self.max_duration >= 2 * WARNING_LEAD else self.max_duration / 2


class ActivityClock:
    """When a connection's processes last saw input or output (a process observer)."""

    def __init__(self) -> None:
        self.last = time.monotonic()

    def output(self, stream: Stream, data: bytes) -> None:
        """Output is activity."""
        self.last = time.monotonic()

    def input(self, data: bytes) -> None:
        """Input is activity."""
        self.last = time.monotonic()

    def resize(self, cols: int, rows: int) -> None:
        """A resize alone is not activity."""

    def ended(self, status: ExitStatus | None) -> None:
        """Nothing to do."""


async def enforce(
    limits: SessionLimits,
    clock: ActivityClock,
    *,
    warn: Callable[[str], None],
    end: Callable[[str], None],
) -> None:
    """Run until a limit is reached, then ``end`` the connection with the reason.

    ``end`` must not wait for the connection's cleanup: that cleanup cancels
    this task.
    """
    start = time.monotonic()
    deadline = start + limits.max_duration if limits.max_duration > 0 else float("inf")
    warn_at = deadline - limits.warning_lead
    warned = False
    while True:
        now = time.monotonic()
        if now >= deadline:
            end(
                f"this session reached its maximum duration "
                f"({format_duration(limits.max_duration)}), disconnecting"
            )
            return
        if not warned and now >= warn_at:
            warned = True
            warn(
                f"this session ends in {format_duration(round(deadline - now))} "
                f"(maximum duration {format_duration(limits.max_duration)})"
            )
        idle_end = clock.last + limits.idle_timeout if limits.idle_timeout > 0 else float("inf")
        if now >= idle_end:
            end(f"idle for {format_duration(limits.idle_timeout)}, disconnecting")
            return
        wake = min(deadline, idle_end, warn_at if not warned else float("inf"))
        await asyncio.sleep(max(wake - now, 0.01))
