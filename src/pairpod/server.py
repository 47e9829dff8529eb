"""The SSH server: listens, authenticates, and gives each connection an Environment.

It owns AsyncSSH's options and maps SSH requests to the channel handler; it
knows nothing about Docker or Kubernetes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import time
from collections.abc import Awaitable, Coroutine, Sequence
from typing import Any

import asyncssh

from pairpod.admin import Operations
from pairpod.admission import Admission, Refusal, Ticket
from pairpod.auth import Authenticator, ConnectionAuth, LoginPermissions
from pairpod.backends import Backend, Environment, Identity, StatusCallback, create_backend
from pairpod.backends.base import Process, ProcessSpec
from pairpod.backends.files import place_files
from pairpod.backends.observed import ObservedProcess, ProcessObserver
from pairpod.channel import ChannelSession, ssh_connection_env
from pairpod.config import Config
from pairpod.env_limits import EnvironmentLimits
from pairpod.errors import BackendError, ConfigError, PairpodError
from pairpod.hostkeys import load_host_keys, restrict_algorithms
from pairpod.log import fields, get_logger
from pairpod.proxy import ProxyProtocolListener
from pairpod.recording import Recorder, SessionInfo
from pairpod.session_limits import ActivityClock, SessionLimits, enforce
from pairpod.sharing.channels import ControlSession, ViewerSession
from pairpod.sharing.join_auth import JoinAuth
from pairpod.sharing.service import SharingService, split_control_username
from pairpod.sharing.terminal import Terminal
from pairpod.sharing.tokens import Access, SharedSession, looks_like_join_username
from pairpod.shutdown import drain
from pairpod.ssh_requests import SERVER_VERSION
from pairpod.ssh_transport import tune_transport
from pairpod.tasks import TaskGroup
from pairpod.traffic import Traffic

log = get_logger("server")

# How long an ended connection waits for the client to hang up before disconnecting it.
_CLIENT_HANGUP_WAIT = 1.0
# Progress lines kept for a channel that starts waiting late.
_PROGRESS_KEPT = 5


class Connection(asyncssh.SSHServer):
    """One client TCP connection: authentication, its Environment, its channels."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.config = gateway.config
        self.conn_id = secrets.token_hex(6)
        self.tasks = TaskGroup()
        self.permissions = LoginPermissions()
        self.auth: ConnectionAuth | None = None
        self.username: str | None = None
        self.remote_addr = "?"
        self.traffic = Traffic()
        # SSH_CONNECTION and SSH_CLIENT for every process of the connection.
        self.ssh_env: dict[str, str] = {}
        self._conn: asyncssh.SSHServerConnection | None = None
        self._channels: set[ChannelSession] = set()
        # Joiners' and control channels: they count towards ssh.max_sessions too.
        self._side_channels: set[asyncssh.SSHServerSession[bytes]] = set()
        # Its place among unauthenticated connections (None: dropped at once).
        self._ticket: Ticket | None = None
        self._environment: asyncio.Task[Environment] | None = None
        # Progress lines while the environment is being made (an image pull), and
        # the channels waiting for it that should see them.
        self._progress: list[str] = []
        self._waiting: set[ChannelSession] = set()
        self._cleanup: asyncio.Future[None] | None = None
        # What this connection is for: a user's environment, joining a shared
        # terminal (by link), or the owner's sharing controls (``alice+ctl``).
        self._join: tuple[Access, SharedSession[Terminal]] | None = None
        self._join_name: str | None = None
        self._join_auth: JoinAuth | None = None
        self._control_owner: str | None = None
        self._had_channel = False
        self.activity = ActivityClock()

    def log_fields(self, **extra: Any) -> dict[str, Any]:
        """Logging fields naming this connection, user and address."""
        return fields(conn=self.conn_id, user=self.username, remote=self.remote_addr, **extra)

    # --- connection lifecycle -----------------------------------------------------

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        """A client connected: admitted (see pairpod.admission) or dropped at once."""
        self._conn = conn
        peer = conn.get_extra_info("peername") or ("?", 0)
        host = peer[0]
        self.remote_addr = f"[{host}]:{peer[1]}" if ":" in str(host) else f"{host}:{peer[1]}"
        ticket = self.gateway.admission.admit(str(host))
        if isinstance(ticket, Refusal):
            # Warnings are rate-limited in the log: a flood is summarised, not copied.
            log.warning("connection.refused", extra=fields(remote=self.remote_addr,
                                                           reason=ticket.reason))
            # After AsyncSSH's own connection_made has returned: no key exchange.
            asyncio.get_running_loop().call_soon(conn.abort)
            return
        self._ticket = ticket
        self.auth = self.gateway.authenticator.connection(conn, self.conn_id)
        tune_transport(conn)
        self.ssh_env = ssh_connection_env(conn.get_extra_info("peername"),
                                          conn.get_extra_info("sockname"))
        self.gateway.connections.add(self)
        log.info("connection.open", extra=self.log_fields(
            client=conn.get_extra_info("client_version")))
        self.gateway.ops.connection_opened(self, conn.get_extra_info("client_version"))

    def connection_lost(self, exc: Exception | None) -> None:
        """The client went away (or we closed): end everything it owns."""
        if self._ticket is None:
            return  # dropped at admission: nothing was started for it
        self._ticket.release()
        self.gateway.connections.discard(self)
        if self.auth is not None:
            self.auth.connection_lost()
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
        if self._join is not None:
            return f"{self._join_name or 'guest'} (joined {self._join[0].label})"
        if self._join_auth is not None:
            return "(joining by link)"  # not admitted (yet): the link may be anything
        if self._control_owner is not None:
            return f"{self._control_owner}+ctl"
        return self.username

    def ready_environment(self) -> Environment | None:
        """The environment, once made (None while it is made, or when it failed)."""
        task = self._environment
        if task is None or not task.done() or task.cancelled() or task.exception() is not None:
            return None
        return task.result()

    def open_channels(self) -> list[ChannelSession]:
        """The session channels open now."""
        return list(self._channels)

    # --- authentication -----------------------------------------------------------

    # AsyncSSH's auth callbacks, answered by the auth chain (see pairpod.auth).

    def begin_auth(self, username: str) -> bool:
        """Show the banner and decide how ``username`` authenticates."""
        self.username = username
        if self.config.banner and self._conn is not None:
            banner = self.config.banner
            self._conn.send_auth_banner(banner if banner.endswith("\n") else banner + "\n")
        # AsyncSSH calls this again when the client changes username: start afresh.
        self._join_auth = None
        self._control_owner = None
        if looks_like_join_username(username):
            self._join_auth = self._new_join_auth()
            self._join_auth.begin(username)
            return True  # a join link authenticates like any login (see sharing.join_auth)
        owner = split_control_username(username)
        if owner is not None:
            self._control_owner = owner
            return self._auth.begin_auth(owner)
        return self._auth.begin_auth(username)

    def _new_join_auth(self) -> JoinAuth:
        address = self.remote_addr.rsplit(":", 1)[0].strip("[]")

        def banner(text: str) -> None:
            if self._conn is not None:
                self._conn.send_auth_banner(text)

        return JoinAuth(self.gateway.sharing, self.gateway.authenticator.lockout, address,
                        banner, self.log_fields)

    def _chain_name(self, username: str) -> str:
        """The name the auth chain checks (``alice`` for the control user ``alice+ctl``)."""
        return self._control_owner if self._control_owner is not None else username

    @property
    def _auth(self) -> ConnectionAuth:
        assert self.auth is not None
        return self.auth

    def public_key_auth_supported(self) -> bool:
        """Offer publickey when any key source is configured (always to joiners)."""
        return self._join_auth is not None or self._auth.public_key_auth_supported()

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> Awaitable[bool]:
        """Ask the chain (or, for a joiner, the sharing service) about ``key``."""
        if self._join_auth is not None:
            return self._join_auth.validate_public_key(key)
        return self._auth.validate_public_key(self._chain_name(username), key)

    def validate_ca_key(self, username: str, key: asyncssh.SSHKey) -> Awaitable[bool] | bool:
        """Ask the chain whether a certificate's CA is trusted for ``username``."""
        if self._join_auth is not None:
            return False
        return self._auth.validate_ca_key(self._chain_name(username), key)

    def password_auth_supported(self) -> bool:
        """Offer password when passwords or a webhook are configured (never to joiners)."""
        return self._join_auth is None and self._auth.password_auth_supported()

    def validate_password(self, username: str, password: str) -> Awaitable[bool]:
        """Ask the chain to check a password (never logged)."""
        return self._auth.validate_password(self._chain_name(username), password)

    def kbdint_auth_supported(self) -> bool:
        """Offer keyboard-interactive (a password prompt) like password; always to joiners."""
        return self._join_auth is not None or self._auth.kbdint_auth_supported()

    def get_kbdint_challenge(self, username: str, lang: str, submethods: str) -> Any:
        """The password prompt of keyboard-interactive (no prompt for a joiner)."""
        if self._join_auth is not None:
            return self._join_auth.kbdint_challenge()
        return self._auth.get_kbdint_challenge(self._chain_name(username), lang, submethods)

    def validate_kbdint_response(self, username: str, responses: Sequence[str]) -> Any:
        """Check the answer to the prompt."""
        if self._join_auth is not None:
            return self._join_auth.validate_kbdint(responses)
        return self._auth.validate_kbdint_response(self._chain_name(username), responses)

    def auth_completed(self) -> None:
        """Authenticated: start creating the environment while channels open."""
        if self._ticket is not None:
            self._ticket.authenticated()
        if self._join_auth is not None:
            # Joiners attach to a live terminal; they get no environment.
            admitted = self._join_auth.admitted
            if admitted is None:
                if self._conn is not None:  # not admitted by us: deny by default
                    self._conn.close()
                return
            self._join = (admitted.access, admitted.session)
            self._join_name = admitted.name
            return
        result = self._auth.auth_completed()
        if result is None:
            # AsyncSSH accepted something the chain did not approve: deny by default.
            if self._conn is not None:
                self._conn.close()
            return
        self.config = result.config  # per-connection overrides (config webhook)
        self.permissions = result.permissions
        self.username = result.authenticated_as
        self.tasks.spawn(self._close_without_channel())
        if self._control_owner is not None:
            self._control_owner = result.authenticated_as
            return  # the control interface never enters an environment
        identity = result.identity(self.conn_id, self.remote_addr)
        self._environment = self.tasks.spawn(
            self.gateway.open_environment(identity, status=self._show_progress))
        limits = SessionLimits.for_user(self.config, self.username)
        if limits.active:
            self.tasks.spawn(enforce(limits, self.activity, warn=self.notify,
                                     end=self._end_by_limit))

    def _end_by_limit(self, reason: str) -> None:
        log.info("connection.limit", extra=self.log_fields(reason=reason))
        # A gateway task: the shutdown cancels this connection's tasks, the caller's too.
        self.gateway.spawn(self.shutdown(reason))

    def notify(self, text: str) -> None:
        """Show every session of this connection one ``pairpod: ...`` line."""
        for channel in list(self._channels):
            channel.write_notice(text)

    def observe(self, process: Process, spec: ProcessSpec, environment: Environment) -> Process:
        """``process`` with this connection's activity clock and recording attached."""
        observers: list[ProcessObserver] = [self.activity]
        info = SessionInfo(user=self.username or "", conn_id=self.conn_id,
                           remote_addr=self.remote_addr, environment=environment.description)
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
            log.info("connection.no_channel", extra=self.log_fields(
                reason=f"no channel within timeouts.first_channel ({limit:g}s)"))
            self._conn.disconnect(asyncssh.DISC_BY_APPLICATION,
                                  f"pairpod: no session opened within {limit:g}s")

    def _show_progress(self, line: str) -> None:
        """A backend's progress line: to every waiting channel, and kept for later ones."""
        self._progress = [*self._progress[-(_PROGRESS_KEPT - 1):], line]
        for channel in self._waiting:
            channel.write_status(line)

    async def environment(self, waiting: ChannelSession | None = None) -> Environment:
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

    def session_requested(self) -> asyncssh.SSHServerSession[bytes]:
        """A new session channel, up to ``ssh.max_sessions`` at once (joiners' too)."""
        self._had_channel = True
        if len(self._channels) + len(self._side_channels) >= self.config.ssh.max_sessions:
            log.info("channel.refused", extra=self.log_fields(
                reason=f"max_sessions ({self.config.ssh.max_sessions}) reached"))
            raise asyncssh.ChannelOpenError(
                asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED,
                f"too many sessions on this connection (max {self.config.ssh.max_sessions})",
            )
        side: asyncssh.SSHServerSession[bytes] | None = None
        if self._join is not None:
            access, shared = self._join
            side = ViewerSession(self, shared.terminal, access, self._join_name or "guest")
        elif self._control_owner is not None:
            side = ControlSession(self, self.gateway.sharing, self._control_owner)
        if side is not None:
            self._side_channels.add(side)
            return side
        session = ChannelSession(self)
        self._channels.add(session)
        return session

    def channel_closed(self, session: asyncssh.SSHServerSession[bytes]) -> None:
        """Forget a closed channel (its slot is free again)."""
        if isinstance(session, ChannelSession):
            self._channels.discard(session)
        else:
            self._side_channels.discard(session)

    async def shutdown(self, message: str) -> None:
        """Tell each session's user ``message``, end the sessions, disconnect."""
        await asyncio.gather(*(s.terminate(message) for s in list(self._channels)),
                             return_exceptions=True)
        if self._conn is not None:
            # Let the client hang up first: OpenSSH's client drops output it has not
            # printed yet (the notice just sent) when the server disconnects.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(self._conn.wait_closed()),
                                       _CLIENT_HANGUP_WAIT)
            self._conn.close()
            with contextlib.suppress(Exception):
                await self._conn.wait_closed()
        await self.cleanup()


class Gateway:
    """The running pairpod server: listener, backend, live connections."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.instance_id = config.effective_instance_id
        self.backend: Backend = create_backend(config, self.instance_id)
        self.ops = Operations(self)
        self.authenticator = Authenticator(config, observer=self.ops.auth_decision)
        self.sharing = SharingService(config, self.authenticator)
        self.admission = Admission(config.ssh)
        self.connections: set[Connection] = set()
        self.environment_limits = EnvironmentLimits(config.limits)
        self.recorder = Recorder(config)
        self._tasks = TaskGroup()
        self._server: asyncssh.SSHAcceptor | None = None

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run a gateway-level task (cleanups that must finish before shutdown)."""
        return self._tasks.spawn(coro)

    async def wait_tasks(self) -> None:
        """Wait for the gateway-level tasks (connection cleanups) running now."""
        await self._tasks.wait_all(None)

    @property
    def port(self) -> int:
        """The port actually listened on (useful with port 0)."""
        assert self._server is not None
        return self._server.get_port()

    async def start(self) -> None:
        """Load host keys, start the backend, listen."""
        ssh = self.config.ssh
        host_keys = restrict_algorithms(
            load_host_keys(self.config.host_keys, strict_modes=self.config.security.strict_modes),
            ssh.host_key_algorithms)
        refused = self.authenticator.static.refused_files()
        if refused:
            raise ConfigError("authorized_keys refused: " + "; ".join(refused))
        host, port = self.config.listen_address
        await self.backend.start()
        proxy = self.config.proxy_protocol
        # With PROXY protocol on, a listener of ours reads the header before AsyncSSH.
        listener: Any = ProxyProtocolListener(proxy.trusted, proxy.timeout) if proxy.trusted else ()
        try:
            self._server = await asyncssh.create_server(
                lambda: Connection(self),
                host,
                port,
                server_host_keys=host_keys,
                server_version=SERVER_VERSION,
                encryption_algs=ssh.ciphers,
                kex_algs=ssh.kex_algorithms,
                mac_algs=ssh.macs,
                login_timeout=ssh.login_timeout,
                keepalive_interval=ssh.keepalive_interval or None,
                keepalive_count_max=ssh.keepalive_count_max,
                # Bytes end to end, no line editing, nothing forwarded unless asked.
                encoding=None,
                line_editor=False,
                agent_forwarding=False,
                x11_forwarding=False,
                allow_scp=False,
                reuse_address=True,
                tunnel=listener,
            )
        except OSError as error:
            await self.backend.stop()
            reason = os.strerror(error.errno) if error.errno else str(error)
            raise ConfigError(f"listen: cannot listen on {host}:{port}: {reason}") from None
        try:
            await self.ops.start()
        except BaseException:
            self._server.close()
            await self.backend.stop()
            raise
        log.info("gateway.listening", extra=fields(
            address=f"{host}:{self.port}", backend=self.backend.name, instance=self.instance_id))

    async def open_environment(self, identity: Identity, *,
                               status: StatusCallback | None = None) -> Environment:
        """Ask the backend for a connection's environment (within ``limits``), logging failures."""
        began = time.monotonic()
        try:
            self.environment_limits.admit(identity.username, identity.conn_id)
            environment = await self.backend.open(identity, status=status)
            try:
                await place_files(environment, identity.files)
            except BaseException:
                await environment.close()
                raise
        except PairpodError as error:
            self.environment_limits.release(identity.conn_id)
            log.warning("environment.failed", extra=fields(
                conn=identity.conn_id, user=identity.username, remote=identity.remote_addr,
                error=error.operator_message, kind=type(error).__name__))
            self.ops.environment_failed(identity, error)
            raise
        except Exception as error:
            self.environment_limits.release(identity.conn_id)
            log.exception("environment.failed", extra=fields(
                conn=identity.conn_id, user=identity.username, remote=identity.remote_addr))
            wrapped = BackendError(f"backend failed: {error!r}")
            self.ops.environment_failed(identity, wrapped)
            raise wrapped from error
        log.info("environment.ready", extra=fields(
            conn=identity.conn_id, user=identity.username, env=environment.description))
        self.ops.environment_ready(identity, environment, time.monotonic() - began)
        return environment

    async def stop(self, *, hurry: asyncio.Event | None = None) -> None:
        """Drain and stop; never raises (see :func:`pairpod.shutdown.drain`).

        Setting ``hurry`` (a second SIGTERM) ends the sessions at once.
        """
        if self._server is not None:
            self._server.close()
        await drain(self, hurry or asyncio.Event())
