"""Connections whose username is a join link: a joiner of a shared terminal.

Authentication is the link's (see :mod:`pairpod.ssh.join_auth`); an
admitted joiner's channels attach to the live Terminal and get no
environment.
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from typing import Any

import asyncssh

from pairpod.auth import Authenticator
from pairpod.sharing.service import SharingService
from pairpod.ssh.join_auth import Admitted, JoinAuth
from pairpod.ssh.joiner import ViewerSession
from pairpod.ssh.purpose import ConnectionSide, Purpose


class JoinPurpose(Purpose):
    """A joiner: a key (or, for an open session, the link alone) admits them."""

    def __init__(
        self, connection: ConnectionSide, sharing: SharingService, authenticator: Authenticator
    ) -> None:
        self._connection = connection
        address = connection.remote_addr.rsplit(":", 1)[0].strip("[]")
        self._auth = JoinAuth(sharing, authenticator, address, connection.send_banner, connection.log_fields)
        self._admitted: Admitted | None = None

    def begin_auth(self, username: str) -> bool:
        """A join link authenticates like any login."""
        self._auth.begin(username)
        return True

    def public_key_auth_supported(self) -> bool:
        """Always offered: a key proves an identity the owner named."""
        return True

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> Awaitable[bool]:
        """Ask the join check about ``key``."""
        return self._auth.validate_public_key(key)

    def kbdint_auth_supported(self) -> bool:
        """Always offered, with no prompt: an open session's link alone admits."""
        return True

    def get_kbdint_challenge(self, username: str, lang: str, submethods: str) -> Any:
        """No prompt."""
        return self._auth.kbdint_challenge()

    def validate_kbdint_response(self, username: str, responses: Sequence[str]) -> Any:
        """Admit the holder of an open session's link."""
        return self._auth.validate_kbdint(responses)

    def auth_completed(self) -> None:
        """Admitted by the join check, or denied (not admitted by us)."""
        self._admitted = self._auth.admitted
        if self._admitted is None:
            self._connection.deny()

    def open_session(self) -> asyncssh.SSHServerSession[bytes]:
        """A channel attached to the shared Terminal."""
        if self._admitted is None:
            return super().open_session()
        return ViewerSession(
            self._connection.channel_context(),
            self._admitted.session,
            self._admitted.name or "guest",
            self._connection.sharing_event,
        )

    def display_user(self, username: str | None) -> str | None:
        """The joiner's name, never their join token."""
        if self._admitted is None:
            return "(joining by link)"  # not admitted (yet): the link may be anything
        return f"{self._admitted.name or 'guest'} (joined {self._admitted.access.label})"
