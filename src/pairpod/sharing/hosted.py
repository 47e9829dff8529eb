"""Hosted sessions: a shell on a host's machine, shared through this gateway.

A host (``pairpod pair --via``) keeps one channel to the gateway. Here its
shell is a :class:`HostProcess`, one more
:class:`~pairpod.backends.base.Process`: output arrives in OUTPUT frames,
input and the PTY size leave in INPUT and RESIZE frames. The gateway wraps it
in an ownerless (standing) :class:`~pairpod.sharing.terminal.Terminal` and
registers it like any shared session, so joining, late joiners' screens,
read-only input, the size policy, notices and ``LOGIN+ctl`` all apply as
they are.

The session outlives its host's channel: when the channel is lost, joiners
are told the host is reconnecting, and a host that comes back within the
grace period (``sharing.host_grace``) with the same session key gets the
same session back. Past it, the session ends and its links die.

**Links that survive a gateway restart.** A hosted session's two links are
not random: they are an HMAC, under a key only this gateway has (derived
from its host keys, see :func:`link_key`), of the host's login and a session
key the host chose and keeps. After a restart the host presents the same
session key and gets the same links back; another login presenting it gets
other links (the login is part of the HMAC), so nobody can claim a host's
links but that host's login. Revoking one of these two links is told to the
host (a REVOKED frame), which names it in every later HELLO, so a restarted
gateway revokes it again rather than letting it in. Links minted on the
session (``+ctl mint``) are derived the same way, from a label numbering
them (:func:`~pairpod.sharing.hostwire.minted_label`); the host keeps the
labels of the live ones and the next number, and a restarted gateway makes
those links again. A number is never used twice, so a revoked minted link
stays dead (and nothing is minted while the host is away: it could not keep
the number). They count towards the session's link cap like any link.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import re
from collections import OrderedDict
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Protocol

from pairpod.backends.base import ExitStatus, Process, Stream
from pairpod.backends.output import FlowControl, OutputPipe
from pairpod.config import Config
from pairpod.log import fields, get_logger
from pairpod.sharing.hostwire import (
    MAX_MINTED_NUMBER,
    VERSION,
    Kind,
    ProtocolError,
    Refusal,
    encode_chunks,
    encode_json,
    encode_resize,
    minted_label,
    minted_links,
    parse_minted_label,
    revoked_links,
    window_size,
)
from pairpod.sharing.service import SHARE_ENV, SHARE_WITH_ENV, ControlError, SharingService
from pairpod.sharing.terminal import Terminal
from pairpod.sharing.tokens import (
    Access,
    Medium,
    SharedSession,
    ShareLink,
    TooManyLinks,
    join_command,
    token_from_digest,
)

log = get_logger("sharing")

#: What joiners of a hosted session are told when the gateway stops (their links survive it).
GATEWAY_STOPPING = "the gateway is restarting; the same command joins again once it is back"
#: What joiners are told while the host is away.
HOST_AWAY = "the host's connection dropped; host reconnecting..."
HOST_BACK = "the host is back"
#: Expired session keys remembered (a host presenting one is told to start afresh).
_EXPIRED_KEPT = 4096
# Identities a host may name at most (each one is a key lookup for every joiner).
_MAX_NAMED = 50
_SESSION_KEY = re.compile(r"[0-9a-f]{64}")


class HostRefused(Exception):
    """A host's request that cannot be served: the line to show it, and what it should do."""

    def __init__(self, message: str, refusal: Refusal = Refusal.REFUSED) -> None:
        super().__init__(message)
        self.refusal = refusal


def host_refusal(config: Config, login: str) -> HostRefused | None:
    """Why ``login`` may not host shared sessions here (None: it may, by ``sharing.hosts``)."""
    if login in config.sharing.hosts:
        return None
    return HostRefused(f"{login} may not host shared sessions on this gateway (sharing.hosts)")


class HostLink(Protocol):
    """The gateway's end of one host channel, as a hosted session uses it."""

    def send(self, data: bytes) -> None:
        """Frames to the host (never blocks; back-pressure comes as ``pause_writing``)."""

    def pause_reading(self) -> None:
        """Stop reading the host's frames."""

    def resume_reading(self) -> None:
        """Read the host's frames again."""

    def close(self) -> None:
        """End the channel."""


def link_key(secrets_material: list[bytes]) -> bytes:
    """The key hosted sessions' links are derived under, from the gateway's private host keys.

    Stable across restarts (the host keys are), unknown to anyone without them.
    """
    digest = hashlib.sha256(b"pairpod hosted links\0")
    for material in sorted(secrets_material):
        digest.update(hashlib.sha256(material).digest())
    return digest.digest()


class HostProcess(Process):
    """The host's shell at the far end of its channel, as the gateway's Terminal sees it."""

    def __init__(self, cols: int, rows: int) -> None:
        self._link: HostLink | None = None
        self._flow = FlowControl(self._pause, self._resume)
        self._pipe = OutputPipe(self._flow)
        self._writable = asyncio.Event()
        self._writable.set()
        self.size = (cols, rows)
        # Frames not yet sent because the host's channel is full, by kind: each kind here
        # (RESIZE, REVOKED) carries a whole state, so only the latest of it counts.
        self._waiting: dict[Kind, bytes] = {}
        self._status: ExitStatus | None = None
        self._ended = asyncio.Event()

    def attach(self, link: HostLink) -> HostLink | None:
        """The host's (new) channel; returns the one it replaces, if any."""
        old, self._link = self._link, link
        self._writable.set()
        self._waiting.clear()  # the WELCOME the host gets now has the size and the links
        if self._flow.paused:
            link.pause_reading()
        return old if old is not link else None

    def detach(self, link: HostLink) -> bool:
        """The host's channel is gone; False if it was an older one."""
        if self._link is not link:
            return False
        self._link = None
        self._writable.set()  # input waiting for the old channel is dropped, not held
        return True

    def feed(self, data: bytes) -> None:
        """Output from the host."""
        self._pipe.feed(data)

    @property
    def connected(self) -> bool:
        """Whether the host's channel is attached (False while the host is away)."""
        return self._link is not None

    def send_links(self, frame: bytes) -> None:
        """The session's links state (a REVOKED frame) to the host, when it is connected."""
        self._send_latest(Kind.REVOKED, frame)

    def pause_writing(self) -> None:
        """The host's channel is full: input waits."""
        self._writable.clear()

    def resume_writing(self) -> None:
        """The host's channel drained."""
        self._writable.set()
        waiting, self._waiting = self._waiting, {}
        if self._link is not None:
            for frame in waiting.values():
                self._link.send(frame)

    def finish(self, status: ExitStatus) -> None:
        """The shell ended (or the session did): the output ends after what is buffered."""
        if self._status is None:
            self._status = status
        self._pipe.end()
        self._ended.set()

    def _pause(self) -> None:
        if self._link is not None:
            self._link.pause_reading()

    def _resume(self) -> None:
        if self._link is not None:
            self._link.resume_reading()

    async def read(self, stream: Stream, size: int = 65536) -> bytes:
        """The host's output (a PTY: STDERR is always empty)."""
        if stream is Stream.STDERR:
            return b""
        return await self._pipe.read(size)

    async def write(self, data: bytes) -> None:
        """Keystrokes to the host; dropped while it is away (nobody's input is held for it)."""
        await self._writable.wait()
        if self._link is not None:
            for frame in encode_chunks(Kind.INPUT, data):
                self._link.send(frame)

    async def write_eof(self) -> None:
        """A shared terminal's input never ends."""

    async def close_output(self) -> None:
        """Nobody asks this of a shared terminal."""

    async def resize(self, cols: int, rows: int, pixel_width: int = 0, pixel_height: int = 0) -> None:
        """The size the Terminal wants: sent now, and again to a host that comes back."""
        self.size = (cols, rows)
        self._send_latest(Kind.RESIZE, encode_resize(cols, rows))

    def _send_latest(self, kind: Kind, frame: bytes) -> None:
        # While the host is not reading, such frames are not queued on its channel
        # (asyncssh buffers without a cap, and joiners resizing or an owner minting and
        # revoking in a loop would grow it without end): the latest goes when it drains.
        if self._link is None:
            return
        if self._writable.is_set():
            self._link.send(frame)
        else:
            self._waiting[kind] = frame

    async def signal(self, name: str) -> None:
        """Joiners send no signals; the host's own terminal does."""

    async def wait(self) -> ExitStatus:
        """Until the session ends."""
        await self._ended.wait()
        assert self._status is not None
        return self._status

    async def kill(self) -> None:
        """End the session here and let go of the host's channel."""
        self.finish(ExitStatus(code=None, signal="HUP"))
        link, self._link = self._link, None
        if link is not None:
            link.close()


@dataclass(frozen=True)
class Hello:
    """A host's HELLO, checked."""

    session_key: str
    share_with: tuple[str, ...]
    cols: int
    rows: int
    #: The session's own links (``ro``, ``rw``) revoked before (see :class:`HostedSessions`).
    revoked: tuple[str, ...] = ()
    #: Labels of the links minted on the session that still work, and the next number.
    minted: tuple[str, ...] = ()
    next_minted: int = 0

    @classmethod
    def parse(cls, value: dict[str, Any], max_cols: int, max_rows: int) -> Hello:
        """Check a HELLO payload; HostRefused says what is wrong."""
        if value.get("v") != VERSION:
            raise HostRefused(f"protocol version {value.get('v')!r} is not {VERSION}: upgrade pairpod")
        key = value.get("key")
        if not isinstance(key, str) or not _SESSION_KEY.fullmatch(key):
            raise HostRefused("the session key must be 64 hex digits")
        named = value.get("share_with", [])
        if not isinstance(named, list) or not all(isinstance(n, str) for n in named):
            raise HostRefused("share_with must be a list of identities")
        if len(named) > _MAX_NAMED:
            raise HostRefused(f"at most {_MAX_NAMED} people may be named")
        try:
            size = window_size(value, max_cols, max_rows)
        except ProtocolError as error:
            raise HostRefused(str(error)) from None
        minted, next_minted = minted_links(value)
        return cls(key, tuple(named), *size, tuple(revoked_links(value)), tuple(minted), next_minted)


class HostedSession:
    """One host's shell, shared here, and its channel (while connected)."""

    def __init__(
        self,
        digest: bytes,
        login: str,
        process: HostProcess,
        terminal: Terminal,
        shared: SharedSession[Terminal],
        commands: dict[str, str],
        token: Callable[[str], str],
    ) -> None:
        self.digest = digest
        self.login = login
        self.process = process
        self.terminal = terminal
        self.shared = shared
        self.commands = commands
        #: The session's own (derived) links by id, and which of them are revoked.
        self.own_links: dict[str, str] = {}
        self.revoked: set[str] = set()
        #: The token of the link a label names (derived: the same after a gateway restart).
        self.token = token
        #: Links minted on the session that still work: label by link id; the next number.
        self.minted: dict[str, str] = {}
        self.next_minted = 0
        self._grace: asyncio.TimerHandle | None = None

    def attach(self, link: HostLink) -> None:
        """The host's channel (first, or back within the grace period)."""
        if self._grace is not None:
            self._grace.cancel()
            self._grace = None
        old = self.process.attach(link)
        if old is not None:  # a host back before its old connection was seen to drop
            old.close()

    def links_state(self) -> dict[str, Any]:
        """What the host keeps of the session's links and presents again in its HELLO."""
        return {
            "revoked": sorted(self.revoked),
            "minted": sorted(self.minted.values()),
            "next": self.next_minted,
        }

    def lost(self, link: HostLink, grace: float) -> None:
        """The host's channel ended without an END: wait ``grace`` seconds for it."""
        if not self.process.detach(link) or self.terminal.ended:
            return
        log.info("host.away", extra=fields(session=self.shared.session_id, host=self.login, grace=grace))
        self.terminal.announce(HOST_AWAY)
        self._grace = asyncio.get_running_loop().call_later(grace, self._expire, grace)

    def _expire(self, grace: float) -> None:
        self._grace = None
        log.info("host.expired", extra=fields(session=self.shared.session_id, host=self.login))
        self.end(f"the host did not come back within {grace:g}s; the shared session has ended")

    def end(self, reason: str, status: ExitStatus | None = None) -> None:
        """End the session: joiners are told ``reason``; its links die."""
        if self._grace is not None:
            self._grace.cancel()
            self._grace = None
        self.process.finish(status or ExitStatus(code=None, signal="HUP"))
        self.terminal.end(reason)


class HostedSessions:
    """The hosted sessions of one gateway process."""

    def __init__(self, service: SharingService, spawn: Callable[[Coroutine[Any, Any, Any]], Any]) -> None:
        self._service = service
        self._spawn = spawn
        #: Set from the host keys when the gateway starts (:func:`link_key`).
        self.key = b""
        self._live: dict[bytes, HostedSession] = {}
        self._expired: OrderedDict[bytes, None] = OrderedDict()

    def _digest(self, login: str, session_key: str, what: str) -> bytes:
        assert self.key, "the gateway sets the link key before it listens"
        message = f"{what}\0{login}\0{session_key}".encode()
        return hmac.new(self.key, message, hashlib.sha256).digest()

    def _tokens(self, login: str, session_key: str) -> Callable[[str], str]:
        """The tokens of one hosted session's links, by what they are (``ro``, ``rw.3``)."""
        return lambda what: token_from_digest(self._digest(login, session_key, what))

    def of(self, login: str) -> list[HostedSession]:
        """The live hosted sessions of a login."""
        return [s for s in self._live.values() if s.login == login]

    def register(
        self, config: Config, login: str, hello: Hello, link: HostLink
    ) -> tuple[HostedSession, bool]:
        """Attach a host's channel to its session, made now or resumed; True when resumed.

        Raises HostRefused with the line to show the host.
        """
        if (refusal := host_refusal(config, login)) is not None:
            raise refusal
        digest = self._digest(login, hello.session_key, "session")
        session = self._live.get(digest)
        if session is not None:
            log.info("host.back", extra=fields(session=session.shared.session_id, host=login))
            session.attach(link)
            session.terminal.announce(HOST_BACK)
            return session, True
        if digest in self._expired:
            raise HostRefused("this hosted session has expired: start a new one", Refusal.EXPIRED)
        if len(self.of(login)) >= config.sharing.max_hosted:
            raise HostRefused(
                f"{login} already hosts {config.sharing.max_hosted} sessions here (sharing.max_hosted)"
            )
        session = self._open(config, login, hello, digest)
        session.attach(link)
        return session, False

    def _open(self, config: Config, login: str, hello: Hello, digest: bytes) -> HostedSession:
        env = {SHARE_ENV: "1", SHARE_WITH_ENV: ",".join(hello.share_with)}
        try:
            request = self._service.share_request(config, login, env)
        except ValueError as error:
            raise HostRefused(str(error)) from None
        if request is None:
            raise HostRefused("sharing is turned off on this gateway (sharing.enabled)")
        process = HostProcess(hello.cols, hello.rows)
        terminal = Terminal(
            process,
            None,
            owner_name=f"user:{login}",
            cols=hello.cols,
            rows=hello.rows,
            viewer_backlog=config.sharing.viewer_backlog,
        )
        token = self._tokens(login, hello.session_key)
        shared, links = self._service.register(
            login, terminal, request.share_with, open=config.sharing.open, tokens=lambda a: token(a.value)
        )
        # Its links are derived, so they come back with the session after a restart of
        # the gateway: the revocations the host kept for it are made again.
        for link in links:
            if link.access.value in hello.revoked:
                self._service.registry.revoke(shared, link.link_id)
        host, port = self._service.public_address(config)
        commands = {
            link.access.value: join_command(link.username, host, port)
            for link in links
            if link.access.value not in hello.revoked
        }
        session = HostedSession(digest, login, process, terminal, shared, commands, token)
        session.own_links = {link.link_id: link.access.value for link in links}
        session.revoked = set(hello.revoked)
        self._mint_again(session, hello)
        self._live[digest] = session
        log.info("host.open", extra=fields(session=shared.session_id, host=login))
        self._spawn(self._run(session))
        return session

    def _mint_again(self, session: HostedSession, hello: Hello) -> None:
        """The links minted on the session before the gateway restarted, made again
        (their numbers are all below ``next``: :func:`minted_links` checked it)."""
        session.next_minted = hello.next_minted
        for label in hello.minted:
            access, medium, _ = parse_minted_label(label)
            try:
                link = self._service.registry.mint(session.shared, access, session.token(label), medium)
            except TooManyLinks:  # the host named more than the cap lets live: the rest are gone
                log.warning("host.minted_dropped", extra=fields(session=session.shared.session_id))
                break
            session.minted[link.link_id] = label

    def mint(self, shared: SharedSession[Terminal], access: Access, medium: Medium) -> ShareLink | None:
        """A link minted by the owner of a hosted session: derived like its own two, and
        told to its host to keep (None: ``shared`` is no hosted session of this gateway).
        Raises TooManyLinks past the session's cap, ControlError while the host is away."""
        session = self._hosting(shared)
        if session is None:
            return None
        if not session.process.connected:
            # The host could not be told the new number: a gateway restarted before it is
            # back would get the old one in its HELLO and hand this link's token out again.
            raise ControlError("the host is away: mint once it is back")
        if session.next_minted >= MAX_MINTED_NUMBER:
            raise TooManyLinks("this session has minted all the links it may")
        label = minted_label(access, medium, session.next_minted)
        link = self._service.registry.mint(shared, access, session.token(label), medium)
        session.minted[link.link_id] = label
        session.next_minted += 1
        session.process.send_links(encode_json(Kind.REVOKED, session.links_state()))
        return link

    def _hosting(self, shared: SharedSession[Terminal]) -> HostedSession | None:
        return next((s for s in self._live.values() if s.shared is shared), None)

    async def _run(self, session: HostedSession) -> None:
        try:
            await session.terminal.run()
        finally:
            self._live.pop(session.digest, None)
            self._expired[session.digest] = None
            while len(self._expired) > _EXPIRED_KEPT:
                self._expired.popitem(last=False)
            self._service.close_session(session.shared)
            await session.process.kill()

    def revoked(self, shared: SharedSession[Terminal], link_id: str) -> None:
        """An owner revoked a link: one of a hosted session's own, or one minted on it, is
        told to its host (to revoke it again after a restart, or not to make it again)."""
        session = self._hosting(shared)
        if session is None:
            return
        access = session.own_links.get(link_id)
        if access is not None:
            session.revoked.add(access)
            session.commands.pop(access, None)
        elif session.minted.pop(link_id, None) is None:
            return
        session.process.send_links(encode_json(Kind.REVOKED, session.links_state()))

    def end_all(self, reason: str) -> None:
        """End every hosted session now (the gateway stops; hosts come back to its successor)."""
        for session in list(self._live.values()):
            session.end(reason)

    def describe(self, session: HostedSession) -> str:
        """Who may join, for the host's log."""
        shared = session.shared
        if shared.open:
            return "anyone holding a link (sharing.open)"
        return ", ".join(shared.may_join_as())
