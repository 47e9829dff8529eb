"""Lockout after repeated failures, per client address and per username (sans-I/O).

Failures are counted in a sliding ``window``; reaching ``failures`` locks
the address or username for ``duration``. The clock is injected, so the
policy is tested by moving time, and this module does no I/O and no logging:
it returns what happened and the caller logs it.

Two deliberate asymmetries:

- A username lock only blocks guessable secrets (password,
  keyboard-interactive). Keys and certificates cannot be guessed, so anyone
  hammering "alice" with passwords cannot lock the real alice out of her key.
- An address lock blocks every method from that address (an IPv6 client's
  whole /64, see :func:`pairpod.auth.addresses.lockout_key`).

With several replicas, ``shared`` (a :class:`SharedLocks`, implemented by
the cluster package) counts every failure on every replica and tells of the
locks tripped anywhere; this object still counts its own replica's failures,
so when the shared state is away the lockout carries on locally.

Attempts in flight count: :meth:`Lockout.reserve` takes a place before a slow
check (a password hash) and :meth:`Lockout.settle` turns it into a failure or
gives it back. So 200 passwords sent at once from one address get at most
``failures`` hashes verified, not 200, and the rest are refused at once.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from pairpod.auth.addresses import lockout_key
from pairpod.config import LockoutSettings


@dataclass(frozen=True)
class Lock:
    """A lock in force: what is locked and for how many more seconds."""

    kind: str  # "address" or "username"
    subject: str
    remaining: float  # 0: not locked yet, but enough attempts are in flight to lock it


class SharedLocks(Protocol):
    """Lockout state shared by the replicas of a cluster (given to :class:`Lockout`)."""

    def locked_for(self, kind: str, subject: str) -> float:
        """Seconds left of a lock on ``subject`` tripped on any replica (0: none known)."""

    def failed(self, kind: str, subject: str) -> None:
        """Count one failure against ``subject`` for every replica; never waits."""


@dataclass
class _Counter:
    failures: deque[float] = field(default_factory=deque)
    locked_until: float = 0.0
    pending: int = 0  # attempts reserved and not settled yet


class Lockout:
    """Failure counters with an injectable clock; memory is bounded by ``max_entries``."""

    def __init__(
        self,
        settings: LockoutSettings,
        clock: Callable[[], float] = time.monotonic,
        max_entries: int = 100_000,
        shared: SharedLocks | None = None,
    ) -> None:
        self.settings = settings
        self.shared = shared
        self._clock = clock
        self._max_entries = max_entries
        self._counters: OrderedDict[tuple[str, str], _Counter] = OrderedDict()

    def check(self, address: str, username: str, *, guessable: bool) -> Lock | None:
        """The lock that refuses this attempt now, or None.

        ``guessable`` is True for password-like methods (see module docstring).
        """
        now = self._clock()
        window_start = now - self.settings.window
        for kind, subject in self._subjects(address, username, guessable):
            counter = self._counters.get((kind, subject))
            if counter is None:
                continue
            if counter.locked_until > now:
                return Lock(kind, subject, counter.locked_until - now)
            recent = sum(1 for moment in counter.failures if moment > window_start)
            if counter.pending and recent + counter.pending >= self.settings.failures:
                return Lock(kind, subject, 0.0)
        if self.shared is not None:
            for kind, subject in self._subjects(address, username, guessable):
                remaining = self.shared.locked_for(kind, subject)
                if remaining > 0:
                    return Lock(kind, subject, remaining)
        return None

    def reserve(self, address: str, username: str, *, guessable: bool) -> Lock | None:
        """Like :meth:`check`, and when not locked, count this attempt as in flight.

        Every reservation must be given to :meth:`settle` exactly once.
        """
        lock = self.check(address, username, guessable=guessable)
        if lock is not None:
            return lock
        for key in self._subjects(address, username, guessable):
            counter = self._counters.pop(key, None) or _Counter()
            self._counters[key] = counter
            counter.pending += 1
        return None

    def settle(self, address: str, username: str, *, guessable: bool, failed: bool) -> list[Lock]:
        """End a reserved attempt: a failure (the locks it started) or a success."""
        for key in self._subjects(address, username, guessable):
            counter = self._counters.get(key)
            if counter is not None and counter.pending > 0:
                counter.pending -= 1
        return self.record_failure(address, username, guessable=guessable) if failed else []

    @staticmethod
    def _subjects(address: str, username: str, guessable: bool) -> list[tuple[str, str]]:
        subjects = [("address", lockout_key(address))]
        if guessable:
            subjects.append(("username", username))
        return subjects

    def record_failure(self, address: str, username: str, *, guessable: bool) -> list[Lock]:
        """Count one failure; return the locks that this failure started."""
        now = self._clock()
        started: list[Lock] = []
        for kind, subject in self._subjects(address, username, guessable):
            counter = self._counters.pop((kind, subject), None) or _Counter()
            self._counters[(kind, subject)] = counter  # most recently used last
            if counter.locked_until > now:
                continue  # already locked; failures while locked do not extend it
            if self.shared is not None:
                self.shared.failed(kind, subject)
            window_start = now - self.settings.window
            while counter.failures and counter.failures[0] <= window_start:
                counter.failures.popleft()
            counter.failures.append(now)
            if len(counter.failures) >= self.settings.failures:
                counter.failures.clear()
                counter.locked_until = now + self.settings.duration
                started.append(Lock(kind, subject, self.settings.duration))
        self._prune(now)
        return started

    def __len__(self) -> int:
        return len(self._counters)

    def _prune(self, now: float) -> None:
        if len(self._counters) <= self._max_entries:
            return
        window_start = now - self.settings.window
        for key in [
            k
            for k, c in self._counters.items()
            if c.locked_until <= now and not c.pending and (not c.failures or c.failures[-1] <= window_start)
        ]:
            del self._counters[key]
        while len(self._counters) > self._max_entries:
            self._counters.popitem(last=False)  # least recently failed first
