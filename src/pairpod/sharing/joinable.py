"""What a joiner attaches to: a shared session here, or on another replica.

A join link names a shared session that may live in this process or in
another gateway replica. Whoever puts a joiner on it (an SSH channel, a web
page) sees the same two things either way:

* a :class:`Joinable`: the session the link names (its access, who may join)
  and :meth:`Joinable.attach`, which puts a :class:`~pairpod.sharing.terminal.Sink`
  on it and returns
* a :class:`Seat`: what the joiner's channel calls (input, window size, flow
  control, leaving). A local :class:`~pairpod.sharing.terminal.Participant`
  is a Seat; so is a joiner relayed to another replica.

:class:`Elsewhere` is what the sharing service asks of the other replicas (a
cluster); this package never knows how they are reached.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from pairpod.errors import PairpodError
from pairpod.sharing.terminal import Participant, Sink, Terminal
from pairpod.sharing.tokens import Access, Medium, SharedSession, ShareLink


class JoinRefused(PairpodError):
    """A joiner cannot be attached (session full, ended, its replica lost); the user is told why."""

    user_message = "the shared session has ended"


class ClusterUnavailable(PairpodError):
    """Other replicas cannot be asked about a link now (their store or their address is down)."""

    user_message = "shared sessions on other gateway replicas cannot be reached now; try again shortly"


class Seat(Protocol):
    """A joiner's place at a shared terminal, as the joiner's channel drives it."""

    #: The joiner's number in the owner's listing (what ``+ctl kick`` takes).
    id: int

    async def send_input(self, data: bytes) -> None:
        """Keystrokes (dropped by the Terminal for read-only joiners)."""

    def resize(self, cols: int, rows: int) -> None:
        """The joiner's window changed."""

    def pause_writing(self) -> None:
        """The joiner's channel is not keeping up."""

    def resume_writing(self) -> None:
        """The joiner's channel drained."""

    def leave(self) -> None:
        """The joiner's channel closed."""


#: Puts a sink on a session: (sink, name, cols, rows) -> the joiner's seat.
Attach = Callable[[Sink, str, int, int], Awaitable[Seat]]


@dataclass(frozen=True)
class Joinable:
    """A live shared session that a join link names, wherever it runs."""

    session_id: str
    access: Access
    open: bool
    #: Identities a joiner's key may prove (empty for an open session's guests).
    may_join_as: tuple[str, ...]
    #: ``local``, or the address of the replica the session runs on (for logs).
    where: str
    _attach: Attach
    #: Who shares it (``user:alice``): a web page's status line says so.
    owner: str
    #: The public id of the link that named it (logs, audit).
    link_id: str
    #: The PTY size when it was found, ``(cols, rows)``: a web joiner joins at
    #: it (and so changes no size) until its page says its own.
    size: tuple[int, int]

    async def attach(self, sink: Sink, *, name: str, cols: int, rows: int) -> Seat:
        """Join: ``sink`` gets the current screen at once, then live output.

        ``sink.resized`` is told the PTY's size before the first output and
        before any output drawn for a new size.

        Raises :class:`JoinRefused` (full, ended, replica lost).
        """
        return await self._attach(sink, name, cols, rows)


def seat_viewer(
    terminal: Terminal, max_participants: int, sink: Sink, *, name: str, access: Access, cols: int, rows: int
) -> Participant:
    """Put a viewer on a Terminal of this process, within ``max_participants``.

    The one place a joiner is admitted to a Terminal, whether their channel is
    here or on another replica. Raises :class:`JoinRefused`.
    """
    if terminal.ended:
        raise JoinRefused(f"join after the end ({terminal.end_reason})")
    if sum(not p.owner for p in terminal.participants()) >= max_participants:
        raise JoinRefused(
            "shared session full",
            user_message=f"this shared session is full (max {max_participants} participants)",
        )
    return terminal.join(_SizeTelling(sink, terminal), name=name, access=access, cols=cols, rows=rows)


class _SizeTelling(Sink):
    """A joiner's sink, told the PTY size whenever output comes for a size it was not told.

    The Terminal draws for its current size; checking it per write (a tuple
    comparison) keeps the Terminal free of any notion of who wants sizes.
    """

    def __init__(self, sink: Sink, terminal: Terminal) -> None:
        self._sink = sink
        self._terminal = terminal
        self._told: tuple[int, int] | None = None

    def write(self, data: bytes) -> None:
        size = self._terminal.size
        if size != self._told:
            self._told = size
            self._sink.resized(*size)
        self._sink.write(data)

    def notify(self, text: str) -> None:
        self._sink.notify(text)

    def close(self, reason: str) -> None:
        self._sink.close(reason)


def local_joinable(session: SharedSession[Terminal], link: ShareLink, max_participants: int) -> Joinable:
    """The Joinable of a session in this process, as ``link`` names it."""
    access = link.access

    async def attach(sink: Sink, name: str, cols: int, rows: int) -> Seat:
        return seat_viewer(
            session.terminal, max_participants, sink, name=name, access=access, cols=cols, rows=rows
        )

    return Joinable(
        session_id=session.session_id,
        access=access,
        open=session.open,
        may_join_as=() if session.open else tuple(session.may_join_as()),
        where="local",
        _attach=attach,
        owner=session.owner,
        link_id=link.link_id,
        size=session.terminal.size,
    )


class Elsewhere(Protocol):
    """The other replicas of a cluster, as the sharing service asks them."""

    async def find(self, username: str, medium: Medium = Medium.SSH) -> Joinable | None:
        """The session a link (an SSH username, or a web link's text) names on another
        replica (None: unknown there).

        Raises :class:`ClusterUnavailable` when they cannot be asked.
        """

    async def control(self, owner: str, command_line: str) -> str:
        """Run an owner's control command on the replicas holding their sessions (this one too).

        Raises ControlError with the text for the owner.
        """

    def changed(self) -> None:
        """Links or shared sessions here changed (minted, revoked, opened, closed): publish them."""
