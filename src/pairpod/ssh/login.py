"""Connections authenticated by the auth chain: a user's login, and ``alice+ctl``.

A login gets an environment and session channels running programs in it
(relayed directly, or through a shared Terminal when sharing is asked for);
the control user gets the owner's sharing controls and never an environment.
"""

from __future__ import annotations

from collections.abc import Awaitable, Mapping, Sequence
from typing import Any

import asyncssh

from pairpod.auth import AuthResult
from pairpod.backends.base import Process, ProcessSpec, PtySpec
from pairpod.sharing.owner import OwnerRelay
from pairpod.sharing.service import SharingService
from pairpod.sharing.terminal import Terminal
from pairpod.ssh.control import ControlSession
from pairpod.ssh.purpose import ConnectionSide, Purpose
from pairpod.ssh.relay import DirectRelay, Relay
from pairpod.ssh.session import ChannelSession
from pairpod.ssh.sink import ChannelSink


class ChainPurpose(Purpose):
    """A purpose whose credentials the auth chain checks (as ``chain_name``, if given)."""

    def __init__(self, connection: ConnectionSide, chain_name: str | None = None) -> None:
        self._connection = connection
        self._chain_name = chain_name

    def _name(self, username: str) -> str:
        return self._chain_name if self._chain_name is not None else username

    def begin_auth(self, username: str) -> bool:
        """Ask the chain whether ``username`` needs authentication."""
        return self._connection.auth.begin_auth(self._name(username))

    def public_key_auth_supported(self) -> bool:
        """Offer publickey when any key source is configured."""
        return self._connection.auth.public_key_auth_supported()

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> Awaitable[bool]:
        """Ask the chain about ``key``."""
        return self._connection.auth.validate_public_key(self._name(username), key)

    def validate_ca_key(self, username: str, key: asyncssh.SSHKey) -> Awaitable[bool]:
        """Ask the chain whether a certificate's CA is trusted."""
        return self._connection.auth.validate_ca_key(self._name(username), key)

    def password_auth_supported(self) -> bool:
        """Offer password when passwords or a webhook are configured."""
        return self._connection.auth.password_auth_supported()

    def validate_password(self, username: str, password: str) -> Awaitable[bool]:
        """Ask the chain to check a password."""
        return self._connection.auth.validate_password(self._name(username), password)

    def kbdint_auth_supported(self) -> bool:
        """Offer keyboard-interactive (a password prompt) like password."""
        return self._connection.auth.kbdint_auth_supported()

    def get_kbdint_challenge(self, username: str, lang: str, submethods: str) -> Any:
        """The password prompt."""
        return self._connection.auth.get_kbdint_challenge(self._name(username), lang, submethods)

    def validate_kbdint_response(self, username: str, responses: Sequence[str]) -> Any:
        """Check the answer to the prompt."""
        return self._connection.auth.validate_kbdint_response(self._name(username), responses)

    def auth_completed(self) -> None:
        """Take the chain's approval, or deny (AsyncSSH accepted something it did not approve)."""
        result = self._connection.auth.auth_completed()
        if result is None:
            self._connection.deny()
            return
        self._connection.accept(result)
        self._approved(result)

    def _approved(self, result: AuthResult) -> None:
        """What this kind does once approved."""


class LoginPurpose(ChainPurpose):
    """A user's login: an environment, and session channels running programs in it."""

    def __init__(self, connection: ConnectionSide, sharing: SharingService) -> None:
        super().__init__(connection)
        self._sharing = sharing

    def _approved(self, result: AuthResult) -> None:
        self._connection.start_environment(result)

    def open_session(self) -> asyncssh.SSHServerSession[bytes]:
        """A session channel running a program in the environment."""
        return ChannelSession(self._connection.session_context(self._relay))

    def _relay(
        self,
        process: Process,
        spec: ProcessSpec,
        chan: asyncssh.SSHServerChannel[bytes],
        client_env: Mapping[str, str],
    ) -> Relay:
        """Shared when an interactive session asks for it, else direct."""
        if spec.pty is not None and not spec.subsystem:
            shared = self._share(process, spec.pty, chan, client_env)
            if shared is not None:
                return shared
        connection = self._connection
        return DirectRelay(process, chan.write, chan.write_stderr, connection.traffic, connection.log_fields)

    def _share(
        self,
        process: Process,
        pty: PtySpec,
        chan: asyncssh.SSHServerChannel[bytes],
        client_env: Mapping[str, str],
    ) -> OwnerRelay | None:
        """Put a Terminal between the process and the channel if sharing is asked for."""
        config = self._connection.config
        username = self._connection.username or ""
        try:
            request = self._sharing.share_request(config, username, client_env)
        except ValueError as error:
            chan.write_stderr(f"pairpod: not shared: {error}\r\n".encode())
            return None
        if request is None:
            return None
        terminal = Terminal(
            process,
            ChannelSink(chan, self._connection.traffic),
            owner_name=f"user:{username}",
            cols=pty.cols,
            rows=pty.rows,
            viewer_backlog=config.sharing.viewer_backlog,
        )
        session, banner = self._sharing.open_session(config, username, terminal, request)
        # Shown before the program's first output: none has been read yet.
        chan.write(banner.encode())
        return OwnerRelay(process, terminal, self._sharing, session)


class ControlPurpose(ChainPurpose):
    """``alice+ctl``: authenticates as ``alice``, gets the sharing controls, no environment."""

    def __init__(self, connection: ConnectionSide, sharing: SharingService, owner: str) -> None:
        super().__init__(connection, owner)
        self._sharing = sharing
        self._owner = owner

    def _approved(self, result: AuthResult) -> None:
        self._owner = result.authenticated_as

    def open_session(self) -> asyncssh.SSHServerSession[bytes]:
        """A control channel: runs one command and ends."""
        return ControlSession(
            self._connection.channel_context(), self._sharing, self._owner, self._connection.sharing_event
        )

    def display_user(self, username: str | None) -> str | None:
        """``alice+ctl``."""
        return f"{self._owner}+ctl"
