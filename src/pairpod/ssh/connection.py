"""One client connection: admission, its purpose, its Environment, its channels.

What the connection is for (a login, a joiner, the owner's controls) is a
:class:`~pairpod.ssh.purpose.Purpose` chosen when authentication begins;
this class keeps what every kind shares.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Awaitable, Coroutine, Sequence
from typing import Any, Protocol

import asyncssh

from pairpod.admin import Operations
from pairpod.auth import Authenticator, AuthResult, ConnectionAuth, LoginPermissions
from pairpod.backends import Environment, Identity, StatusCallback
from pairpod.backends.base import Process, ProcessSpec
from pairpod.backends.observed import ObservedProcess, ProcessObserver
from pairpod.config import Config
from pairpod.env_limits import EnvironmentLimits
from pairpod.errors import BackendError
from pairpod.log import fields, get_logger
from pairpod.recording import Recorder, SessionInfo
from pairpod.session_limits import ActivityClock, SessionLimits, enforce
from pairpod.sharing.service import SharingService
from pairpod.ssh.admission import Admission, Refusal, Ticket
from pairpod.ssh.channel import open_session_channel
from pairpod.ssh.context import ChannelContext, RelayFactory, SessionContext, StatusWriter
from pairpod.ssh.kinds import PurposeChooser
from pairpod.ssh.purpose import Purpose
from pairpod.ssh.session import ChannelSession, ssh_connection_env
from pairpod.ssh.transport import tune_transport
from pairpod.tasks import TaskGroup
from pairpod.traffic import Traffic

log = get_logger("server")

# How long an ended connection waits for the client to hang up before disconnecting it.
_CLIENT_HANGUP_WAIT = 1.0
# Progress lines kept for a channel that starts waiting late.
_PROGRESS_KEPT = 5


class Services(Protocol):
    """What a connection uses of the gateway (:class:`pairpod.ssh.gateway.Gateway`)."""

    config: Config
    admission: Admission
    authenticator: Authenticator
    sharing: SharingService
    ops: Operations
    recorder: Recorder
    environment_limits: EnvironmentLimits
    connections: set[Connection]
    choose_purpose: PurposeChooser

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run a gateway-level task (a cleanup that must finish before shutdown)."""

    async def open_environment(
        self, identity: Identity, *, status: StatusCallback | None = None
    ) -> Environment:
        """Ask the backend for a connection's environment."""


class Connection(asyncssh.SSHServer):
    """One client TCP connection: authentication, its Environment, its channels."""

    def __init__(self, gateway: Services) -> None:
        self.gateway = gateway
        self.config = gateway.config
        self.conn_id = secrets.token_hex(6)
        self.tasks = TaskGroup()
        self.permissions = LoginPermissions()
        self._auth_state: ConnectionAuth | None = None
        self.username: str | None = None
        self.remote_addr = "?"
        self.traffic = Traffic()
        # SSH_CONNECTION and SSH_CLIENT for every process of the connection.
        self.ssh_env: dict[str, str] = {}
        self._conn: asyncssh.SSHServerConnection | None = None
        # Every open channel (joiners' and control channels count towards
        # ssh.max_sessions too).
        self._channels: set[asyncssh.SSHServerSession[bytes]] = set()
        # Its place among unauthenticated connections (None: dropped at once).
        self._ticket: Ticket | None = None
        self._environment: asyncio.Task[Environment] | None = None
        # Progress lines while the environment is being made (an image pull), and
        # the channels waiting for it that should see them.
        self._progress: list[str] = []
        self._waiting: set[StatusWriter] = set()
        self._cleanup: asyncio.Future[None] | None = None
        # What this connection is for (None until authentication begins).
        self._purpose: Purpose | None = None
        self._had_channel = False
        self.activity = ActivityClock()

    def log_fields(self, **extra: Any) -> dict[str, Any]:
        """Logging fields naming this connection, user and address."""
        # The purpose's name for the user: a join link's username is a secret, never logged.
        return fields(conn=self.conn_id, user=self.display_user, remote=self.remote_addr, **extra)

    # --- connection lifecycle -----------------------------------------------------

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        """A client connected: admitted (see pairpod.ssh.admission) or dropped at once."""
        self._conn = conn
        peer = conn.get_extra_info("peername") or ("?", 0)
        host = peer[0]
        self.remote_addr = f"[{host}]:{peer[1]}" if ":" in str(host) else f"{host}:{peer[1]}"
        ticket = self.gateway.admission.admit(str(host))
        if isinstance(ticket, Refusal):
            # Warnings are rate-limited in the log: a flood is summarised, not copied.
            log.warning("connection.refused", extra=fields(remote=self.remote_addr, reason=ticket.reason))
            # After AsyncSSH's own connection_made has returned: no key exchange.
            asyncio.get_running_loop().call_soon(conn.abort)
            return
        self._ticket = ticket
        self._auth_state = self.gateway.authenticator.connection(conn, self.conn_id)
        tune_transport(conn)
        self.ssh_env = ssh_connection_env(conn.get_extra_info("peername"), conn.get_extra_info("sockname"))
        self.gateway.connections.add(self)
        log.info("connection.open", extra=self.log_fields(client=conn.get_extra_info("client_version")))
        self.gateway.ops.connection_opened(self, conn.get_extra_info("client_version"))

    def connection_lost(self, exc: Exception | None) -> None:
        """The client went away (or we closed): end everything it owns."""
        if self._ticket is None:
            return  # dropped at admission: nothing was started for it
        self._ticket.release()
        self.gateway.connections.discard(self)
        if self._auth_state is not None:
            self._auth_state.connection_lost()
        reason = str(exc) if exc else "closed"
        log.info("connection.closed", extra=self.log_fields(reason=reason))
        self.gateway.ops.connection_closed(self, reason)
        self.gateway.spawn(self.cleanup())

    async def cleanup(self) -> None:
        """Cancel the connection's tasks and remove its environment (once)."""
        if self._cleanup is None:
            self._cleanup = asyncio.ensure_future(self._do_cleanup())
        await asyncio.shield(self._cleanup)

    @property
    def cleaned_up(self) -> bool:
        """Whether this connection's cleanup (environment removal) has finished."""
        return self._cleanup is not None and self._cleanup.done()

    @property
    def has_environment(self) -> bool:
        """Whether an environment was asked for on this connection."""
        return self._environment is not None

    def environment_description(self) -> str | None:
        """The environment's description (a container id), once it exists."""
        env = self._environment
        if env is None or not env.done() or env.cancelled() or env.exception() is not None:
            return None
        return env.result().description

    async def _do_cleanup(self) -> None:
        await self.tasks.cancel_all()
        if self._environment is None:
            return
        if not self._environment.done():
            self._environment.cancel()
        with contextlib.suppress(BaseException):
            environment = await self._environment
            await environment.close()
            log.info("environment.closed", extra=self.log_fields(env=environment.description))
        self.gateway.environment_limits.release(self.conn_id)

    # --- what the admin view and metrics read -------------------------------------

    @property
    def display_user(self) -> str | None:
        """Who this connection is, fit to show: a joiner's name, never their join token."""
        if self._purpose is None:
            return self.username
        return self._purpose.display_user(self.username)

    def ready_environment(self) -> Environment | None:
        """The environment, once made (None while it is made, or when it failed)."""
        task = self._environment
        if task is None or not task.done() or task.cancelled() or task.exception() is not None:
            return None
        return task.result()

    def open_channels(self) -> list[ChannelSession]:
        """The session channels running programs, open now."""
        return [c for c in self._channels if isinstance(c, ChannelSession)]

    # --- authentication -----------------------------------------------------------

    # AsyncSSH's auth callbacks, answered by the connection's purpose.

    def begin_auth(self, username: str) -> bool:
        """Show the banner and choose what the connection is for."""
        self.username = username
        if self.config.banner:
            banner = self.config.banner
            self.send_banner(banner if banner.endswith("\n") else banner + "\n")
        # AsyncSSH calls this again when the client changes username: start afresh.
        self._purpose = self.gateway.choose_purpose(
            self, username, sharing=self.gateway.sharing, authenticator=self.gateway.authenticator
        )
        return self._purpose.begin_auth(username)

    @property
    def purpose(self) -> Purpose:
        """What the connection is for (AsyncSSH asks only after ``begin_auth``)."""
        if self._purpose is None:
            self._purpose = Purpose()  # deny by default
        return self._purpose

    def public_key_auth_supported(self) -> bool:
        """Whether the purpose offers publickey."""
        return self.purpose.public_key_auth_supported()

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> Awaitable[bool] | bool:
        """Ask the purpose about ``key``."""
        return self.purpose.validate_public_key(username, key)

    def validate_ca_key(self, username: str, key: asyncssh.SSHKey) -> Awaitable[bool] | bool:
        """Ask the purpose whether a certificate's CA is trusted for ``username``."""
        return self.purpose.validate_ca_key(username, key)

    def password_auth_supported(self) -> bool:
        """Whether the purpose offers password."""
        return self.purpose.password_auth_supported()

    def validate_password(self, username: str, password: str) -> Awaitable[bool] | bool:
        """Ask the purpose to check a password (never logged)."""
        return self.purpose.validate_password(username, password)

    def kbdint_auth_supported(self) -> bool:
        """Whether the purpose offers keyboard-interactive."""
        return self.purpose.kbdint_auth_supported()

    def get_kbdint_challenge(self, username: str, lang: str, submethods: str) -> Any:
        """The purpose's keyboard-interactive prompt."""
        return self.purpose.get_kbdint_challenge(username, lang, submethods)

    def validate_kbdint_response(self, username: str, responses: Sequence[str]) -> Any:
        """Check the answer to the prompt."""
        return self.purpose.validate_kbdint_response(username, responses)

    def auth_completed(self) -> None:
        """Authenticated: the purpose admits the client (or denies it)."""
        if self._ticket is not None:
            self._ticket.authenticated()
        self.purpose.auth_completed()

    # --- what purposes use (see pairpod.ssh.purpose.ConnectionSide) -----------------

    @property
    def auth(self) -> ConnectionAuth:
        """The connection's state in the auth chain."""
        assert self._auth_state is not None
        return self._auth_state

    def send_banner(self, text: str) -> None:
        """An auth banner to the client."""
        if self._conn is not None:
            self._conn.send_auth_banner(text)

    def deny(self) -> None:
        """Close the connection: deny by default."""
        if self._conn is not None:
            self._conn.close()

    def accept(self, result: AuthResult) -> None:
        """A login approved by the chain: its per-connection config, permissions and name."""
        self.config = result.config  # per-connection overrides (config webhook)
        self.permissions = result.permissions
        self.username = result.authenticated_as
        self.tasks.spawn(self._close_without_channel())

    def start_environment(self, result: AuthResult) -> None:
        """Start creating the environment while channels open; enforce session limits."""
        identity = result.identity(self.conn_id, self.remote_addr)
        self._environment = self.tasks.spawn(
            self.gateway.open_environment(identity, status=self._show_progress)
        )
        limits = SessionLimits.for_user(self.config, self.username)
        if limits.active:
            self.tasks.spawn(enforce(limits, self.activity, warn=self.notify, end=self._end_by_limit))

    def channel_context(self) -> ChannelContext:
        """What any channel of this connection needs."""
        return ChannelContext(
            config=self.config,
            tasks=self.tasks,
            traffic=self.traffic,
            log_fields=self.log_fields,
            closed=self.channel_closed,
        )

    def session_context(self, relay: RelayFactory) -> SessionContext:
        """What a session channel running a program needs."""
        ops = self.gateway.ops
        return SessionContext(
            config=self.config,
            tasks=self.tasks,
            traffic=self.traffic,
            log_fields=self.log_fields,
            closed=self.channel_closed,
            permissions=self.permissions,
            ssh_env=self.ssh_env,
            environment=self.environment,
            observe=self.observe,
            relay=relay,
            started=lambda kind, command, pty: ops.channel_started(self, kind, command, pty),
            exited=lambda status: ops.channel_exited(self, status),
        )

    def sharing_event(self, event: str, **values: Any) -> None:
        """Audit a sharing event of this connection."""
        self.gateway.ops.sharing(self, event, **values)

    def _end_by_limit(self, reason: str) -> None:
        log.info("connection.limit", extra=self.log_fields(reason=reason))
        # A gateway task: the shutdown cancels this connection's tasks, the caller's too.
        self.gateway.spawn(self.shutdown(reason))

    def notify(self, text: str) -> None:
        """Show every session of this connection one ``pairpod: ...`` line."""
        for channel in self.open_channels():
            channel.write_notice(text)

    def observe(self, process: Process, spec: ProcessSpec, environment: Environment) -> Process:
        """``process`` with this connection's activity clock and recording attached."""
        observers: list[ProcessObserver] = [self.activity]
        info = SessionInfo(
            user=self.username or "",
            conn_id=self.conn_id,
            remote_addr=self.remote_addr,
            environment=environment.description,
        )
        recording = self.gateway.recorder.observer(spec, info)
        if recording is not None:
            observers.append(recording)
        return ObservedProcess(process, observers)

    async def _close_without_channel(self) -> None:
        """Close the connection if it opens no channel within ``timeouts.first_channel``.

        An idle authenticated connection would otherwise hold its environment
        (a container, a pod) for as long as it likes.
        """
        limit = self.gateway.config.timeouts.first_channel
        await asyncio.sleep(limit)
        if not self._had_channel and self._conn is not None:
            log.info(
                "connection.no_channel",
                extra=self.log_fields(reason=f"no channel within timeouts.first_channel ({limit:g}s)"),
            )
            self._conn.disconnect(
                asyncssh.DISC_BY_APPLICATION, f"pairpod: no session opened within {limit:g}s"
            )

    def _show_progress(self, line: str) -> None:
        """A backend's progress line: to every waiting channel, and kept for later ones."""
        self._progress = [*self._progress[-(_PROGRESS_KEPT - 1) :], line]
        for channel in self._waiting:
            channel.write_status(line)

    async def environment(self, waiting: StatusWriter | None = None) -> Environment:
        """The connection's Environment (waits while it is being created).

        A ``waiting`` channel is shown the backend's progress lines meanwhile.
        """
        if self._environment is None:
            raise BackendError("no environment: not authenticated")
        if waiting is None or self._environment.done():
            return await asyncio.shield(self._environment)
        for line in self._progress:
            waiting.write_status(line)
        self._waiting.add(waiting)
        try:
            return await asyncio.shield(self._environment)
        finally:
            self._waiting.discard(waiting)

    # --- channels -----------------------------------------------------------------

    def session_requested(
        self,
    ) -> tuple[asyncssh.SSHServerChannel[bytes], asyncssh.SSHServerSession[bytes]]:
        """A new session channel, up to ``ssh.max_sessions`` at once (joiners' too).

        Every kind's channel keeps only the env requests the config allows (see
        :mod:`pairpod.ssh.channel`).
        """
        self._had_channel = True
        if len(self._channels) >= self.config.ssh.max_sessions:
            log.info(
                "channel.refused",
                extra=self.log_fields(reason=f"max_sessions ({self.config.ssh.max_sessions}) reached"),
            )
            raise asyncssh.ChannelOpenError(
                asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED,
                f"too many sessions on this connection (max {self.config.ssh.max_sessions})",
            )
        session = self.purpose.open_session()
        assert self._conn is not None
        chan = open_session_channel(self._conn, self.config.security, self.log_fields)
        self._channels.add(session)
        return chan, session

    def channel_closed(self, session: asyncssh.SSHServerSession[bytes]) -> None:
        """Forget a closed channel (its slot is free again)."""
        self._channels.discard(session)

    async def shutdown(self, message: str) -> None:
        """Tell each session's user ``message``, end the sessions, disconnect."""
        await asyncio.gather(*(s.terminate(message) for s in self.open_channels()), return_exceptions=True)
        if self._conn is not None:
            # Let the client hang up first: OpenSSH's client drops output it has not
            # printed yet (the notice just sent) when the server disconnects.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(self._conn.wait_closed()), _CLIENT_HANGUP_WAIT)
            self._conn.close()
            with contextlib.suppress(Exception):
                await self._conn.wait_closed()
        await self.cleanup()
