"""What a channel is given of its connection: a context, never the Connection itself."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import asyncssh

from pairpod.auth import LoginPermissions
from pairpod.backends.base import Environment, ExitStatus, Process, ProcessSpec
from pairpod.config import Config
from pairpod.ssh.relay import Relay
from pairpod.tasks import TaskGroup
from pairpod.traffic import Traffic


class StatusWriter(Protocol):
    """Where progress lines go while the environment is being made."""

    def write_status(self, text: str) -> None:
        """Show one ``pairpod: ...`` line."""


class RelayFactory(Protocol):
    """Chooses what a started program's channel drives (direct, or shared)."""

    def __call__(
        self,
        process: Process,
        spec: ProcessSpec,
        chan: asyncssh.SSHServerChannel[bytes],
        client_env: Mapping[str, str],
    ) -> Relay:
        """The relay between ``chan`` and ``process``."""


@dataclass(frozen=True)
class ChannelContext:
    """What any channel of a connection needs of it (and no more)."""

    config: Config
    tasks: TaskGroup
    traffic: Traffic
    log_fields: Callable[..., dict[str, Any]]
    #: The channel is over: its slot on the connection is free.
    closed: Callable[[asyncssh.SSHServerSession[bytes]], None]


@dataclass(frozen=True)
class SessionContext(ChannelContext):
    """What a login's session channel needs besides: its process and where events go."""

    permissions: LoginPermissions
    #: SSH_CONNECTION and SSH_CLIENT, set for every process (never the client's say).
    ssh_env: Mapping[str, str]
    #: The connection's environment; a waiting channel is shown progress lines meanwhile.
    environment: Callable[[StatusWriter | None], Awaitable[Environment]]
    #: The process with the connection's activity clock and recording attached.
    observe: Callable[[Process, ProcessSpec, Environment], Process]
    relay: RelayFactory
    #: Told when a program starts (kind, command, pty) and when the channel exits.
    started: Callable[[str, str | None, bool], None]
    exited: Callable[[ExitStatus], None]
