"""How many environments users may hold and how fast they may make new ones.

Every environment is a container or a pod with its own memory and CPU
limits: without a cap one user could hold any number of them (100
connections without a channel made 100 containers). :class:`EnvironmentLimits`
admits a connection's environment before the backend is asked for it, and
forgets it when the connection's environment is gone:

- ``limits.environments_per_user``: environments one user holds at once;
- ``limits.environments_total``: environments the gateway holds at once;
- ``limits.environment_rate``: environments one user may open per minute
  (a sliding window of 60 seconds; refusals do not count).

A refusal is an :class:`EnvironmentLimitReached`: one line for the SSH user,
the detail for the log. All of this lives in one process's memory, as the
environments it counts do.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

from pairpod.config import LimitsSettings
from pairpod.errors import PairpodError

RATE_WINDOW = 60.0


class EnvironmentLimitReached(PairpodError):
    """A new environment would go past one of the ``limits.*`` settings."""

    user_message = "too many environments, try again later"


class EnvironmentLimits:
    """Admits new environments within the configured limits; counts those held."""

    def __init__(self, settings: LimitsSettings, clock: Callable[[], float] = time.monotonic) -> None:
        self._settings = settings
        self._clock = clock
        self._held: dict[str, str] = {}  # connection id -> user
        self._per_user: dict[str, int] = {}
        self._opened: dict[str, deque[float]] = {}  # user -> when their recent ones opened

    @property
    def held(self) -> int:
        """Environments admitted and not yet released."""
        return len(self._held)

    def admit(self, username: str, conn_id: str) -> None:
        """Count a new environment of ``username`` for connection ``conn_id``, or refuse it."""
        settings = self._settings
        now = self._clock()
        recent = self._opened.get(username) or deque()
        while recent and recent[0] <= now - RATE_WINDOW:
            recent.popleft()
        holding = self._per_user.get(username, 0)
        if holding >= settings.environments_per_user:
            raise EnvironmentLimitReached(
                f"limits.environments_per_user ({settings.environments_per_user}) reached by {username}",
                user_message=f"too many environments open for {username} "
                f"(at most {settings.environments_per_user}); close one and try again",
            )
        if len(self._held) >= settings.environments_total:
            raise EnvironmentLimitReached(
                f"limits.environments_total ({settings.environments_total}) reached",
                user_message="the gateway is at its limit of environments, try again later",
            )
        if len(recent) >= settings.environment_rate:
            wait = recent[0] + RATE_WINDOW - now
            raise EnvironmentLimitReached(
                f"limits.environment_rate ({settings.environment_rate} per minute) reached by {username}",
                user_message=f"too many new environments for {username} "
                f"(at most {settings.environment_rate} a minute); try again in {wait:.0f}s",
            )
        recent.append(now)
        self._opened[username] = recent
        self._held[conn_id] = username
        self._per_user[username] = holding + 1

    def release(self, conn_id: str) -> None:
        """The environment of ``conn_id`` is gone (or never came). Idempotent."""
        username = self._held.pop(conn_id, None)
        if username is None:
            return
        left = self._per_user[username] - 1
        if left:
            self._per_user[username] = left
            return
        del self._per_user[username]
        # Forget a user who holds nothing once their window is empty too.
        recent = self._opened.get(username)
        if recent is not None and (not recent or recent[-1] <= self._clock() - RATE_WINDOW):
            del self._opened[username]
