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
from pairpod.sharing.tokens import Access, SharedSession


class JoinRefused(PairpodError):
    """A joiner cannot be attached (session full, ended, its replica lost); the user is told why."""

    user_message = "the shared session has ended"


class ClusterUnavailable(PairpodError):
    """Other replicas cannot be asked about a link now (their store or their address is down)."""

    user_message = "shared sessions on other gateway replicas cannot be reached now; try again shortly"


class Seat(Protocol):
    """A joiner's place at a shared terminal, as the joiner's channel drives it."""

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

    async def attach(self, sink: Sink, *, name: str, cols: int, rows: int) -> Seat:
        """Join: ``sink`` gets the current screen at once, then live output.

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
    return terminal.join(sink, name=name, access=access, cols=cols, rows=rows)


def local_joinable(session: SharedSession[Terminal], access: Access, max_participants: int) -> Joinable:
    """The Joinable of a session in this process."""

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
    )


class Elsewhere(Protocol):
    """The other replicas of a cluster, as the sharing service asks them."""

    async def find(self, username: str) -> Joinable | None:
        """The session a link names on another replica (None: unknown there).

        Raises :class:`ClusterUnavailable` when they cannot be asked.
        """

    async def control(self, owner: str, command_line: str) -> str:
        """Run an owner's control command on the replicas holding their sessions (this one too).

        Raises ControlError with the text for the owner.
        """

    def changed(self) -> None:
        """Links or shared sessions here changed (minted, revoked, opened, closed): publish them."""
