"""Who may join a standing session, and its join links (random, or stable for a name).

A named session (``--name NAME``) has links derived from the name alone, so
the same name gives the same two commands after every restart, on any
machine: ``ro-`` and ``rw-`` followed by 25 characters of a SHA-256 of the
name. The name is therefore no secret, and a named session admits only the
identities named, proved by their keys: never the link alone.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass

from pairpod.errors import ConfigError
from pairpod.log import fields, get_logger
from pairpod.sharing.service import SharingService
from pairpod.sharing.terminal import Terminal
from pairpod.sharing.tokens import (
    Access,
    SharedSession,
    ShareLink,
    normalize_identity,
    token_from_digest,
)

log = get_logger("pair")

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


@dataclass(frozen=True)
class Audience:
    """Who may join: identities proved by key, or (``open``) anyone holding a link."""

    identities: frozenset[str]
    open: bool
    name: str | None = None

    def describe(self) -> str:
        """``github:alice, github:bob``, for the first printed line."""
        if self.open:
            return "anyone holding a link (--open)"
        return ", ".join(sorted(self.identities))


def named_people(github: Iterable[str], gitlab: Iterable[str]) -> frozenset[str]:
    """The GitHub and GitLab logins named on the command line, as identities
    (``pair`` and ``pair --via`` alike); ConfigError names a malformed one."""
    try:
        return frozenset(
            [normalize_identity(f"github:{login}") for login in github]
            + [normalize_identity(f"gitlab:{login}") for login in gitlab]
        )
    except ValueError as error:
        raise ConfigError(f"pair: {error}") from None


def command_line(access: Access, command: str) -> str:
    """A join command as printed: ``read-write:  ssh ...`` (after ``pairpod: ``)."""
    return f"{access.label + ':':<12}{command}"


def audience(github: Iterable[str], gitlab: Iterable[str], *, open: bool, name: str | None) -> Audience:
    """Check the command line's people; ConfigError says what is wrong with it."""
    identities = named_people(github, gitlab)
    if name is not None and not _NAME_RE.fullmatch(name):
        raise ConfigError(
            f"pair: --name {name!r}: use 1 to 64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    if name is not None and open:
        raise ConfigError(
            "pair: --name cannot be used with --open: a named session admits only the people named"
        )
    if not identities and not open:
        raise ConfigError(
            "pair: nobody may join: name GitHub logins (pairpod pair alice bob), "
            "--gitlab LOGIN, or --open to let a link alone admit"
        )
    return Audience(identities, open, name)


def named_token(name: str, access: Access) -> str:
    """The stable token of a named session's ``access`` link."""
    return token_from_digest(hashlib.sha256(f"pairpod pair\0{access.value}\0{name}".encode()).digest())


def share_standing(
    service: SharingService, terminal: Terminal, owner: str, people: Audience
) -> tuple[SharedSession[Terminal], list[ShareLink]]:
    """Register the standing Terminal with a read-only and a read-write link."""
    name = people.name
    fixed = (lambda access: named_token(name, access)) if name is not None else (lambda access: None)
    registered = service.register(owner, terminal, people.identities, open=people.open, tokens=fixed)
    if people.open:
        log.warning("pair.open", extra=fields(note="anyone holding a link may join, without a key check"))
    return registered
