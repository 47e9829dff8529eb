"""The kinds of connection, told apart by username: the one place to add a kind.

A new kind (host mode, web joiners) is a :class:`~pairpod.ssh.purpose.Purpose`
of its own and a test here.
"""

from __future__ import annotations

from pairpod.auth import Authenticator
from pairpod.sharing.service import SharingService, split_control_username
from pairpod.sharing.tokens import looks_like_join_username
from pairpod.ssh.host import HostPurpose, split_host_username
from pairpod.ssh.join import JoinPurpose
from pairpod.ssh.login import ControlPurpose, LoginPurpose
from pairpod.ssh.purpose import ConnectionSide, Purpose


def choose_purpose(
    connection: ConnectionSide, username: str, *, sharing: SharingService, authenticator: Authenticator
) -> Purpose:
    """The purpose ``username`` asks for: a join link, the owner's controls, a host, or a login."""
    if looks_like_join_username(username):
        return JoinPurpose(connection, sharing, authenticator)
    owner = split_control_username(username)
    if owner is not None:
        return ControlPurpose(connection, sharing, owner)
    host = split_host_username(username)
    if host is not None and sharing.hosted is not None:
        return HostPurpose(connection, sharing.hosted, host)
    return LoginPurpose(connection, sharing)
