"""What a connection is for, chosen once when authentication begins.

Each :class:`Purpose` answers AsyncSSH's auth callbacks for its kind of
connection (what it offers, how it checks) and makes its session channels.
:func:`pairpod.ssh.kinds.choose_purpose` picks one by the username.
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from typing import Any, Protocol

import asyncssh

from pairpod.auth import AuthResult, ConnectionAuth
from pairpod.config import Config
from pairpod.ssh.context import ChannelContext, RelayFactory, SessionContext
from pairpod.traffic import Traffic


class ConnectionSide(Protocol):
    """What a purpose may use of its connection."""

    conn_id: str
    remote_addr: str
    config: Config
    #: The login name (after approval: the name the chain vouched for).
    username: str | None
    traffic: Traffic

    @property
    def auth(self) -> ConnectionAuth:
        """The connection's state in the auth chain."""

    def log_fields(self, **extra: Any) -> dict[str, Any]:
        """Logging fields naming the connection."""

    def send_banner(self, text: str) -> None:
        """An auth banner to the client."""

    def deny(self) -> None:
        """Close the connection: authentication ended without an approval of ours."""

    def accept(self, result: AuthResult) -> None:
        """A login approved by the chain: its config, permissions and name apply."""

    def start_environment(self, result: AuthResult) -> None:
        """Start making the login's environment (and enforcing its session limits)."""

    def channel_context(self) -> ChannelContext:
        """What any channel of the connection needs."""

    def session_context(self, relay: RelayFactory) -> SessionContext:
        """What a session channel running a program needs."""

    def sharing_event(self, event: str, **values: Any) -> None:
        """Audit a sharing event of this connection."""


class Purpose:
    """A kind of connection: its auth offers and its session factory.

    The defaults offer nothing and refuse everything (deny by default).
    """

    def begin_auth(self, username: str) -> bool:
        """Whether ``username`` must authenticate (AsyncSSH's ``begin_auth``)."""
        return True

    def public_key_auth_supported(self) -> bool:
        """Offer publickey?"""
        return False

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> Awaitable[bool] | bool:
        """Check a public key."""
        return False

    def validate_ca_key(self, username: str, key: asyncssh.SSHKey) -> Awaitable[bool] | bool:
        """Check a certificate's CA."""
        return False

    def password_auth_supported(self) -> bool:
        """Offer password?"""
        return False

    def validate_password(self, username: str, password: str) -> Awaitable[bool] | bool:
        """Check a password (never logged)."""
        return False

    def kbdint_auth_supported(self) -> bool:
        """Offer keyboard-interactive?"""
        return False

    def get_kbdint_challenge(self, username: str, lang: str, submethods: str) -> Any:
        """The keyboard-interactive prompt (False: none)."""
        return False

    def validate_kbdint_response(self, username: str, responses: Sequence[str]) -> Any:
        """Check the answers to the prompt."""
        return False

    def auth_completed(self) -> None:
        """AsyncSSH accepted the client: admit it (or deny, closing the connection)."""

    def open_session(self) -> asyncssh.SSHServerSession[bytes]:
        """A new session channel of this kind."""
        raise asyncssh.ChannelOpenError(asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED, "not authenticated")

    def display_user(self, username: str | None) -> str | None:
        """Who the connection is, fit to show (admin list, audit)."""
        return username
