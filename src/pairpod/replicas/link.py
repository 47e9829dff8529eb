"""One authenticated connection between two replicas (either end).

:class:`PeerLink` is an asyncio protocol: it runs the handshake of
:mod:`pairpod.replicas.wire` (the listening end says nothing before the
connecting end proves the secret, and drops it at once if it does not, or
after :data:`PRE_AUTH_TIMEOUT`), then hands whole frames to its
:class:`LinkHandler`. Both ends ping every ``cluster.heartbeat``; a link that
hears nothing for ``cluster.ttl`` is dropped, so a replica lost without a
FIN (a node gone) is noticed within the TTL.
"""

from __future__ import annotations

import asyncio
from typing import Protocol, cast

from pairpod.log import fields, get_logger
from pairpod.replicas.wire import (
    CLIENT_HELLO_SIZE,
    MAX_PAYLOAD,
    SERVER_HELLO_SIZE,
    ClientHandshake,
    Frame,
    FrameCodec,
    Kind,
    ProtocolError,
    server_handshake,
)

log = get_logger("cluster")

#: Seconds a connecting peer has to prove the secret.
PRE_AUTH_TIMEOUT = 5.0
#: Connections to the listener that have not proved the secret yet, at most.
MAX_PRE_AUTH = 64
# Write buffer marks of a link (one link carries many joiners' output).
_HIGH_WATER = 1 << 20
_LOW_WATER = 1 << 18


class LinkHandler(Protocol):
    """What a link reports to its owner."""

    def frame(self, link: PeerLink, frame: Frame) -> None:
        """A frame arrived."""

    def writable(self, link: PeerLink, writable: bool) -> None:
        """The link's write buffer went past its high mark (False) or drained (True)."""

    def lost(self, link: PeerLink, reason: str) -> None:
        """The link is gone (after it was up); called once."""


class PeerLink(asyncio.Protocol):
    """An authenticated, sealed connection to another replica."""

    # Accepted connections of this process still in their handshake.
    _unproven = 0

    def __init__(
        self, key: bytes, handler: LinkHandler, *, connecting: bool, heartbeat: float, ttl: float
    ) -> None:
        self._key = key
        self._handler = handler
        self._connecting = connecting
        self._heartbeat = heartbeat
        self._ttl = ttl
        self._client = ClientHandshake(key) if connecting else None
        self._codec: FrameCodec | None = None
        self._pending = bytearray()
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._last_heard = 0.0
        self._writable = asyncio.Event()
        self._writable.set()
        self.peer = "?"
        #: Set once the handshake succeeded (the connecting end waits on it).
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.closed = False
        self._counted = False

    # --- asyncio protocol --------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Start the handshake (speak first when connecting; else wait, bounded)."""
        # A stream transport, but not asyncio's own class on uvloop: no isinstance check.
        self._transport = transport = cast(asyncio.Transport, transport)
        transport.set_write_buffer_limits(high=_HIGH_WATER, low=_LOW_WATER)
        peer = transport.get_extra_info("peername") or ("?", 0)
        self.peer = f"{peer[0]}:{peer[1]}"
        if not self._connecting:
            if PeerLink._unproven >= MAX_PRE_AUTH:
                self._drop(f"more than {MAX_PRE_AUTH} connections in their handshake")
                return
            PeerLink._unproven += 1
            self._counted = True
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(PRE_AUTH_TIMEOUT, self._pre_auth_expired)
        if self._client is not None:
            transport.write(self._client.hello())

    def data_received(self, data: bytes) -> None:
        """Handshake bytes, then frames."""
        try:
            if self._codec is None:
                self._pending += data
                if not self._handshake():
                    return
                data, self._pending = bytes(self._pending), bytearray()
            self._last_heard = asyncio.get_running_loop().time()
            assert self._codec is not None
            for frame in self._codec.feed(data):
                if self.closed:
                    return
                if frame.kind is not Kind.PING:
                    self._handler.frame(self, frame)
        except ProtocolError as error:
            self._drop(str(error))

    def _handshake(self) -> bool:
        """Advance the handshake; True once done (``_pending`` then holds what follows)."""
        assert self._transport is not None
        if self._client is not None:
            if len(self._pending) < SERVER_HELLO_SIZE:
                return False
            self._codec = self._client.finish(bytes(self._pending[:SERVER_HELLO_SIZE]))
            del self._pending[:SERVER_HELLO_SIZE]
        else:
            if len(self._pending) < CLIENT_HELLO_SIZE:
                return False
            reply, self._codec = server_handshake(self._key, bytes(self._pending[:CLIENT_HELLO_SIZE]))
            del self._pending[:CLIENT_HELLO_SIZE]
            self._transport.write(reply)
        if self._timer is not None:
            self._timer.cancel()
        self._uncount()
        self._last_heard = asyncio.get_running_loop().time()
        self._timer = asyncio.get_running_loop().call_later(self._heartbeat, self._tick)
        if not self.ready.done():
            self.ready.set_result(None)
        log.debug("cluster.link_up", extra=fields(peer=self.peer, connecting=self._connecting))
        return True

    def pause_writing(self) -> None:
        """The peer is not reading as fast as we write."""
        self._writable.clear()
        self._handler.writable(self, False)

    def resume_writing(self) -> None:
        """The peer caught up."""
        self._writable.set()
        self._handler.writable(self, True)

    def connection_lost(self, exc: Exception | None) -> None:
        """The TCP connection ended."""
        self._finish(str(exc) if exc else "closed by the peer")

    # --- what the owner of the link calls ------------------------------------------

    def send(self, kind: Kind, ident: int = 0, payload: bytes = b"") -> None:
        """Queue one frame (payloads past the frame size are split: for OUTPUT and INPUT)."""
        if self.closed or self._codec is None or self._transport is None:
            return
        if len(payload) <= MAX_PAYLOAD:
            self._transport.write(self._codec.seal(kind, ident, payload))
            return
        for start in range(0, len(payload), MAX_PAYLOAD):
            self._transport.write(self._codec.seal(kind, ident, payload[start : start + MAX_PAYLOAD]))

    async def drain(self) -> None:
        """Wait while the link's write buffer is past its high mark."""
        if not self.closed:
            await self._writable.wait()

    def close(self, reason: str = "closed") -> None:
        """Drop the link."""
        self._drop(reason, warn=False)

    # --- internals -------------------------------------------------------------------

    def _tick(self) -> None:
        now = asyncio.get_running_loop().time()
        if now - self._last_heard > self._ttl:
            self._drop(f"nothing heard for {self._ttl:g}s")
            return
        self.send(Kind.PING)
        self._timer = asyncio.get_running_loop().call_later(self._heartbeat, self._tick)

    def _pre_auth_expired(self) -> None:
        self._drop(f"no handshake within {PRE_AUTH_TIMEOUT:g}s")

    def _drop(self, reason: str, *, warn: bool = True) -> None:
        if warn:
            log.warning("cluster.link_dropped", extra=fields(peer=self.peer, reason=reason))
        if self._transport is not None:
            self._transport.abort()
        self._finish(reason)

    def _uncount(self) -> None:
        if self._counted:
            self._counted = False
            PeerLink._unproven -= 1

    def _finish(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        self._uncount()
        self._writable.set()  # nobody waits on a dead link
        if self._timer is not None:
            self._timer.cancel()
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(reason))
            self.ready.exception()  # retrieved: whoever waits for it reports it
            return
        self._handler.lost(self, reason)
