"""The kinds of connection, told apart by username: the one place to add a kind.

A new kind (host mode, web joiners) is a :class:`~pairpod.ssh.purpose.Purpose`
of its own and a test here.
"""

from __future__ import annotations

from typing import Protocol

from pairpod.auth import Authenticator
from pairpod.sharing.hostwire import HOST_SUFFIX
from pairpod.sharing.service import CONTROL_SUFFIX, SharingService, split_suffixed
from pairpod.sharing.tokens import looks_like_join_username
from pairpod.ssh.host import HostPurpose
from pairpod.ssh.join import JoinPurpose
from pairpod.ssh.login import ControlPurpose, LoginPurpose
from pairpod.ssh.purpose import ConnectionSide, Purpose


class PurposeChooser(Protocol):
    """Picks a connection's purpose from its username (a gateway may narrow the kinds)."""

    def __call__(
        self,
        connection: ConnectionSide,
        username: str,
        *,
        sharing: SharingService,
        authenticator: Authenticator,
    ) -> Purpose:
        """The purpose ``username`` asks for."""


def choose_purpose(
    connection: ConnectionSide, username: str, *, sharing: SharingService, authenticator: Authenticator
) -> Purpose:
    """The purpose ``username`` asks for: a join link, the owner's controls, a host, or a login."""
    if looks_like_join_username(username):
        return JoinPurpose(connection, sharing, authenticator)
    owner = split_suffixed(username, CONTROL_SUFFIX)
    if owner is not None:
        return ControlPurpose(connection, sharing, owner)
    host = split_suffixed(username, HOST_SUFFIX)
    if host is not None and sharing.hosted is not None:
        return HostPurpose(connection, sharing.hosted, host)
    return LoginPurpose(connection, sharing)


class _JoinersOnly(Purpose):
    """Any username but a join link, where only joiners are served: refused, with a hint."""

    def __init__(self, connection: ConnectionSide) -> None:
        self._connection = connection

    def begin_auth(self, username: str) -> bool:
        """Say what this server takes; offer nothing (every method fails)."""
        self._connection.send_banner("pairpod: this server only takes join links (ssh ro-...@ or rw-...@)\n")
        return True


def choose_join_only(
    connection: ConnectionSide, username: str, *, sharing: SharingService, authenticator: Authenticator
) -> Purpose:
    """Join links only (``pairpod pair``: no logins, no ``+ctl``); anything else is refused."""
    if looks_like_join_username(username):
        return JoinPurpose(connection, sharing, authenticator)
    return _JoinersOnly(connection)
