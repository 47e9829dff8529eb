"""What authentication hands to the rest of pairpod: verdicts, permissions, results."""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from pairpod.backends.base import Identity
from pairpod.config import Config

_ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def is_env_name(name: object) -> bool:
    """Whether ``name`` can be an environment variable name (``[A-Za-z_][A-Za-z0-9_]*``)."""
    return isinstance(name, str) and _ENV_NAME_RE.fullmatch(name) is not None


def frozen_map(values: Mapping[str, str] | None = None) -> Mapping[str, str]:
    """A read-only copy, so a result shared between tasks cannot be changed by one of them."""
    return MappingProxyType(dict(values or {}))


class Outcome(enum.Enum):
    """What one authenticator says about one credential."""

    ALLOW = "allow"
    DENY = "deny"
    ABSTAIN = "abstain"


@dataclass(frozen=True)
class LoginPermissions:
    """What the login may do, from authorized_keys options or certificate extensions.

    The session layer must honour these for public-key logins: pairpod matches
    keys itself, so AsyncSSH does not know about ``command=`` or ``no-pty``.
    (For certificates AsyncSSH enforces the same things itself as well.)
    """

    forced_command: str | None = None
    environment: Mapping[str, str] = field(default_factory=frozen_map, repr=False)
    pty: bool = True
    port_forwarding: bool = True
    agent_forwarding: bool = True
    x11_forwarding: bool = True
    user_rc: bool = True

    @classmethod
    def from_certificate(cls, get_option: Callable[[str], object]) -> LoginPermissions:
        """Permissions of a certificate login, read through ``conn.get_certificate_option``.

        OpenSSH certificates grant a permission only when its ``permit-*``
        extension is present, so a missing extension means "not allowed".
        """
        command = get_option("force-command")
        return cls(
            forced_command=command if isinstance(command, str) else None,
            pty=bool(get_option("permit-pty")),
            port_forwarding=bool(get_option("permit-port-forwarding")),
            agent_forwarding=bool(get_option("permit-agent-forwarding")),
            x11_forwarding=bool(get_option("permit-X11-forwarding")),
            user_rc=bool(get_option("permit-user-rc")),
        )


@dataclass(frozen=True)
class MetadataValue:
    """One metadata entry of a ContainerSSH webhook answer."""

    value: str = field(repr=False)
    sensitive: bool = False

    def __repr__(self) -> str:
        # Even a debug print of a result must not show a sensitive value.
        shown = "<sensitive>" if self.sensitive else repr(self.value)
        return f"MetadataValue({shown}, sensitive={self.sensitive})"


@dataclass(frozen=True)
class FileValue:
    """One ``files`` entry of a ContainerSSH webhook answer: a file to place in the environment."""

    content: bytes = field(repr=False)
    sensitive: bool = False


@dataclass(frozen=True)
class LoginValues:
    """What webhooks attach to a login (ContainerSSH's metadata, environment and files)."""

    metadata: Mapping[str, MetadataValue] = field(default_factory=dict, repr=False)
    environment: Mapping[str, MetadataValue] = field(default_factory=dict, repr=False)
    files: Mapping[str, FileValue] = field(default_factory=dict, repr=False)

    def over(self, base: LoginValues) -> LoginValues:
        """These values merged over ``base`` (entry by entry; these win)."""
        return LoginValues(
            {**base.metadata, **self.metadata},
            {**base.environment, **self.environment},
            {**base.files, **self.files},
        )

    def memo_key(self) -> tuple[object, ...]:
        """A hashable key of all the values, for per-connection memos of webhook answers."""
        return (
            tuple(sorted((k, v.value, v.sensitive) for k, v in self.metadata.items())),
            tuple(sorted((k, v.value, v.sensitive) for k, v in self.environment.items())),
            tuple(sorted((k, v.content, v.sensitive) for k, v in self.files.items())),
        )


@dataclass(frozen=True)
class Verdict:
    """One authenticator's answer about one credential.

    ``source`` names the authenticator (``github(alice)``,
    ``auth.users.alice.password_hash``, ``webhook``...); ``reason`` says why,
    in words fit for the log (never the secret).
    """

    outcome: Outcome
    source: str
    reason: str
    authenticated_as: str | None = None
    permissions: LoginPermissions = field(default_factory=LoginPermissions)
    environment: Mapping[str, MetadataValue] = field(default_factory=dict, repr=False)
    metadata: Mapping[str, MetadataValue] = field(default_factory=dict, repr=False)
    files: Mapping[str, FileValue] = field(default_factory=dict, repr=False)

    @property
    def values(self) -> LoginValues:
        """The metadata, environment and files the login brought."""
        return LoginValues(self.metadata, self.environment, self.files)

    @classmethod
    def allow(cls, source: str, reason: str, **extra: object) -> Verdict:
        """An allow verdict."""
        return cls(Outcome.ALLOW, source, reason, **extra)  # type: ignore[arg-type]

    @classmethod
    def deny(cls, source: str, reason: str) -> Verdict:
        """A deny verdict: the chain stops and the credential is refused."""
        return cls(Outcome.DENY, source, reason)

    @classmethod
    def abstain(cls, source: str, reason: str) -> Verdict:
        """No opinion: the chain asks the next authenticator."""
        return cls(Outcome.ABSTAIN, source, reason)


@dataclass(frozen=True)
class AuthResult:
    """A completed login: everything the session layer needs to know.

    ``username`` is the SSH login name; ``authenticated_as`` the name the
    authenticator vouched for (a webhook's ``authenticatedUsername``, else the
    username). ``env`` holds the variables to add to every process of the
    connection (authorized_keys ``environment=``, webhook environment and
    metadata); nothing logs their values. ``config`` is the effective config
    of this connection, with the config webhook's overrides merged and
    validated. ``files`` are the webhooks'
    files (path -> content), placed in the environment before any process.
    """

    username: str
    authenticated_as: str
    method: str
    source: str
    config: Config = field(repr=False)
    permissions: LoginPermissions = field(default_factory=LoginPermissions)
    env: Mapping[str, str] = field(default_factory=frozen_map, repr=False)
    key_fingerprint: str | None = None
    files: Mapping[str, FileValue] = field(default_factory=dict, repr=False)

    def identity(self, conn_id: str, remote_addr: str) -> Identity:
        """The backend Identity of this login (named by ``authenticated_as``)."""
        return Identity(
            username=self.authenticated_as,
            conn_id=conn_id,
            remote_addr=remote_addr,
            config=self.config,
            env=self.env,
            files=MappingProxyType({path: item.content for path, item in self.files.items()}),
        )


@dataclass(frozen=True)
class AuthDecision:
    """A decided login attempt, for metrics and the audit log (never the secret).

    ``accepted`` is True only for the login that completed; every refused
    credential is one decision with ``accepted`` False.
    """

    conn_id: str
    address: str
    method: str
    username: str
    accepted: bool
    source: str
    reason: str | None = None
    authenticated_as: str | None = None
    key: str | None = None


AuthObserver = Callable[[AuthDecision], None]
"""Told each :class:`AuthDecision` as it is made."""
