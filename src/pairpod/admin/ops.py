"""The gateway's operations side: metrics, the audit log, the admin listener and socket.

The SSH layer tells :class:`Operations` what happens (one call per event);
this module turns that into counters and audit lines and serves the
operator's endpoints. Everything is off unless configured: with neither
``admin.listen`` nor ``audit.file`` set, each call is a check and a return.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from pairpod.admin.audit import AuditLog
from pairpod.admin.control import AdminSocket
from pairpod.admin.http import AdminHTTP
from pairpod.admin.metrics import GatewayState, Metrics
from pairpod.admin.view import ConnectionView, GatewayView, describe
from pairpod.auth.result import AuthDecision
from pairpod.backends.base import Environment, ExitStatus, Identity
from pairpod.errors import PairpodError
from pairpod.log import get_logger
from pairpod.parts import StartedParts
from pairpod.traffic import Traffic

log = get_logger("admin")

#: What a user whose connection an administrator ends is told (after ``pairpod: ``).
ENDED_BY_ADMIN = "ended by an administrator"
# After its sessions are ended, how long a client gets to leave by itself (and
# show the user why) before the gateway disconnects it.
END_GRACE = 5.0


class Operations:
    """Metrics, audit and admin endpoints of one Gateway."""

    def __init__(self, gateway: GatewayView) -> None:
        self._gateway = gateway
        config = gateway.config
        # What closed connections moved (live ones are summed at each scrape).
        self._closed = Traffic()
        # Connections an administrator is ending, set when they are gone.
        self._ending: dict[str, asyncio.Event] = {}
        self.metrics = Metrics(self._state) if config.admin.listen is not None else None
        self.audit = AuditLog(config.audit.file) if config.audit.file is not None else None
        self.http = (
            AdminHTTP(config.admin.listen, self.metrics, gateway.backend.check)
            if config.admin.listen is not None and self.metrics is not None
            else None
        )
        self.socket = (
            AdminSocket(config.admin.socket, self._admin_request) if config.admin.socket is not None else None
        )
        #: What start() started, stopped in reverse by a failed start or stop().
        self._parts = StartedParts()

    async def start(self) -> None:
        """Open the audit log, listen, create the admin socket (ConfigError on failure).

        A failure stops what had started before it, as :meth:`stop` would.
        """
        parts = self._parts
        named = (("audit", self.audit), ("admin_http", self.http), ("admin_socket", self.socket))
        try:
            for name, part in named:
                if part is not None:
                    await parts.start(name, part.start, part.stop)
        except BaseException:
            await parts.stop_all()
            raise

    def serving(self) -> None:
        """The gateway listens for SSH: ``/readyz`` may answer ready from now on."""
        if self.http is not None:
            self.http.serving = True

    def draining(self) -> None:
        """The gateway stopped accepting at SIGTERM: ``/readyz`` answers 503 from now on."""
        if self.http is not None:
            self.http.draining = True

    async def stop(self) -> None:
        """Stop serving; write the last audit lines (the audit log was started first)."""
        await self._parts.stop_all()

    def _audit(self, event: str, conn: str | None, **values: Any) -> None:
        if self.audit is not None:
            self.audit.write(event, conn, **values)

    # --- events ---------------------------------------------------------------------

    def connection_opened(self, connection: ConnectionView, client: str | None) -> None:
        """A client connected."""
        if self.metrics is not None:
            self.metrics.connections.inc()
        self._audit("connect", connection.conn_id, remote=connection.remote_addr, client=client)

    def connection_closed(self, connection: ConnectionView, reason: str) -> None:
        """A client went away (or was sent away)."""
        if (gone := self._ending.get(connection.conn_id)) is not None:
            gone.set()
        traffic = connection.traffic
        self._closed.received += traffic.received
        self._closed.sent += traffic.sent
        self._audit(
            "disconnect",
            connection.conn_id,
            user=connection.display_user,
            reason=reason,
            bytes_in=traffic.received,
            bytes_out=traffic.sent,
            seconds=round(time.time() - traffic.started, 3),
        )

    def auth_decision(self, decision: AuthDecision) -> None:
        """The auth chain decided about a credential (see AuthDecision)."""
        result = "success" if decision.accepted else "failure"
        if self.metrics is not None:
            self.metrics.auth_attempts.labels(decision.method, result).inc()
        self._audit(
            "auth",
            decision.conn_id,
            result=result,
            method=decision.method,
            user=decision.username,
            identity=decision.authenticated_as,
            source=decision.source,
            remote=decision.address,
            key=decision.key,
            reason=None if decision.accepted else decision.reason,
        )

    def environment_ready(self, identity: Identity, environment: Environment, seconds: float) -> None:
        """A connection's environment is ready, ``seconds`` after it was asked for."""
        start = "warm" if environment.from_pool else "cold"
        backend = self._gateway.backend.name
        if self.metrics is not None:
            self.metrics.environment_start.labels(backend, start).observe(seconds)
        self._audit(
            "environment.ready",
            identity.conn_id,
            user=identity.username,
            environment=environment.description,
            backend=backend,
            start=start,
            seconds=round(seconds, 3),
        )

    def environment_failed(self, identity: Identity, error: PairpodError) -> None:
        """A connection's environment could not be made."""
        reason = type(error).__name__
        if self.metrics is not None:
            self.metrics.environment_errors.labels(reason).inc()
        self._audit(
            "environment.failed",
            identity.conn_id,
            user=identity.username,
            backend=self._gateway.backend.name,
            reason=reason,
            error=error.operator_message,
        )

    def channel_started(self, connection: ConnectionView, kind: str, command: str | None, pty: bool) -> None:
        """A session channel's program started in the environment."""
        self._audit(
            "channel.start",
            connection.conn_id,
            user=connection.display_user,
            kind=kind,
            command=command,
            pty=pty,
        )

    def channel_exited(self, connection: ConnectionView, status: ExitStatus) -> None:
        """A session channel's program ended (or the channel was refused)."""
        self._audit(
            "channel.exit",
            connection.conn_id,
            user=connection.display_user,
            exit_code=status.code,
            signal=status.signal,
        )

    def sharing(self, connection: ConnectionView, event: str, **values: Any) -> None:
        """A sharing event (``join``, ``leave``, ``kick``, ``revoke``, ``mint``)."""
        self._audit(f"share.{event}", connection.conn_id, user=connection.display_user, **values)

    def web_sharing(self, event: str, **values: Any) -> None:
        """A sharing event of a browser (``join``, ``leave``): no SSH connection behind it."""
        self._audit(f"share.{event}", None, medium="web", **values)

    # --- scrape and admin socket --------------------------------------------------------

    def _state(self) -> GatewayState:
        connections = list(self._gateway.connections)
        sessions = list(self._gateway.sharing.registry)
        cluster = self._gateway.cluster
        return GatewayState(
            connections=len(connections),
            channels=sum(len(c.open_channels()) for c in connections),
            shared_sessions=len(sessions),
            share_participants=sum(len(s.terminal.participants()) for s in sessions),
            bytes_received=self._closed.received + sum(c.traffic.received for c in connections),
            bytes_sent=self._closed.sent + sum(c.traffic.sent for c in connections),
            cluster_redis_up=cluster.up if cluster is not None else None,
        )

    async def _admin_request(self, request: dict[str, Any]) -> dict[str, Any]:
        command = request.get("command")
        if command == "list":
            connections = sorted(self._gateway.connections, key=lambda c: c.traffic.started)
            return {"connections": [describe(c) for c in connections]}
        if command == "end":
            wanted = request.get("connection")
            found = [c for c in self._gateway.connections if c.conn_id == wanted]
            if not found:
                return {"error": f"no connection {wanted!r}"}
            await self._end(found[0])
            return {"ended": found[0].conn_id}
        return {"error": f"unknown command {command!r}"}

    async def _end(self, connection: ConnectionView) -> None:
        """End a connection: its sessions first, so the client closes by itself.

        A client disconnected at once may exit before it has shown the
        sessions' last words; one whose sessions closed normally shows them.
        """
        log.info("admin.end", extra=connection.log_fields())
        self._audit("admin.end", connection.conn_id, user=connection.display_user)
        gone = self._ending.setdefault(connection.conn_id, asyncio.Event())
        try:
            channels = connection.open_channels()
            await asyncio.gather(
                *(channel.terminate(ENDED_BY_ADMIN) for channel in channels), return_exceptions=True
            )
            if channels:  # a client with no session has nothing to show: no wait
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(gone.wait(), END_GRACE)
            # Whatever is left (a multiplexing client, a joiner), then the environment.
            await connection.shutdown(ENDED_BY_ADMIN)
        finally:
            self._ending.pop(connection.conn_id, None)
