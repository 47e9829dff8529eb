"""The running gateway: the composition root and the SSH listener.

It makes the backend, authenticator, sharing service, operations (admin),
recorder and limits, listens with AsyncSSH's options, and gives each client
a :class:`~pairpod.ssh.connection.Connection`. It sits above ``admin``:
admin sees it only through the read-only protocols of
:mod:`pairpod.admin.view`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

import asyncssh

from pairpod.admin import Operations
from pairpod.auth import Authenticator
from pairpod.auth.lockout import SharedLocks
from pairpod.auth.remote_keys import SharedKeyCache
from pairpod.backends import Backend, Environment, Identity, StatusCallback, create_backend
from pairpod.backends.files import place_files
from pairpod.config import Config
from pairpod.env_limits import EnvironmentLimits
from pairpod.errors import BackendError, ConfigError, PairpodError, cannot_listen
from pairpod.hostkeys import load_host_keys, restrict_algorithms
from pairpod.log import fields, get_logger
from pairpod.parts import StartedParts
from pairpod.proxy import ProxyProtocolListener
from pairpod.recording import Recorder
from pairpod.sharing.hosted import GATEWAY_STOPPING, HostedSessions, link_key
from pairpod.sharing.service import SharingService
from pairpod.ssh.admission import Admission
from pairpod.ssh.connection import Connection
from pairpod.ssh.kinds import PurposeChooser, choose_purpose
from pairpod.ssh.requests import SERVER_VERSION
from pairpod.ssh.shutdown import BACKEND_TIMEOUT, END_TIMEOUT, drain
from pairpod.tasks import TaskGroup
from pairpod.web import WebJoiners

if TYPE_CHECKING:
    from pairpod.cluster import ClusterStore
    from pairpod.replicas import Replicas

log = get_logger("server")


class Gateway:
    """The running pairpod server: listener, backend, live connections."""

    def __init__(self, config: Config, *, purposes: PurposeChooser = choose_purpose) -> None:
        self.config = config
        #: What connections may be for (``pairpod pair`` admits joiners only).
        self.choose_purpose = purposes
        self.instance_id = config.effective_instance_id
        self.backend: Backend = create_backend(config, self.instance_id)
        # Several replicas: the one Redis client of this process (None: a single replica).
        self.cluster: ClusterStore | None = None
        shared_locks: SharedLocks | None = None
        shared_keys: SharedKeyCache | None = None
        if config.cluster.redis:
            # Imported only by a replica of a cluster: a single gateway never loads
            # the Redis client (a lighter start, and nothing it needs at import).
            from pairpod.cluster import ClusterStore, RedisKeyCache, RedisLocks

            self.cluster = ClusterStore(config.cluster)
            # Lockout and key pages shared through Redis.
            shared_locks = RedisLocks(self.cluster, config.auth.lockout)
            shared_keys = RedisKeyCache(self.cluster)
        self.ops = Operations(self)
        self.authenticator = Authenticator(
            config, observer=self.ops.auth_decision, shared_locks=shared_locks, shared_keys=shared_keys
        )
        self.sharing = SharingService(config)
        self.sharing.hosted = HostedSessions(self.sharing, self.spawn)
        # With cluster.redis: joins and +ctl from any replica (see pairpod.replicas).
        self.replicas: Replicas | None = None
        if self.cluster is not None:
            from pairpod.replicas import Replicas

            self.replicas = Replicas(config, self.sharing, self.cluster)
        self.sharing.elsewhere = self.replicas
        self.admission = Admission(config.ssh)
        self.connections: set[Connection] = set()
        self.environment_limits = EnvironmentLimits(config.limits)
        self.recorder = Recorder(config)
        # Browsers joining shared sessions (sharing.web); pair mode gets it by composing a Gateway.
        self.web = (
            WebJoiners(config, self.sharing, self.authenticator.lockout, self.ops.web_sharing)
            if config.sharing.web.listen
            else None
        )
        self._tasks = TaskGroup()
        self._server: asyncssh.SSHAcceptor | None = None
        #: What start() started, stopped in reverse by a failed start or the drain.
        self.parts = StartedParts()

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
        """Load host keys, start the parts, listen; a failure stops what was started."""
        keys = load_host_keys(self.config.host_keys, strict_modes=self.config.security.strict_modes)
        host_keys = restrict_algorithms(keys, self.config.ssh.host_key_algorithms)
        # Hosted sessions' links are derived under a key from the host keys: the same after a restart.
        assert self.sharing.hosted is not None
        self.sharing.hosted.key = link_key([key.export_private_key("pkcs8-der") for key in keys])
        refused = self.authenticator.static.refused_files()
        if refused:
            raise ConfigError("authorized_keys refused: " + "; ".join(refused))
        # Shutdown is this order reversed: the SSH listener first, the sessions'
        # backend next, the replica's directory entries while its Redis client is
        # still there, the admin listener and audit log last (the steps before are
        # audited too), then the recordings.
        parts = self.parts
        try:
            await parts.start("recorder", None, self._close_recorder, stop_timeout=None)
            # Operations bounds each of its own parts: an outer bound could cut the
            # audit log's last lines (the shutdown steps) before they are flushed.
            await parts.start("admin", self.ops.start, self.ops.stop, stop_timeout=None)
            if self.cluster is not None:
                # Returns at once: a Redis down at start is logged, not fatal.
                await parts.start("cluster", self.cluster.start, self.cluster.aclose)
            if self.replicas is not None:
                await parts.start("replicas", self.replicas.start, self.replicas.stop)
            await parts.start("authenticator", None, self.authenticator.aclose)
            await parts.start("backend", self.backend.start, self.backend.stop, stop_timeout=BACKEND_TIMEOUT)
            await parts.start("listener", lambda: self._listen(host_keys), self._close_listener)
            if self.web is not None:
                await parts.start("web", self.web.start, self.web.stop)
        except BaseException:
            await parts.stop_all()
            raise
        self.ops.serving()
        log.info(
            "gateway.listening",
            extra=fields(
                address=f"{self.config.listen_address[0]}:{self.port}",
                backend=self.backend.name,
                instance=self.instance_id,
            ),
        )

    async def _listen(self, host_keys: list[asyncssh.SSHKeyPair]) -> None:
        """Listen for SSH with AsyncSSH's options; a busy address is a ConfigError naming it."""
        ssh = self.config.ssh
        host, port = self.config.listen_address
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
            raise cannot_listen("listen", f"{host}:{port}", error) from None
        self.sharing.bound_port = self.port

    async def _close_listener(self) -> None:
        """Stop accepting SSH connections (those open stay; the drain ends them)."""
        if self._server is not None:
            self._server.close()

    async def _close_recorder(self) -> None:
        """Write the recordings' last events (the writer bounds its own wait)."""
        if not await asyncio.to_thread(self.recorder.close, END_TIMEOUT):
            log.warning(
                "gateway.recordings_unfinished",
                extra=fields(reason="the disk did not take the last events in time"),
            )

    async def open_environment(
        self, identity: Identity, *, status: StatusCallback | None = None
    ) -> Environment:
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
            log.warning(
                "environment.failed",
                extra=fields(
                    conn=identity.conn_id,
                    user=identity.username,
                    remote=identity.remote_addr,
                    error=error.operator_message,
                    kind=type(error).__name__,
                ),
            )
            self.ops.environment_failed(identity, error)
            raise
        except Exception as error:
            self.environment_limits.release(identity.conn_id)
            log.exception(
                "environment.failed",
                extra=fields(conn=identity.conn_id, user=identity.username, remote=identity.remote_addr),
            )
            wrapped = BackendError(f"backend failed: {error!r}")
            self.ops.environment_failed(identity, wrapped)
            raise wrapped from error
        log.info(
            "environment.ready",
            extra=fields(conn=identity.conn_id, user=identity.username, env=environment.description),
        )
        self.ops.environment_ready(identity, environment, time.monotonic() - began)
        return environment

    async def stop(self, *, hurry: asyncio.Event | None = None) -> None:
        """Drain and stop every part started; never raises (see :func:`pairpod.ssh.shutdown.drain`).

        Setting ``hurry`` (a second SIGTERM) ends the sessions at once.
        """
        await self._close_listener()
        if self.sharing.hosted is not None:
            self.sharing.hosted.end_all(GATEWAY_STOPPING)
        await drain(self, hurry or asyncio.Event())
