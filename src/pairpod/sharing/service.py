"""The gateway's sharing service: who shares, who may join, and the owner's controls.

It keeps the registry of shared sessions, decides whether a new interactive
session is shared, finds the session a join link names, and runs the owner's
control commands.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pairpod.config import Config
from pairpod.log import fields, get_logger
from pairpod.sharing.joinable import Elsewhere, Joinable, local_joinable
from pairpod.sharing.terminal import Terminal
from pairpod.sharing.tokens import (
    Access,
    Medium,
    SharedSession,
    ShareLink,
    ShareRegistry,
    TooManyLinks,
    join_command,
    parse_share_with,
    share_banner,
    web_url,
)

if TYPE_CHECKING:
    from pairpod.sharing.hosted import HostedSessions

log = get_logger("sharing")

#: Client environment variables that ask for sharing (read before env filtering).
SHARE_ENV = "PAIRPOD_SHARE"
SHARE_WITH_ENV = "PAIRPOD_SHARE_WITH"
#: ``ro`` or ``rw``: also print a web link (needs ``sharing.web``; rw only for open sessions).
SHARE_WEB_ENV = "PAIRPOD_SHARE_WEB"
#: The variables above: kept from the client's env requests whatever ``security.env_allow`` says.
REQUEST_ENV = frozenset({SHARE_ENV, SHARE_WITH_ENV, SHARE_WEB_ENV})
#: ``alice+ctl@gw``: the owner's control interface, never the container.
CONTROL_SUFFIX = "+ctl"

CONTROL_HELP = """\
pairpod sharing control: ssh USER+ctl@GATEWAY COMMAND
  list                          your shared sessions, their links and participants
  mint [SESSION] ro|rw          a new join link
  mint [SESSION] web-ro|web-rw  a new web link (rw: open sessions only)
  revoke [SESSION] LINK         stop a link from admitting anyone new
  kick [SESSION] PARTICIPANT    remove one participant now
SESSION may be left out when you have exactly one shared session.
"""


class ControlError(Exception):
    """A control command that cannot be done; the text is shown to the owner."""


@dataclass(frozen=True)
class ShareRequest:
    """An owner's wish to share, from their client's env or their config."""

    share_with: frozenset[str]
    #: The web link asked for, if any (read-write implies a read-only one too).
    web: Access | None = None


def split_suffixed(username: str, suffix: str) -> str | None:
    """``alice+ctl`` -> ``alice`` (for ``suffix`` ``+ctl``); None for any other username."""
    if username.endswith(suffix) and len(username) > len(suffix):
        return username[: -len(suffix)]
    return None


class SharingService:
    """Shared sessions of one gateway process."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.registry: ShareRegistry[Terminal] = ShareRegistry()
        #: Where web links point (``http://host:port``): set by the web listener
        #: once it listens; None while web joining is off.
        self.web_base: str | None = None
        #: Shells shared from hosts' machines (``pairpod pair --via``); the gateway sets it.
        self.hosted: HostedSessions | None = None
        #: The port actually listened on, once known (``listen`` may ask for port 0).
        self.bound_port: int | None = None
        #: The other replicas of a cluster (None: this process is the only one).
        self.elsewhere: Elsewhere | None = None
        #: Called with (session, link id) after an owner revokes a link.

    def _changed(self) -> None:
        if self.elsewhere is not None:
            self.elsewhere.changed()

    # --- the owner's side ---------------------------------------------------------

    def share_request(
        self, config: Config, username: str, client_env: Mapping[str, str]
    ) -> ShareRequest | None:
        """Whether a new interactive session of ``username`` is to be shared.

        The client asks with ``SetEnv=PAIRPOD_SHARE=1``; the config may turn
        sharing on for everyone (``sharing.auto``) or per user. Raises
        ValueError when ``PAIRPOD_SHARE_WITH`` names an invalid identity.
        """
        if not config.sharing.enabled:
            return None
        user = config.auth.users.get(username)
        per_user = user.sharing if user is not None else None
        wanted = client_env.get(SHARE_ENV, "").strip().lower() in {"1", "yes", "true", "on"}
        auto = per_user.auto if per_user is not None and per_user.auto is not None else config.sharing.auto
        if not (wanted or auto):
            return None
        share_with: set[str] = set()
        if per_user is not None and per_user.share_with:
            share_with |= parse_share_with(",".join(per_user.share_with))
        if client_env.get(SHARE_WITH_ENV):
            share_with |= parse_share_with(client_env[SHARE_WITH_ENV])
        web_text = client_env.get(SHARE_WEB_ENV, "").strip().lower()
        if web_text not in {"", "ro", "rw"}:
            raise ValueError(f"{SHARE_WEB_ENV}: expected ro or rw, got {web_text!r}")
        web = Access(web_text) if web_text else None
        if web is None and config.sharing.web.auto:
            web = Access.READ_ONLY
        return ShareRequest(frozenset(share_with), web)

    def open_session(
        self, config: Config, owner: str, terminal: Terminal, request: ShareRequest
    ) -> tuple[SharedSession[Terminal], str]:
        """Register a shared session with a read-only and a read-write link.

        Returns the session and the banner to show its owner.
        """
        session, links = self.register(owner, terminal, request.share_with, open=config.sharing.open)
        host, port = self.public_address(config)
        banner = share_banner(links, host, port)
        if not session.open and not session.allowed:
            banner += "  (only you may join: name people with SetEnv=PAIRPOD_SHARE_WITH=github:NAME)\r\n"
        if request.web is not None:
            banner += self.web_banner(session, request.web)
        return session, banner

    def register(
        self,
        owner: str,
        terminal: Terminal,
        share_with: Iterable[str],
        *,
        open: bool,
        tokens: Callable[[Access], str | None] = lambda access: None,
    ) -> tuple[SharedSession[Terminal], list[ShareLink]]:
        """Register ``terminal`` as a shared session of ``owner`` with a read-only
        and a read-write link (random, or the fixed ``tokens(access)``)."""
        session = self.registry.create_session(
            owner=f"user:{owner}", terminal=terminal, share_with=share_with, open=open
        )
        links = [
            self.registry.mint(session, access, tokens(access))
            for access in (Access.READ_ONLY, Access.READ_WRITE)
        ]
        self._changed()
        log.info(
            "sharing.open",
            extra=fields(
                session=session.session_id,
                owner=session.owner,
                open=session.open,
                share_with=",".join(sorted(session.allowed)) or None,
            ),
        )
        return session, links

    # --- web links ----------------------------------------------------------------

    def web_banner(self, session: SharedSession[Terminal], wanted: Access) -> str:
        """The share notice's lines for the web links asked for (CRLF-ended).

        A read-only link always; a read-write one as well when asked for and
        the session admits by link alone (a browser proves no identity).
        """
        if self.web_base is None:
            return "  (no web link: web joining is off on this gateway)\r\n"
        lines = [f"  {'web read-only:':<16}{self.web_url(self.mint_web(session, Access.READ_ONLY))}"]
        if wanted is Access.READ_WRITE:
            if session.open:
                lines.append(
                    f"  {'web read-write:':<16}{self.web_url(self.mint_web(session, Access.READ_WRITE))}"
                )
            else:
                lines.append("  (no read-write web link: only open sessions have them)")
        return "\r\n".join(lines) + "\r\n"

    def mint_web(self, session: SharedSession[Terminal], access: Access) -> ShareLink:
        """A new web link to ``session``. Raises ControlError when web joining is off,
        or for a read-write link to a session whose links alone do not admit."""
        if self.web_base is None:
            raise ControlError("web joining is off on this gateway (sharing.web.listen)")
        if access is Access.READ_WRITE and not session.open:
            raise ControlError(
                "read-write web links are only for open sessions: a browser proves no identity"
            )
        return self._new_link(session, access, Medium.WEB)

    def _new_link(self, session: SharedSession[Terminal], access: Access, medium: Medium) -> ShareLink:
        """Mint a link the owner asked for (ControlError past the session's bound)."""
        try:
            # A hosted session's links are derived, so they survive a gateway restart.
            hosted = self.hosted.mint(session, access, medium) if self.hosted is not None else None
            link = hosted or self.registry.mint(session, access, medium=medium)
        except TooManyLinks as error:
            raise ControlError(str(error)) from None
        self._changed()
        log.info(
            "sharing.mint",
            extra=fields(
                session=session.session_id, link=link.link_id, access=access.value, medium=medium.value
            ),
        )
        return link

    def web_url(self, link: ShareLink) -> str:
        """The address of a web link's page."""
        assert self.web_base is not None
        return web_url(self.web_base, link)

    def close_session(self, session: SharedSession[Terminal]) -> None:
        """The owner's program ended: forget the session and its links."""
        self.registry.close_session(session)
        self._changed()
        log.info("sharing.closed", extra=fields(session=session.session_id))

    def public_address(self, config: Config) -> tuple[str, int]:
        """Host and port to print in join commands."""
        host, port = config.listen_address
        if host in {"0.0.0.0", "::", ""}:  # noqa: S104 - comparing, not binding
            host = "localhost"
        return (config.sharing.public_host or host, config.sharing.public_port or self.bound_port or port)

    # --- the joiner's side --------------------------------------------------------

    def joinable(self, username: str, medium: Medium = Medium.SSH) -> Joinable | None:
        """The live session of this process a link names (a join username, or a web
        link's text), as joiners attach to it."""
        found = self.registry.lookup(username, medium)
        if found is None or found[1].terminal.ended:
            return None
        link, session = found
        return local_joinable(session, link, self.config.sharing.max_participants)

    async def find(self, username: str, medium: Medium = Medium.SSH) -> Joinable | None:
        """The live session a link names, here or on another replica.

        Raises :class:`~pairpod.sharing.joinable.ClusterUnavailable` when the
        link is not here and the other replicas cannot be asked.
        """
        here = self.joinable(username, medium)
        if here is not None or self.elsewhere is None:
            return here
        return await self.elsewhere.find(username, medium)

    # --- the owner's control interface -------------------------------------------

    async def control_anywhere(self, owner: str, command_line: str) -> str:
        """:meth:`control` on whichever replicas hold ``owner``'s sessions. Raises ControlError."""
        if self.elsewhere is None:
            return self.control(owner, command_line)
        return await self.elsewhere.control(owner, command_line)

    def control(self, owner: str, command_line: str) -> str:
        """Run one control command for ``owner``; the text to show. Raises ControlError."""
        try:
            words = shlex.split(command_line)
        except ValueError as error:
            raise ControlError(f"cannot parse the command: {error}") from None
        if not words or words[0] in {"help", "-h", "--help"}:
            return CONTROL_HELP
        verb, args = words[0], words[1:]
        sessions = self.registry.sessions_of(f"user:{owner}")
        if verb == "list":
            return self._list(sessions)
        handlers = {"mint": (1, self._mint), "revoke": (1, self._revoke), "kick": (1, self._kick)}
        if verb not in handlers:
            raise ControlError(f"unknown command {verb!r}\n{CONTROL_HELP}")
        needed, handler = handlers[verb]
        session, rest = self._pick(sessions, args, needed)
        return handler(session, rest[0])

    def _pick(
        self, sessions: list[SharedSession[Terminal]], args: list[str], needed: int
    ) -> tuple[SharedSession[Terminal], list[str]]:
        if len(args) == needed + 1:
            chosen = [s for s in sessions if s.session_id == args[0]]
            if not chosen:
                raise ControlError(f"no shared session {args[0]!r} of yours")
            return chosen[0], args[1:]
        if len(args) != needed:
            raise ControlError(f"wrong number of arguments\n{CONTROL_HELP}")
        if len(sessions) != 1:
            raise ControlError(
                "you have no shared session"
                if not sessions
                else "you have several shared sessions: name one (see list)"
            )
        return sessions[0], args

    def _list(self, sessions: Iterable[SharedSession[Terminal]]) -> str:
        lines = []
        now = time.time()
        for session in sessions:
            cols, rows = session.terminal.size
            lines.append(
                f"session {session.session_id}  {cols}x{rows}  "
                f"up {int(now - session.created)}s  "
                f"{'open to anyone with a link' if session.open else 'restricted'}"
            )
            for link in session.active_links():
                medium = "  (web)" if link.medium is Medium.WEB else ""
                lines.append(f"  link {link.link_id}  {link.access.label}{medium}")
            for person in session.terminal.participants():
                role = "owner" if person.owner else person.access.label
                state = "  (behind)" if person.behind else ""
                lines.append(
                    f"  participant {person.id}  {person.name}  {role}  {person.cols}x{person.rows}{state}"
                )
        return "\n".join(lines) + "\n" if lines else "no shared sessions\n"

    def _mint(self, session: SharedSession[Terminal], access_text: str) -> str:
        try:
            access = Access(access_text.removeprefix("web-"))
        except ValueError:
            raise ControlError(f"expected ro, rw, web-ro or web-rw, got {access_text!r}") from None
        if access_text.startswith("web-"):
            web_link = self.mint_web(session, access)
            return f"link {web_link.link_id}: {self.web_url(web_link)}\n"
        link = self._new_link(session, access, Medium.SSH)
        host, port = self.public_address(self.config)
        return f"link {link.link_id}: {join_command(link.username, host, port)}\n"

    def _revoke(self, session: SharedSession[Terminal], link_id: str) -> str:
        if not self.registry.revoke(session, link_id):
            raise ControlError(f"no active link {link_id!r} in session {session.session_id}")
        self._changed()
        log.info("sharing.revoke", extra=fields(session=session.session_id, link=link_id))
        if self.hosted is not None:
            self.hosted.revoked(session, link_id)
        return f"link {link_id} revoked\n"

    def _kick(self, session: SharedSession[Terminal], participant: str) -> str:
        if not participant.isdigit() or not session.terminal.kick(int(participant)):
            raise ControlError(f"no participant {participant!r} in session {session.session_id}")
        return f"participant {participant} removed\n"
