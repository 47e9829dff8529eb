"""Open web connections per client address: one address cannot hold the listener's sockets.

aiohttp bounds neither the connections it accepts nor the time a request's
headers may take, so one client could open connections and send half a
request line on each until the process runs out of file descriptors, and
then nobody could log in over SSH either (one process serves both). A
source (an IPv4 address or an IPv6 /64, as for the lockout) may hold at most
:data:`PER_SOURCE` web connections at once; more are closed as soon as they
are accepted. A trusted reverse proxy (``sharing.web.trusted_proxies``)
carries everyone's connections and is not capped by source; all sources
together hold at most :data:`TOTAL`, well below the descriptors the process
may open, so many addresses together cannot take them from SSH either.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from typing import Any

from aiohttp import web

from pairpod.auth.addresses import lockout_key
from pairpod.log import fields, get_logger

log = get_logger("web")

#: Web connections one source may hold at once (a browser opens a handful per page).
PER_SOURCE = 32
#: Web connections of all sources at once (the SSH listener keeps the rest of the
#: process's descriptors, which ``pairpod serve`` raises to the hard limit).
TOTAL = 1024

ProtocolFactory = Callable[[], asyncio.Protocol]


class ConnectionLimit:
    """Counts open connections per source and turns away those past :data:`PER_SOURCE`."""

    def __init__(
        self, exempt: Callable[[str], bool], per_source: int = PER_SOURCE, total: int = TOTAL
    ) -> None:
        """``exempt(address)``: True for a peer not capped by source (a trusted proxy)."""
        self._exempt = exempt
        self._per_source = per_source
        self._total = total
        self._all = 0
        self._open: Counter[str] = Counter()

    def wrap(self, factory: ProtocolFactory) -> ProtocolFactory:
        """A protocol factory whose connections are counted (the listener's own inside)."""
        return lambda: _Counted(self, factory())

    def _enter(self, address: str) -> str | None:
        """The source to count ``address`` under; None when it (or everyone) holds too many already."""
        if self._all >= self._total:
            return None
        source = "" if self._exempt(address) else lockout_key(address)
        if source and self._open[source] >= self._per_source:
            return None
        self._all += 1
        if source:
            self._open[source] += 1
        return source

    def _leave(self, source: str) -> None:
        self._all -= 1
        if not source:
            return
        self._open[source] -= 1
        if self._open[source] <= 0:
            del self._open[source]


class _Counted(asyncio.Protocol):
    """The listener's protocol for one connection, counted while it is open."""

    def __init__(self, limit: ConnectionLimit, inner: asyncio.Protocol) -> None:
        self._limit = limit
        self._inner = inner
        self._source: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        address = str(peer[0]) if isinstance(peer, tuple) and peer else ""
        self._source = self._limit._enter(address)
        if self._source is None:
            log.warning(
                "web.too_many_connections",
                extra=fields(addr=address, per_source=self._limit._per_source, total=self._limit._total),
            )
            transport.close()  # nothing was read or written: closing is immediate
            return
        self._inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._source is None:
            return
        self._limit._leave(self._source)
        self._inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._source is not None:
            self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._source is not None else None

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()


class LimitedSite(web.TCPSite):
    """aiohttp's TCP site with its connections counted by a :class:`ConnectionLimit`."""

    def __init__(self, runner: web.BaseRunner, *args: Any, limit: ConnectionLimit, **kwargs: Any) -> None:
        super().__init__(runner, *args, **kwargs)
        self._limit = limit

    async def start(self) -> None:
        """Listen as :class:`aiohttp.web.TCPSite` does, through the limit."""
        await web.BaseSite.start(self)
        server = self._runner.server
        assert server is not None
        self._server = await asyncio.get_running_loop().create_server(
            self._limit.wrap(server),
            self._host,
            self._port,
            ssl=self._ssl_context,
            backlog=self._backlog,
            reuse_address=self._reuse_address,
            reuse_port=self._reuse_port,
        )
        self._bound_port = self._server.sockets[0].getsockname()[1] if self._server.sockets else self._port
