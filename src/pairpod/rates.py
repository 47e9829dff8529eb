"""A token bucket per source: how often one address may start something costly.

Used for new SSH connections (``ssh.per_source_rate``: key exchanges are
costly) and for browsers joining a shared session (a join draws a screen
snapshot and tells everyone). The oldest sources are forgotten past a bound,
so a flood of addresses costs the gateway a bounded amount of memory.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

#: Sources remembered at most (the least recently seen go first).
MAX_SOURCES = 100_000


class SourceRates:
    """``rate`` events a second per source, up to ``burst`` at once."""

    def __init__(
        self,
        rate: float,
        burst: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_sources: int = MAX_SOURCES,
    ) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._max_sources = max_sources
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def allow(self, source: str) -> bool:
        """Take a token for ``source``; False when it has none left."""
        now = self._clock()
        tokens, last = self._buckets.pop(source, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - last) * self.rate)
        allowed = tokens >= 1.0
        self._buckets[source] = (tokens - 1.0 if allowed else tokens, now)
        while len(self._buckets) > self._max_sources:
            self._buckets.popitem(last=False)
        return allowed


def per_source(
    rate: float | None, burst: int, *, clock: Callable[[], float] = time.monotonic
) -> SourceRates | None:
    """Buckets for ``rate`` a second per source (None: no limit), as ``ssh.per_source_rate`` says."""
    return SourceRates(rate, burst, clock=clock) if rate is not None else None
