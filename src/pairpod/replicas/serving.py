"""The owner's replica: serves other replicas' joiners on its shared Terminals.

Each authenticated link from another replica may look up links, attach
joiners and run owners' control commands here. A relayed joiner is one more
:class:`~pairpod.sharing.terminal.Participant` of the Terminal, whose
:class:`~pairpod.sharing.terminal.Sink` (:class:`LinkSink`) writes to the
link: there is no second sharing system.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from pairpod.errors import PairpodError
from pairpod.log import fields, get_logger
from pairpod.replicas.link import PeerLink
from pairpod.replicas.wire import Frame, Kind, ProtocolError, json_payload, size_payload
from pairpod.sharing.joinable import Joinable, Seat
from pairpod.sharing.service import ControlError, SharingService
from pairpod.sharing.terminal import Sink
from pairpod.sharing.tokens import Medium
from pairpod.tasks import TaskGroup

log = get_logger("cluster")

# Input queued for one relayed joiner while the program is not reading, at
# most (a peer past it is broken: its joiner is dropped).
_MAX_QUEUED_INPUT = 1 << 20


class LinkSink(Sink):
    """A relayed joiner's output: frames on the link to their replica."""

    def __init__(self, link: PeerLink, stream: int, forget: Callable[[int], None], *, sizes: bool) -> None:
        self._link = link
        self._stream = stream
        self._forget = forget
        # Whether their replica asked for the PTY's size (a web page draws at it).
        self._sizes = sizes

    def resized(self, cols: int, rows: int) -> None:
        """The PTY's size, before output drawn for it: to their replica, if it asked."""
        if self._sizes:
            self._link.send(Kind.SIZE, self._stream, size_payload(cols, rows))

    def write(self, data: bytes) -> None:
        """Terminal output for the joiner."""
        self._link.send(Kind.OUTPUT, self._stream, data)

    def notify(self, text: str) -> None:
        """A notice (already on their screen): their replica may show it elsewhere (a web page)."""
        self._link.send(Kind.NOTICE, self._stream, text.encode())

    def close(self, reason: str) -> None:
        """Kicked, or the session ended: their replica closes the joiner's channel."""
        self._link.send(Kind.CLOSE, self._stream, reason.encode())
        self._forget(self._stream)


class _Relayed:
    """One relayed joiner: their seat and their queued input."""

    def __init__(self) -> None:
        self.seat: Seat | None = None
        self.input: asyncio.Queue[bytes] = asyncio.Queue()
        self.queued = 0
        self.paused_by_peer = False
        self.task: asyncio.Task[None] | None = None


class _Served:
    """What one link from another replica has here."""

    def __init__(self, link: PeerLink) -> None:
        self.link = link
        self.joiners: dict[int, _Relayed] = {}
        self.tasks = TaskGroup()
        self.link_writable = True


class ServingSide:
    """Answers other replicas' links (a :class:`~pairpod.replicas.link.LinkHandler`)."""

    def __init__(self, service: SharingService) -> None:
        self._service = service
        self._served: dict[PeerLink, _Served] = {}

    def frame(self, link: PeerLink, frame: Frame) -> None:
        """A request or a joiner's event."""
        served = self._served.get(link)
        if served is None:
            served = self._served[link] = _Served(link)
        handler = {
            Kind.LOOKUP: self._lookup,
            Kind.JOIN: self._join,
            Kind.INPUT: self._input,
            Kind.RESIZE: self._resize,
            Kind.PAUSE: self._pause,
            Kind.RESUME: self._resume,
            Kind.LEAVE: self._leave,
            Kind.CONTROL: self._control,
        }.get(frame.kind)
        if handler is None:
            raise ProtocolError(f"unexpected {frame.kind.name} from a joiner's replica")
        handler(served, frame)

    def writable(self, link: PeerLink, writable: bool) -> None:
        """The link backs up: every joiner on it is paused (the Terminal queues, then resyncs)."""
        served = self._served.get(link)
        if served is None:
            return
        served.link_writable = writable
        for joiner in served.joiners.values():
            self._apply_pause(served, joiner)

    def lost(self, link: PeerLink, reason: str) -> None:
        """The joiners' replica is gone: they leave the Terminals here."""
        served = self._served.pop(link, None)
        if served is None:
            return
        for joiner in served.joiners.values():
            if joiner.seat is not None:
                joiner.seat.leave()
            if joiner.task is not None:
                joiner.task.cancel()
        served.joiners.clear()
        log.info("cluster.peer_lost", extra=fields(peer=link.peer, reason=reason))

    # --- requests ------------------------------------------------------------------

    def _joinable(self, request: dict[str, Any]) -> Joinable | None:
        """The session a request's link names here (an SSH link unless it says otherwise)."""
        try:
            medium = Medium(request.get("medium", Medium.SSH.value))
        except ValueError:
            raise ProtocolError(f"unknown medium {str(request.get('medium'))[:20]!r}") from None
        return self._service.joinable(str(request.get("username", "")), medium)

    def _lookup(self, served: _Served, frame: Frame) -> None:
        found = self._joinable(frame.json())
        answer: dict[str, object] = {"found": False}
        if found is not None:
            answer = {
                "found": True,
                "session": found.session_id,
                "access": found.access.value,
                "open": found.open,
                "may_join_as": list(found.may_join_as),
                "owner": found.owner,
                "link": found.link_id,
                "cols": found.size[0],
                "rows": found.size[1],
            }
        served.link.send(Kind.REPLY, frame.id, json_payload(answer))

    def _control(self, served: _Served, frame: Frame) -> None:
        request = frame.json()
        try:
            text = self._service.control(str(request.get("owner", "")), str(request.get("command", "")))
            answer = {"ok": True, "text": text}
        except ControlError as error:
            answer = {"ok": False, "text": str(error)}
        served.link.send(Kind.REPLY, frame.id, json_payload(answer))

    def _join(self, served: _Served, frame: Frame) -> None:
        request = frame.json()
        stream = frame.id
        if stream in served.joiners:
            raise ProtocolError(f"stream {stream} joined twice")
        joiner = served.joiners[stream] = _Relayed()
        found = self._joinable(request)
        try:
            if found is None:
                raise PairpodError("link gone", user_message="the shared session has ended")
            sizes = request.get("sizes") is True
            sink = LinkSink(served.link, stream, lambda s: self._forget(served, s), sizes=sizes)
            cols, rows = self._bounded(int(request["cols"]), int(request["rows"]))
            attaching = found.attach(sink, name=str(request["name"]), cols=cols, rows=rows)
        except (KeyError, ValueError, TypeError):
            raise ProtocolError("JOIN: bad request") from None
        except PairpodError as error:
            served.joiners.pop(stream, None)
            served.link.send(Kind.JOINED, stream, json_payload({"ok": False, "message": error.user_message}))
            return
        joiner.task = served.tasks.spawn(self._seat(served, stream, joiner, attaching))

    async def _seat(self, served: _Served, stream: int, joiner: _Relayed, attach: Awaitable[Seat]) -> None:
        try:
            seat = await attach
        except PairpodError as error:
            served.joiners.pop(stream, None)
            served.link.send(Kind.JOINED, stream, json_payload({"ok": False, "message": error.user_message}))
            return
        if served.joiners.get(stream) is not joiner:  # left (or closed) while being seated
            seat.leave()
            return
        joiner.seat = seat
        served.link.send(Kind.JOINED, stream, json_payload({"ok": True, "participant": seat.id}))
        log.info("cluster.joiner_attached", extra=fields(peer=served.link.peer, stream=stream))
        self._apply_pause(served, joiner)
        while True:
            data = await joiner.input.get()
            joiner.queued -= len(data)
            await seat.send_input(data)

    # --- a joiner's events -----------------------------------------------------------

    def _bounded(self, cols: int, rows: int) -> tuple[int, int]:
        # The joiner's replica bounded them already; this one's limits hold here all the same.
        return self._service.config.ssh.max_pty.bound(cols, rows)

    def _input(self, served: _Served, frame: Frame) -> None:
        joiner = served.joiners.get(frame.id)
        if joiner is None:
            return  # already gone here; the peer learns from CLOSE
        joiner.queued += len(frame.payload)
        if joiner.queued > _MAX_QUEUED_INPUT:
            raise ProtocolError(f"stream {frame.id}: more than {_MAX_QUEUED_INPUT} bytes of input queued")
        joiner.input.put_nowait(frame.payload)

    def _resize(self, served: _Served, frame: Frame) -> None:
        cols, rows = self._bounded(*frame.size())
        joiner = served.joiners.get(frame.id)
        if joiner is not None and joiner.seat is not None:
            joiner.seat.resize(cols, rows)

    def _pause(self, served: _Served, frame: Frame) -> None:
        self._peer_paused(served, frame.id, True)

    def _resume(self, served: _Served, frame: Frame) -> None:
        self._peer_paused(served, frame.id, False)

    def _peer_paused(self, served: _Served, stream: int, paused: bool) -> None:
        joiner = served.joiners.get(stream)
        if joiner is not None:
            joiner.paused_by_peer = paused
            self._apply_pause(served, joiner)

    def _apply_pause(self, served: _Served, joiner: _Relayed) -> None:
        if joiner.seat is None:
            return
        if joiner.paused_by_peer or not served.link_writable:
            joiner.seat.pause_writing()
        else:
            joiner.seat.resume_writing()

    def _leave(self, served: _Served, frame: Frame) -> None:
        joiner = served.joiners.pop(frame.id, None)
        if joiner is not None and joiner.seat is not None:
            joiner.seat.leave()

    def _forget(self, served: _Served, stream: int) -> None:
        joiner = served.joiners.pop(stream, None)
        if joiner is not None and joiner.task is not None:
            joiner.task.cancel()

    async def close(self) -> None:
        """Drop every link (this replica is stopping)."""
        for served in list(self._served.values()):
            served.link.close("this replica is stopping")  # reported back through lost()
            await served.tasks.cancel_all()
