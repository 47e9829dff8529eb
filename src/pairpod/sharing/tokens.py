"""Share tokens, who may join, and the registry of shared sessions.

A shared session has one or more *links*. A link is a secret token with an
access mode; the SSH username of a joiner is the link itself::

    ssh -p 2222 ro-<token>@gw      read-only
    ssh -p 2222 rw-<token>@gw      read-write

The read-only and read-write links of a session are two independent secrets:
knowing ``ro-X`` tells nothing about the read-write link, so changing the prefix
of a read-only link never upgrades it (it is simply an unknown link).

Tokens are 25 characters from a 55-letter alphabet without look-alikes (as in
tmate): about 144 bits from :mod:`secrets`.

A *web* link (:class:`Medium`) has the same form and is a capability of its
own: it is digested with its medium, so it opens a page
(``https://gw/s/ro-<token>``) and never admits over SSH, and an SSH link's
text opens no page.

Lookups never compare a presented token with a stored one character by
character: the registry is keyed by an HMAC of the username under a random
per-registry key, and the final check is :func:`hmac.compare_digest`. The
timing of the dictionary lookup can at most reveal something about an HMAC
value an attacker cannot compute, so nothing about any token leaks.

Who may join: by default only the identities the owner named, written as
``github:bob``, ``gitlab:carol`` or ``user:dave`` (GitHub and GitLab logins are
case-insensitive and kept lower-case; local user names are kept as written).
An *open* session lets anyone holding a link join, as with tmate.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import math
import re
import secrets
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Generic, TypeVar

#: Letters and digits without look-alikes (no 0/O/o, 1/l/I/i).
ALPHABET = "abcdefghjkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789"
#: Characters per token.
TOKEN_LENGTH = 25
#: Bits of randomness in one token (about 144).
TOKEN_BITS = TOKEN_LENGTH * math.log2(len(ALPHABET))

#: The one line an unknown, revoked or refused joiner is told.
INVALID_SESSION_MESSAGE = "invalid or expired session"

# A join attempt is answered only after a random pause of this many seconds,
# so a guesser learns nothing from timing and cannot try tokens quickly.
_REJECT_DELAY = (0.5, 1.5)

_TOKEN_RE = re.compile(f"[{ALPHABET}]{{{TOKEN_LENGTH}}}")
_IDENTITY_KINDS = ("github", "gitlab", "user")
_NAME_RE = {
    # GitHub: letters, digits and single hyphens, at most 39 characters.
    "github": re.compile(r"[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){0,38}"),
    # GitLab: letters, digits, '_', '.', '-', starting with a letter, digit or '_'.
    "gitlab": re.compile(r"[a-z0-9_][a-z0-9_.-]{0,254}"),
    # Local users: the names the config's ``auth.users`` may hold.
    "user": re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.@-]{0,254}"),
}

assert TOKEN_BITS >= 128  # a guard on the constants above


#: Links one session may hold: live ones (each a secret someone may hold; a
#: mint past this is refused) and, apart, revoked ones kept for ``list`` (the
#: oldest are forgotten past this), so an owner minting and revoking in a loop
#: costs the gateway a bounded amount.
MAX_LINKS = 100


class TooManyLinks(ValueError):
    """A session already has :data:`MAX_LINKS` live links."""


class Access(enum.Enum):
    """What a link lets its holder do."""

    READ_ONLY = "ro"
    READ_WRITE = "rw"

    @property
    def prefix(self) -> str:
        """The username prefix of links with this access (``ro-`` or ``rw-``)."""
        return f"{self.value}-"

    @property
    def label(self) -> str:
        """Words for people: ``read-only`` or ``read-write``."""
        return "read-only" if self is Access.READ_ONLY else "read-write"


class Medium(enum.Enum):
    """How a link is used: as an SSH username, or in a web URL's path.

    A web link is a capability of its own: its secret is digested with its
    medium, so the same text never admits through the other medium.
    """

    SSH = "ssh"
    WEB = "web"


def web_url(base: str, link: ShareLink) -> str:
    """The page of a web link under ``base`` (``https://gw.example.com`` -> ``.../s/ro-<token>``)."""
    return f"{base}/s/{link.username}"


def new_token() -> str:
    """A fresh random token (about 144 bits from :mod:`secrets`)."""
    return "".join(secrets.choice(ALPHABET) for _ in range(TOKEN_LENGTH))


def token_from_digest(digest: bytes) -> str:
    """A token spelled from a secret digest (at least 19 bytes): for links derived, not drawn."""
    number = int.from_bytes(digest, "big")
    letters = []
    for _ in range(TOKEN_LENGTH):
        number, index = divmod(number, len(ALPHABET))
        letters.append(ALPHABET[index])
    return "".join(letters)


def parse_join_username(username: str) -> tuple[Access, str] | None:
    """Split ``ro-<token>`` / ``rw-<token>`` into access and token.

    Returns ``None`` when the username does not have the shape of a link. The
    check depends only on the shape (prefix, length, alphabet), never on any
    stored secret, so it may run before authentication.
    """
    for access in Access:
        if username.startswith(access.prefix):
            token = username[len(access.prefix) :]
            if _TOKEN_RE.fullmatch(token):
                return access, token
    return None


def looks_like_join_username(username: str) -> bool:
    """True when a username has the shape of a join link (route it to joining)."""
    return parse_join_username(username) is not None


def rejection_delay() -> float:
    """Seconds to wait before telling a joiner their link is invalid."""
    low, high = _REJECT_DELAY
    return low + (high - low) * secrets.randbelow(1_000_001) / 1_000_000


def normalize_identity(text: str) -> str:
    """Check and normalise one identity: ``GitHub:Bob`` becomes ``github:bob``.

    Raises ValueError naming the problem for anything else.
    """
    kind, sep, name = text.strip().partition(":")
    kind = kind.strip().lower()
    name = name.strip()
    if not sep or kind not in _IDENTITY_KINDS:
        raise ValueError(f"expected github:NAME, gitlab:NAME or user:NAME, got {text.strip()!r}")
    if kind in ("github", "gitlab"):
        name = name.lower()  # both services treat logins case-insensitively
    if not _NAME_RE[kind].fullmatch(name):
        raise ValueError(f"{kind}:{name!r} is not a valid {kind} name")
    return f"{kind}:{name}"


def parse_share_with(text: str) -> frozenset[str]:
    """Parse ``PAIRPOD_SHARE_WITH``: identities separated by commas or spaces."""
    parts = [part for part in re.split(r"[,\s]+", text) if part]
    return frozenset(normalize_identity(part) for part in parts)


def join_command(username: str, host: str, port: int) -> str:
    """The ``ssh`` command that joins with a link (``-p`` only when not 22)."""
    port_part = "" if port == 22 else f"-p {port} "
    return f"ssh {port_part}{username}@{host}"


def share_banner(links: Iterable[ShareLink], host: str, port: int) -> str:
    """The lines the owner sees when their session becomes shared.

    ``host`` and ``port`` are what joiners should dial: ``sharing.public_host``
    and ``sharing.public_port`` when set, else the gateway's own address.
    Lines end with CRLF: they are written to a terminal in raw mode.
    """
    lines = ["pairpod: this session is shared"]
    for link in links:
        label = f"{link.access.label}:"
        lines.append(f"  {label:<12}{join_command(link.username, host, port)}")
    return "\r\n".join(lines) + "\r\n"


_T = TypeVar("_T")


@dataclass(eq=False)
class ShareLink:
    """One join link of a shared session.

    ``username`` is the secret (``ro-<token>``): it is kept out of ``repr`` so
    that logging a link never logs the token. ``link_id`` is a short public
    name for it, for listing and revoking.
    """

    username: str = field(repr=False)
    access: Access
    session_id: str
    link_id: str
    created: float
    revoked: bool = False
    medium: Medium = Medium.SSH


@dataclass(eq=False)
class SharedSession(Generic[_T]):
    """A shared terminal, who owns it, who may join, and its links.

    ``terminal`` is whatever the server attaches joiners to (a Terminal); the
    registry never looks inside it.
    """

    session_id: str
    owner: str
    terminal: _T
    allowed: frozenset[str]
    open: bool
    created: float
    links: dict[str, ShareLink] = field(default_factory=dict)

    def may_join_as(self) -> list[str]:
        """The identities a joiner's key may prove to join this (restricted) session.

        The owner may always join their own session (from a second terminal);
        an open session admits anyone with a link and asks for no identity.
        """
        return sorted({self.owner, *self.allowed})

    def active_links(self) -> list[ShareLink]:
        """Links that still work, oldest first."""
        return [link for link in self.links.values() if not link.revoked]


class ShareRegistry(Generic[_T]):
    """All shared sessions of a gateway process, and their links.

    Everything here is in memory and synchronous: a link lives exactly as long
    as the process that minted it, and a gateway restart invalidates every link
    (the sessions they pointed to are gone too).
    """

    def __init__(self) -> None:
        self._key = secrets.token_bytes(32)
        self._by_digest: dict[bytes, ShareLink] = {}
        self._sessions: dict[str, SharedSession[_T]] = {}

    def _digest(self, username: str, medium: Medium = Medium.SSH) -> bytes:
        text = username if medium is Medium.SSH else f"{medium.value}:{username}"
        return hmac.new(self._key, text.encode("utf-8", "surrogatepass"), hashlib.sha256).digest()

    def create_session(
        self,
        *,
        owner: str,
        terminal: _T,
        share_with: Iterable[str] = (),
        open: bool = False,
    ) -> SharedSession[_T]:
        """Register a shared session (no links yet: see :meth:`mint`).

        ``owner`` and ``share_with`` are identities (``user:alice``,
        ``github:bob``); invalid ones raise ValueError.
        """
        session_id = secrets.token_hex(4)
        while session_id in self._sessions:
            session_id = secrets.token_hex(4)
        session = SharedSession(
            session_id=session_id,
            owner=normalize_identity(owner),
            terminal=terminal,
            allowed=frozenset(normalize_identity(i) for i in share_with),
            open=open,
            created=time.time(),
        )
        self._sessions[session_id] = session
        return session

    def mint(
        self,
        session: SharedSession[_T],
        access: Access,
        token: str | None = None,
        medium: Medium = Medium.SSH,
    ) -> ShareLink:
        """Create a new link to ``session``; its ``username`` is the secret to hand out.

        ``token`` fixes the link instead of a random one (a named standing
        session's stable links); ValueError if it is malformed or taken.
        """
        if self._sessions.get(session.session_id) is not session:
            raise KeyError(f"session {session.session_id} is not registered")
        if len(session.active_links()) >= MAX_LINKS:
            raise TooManyLinks(f"this session has {MAX_LINKS} live links already: revoke some first")
        if token is not None:
            username = access.prefix + token
            digest = self._digest(username, medium)
            if not _TOKEN_RE.fullmatch(token) or digest in self._by_digest:
                raise ValueError("a fixed link must be a well-formed token not in use")
        while token is None:
            username = access.prefix + new_token()
            digest = self._digest(username, medium)
            if digest not in self._by_digest:  # a collision is ~2^-144; loop anyway
                break
        link = ShareLink(
            username=username,
            access=access,
            session_id=session.session_id,
            link_id=digest.hex()[:8],
            created=time.time(),
            medium=medium,
        )
        self._by_digest[digest] = link
        session.links[link.link_id] = link
        return link

    def lookup(
        self, username: str, medium: Medium = Medium.SSH
    ) -> tuple[ShareLink, SharedSession[_T]] | None:
        """The live link a joiner's username (or a web link's path) names, and its session; else None.

        Unknown, malformed and revoked links all give None: the caller answers
        each the same way (:data:`INVALID_SESSION_MESSAGE` after
        :func:`rejection_delay`).
        """
        if parse_join_username(username) is None:
            return None
        digest = self._digest(username, medium)
        link = self._by_digest.get(digest)
        if link is None or link.revoked:
            return None
        # The dictionary already matched the digest; compare once more in
        # constant time so that no code path compares secrets byte by byte.
        if not hmac.compare_digest(self._digest(link.username, link.medium), digest):
            return None
        session = self._sessions.get(link.session_id)
        if session is None:
            return None
        return link, session

    def revoke(self, session: SharedSession[_T], link_id: str) -> bool:
        """Revoke one link of a session by its public id; False if there is none.

        People already joined through it stay: kicking them is the Terminal's
        job, so the owner can choose either or both.
        """
        link = session.links.get(link_id)
        if link is None or link.revoked:
            return False
        link.revoked = True
        self._by_digest.pop(self._digest(link.username, link.medium), None)
        revoked = [old.link_id for old in session.links.values() if old.revoked]
        for old_id in revoked[: max(0, len(revoked) - MAX_LINKS)]:  # minted first, forgotten first
            del session.links[old_id]
        return True

    def close_session(self, session: SharedSession[_T]) -> None:
        """Forget a session and revoke all its links (its terminal has ended)."""
        for link_id in list(session.links):
            self.revoke(session, link_id)
        self._sessions.pop(session.session_id, None)

    def get(self, session_id: str) -> SharedSession[_T] | None:
        """A registered session by its public id."""
        return self._sessions.get(session_id)

    def sessions_of(self, owner: str) -> list[SharedSession[_T]]:
        """The shared sessions an identity owns, oldest first."""
        name = normalize_identity(owner)
        return sorted((s for s in self._sessions.values() if s.owner == name), key=lambda s: s.created)

    def __iter__(self) -> Iterator[SharedSession[_T]]:
        return iter(list(self._sessions.values()))

    def __len__(self) -> int:
        return len(self._sessions)
