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

A connection must also finish its first request's head within
``sharing.web.header_timeout`` of being accepted, else it is closed and
leaves the counts: without that, 32 connections that trickle header bytes (or
send nothing) would shut one address's browsers out for ever, and 1024
everyone's. aiohttp has no such deadline: its ``keepalive_timeout`` timer
runs between requests, and before the first one only in its newest releases
(this project accepts aiohttp from 3.9). So the deadline lives here, around
aiohttp's protocol, and the application's :meth:`ConnectionLimit.head_read`
middleware lifts it as a request reaches the handlers: a WebSocket open for
hours is never cut by it. Later requests of a kept-alive connection are
bounded by aiohttp's ``keepalive_timeout``, which the listener sets to the
same value: that timer waits for a whole head, so trickled bytes do not
renew it.

A browser that takes nothing of what it is sent (it stopped reading, or
vanished) would hold its connection for ever too: the WebSocket's heartbeat
notices, but closing a transport waits until its queue has been sent. So the
kernel cuts a connection whose data stays unacknowledged, or waits behind a
shut window, for ``sharing.web.send_timeout`` (``TCP_USER_TIMEOUT``).

Under TLS a connection is counted, and its deadline runs, from the TCP accept:
the listener itself is plain TCP, and the handshake is started here on a
connection the counts let in (:meth:`asyncio.loop.start_tls`). Were TLS the
listener's, a connection would reach these counts only once its handshake
finished, and one address could hold thousands that never send a ClientHello.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
import ssl
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any, cast

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
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ConnectionLimit:
    """Counts open connections per source and turns away those past :data:`PER_SOURCE`;
    gives each its deadlines (a first request head in time, sent data taken in time)."""

    def __init__(
        self,
        exempt: Callable[[str], bool],
        *,
        header_timeout: float,
        send_timeout: float,
        per_source: int = PER_SOURCE,
        total: int = TOTAL,
    ) -> None:
        """``exempt(address)``: True for a peer not capped by source (a trusted proxy);
        ``header_timeout``: seconds from accept to the first request's head;
        ``send_timeout``: seconds sent data may wait for the client to take it."""
        self._exempt = exempt
        self.header_timeout = header_timeout
        self._send_timeout_ms = round(send_timeout * 1000)
        self._per_source = per_source
        self._total = total
        self._all = 0
        self._open: Counter[str] = Counter()
        # Connections still waiting for their first head, by the listener's protocol
        # (what a request knows as ``request.protocol``).
        self._waiting: dict[asyncio.BaseProtocol, _Counted] = {}

    def wrap(self, factory: ProtocolFactory, tls: ssl.SSLContext | None = None) -> ProtocolFactory:
        """A protocol factory whose connections are counted (the listener's own inside);
        with ``tls``, a connection let in then does its TLS handshake as the server."""
        return lambda: _Counted(self, factory(), tls)

    def end_handshakes(self) -> None:
        """Abort the connections still in their TLS handshake (the listener is stopping):
        aiohttp closes only the connections it was handed."""
        for counted in list(self._waiting.values()):
            counted.abort_unconnected()

    @web.middleware
    async def head_read(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Middleware: a request reached the application, so its connection met the deadline."""
        counted = self._waiting.pop(request.protocol, None)
        if counted is not None:
            counted.head_read()
        return await handler(request)

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
    """The listener's protocol for one connection, counted while it is open.

    Under TLS it is first the plain connection's protocol, then (once the
    handshake is done) the TLS transport's: the inner protocol is connected
    only then, and only a connected inner protocol hears of the end.
    """

    def __init__(self, limit: ConnectionLimit, inner: asyncio.Protocol, tls: ssl.SSLContext | None) -> None:
        self._limit = limit
        self._inner = inner
        self._tls = tls
        self._source: str | None = None
        self._address = ""
        self._transport: asyncio.Transport | None = None
        self._deadline: asyncio.TimerHandle | None = None
        self._handshake: asyncio.Task[None] | None = None
        # Bytes read before the handshake began (the ClientHello), and those decrypted
        # before the inner protocol was connected.
        self._early: list[bytes] = []
        self._started = False  # start_tls has the connection (its bytes go to TLS)
        self._connected = False  # the inner protocol's connection_made was called
        self._left = False  # the connection left the counts

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        stream = cast(asyncio.Transport, transport)  # a stream server's
        peer = stream.get_extra_info("peername")
        self._address = address = str(peer[0]) if isinstance(peer, tuple) and peer else ""
        self._source = self._limit._enter(address)
        if self._source is None:
            log.warning(
                "web.too_many_connections",
                extra=fields(addr=address, per_source=self._limit._per_source, total=self._limit._total),
            )
            # Abort, not close: this connection is in no count any more, so nothing may
            # hold its descriptor (a TLS close would wait for the peer's close_notify).
            stream.abort()
            return
        self._transport = stream
        self._deadline = asyncio.get_running_loop().call_later(self._limit.header_timeout, self._expire)
        self._limit._waiting[self._inner] = self
        _send_timeout(transport, self._limit._send_timeout_ms)
        if self._tls is None:
            self._connect(self._transport)
        else:
            self._handshake = asyncio.get_running_loop().create_task(
                self._start_tls(self._transport, self._tls)
            )

    async def _start_tls(self, raw: asyncio.Transport, context: ssl.SSLContext) -> None:
        """Do the TLS handshake as the server, then connect the inner protocol to its transport."""
        loop = asyncio.get_running_loop()
        tls: asyncio.Transport | None = None
        try:
            if self._early:
                # start_tls puts its protocol on ``raw`` at once and calls its
                # connection_made at the next turn: this runs in between, so the bytes
                # uvloop read already wait in that protocol's input for the handshake.
                loop.call_soon(_replay, raw, self, b"".join(self._early))
                self._early.clear()
            self._started = True
            tls = await loop.start_tls(
                raw, self, context, server_side=True, ssl_handshake_timeout=self._limit.header_timeout
            )
        except Exception as exc:  # any failed handshake (a reset, a bad hello) ends only this one
            log.debug("web.tls_failed", extra=fields(addr=self._address, error=type(exc).__name__))
        finally:
            # A handshake that failed, was cut or cancelled tells this protocol nothing;
            # asyncio's start_tls even returns None for a connection aborted meanwhile.
            if tls is None or tls.is_closing() or self._left:
                self._lost(None)
        if self._left:  # the finally above saw every way it could have failed
            return
        assert tls is not None
        self._transport = tls
        self._connect(tls)

    def _connect(self, transport: asyncio.Transport) -> None:
        self._connected = True
        self._inner.connection_made(transport)
        early, self._early = self._early, []
        for data in early:
            self._inner.data_received(data)

    def abort_unconnected(self) -> None:
        """Abort this connection if the inner protocol never had it (its handshake is not done)."""
        if not self._connected and self._transport is not None:
            self._transport.abort()

    def head_read(self) -> None:
        """The first request's head arrived in time: no deadline from here on."""
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expire(self) -> None:
        self._deadline = None
        log.info("web.header_timeout", extra=fields(addr=self._address, timeout=self._limit.header_timeout))
        # Abort, not close: nothing was answered yet, and a TLS close would wait for the
        # peer's close_notify, holding the slot longer still.
        assert self._transport is not None
        self._transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._handshake is not None and not self._started:
            self._handshake.cancel()  # the plain connection ended before its handshake began
        if isinstance(exc, OSError) and exc.errno == errno.ETIMEDOUT and self._source and not self._left:
            log.info("web.send_timeout", extra=fields(addr=self._address))
        self._lost(exc)

    def _lost(self, exc: Exception | None) -> None:
        """Leave the counts, once, whichever way the connection ended."""
        if self._source is None or self._left:
            return
        self._left = True
        self.head_read()
        self._limit._waiting.pop(self._inner, None)
        self._limit._leave(self._source)
        if self._connected:
            self._inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._source is None or self._left:
            return
        if self._connected:
            self._inner.data_received(data)
            return
        # Read before the handshake began (uvloop reads from the accept on, whatever
        # connection_made does): kept for it, and no more read until it begins. Or
        # decrypted in the read that finished the handshake, before the inner protocol
        # is connected: kept for that. Either is at most one read.
        self._early.append(data)
        if not self._started and self._transport is not None:
            self._transport.pause_reading()

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._connected and not self._left else None

    def pause_writing(self) -> None:
        if self._connected:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._connected:
            self._inner.resume_writing()


def _replay(transport: asyncio.BaseTransport, before: asyncio.BaseProtocol, data: bytes) -> None:
    """Hand ``data`` to the protocol that replaced ``before`` on ``transport``."""
    protocol = transport.get_protocol()
    if protocol is before:  # start_tls failed before it took the connection
        return
    if not hasattr(protocol, "get_buffer"):
        cast(asyncio.Protocol, protocol).data_received(data)
        return
    buffered = cast(asyncio.BufferedProtocol, protocol)  # uvloop's TLS protocol is one but no subclass
    view = memoryview(data)
    while view:
        buffer = memoryview(buffered.get_buffer(len(view)))
        size = min(len(buffer), len(view))
        buffer[:size] = view[:size]
        buffered.buffer_updated(size)
        view = view[size:]


def _send_timeout(transport: asyncio.BaseTransport, milliseconds: int) -> None:
    """Have the kernel cut the connection when what it sends waits this long (Linux only)."""
    sock = transport.get_extra_info("socket")
    option = getattr(socket, "TCP_USER_TIMEOUT", None)
    if sock is not None and option is not None:
        # A peer already gone fails here; its connection_lost follows anyway.
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, option, milliseconds)


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
            # Plain TCP: the limit counts a connection from its accept, then starts its TLS.
            self._limit.wrap(server, self._ssl_context),
            self._host,
            self._port,
            backlog=self._backlog,
            reuse_address=self._reuse_address,
            reuse_port=self._reuse_port,
        )
        self._bound_port = self._server.sockets[0].getsockname()[1] if self._server.sockets else self._port

    async def stop(self) -> None:
        """Stop listening as :class:`aiohttp.web.TCPSite` does, and end the handshakes under way."""
        if self._server is not None:
            self._server.close()  # nothing new from here on
        self._limit.end_handshakes()
        await super().stop()
