"""Limits on connections that have not logged in yet (sshd's MaxStartups and more).

Before a client authenticates it costs the gateway a key exchange and some
memory, and it has proved nothing. So, as soon as a connection is accepted
and before any key exchange:

* ``ssh.max_startups`` (``start:rate:full``, default ``10:30:100``, as
  sshd): with ``start`` or more unauthenticated connections, a new one is
  dropped with probability ``rate`` %, rising linearly to 100 % at
  ``full``.
* ``ssh.per_source_max_startups`` (default 5): unauthenticated connections
  from one source at once; below ``start``, so one address alone never makes
  the gateway drop other people's connections at random.
* ``ssh.per_source_rate`` / ``per_source_burst`` (default 10/s, burst 40):
  new connections from one source, as a token bucket; this bounds the key
  exchanges one address can make the gateway compute (the DHEat attack).

A source is an IPv4 address or an IPv6 /64 (as for the lockout). Sans-I/O:
the clock and the random draw are injected; the caller closes refused
connections and logs.
"""

from __future__ import annotations

import contextlib
import resource
import secrets
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from pairpod.auth.addresses import lockout_key
from pairpod.config import SSHSettings
from pairpod.rates import per_source


@dataclass(frozen=True)
class Refusal:
    """Why a new connection is dropped."""

    reason: str


class Ticket:
    """One admitted connection's place: unauthenticated until :meth:`authenticated`."""

    def __init__(self, admission: Admission, source: str) -> None:
        self._admission = admission
        self.source = source
        self.state = "unauthenticated"

    def authenticated(self) -> None:
        """The connection logged in: it no longer counts as a startup."""
        if self.state == "unauthenticated":
            self._admission._leave(self.source)
            self.state = "authenticated"

    def release(self) -> None:
        """The connection ended (idempotent)."""
        self.authenticated()
        self.state = "released"


class Admission:
    """Counts unauthenticated connections and decides whether to accept a new one."""

    def __init__(
        self,
        settings: SSHSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
        draw: Callable[[], float] | None = None,
    ) -> None:
        self._settings = settings
        self._clock = clock
        self._draw = draw or (lambda: secrets.randbelow(1_000_000) / 1_000_000)
        self._unauthenticated = 0
        self._per_source: Counter[str] = Counter()
        self._rates = per_source(settings.per_source_rate, settings.per_source_burst, clock=clock)

    @property
    def unauthenticated(self) -> int:
        """Connections accepted and not yet logged in."""
        return self._unauthenticated

    def admit(self, address: str) -> Ticket | Refusal:
        """A ticket for a new connection from ``address``, or why it is dropped."""
        source = lockout_key(address)
        refusal = self._startups_refusal() or self._source_refusal(source)
        if refusal is not None:
            return refusal
        self._unauthenticated += 1
        self._per_source[source] += 1
        return Ticket(self, source)

    def _startups_refusal(self) -> Refusal | None:
        start, rate, full = self._settings.max_startups
        count = self._unauthenticated
        if count >= full:
            return Refusal(f"max_startups: {count} unauthenticated connections (full {full})")
        if count >= start:
            span = max(full - start, 1)
            chance = (rate + (100 - rate) * (count - start) / span) / 100
            if self._draw() < chance:
                return Refusal(
                    f"max_startups: random early drop at {count} unauthenticated "
                    f"connections ({round(chance * 100)}%)"
                )
        return None

    def _source_refusal(self, source: str) -> Refusal | None:
        settings = self._settings
        cap = settings.per_source_max_startups
        if cap is not None and self._per_source[source] >= cap:
            return Refusal(f"per_source_max_startups: {cap} unauthenticated connections from {source}")
        if self._rates is None or self._rates.allow(source):
            return None
        return Refusal(
            f"per_source_rate: more than {self._rates.rate:g} new connections/s "
            f"(burst {self._rates.burst}) from {source}"
        )

    def _leave(self, source: str) -> None:
        self._unauthenticated -= 1
        self._per_source[source] -= 1
        if self._per_source[source] <= 0:
            del self._per_source[source]


def raise_open_files_limit() -> tuple[int, int]:
    """Raise the soft limit on open files to the hard limit; return (before, after).

    Each connection holds a socket and, per channel, pipes or engine
    connections: the usual soft limit of 1024 runs out long before memory or
    CPU does, and then nobody can log in.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return soft, resource.getrlimit(resource.RLIMIT_NOFILE)[0]
