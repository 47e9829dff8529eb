"""What admin reads of the gateway (read-only protocols), and how ``admin list`` prints.

Admin sits below the SSH layer: the SSH gateway and its connections satisfy
these protocols; nothing here imports them.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

from pairpod.backends.base import Backend, Environment, ProcessSpec
from pairpod.config import Config
from pairpod.sharing.service import SharingService
from pairpod.traffic import Traffic


class ChannelView(Protocol):
    """A session channel running a program, as admin sees it."""

    @property
    def kind(self) -> str | None:
        """``shell``, ``exec`` or ``subsystem`` once the program runs."""

    @property
    def spec(self) -> ProcessSpec | None:
        """What runs, once it runs."""

    @property
    def shared(self) -> Any:
        """The shared session this channel owns (None: not shared)."""

    async def terminate(self, message: str) -> None:
        """End the session, telling the user ``message``."""


class ConnectionView(Protocol):
    """A client connection, as admin sees it."""

    @property
    def conn_id(self) -> str:
        """The connection's id."""

    @property
    def remote_addr(self) -> str:
        """The client's address."""

    @property
    def traffic(self) -> Traffic:
        """Bytes in and out so far."""

    @property
    def display_user(self) -> str | None:
        """Who it is, fit to show."""

    def ready_environment(self) -> Environment | None:
        """The environment, once made."""

    def open_channels(self) -> Sequence[ChannelView]:
        """The session channels open now."""

    def log_fields(self, **extra: Any) -> dict[str, Any]:
        """Logging fields naming the connection."""

    async def shutdown(self, message: str) -> None:
        """End the sessions and disconnect."""


class ClusterView(Protocol):
    """A replica's connection to the cluster's shared store, as admin sees it."""

    @property
    def up(self) -> bool:
        """Whether the store is reachable now (False: the replica works alone)."""


class GatewayView(Protocol):
    """The running gateway, as admin sees it."""

    @property
    def config(self) -> Config:
        """The gateway's config."""

    @property
    def backend(self) -> Backend:
        """Its backend (name, readiness check)."""

    @property
    def sharing(self) -> SharingService:
        """Its shared sessions."""

    @property
    def connections(self) -> Collection[ConnectionView]:
        """Live connections."""

    @property
    def cluster(self) -> ClusterView | None:
        """Its cluster store (None: a single gateway)."""


def rfc3339(stamp: float) -> str:
    """A Unix time as RFC 3339 in UTC, to the second."""
    return datetime.fromtimestamp(stamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def describe(connection: ConnectionView) -> dict[str, Any]:
    """One connection as a JSON-able mapping (the admin socket's ``list`` answer)."""
    environment = connection.ready_environment()
    channels = []
    shared = []
    for channel in connection.open_channels():
        spec = channel.spec
        if channel.kind is None or spec is None:
            continue  # not started yet
        channels.append(
            {"kind": channel.kind, "command": spec.command or spec.subsystem, "pty": spec.pty is not None}
        )
        if channel.shared is not None:
            session = channel.shared
            shared.append(
                {
                    "session": session.session_id,
                    "participants": [
                        {"id": p.id, "name": p.name, "role": "owner" if p.owner else p.access.label}
                        for p in session.terminal.participants()
                    ],
                }
            )
    traffic = connection.traffic
    return {
        "id": connection.conn_id,
        "user": connection.display_user,
        "remote": connection.remote_addr,
        "environment": environment.description if environment is not None else None,
        "channels": channels,
        "shared": shared,
        "started": rfc3339(traffic.started),
        "bytes_in": traffic.received,
        "bytes_out": traffic.sent,
    }


def format_connections(rows: list[dict[str, Any]]) -> str:
    """The table ``pairpod admin list`` prints: a line per connection, details under it."""
    if not rows:
        return "no connections\n"
    header = ("CONNECTION", "USER", "REMOTE", "STARTED", "BYTES IN", "BYTES OUT", "ENVIRONMENT")
    table = [header] + [
        (
            row["id"],
            row["user"] or "-",
            row["remote"],
            row["started"],
            str(row["bytes_in"]),
            str(row["bytes_out"]),
            row["environment"] or "-",
        )
        for row in rows
    ]
    widths = [max(len(line[i]) for line in table) for i in range(len(header) - 1)]
    lines = []
    for index, line in enumerate(table):
        lines.append(
            "  ".join([*(cell.ljust(w) for cell, w in zip(line, widths, strict=False)), line[-1]]).rstrip()
        )
        if index == 0:
            continue
        row = rows[index - 1]
        for channel in row["channels"]:
            what = channel["kind"] + (" (pty)" if channel["pty"] else "")
            if channel["command"]:
                what += f": {channel['command']}"
            lines.append(f"    channel {what}")
        for session in row["shared"]:
            people = ", ".join(f"{p['name']} ({p['role']})" for p in session["participants"])
            lines.append(f"    shared session {session['session']}: {people}")
    return "\n".join(lines) + "\n"
