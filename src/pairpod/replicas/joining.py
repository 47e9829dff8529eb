"""The joiner's replica: relays joiners who landed here to the owner's replica.

:class:`Peers` keeps one link per other replica (made on first use, shared by
every joiner and request to it). A relayed joiner's channel drives a
:class:`RelayedSeat`, which turns its events into frames; the owner's replica
answers with the joiner's output, notices and, at the end, CLOSE. When the
link is lost (the owner's replica died), each of its joiners is told the
session ended and closed at once.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

from pairpod.config import PtyLimit, parse_listen
from pairpod.log import fields, get_logger
from pairpod.replicas.link import PeerLink
from pairpod.replicas.wire import Frame, Kind, ProtocolError, json_payload, size_payload
from pairpod.sharing.joinable import ClusterUnavailable, JoinRefused
from pairpod.sharing.terminal import RELEASE, Sink
from pairpod.sharing.tokens import Medium

log = get_logger("cluster")

#: Seconds to connect to another replica, or to wait for its answer.
REQUEST_TIMEOUT = 5.0
#: What a relayed joiner is told when the owner's replica is lost.
REPLICA_LOST = "the shared session has ended (its gateway replica is gone)"


class Unreachable(ClusterUnavailable):
    """The replica holding a session cannot be reached."""

    user_message = "the gateway replica holding this shared session cannot be reached now"


class _Streams:
    """One link's requests and relayed joiners (a :class:`~pairpod.replicas.link.LinkHandler`)."""

    def __init__(self, address: str, forget: Any, limit: PtyLimit) -> None:
        self.address = address
        self._forget = forget
        self._limit = limit
        self._ids = itertools.count(1)
        self.replies: dict[int, asyncio.Future[Any]] = {}
        self.sinks: dict[int, Sink] = {}

    def next_id(self) -> int:
        return next(self._ids) & 0xFFFFFFFF

    def frame(self, link: PeerLink, frame: Frame) -> None:
        if frame.kind in (Kind.REPLY, Kind.JOINED):
            waiter = self.replies.pop(frame.id, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(frame.json())
            return
        sink = self.sinks.get(frame.id)
        if frame.kind is Kind.OUTPUT:
            if sink is not None:
                sink.write(frame.payload)
        elif frame.kind is Kind.NOTICE:
            if sink is not None:
                sink.notify(frame.payload.decode(errors="replace"))
        elif frame.kind is Kind.SIZE:
            size = self._limit.bound(*frame.size())  # bounded as a client's size would be
            if sink is not None:
                sink.resized(*size)
        elif frame.kind is Kind.CLOSE:
            self.sinks.pop(frame.id, None)
            if sink is not None:
                sink.close(frame.payload.decode(errors="replace"))
        else:
            raise ProtocolError(f"unexpected {frame.kind.name} from an owner's replica")

    def writable(self, link: PeerLink, writable: bool) -> None:
        """Input waits in :meth:`RelayedSeat.send_input` (``link.drain``)."""

    def lost(self, link: PeerLink, reason: str) -> None:
        self._forget(self.address, link)
        log.warning("cluster.owner_replica_lost", extra=fields(peer=self.address, reason=reason))
        for waiter in self.replies.values():
            if not waiter.done():
                waiter.set_exception(Unreachable(f"{self.address}: {reason}"))
        self.replies.clear()
        sinks, self.sinks = self.sinks, {}
        for sink in sinks.values():
            # The Terminal's own farewell: leaves the terminal in a sane state.
            sink.write(f"{RELEASE}\r\npairpod: {REPLICA_LOST}\r\n".encode())
            sink.notify(f"pairpod: {REPLICA_LOST}")
            sink.close(REPLICA_LOST)


class RelayedSeat:
    """A joiner's seat at a Terminal on another replica (a :class:`~pairpod.sharing.joinable.Seat`)."""

    def __init__(self, link: PeerLink, streams: _Streams, stream: int) -> None:
        self._link = link
        self._streams = streams
        self._stream = stream
        #: The joiner's number in the owner's listing (from the owner's replica once seated).
        self.id = 0

    async def send_input(self, data: bytes) -> None:
        """Keystrokes, to the owner's replica (waits while the link is backed up)."""
        self._link.send(Kind.INPUT, self._stream, data)
        await self._link.drain()

    def resize(self, cols: int, rows: int) -> None:
        """The joiner's window changed."""
        self._link.send(Kind.RESIZE, self._stream, size_payload(cols, rows))

    def pause_writing(self) -> None:
        """The joiner is not reading: the owner's Terminal queues, then resyncs."""
        self._link.send(Kind.PAUSE, self._stream)

    def resume_writing(self) -> None:
        """The joiner caught up."""
        self._link.send(Kind.RESUME, self._stream)

    def leave(self) -> None:
        """The joiner left."""
        if self._streams.sinks.pop(self._stream, None) is not None:
            self._link.send(Kind.LEAVE, self._stream)


def _up(pending: asyncio.Future[tuple[PeerLink, _Streams]]) -> PeerLink | None:
    """The link a connection attempt made, if it is up."""
    if not pending.done() or pending.cancelled() or pending.exception() is not None:
        return None
    link = pending.result()[0]
    return None if link.closed else link


class Peers:
    """Links to the other replicas, made on demand."""

    def __init__(self, key: bytes, heartbeat: float, ttl: float, limit: PtyLimit) -> None:
        self._key = key
        self._heartbeat = heartbeat
        self._ttl = ttl
        self._limit = limit
        self._links: dict[str, asyncio.Future[tuple[PeerLink, _Streams]]] = {}

    async def _link(self, address: str) -> tuple[PeerLink, _Streams]:
        pending = self._links.get(address)
        if pending is None or (pending.done() and _up(pending) is None):
            pending = self._links[address] = asyncio.ensure_future(self._connect(address))
        try:
            return await asyncio.shield(pending)
        except Unreachable:
            if self._links.get(address) is pending:
                del self._links[address]
            raise

    async def _connect(self, address: str) -> tuple[PeerLink, _Streams]:
        host, port = parse_listen(address)
        streams = _Streams(address, self._forget, self._limit)
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                _, link = await loop.create_connection(
                    lambda: PeerLink(
                        self._key, streams, connecting=True, heartbeat=self._heartbeat, ttl=self._ttl
                    ),
                    host,
                    port,
                )
                await link.ready
        except (OSError, TimeoutError, ConnectionError) as error:
            raise Unreachable(f"{address}: {error or type(error).__name__}") from None
        return link, streams

    def _forget(self, address: str, link: PeerLink) -> None:
        pending = self._links.get(address)
        if pending is not None and _up(pending) in (link, None) and pending.done():
            del self._links[address]

    async def request(self, address: str, kind: Kind, payload: dict[str, Any]) -> Any:
        """Ask another replica; its JSON answer. Raises Unreachable."""
        link, streams = await self._link(address)
        ident = streams.next_id()
        waiter = streams.replies[ident] = asyncio.get_running_loop().create_future()
        link.send(kind, ident, json_payload(payload))
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                return await waiter
        except TimeoutError:
            streams.replies.pop(ident, None)
            raise Unreachable(f"{address}: no answer within {REQUEST_TIMEOUT:g}s") from None

    async def attach(
        self, address: str, username: str, medium: Medium, sink: Sink, name: str, cols: int, rows: int
    ) -> RelayedSeat:
        """Join a session on another replica; ``sink`` gets its screen, output and PTY sizes."""
        link, streams = await self._link(address)
        stream = streams.next_id()
        streams.sinks[stream] = sink  # output may come before the JOINED answer
        waiter = streams.replies[stream] = asyncio.get_running_loop().create_future()
        request = {"username": username, "medium": medium.value, "name": name, "cols": cols, "rows": rows}
        link.send(Kind.JOIN, stream, json_payload({**request, "sizes": True}))
        seat = RelayedSeat(link, streams, stream)
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                answer = await waiter
        except TimeoutError:
            seat.leave()
            raise Unreachable(f"{address}: no answer to a join within {REQUEST_TIMEOUT:g}s") from None
        except Unreachable as error:
            raise JoinRefused(error.operator_message, user_message=REPLICA_LOST) from None
        if not answer.get("ok"):
            streams.sinks.pop(stream, None)
            raise JoinRefused("refused by the owner's replica", user_message=str(answer.get("message")))
        participant = answer.get("participant")
        seat.id = participant if type(participant) is int else 0
        return seat

    def close(self) -> None:
        """Drop every link (this replica is stopping); their joiners are told."""
        for pending in list(self._links.values()):
            link = _up(pending)
            if link is not None:
                link.close("this replica is stopping")
            else:
                pending.cancel()
        self._links.clear()
