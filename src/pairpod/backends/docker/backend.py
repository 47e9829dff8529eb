"""The Docker backend: a container per connection (or per channel), on a Docker engine.

``mode: connection``: logging in creates and starts one container running an
idle command as PID 1; every channel (shell, exec, sftp) is an exec in it.
``mode: session``: each channel is its own container running the command itself.
Either way the container goes when the connection does, and containers that no
live connection owns (after a crash, say) are reaped at start-up and then
periodically.

**Starting processes.** Every program starts through a small POSIX-sh wrapper
(:data:`WRAPPER`) that, before it ``exec``s the real program, sets the
terminal's size and modes, falls back to ``/bin/sh`` when the configured shell
is missing, finds the image's ``sftp-server``, and prints one preamble line
with its PID. The PID is how signals reach the program: the Engine API has no
exec-signal call, so :meth:`DockerProcess.signal` runs a second exec,
``kill -s NAME PID``, as the same user. No agent is needed inside the image,
only ``/bin/sh``.

The package mirrors :mod:`pairpod.backends.kubernetes`: the Engine's HTTP API
in :mod:`.api`, its stream format in :mod:`.stream`, what a container is in
:mod:`.container`, the warm pool's spares in :mod:`.pool`, the two
environments in :mod:`.environment`, processes in :mod:`.process`; the
wrapper and what else the Kubernetes backend shares in
:mod:`pairpod.backends.container`.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Callable, Mapping
from typing import Any

from pairpod.backends.base import Identity, PtySpec
from pairpod.backends.container.backend import ContainerBackend
from pairpod.backends.container.names import (
    LABEL_CONNECTION,
    LABEL_INSTANCE,
    LABEL_MANAGED,
    LABEL_MODE,
    LABEL_POOL,
    LABEL_USER,
    name_part,
)
from pairpod.backends.container.process import HELPER_TIMEOUT
from pairpod.backends.container.wrapper import (
    DEFAULT_IDLE_COMMAND,
)
from pairpod.backends.docker.api import Engine, EngineError
from pairpod.backends.docker.container import (
    DETACH_KEYS,
    Steps,
    home_mount_target,
    hostname_for,
    memory_bytes,
    volume_name_for,
)
from pairpod.backends.docker.disk import DiskLimit
from pairpod.backends.docker.environment import (
    DockerConnectionEnvironment,
    DockerEnvironment,
    DockerSessionEnvironment,
)
from pairpod.backends.docker.pool import PoolEntry, spare_command
from pairpod.backends.docker.process import DockerProcess, ExecTarget
from pairpod.config import Config, DockerSettings
from pairpod.errors import (
    BackendUnavailable,
    EnvironmentExited,
    ImagePullFailed,
    ImageUnavailable,
    PairpodError,
)
from pairpod.log import fields, get_logger

log = get_logger("backend.docker")

# How many log lines an operator sees when a container dies at start.
_LOG_TAIL = 20
# A handed-out pool container is replaced after the login's first process
# starts, or after this long at the latest.
_POOL_REFILL_DELAY = 2.0

# --- the backend ---------------------------------------------------------------------


class DockerBackend(ContainerBackend["DockerEnvironment", PoolEntry]):
    """Environments as Docker containers, with orphan reaping and a warm pool."""

    name = "docker"
    log_prefix = "docker"

    def __init__(self, config: Config, instance_id: str) -> None:
        super().__init__(config, instance_id)
        self.engine = Engine(config.docker.host)
        self.disk = DiskLimit(self.engine)
        self._pulls: dict[str, asyncio.Future[None]] = {}

    # --- lifecycle ---------------------------------------------------------------

    async def start(self) -> None:
        """Reap this instance's leftovers, then keep reaping and keep the pool full.

        An engine that does not answer is not fatal: the gateway serves anyway,
        each login reports the engine as unavailable until it is back.
        """
        await self._start_housekeeping()

    async def check(self) -> None:
        """The engine answers its ping (else BackendUnavailable)."""
        await self.engine.ping()

    @property
    def warm_pool(self) -> int:
        """Containers kept started ahead of logins (0 when the settings rule a pool out)."""
        settings = self.config.docker
        return settings.warm_pool if self._pool_eligible_settings(settings) else 0

    async def _release_pool(self, pool: list[PoolEntry]) -> None:
        # The final reap removes the containers themselves.
        for entry in pool:
            entry.abandon()
        self._live.difference_update(entry.name for entry in pool)

    async def _close_client(self) -> None:
        await self.engine.close()

    # --- reaping ---------------------------------------------------------------------

    async def reap_orphans(self) -> list[str]:
        """Remove this instance's containers that no live connection or pool owns.

        Returns the names removed. Raises BackendUnavailable if the engine is down.
        """
        containers = await self.engine.list_containers({LABEL_INSTANCE: self.instance_id})
        orphans = []
        for container in containers:
            names = [n.lstrip("/") for n in container.get("Names") or []]
            if not any(name in self._live for name in names):
                orphans.append(names[0] if names else container["Id"])
        results = await asyncio.gather(
            *(self.engine.remove_container(name) for name in orphans), return_exceptions=True
        )
        removed = []
        for name, result in zip(orphans, results, strict=True):
            if isinstance(result, BaseException):
                log.warning("docker.reap_failed", extra=fields(container=name, error=str(result)))
            else:
                removed.append(name)
        return removed

    # --- images ------------------------------------------------------------------------

    async def _pull(self, image: str, status: Callable[[str], Any] | None, steps: Steps | None) -> None:
        """Pull once even when many logins ask at the same moment."""
        if steps is not None:
            steps.now = "pulling the image"
        pending = self._pulls.get(image)
        if pending is None:
            if status is not None:
                status(f"pulling image {image}...")
            log.info("docker.pull", extra=fields(image=image))
            pending = self._spawn(self.engine.pull_image(image))
            self._pulls[image] = pending
            pending.add_done_callback(lambda _: self._pulls.pop(image, None))
        try:
            await asyncio.shield(pending)
        except EngineError as error:
            raise ImagePullFailed(f"pull of image {image} failed: {error.engine_message}") from None

    async def ensure_image(
        self,
        settings: DockerSettings,
        status: Callable[[str], Any] | None = None,
        steps: Steps | None = None,
    ) -> None:
        """Make the image present according to ``docker.pull``."""
        if settings.pull == "always":
            await self._pull(settings.image, status, steps)
            return
        if await self.engine.inspect_image(settings.image) is not None:
            return
        if settings.pull == "never":
            raise ImageUnavailable(f"image {settings.image} is not on the engine and docker.pull is never")
        await self._pull(settings.image, status, steps)

    # --- containers ------------------------------------------------------------------

    def labels(
        self, settings: DockerSettings, identity: Identity | None, mode: str, pool: bool = False
    ) -> dict[str, str]:
        """The labels of a container: the config's, then pairpod's own (which win)."""
        labels = dict(settings.labels)
        labels[LABEL_MANAGED] = "true"
        labels[LABEL_INSTANCE] = self.instance_id
        labels[LABEL_MODE] = mode
        if identity is not None:
            labels[LABEL_CONNECTION] = identity.conn_id
            labels[LABEL_USER] = identity.username
        if pool:
            labels[LABEL_POOL] = "true"
        return labels

    def container_name(self, identity: Identity | None, suffix: str = "") -> str:
        """A unique, recognisable container name."""
        owner = name_part(identity.conn_id) if identity is not None else "pool"
        name = f"pairpod-{name_part(self.instance_id, 20)}-{owner}-{secrets.token_hex(3)}"
        return f"{name}-{suffix}" if suffix else name

    def container_config(
        self,
        settings: DockerSettings,
        *,
        cmd: list[str],
        labels: Mapping[str, str],
        hostname: str,
        env: Mapping[str, str],
        username: str | None,
        session: bool = False,
        tty: bool = False,
    ) -> dict[str, Any]:
        """The Engine's container-create body for these settings."""
        security = settings.security
        limits = settings.limits
        host: dict[str, Any] = {
            "NetworkMode": settings.network,
            "CapDrop": list(security.cap_drop),
            "CapAdd": list(security.cap_add),
            "SecurityOpt": ["no-new-privileges:true"] if security.no_new_privileges else [],
            "ReadonlyRootfs": security.read_only_rootfs,
            # In session mode the program itself is the main process: an init
            # as PID 1 forwards signals to it and reaps what it leaves behind.
            "Init": session,
            "RestartPolicy": {"Name": "no"},
        }
        if limits.memory is not None:
            host["Memory"] = memory_bytes(limits.memory)
            host["MemorySwap"] = host["Memory"]  # no swap on top
        if limits.cpus is not None:
            host["NanoCpus"] = int(limits.cpus * 1e9)
        if limits.pids is not None:
            host["PidsLimit"] = limits.pids
        if limits.tmp is not None:
            # Scratch space in memory (charged to the memory limit), never on the
            # host's disk; also somewhere to write with a read-only root.
            host["Tmpfs"] = {"/tmp": f"rw,nosuid,nodev,size={limits.tmp}"}
        # The log of the main process: the program itself in session mode.
        logs = settings.logs
        host["LogConfig"] = (
            {"Type": "none", "Config": {}}
            if logs.driver == "none"
            else {"Type": logs.driver,
                  "Config": {"max-size": logs.max_size, "max-file": str(logs.max_files)}}
        )
        if settings.home_volume and username is not None:
            host["Mounts"] = [
                {
                    "Type": "volume",
                    "Source": volume_name_for(settings.home_volume, username),
                    "Target": home_mount_target(settings),
                }
            ]
        config: dict[str, Any] = {
            "Image": settings.image,
            "Cmd": cmd,
            "Entrypoint": [],  # the image's entrypoint would wrap our command
            "Labels": dict(labels),
            "Hostname": hostname,
            "Env": [f"{k}={v}" for k, v in env.items()],
            "Tty": tty,
            # Connection mode: the idle command may block on stdin, kept open.
            # Session mode: stdin is the program's, closed once the client's ends.
            "OpenStdin": True,
            "StdinOnce": session,
            "AttachStdin": session,
            "AttachStdout": session,
            "AttachStderr": session,
            "HostConfig": host,
        }
        if settings.user:
            config["User"] = settings.user
        if settings.workdir:
            config["WorkingDir"] = settings.workdir
        return config

    async def create(
        self,
        name: str,
        config: dict[str, Any],
        settings: DockerSettings,
        status: Callable[[str], Any] | None = None,
        steps: Steps | None = None,
    ) -> str:
        """Create a container, fetching its image as ``docker.pull`` allows.

        The create call is shielded: if the caller gives up mid-call, the engine
        may still make the container, and the caller's cleanup must find it.
        """
        if settings.pull == "always":
            await self.ensure_image(settings, status, steps)
        for attempt in (1, 2):
            if steps is not None:
                steps.now = "creating the container"
            config = await self.disk.apply(config, settings.limits.disk)
            task = asyncio.ensure_future(self.disk.create(name, config))
            try:
                return await asyncio.shield(task)
            except asyncio.CancelledError:
                with contextlib.suppress(BaseException):
                    await asyncio.wait_for(task, settings.timeouts.stop)
                raise
            except EngineError as error:
                if error.status != 404 or "image" not in error.engine_message.lower() or attempt == 2:
                    raise
            # The image is missing (404 on create): pull it if allowed, then again.
            await self.ensure_image(settings, status, steps)
        raise AssertionError("unreachable")

    async def remove(self, name: str, time_limit: float) -> None:
        """Remove a container and forget it; failures are left to the reaper."""
        try:
            async with asyncio.timeout(time_limit):
                await self.engine.remove_container(name, time_limit=time_limit)
        except (PairpodError, TimeoutError) as error:
            log.warning("docker.remove_failed", extra=fields(container=name, error=str(error)))
        finally:
            self._live.discard(name)

    async def start_container(self, name: str, settings: DockerSettings) -> None:
        """Start a created container and check it is still running."""
        await self.engine.start_container(name)
        state = (await self.engine.inspect_container(name)).get("State", {})
        if not state.get("Running"):
            raise await self.exited_error(name, state)

    async def exited_error(self, name: str, state: Mapping[str, Any] | None = None) -> EnvironmentExited:
        """The error for a container that stopped: its exit code and last log lines."""
        try:
            if state is None:
                state = (await self.engine.inspect_container(name)).get("State", {})
            logs = await self.engine.container_logs(name, _LOG_TAIL)
        except PairpodError as error:
            return EnvironmentExited(f"container {name} is not running ({error.operator_message})")
        why = [f"exit code {state.get('ExitCode')}"]
        if state.get("OOMKilled"):
            why.append("killed for exceeding its memory limit")
        if state.get("Error"):
            why.append(str(state["Error"]))
        lines = logs.rstrip("\n")
        detail = f"; last log lines:\n{lines}" if lines else "; it logged nothing"
        return EnvironmentExited(f"container {name} stopped ({', '.join(why)}){detail}")

    async def run_helper(self, container_id: str, argv: list[str]) -> int | None:
        """Run a short command in a container (no TTY, no input); its exit code."""
        engine = self.engine
        async with asyncio.timeout(HELPER_TIMEOUT):
            exec_id = await engine.create_exec(
                container_id,
                {
                    "AttachStdin": False,
                    "AttachStdout": True,
                    "AttachStderr": True,
                    "Tty": False,
                    "Cmd": argv,
                },
            )
            stream = await engine.start_exec(exec_id, False)
            done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            stream.set_consumer(lambda _: None, lambda _: done.done() or done.set_result(None))
            try:
                await done
            finally:
                stream.close()
            code = (await engine.inspect_exec(exec_id)).get("ExitCode")
        return int(code) if code is not None else None

    # --- opening an environment ----------------------------------------------------

    async def open(
        self, identity: Identity, *, status: Callable[[str], Any] | None = None
    ) -> DockerEnvironment:
        """Create the connection's environment.

        ``status``, when given, is called with a line the user should see while
        they wait (an image pull).
        """
        if self._stopping:
            raise BackendUnavailable("the docker backend is stopping")
        settings = identity.config.docker
        if settings.mode == "session":
            # Containers come per channel; check the image now so a login
            # fails early and clearly rather than at its first command.
            steps = Steps("checking the image")
            try:
                async with asyncio.timeout(settings.timeouts.start):
                    await self.ensure_image(settings, status, steps)
            except TimeoutError:
                raise steps.timeout_error(settings) from None
            env: DockerEnvironment = DockerSessionEnvironment(self, identity, settings)
        else:
            pooled = await self._take_from_pool(identity)
            if pooled is not None:
                env = pooled
            else:
                env = await self._open_container(identity, settings, status)
        self._environments.add(env)
        return env

    async def _open_container(
        self, identity: Identity, settings: DockerSettings, status: Callable[[str], Any] | None
    ) -> DockerConnectionEnvironment:
        name = self.container_name(identity)
        hostname = hostname_for(settings.hostname, identity.username)
        env = {**settings.env, **identity.env}
        config = self.container_config(
            settings,
            cmd=list(settings.idle_command or DEFAULT_IDLE_COMMAND),
            labels=self.labels(settings, identity, "connection"),
            hostname=hostname,
            env=env,
            username=identity.username,
        )
        self._live.add(name)
        steps = Steps("creating the container")
        try:
            async with asyncio.timeout(settings.timeouts.start):
                container_id = await self.create(name, config, settings, status, steps)
                steps.now = "starting the container"
                await self.start_container(name, settings)
        except BaseException as error:
            # Nothing may be left behind, whatever went wrong (even cancellation).
            await asyncio.shield(self.remove(name, settings.timeouts.stop))
            if isinstance(error, TimeoutError):
                raise steps.timeout_error(settings) from None
            raise
        log.info(
            "docker.container_started",
            extra=fields(conn=identity.conn_id, user=identity.username, container=name, image=settings.image),
        )
        return DockerConnectionEnvironment(self, identity, settings, name, container_id)

    # --- warm pool -----------------------------------------------------------------

    @staticmethod
    def _pool_eligible_settings(settings: DockerSettings) -> bool:
        # A per-user volume cannot be mounted ahead of knowing the user.
        return settings.mode == "connection" and not settings.home_volume

    async def _take_from_pool(self, identity: Identity) -> DockerConnectionEnvironment | None:
        """A started pool container for this login, if the pool has one that still runs."""
        settings = identity.config.docker
        if settings != self.config.docker or not self._pool_eligible_settings(settings):
            return None
        while self._pool:
            entry = self._pool.popleft()
            # Refill once the login is served: a container start running beside the
            # login's first exec would slow both (and the exec is what the user waits for).
            asyncio.get_running_loop().call_later(_POOL_REFILL_DELAY, self._pool_wakeup.set)
            try:
                state = (await self.engine.inspect_container(entry.container_id)).get("State", {})
            except BaseException:
                # Unknown state (engine down, or the login was cancelled): the
                # container is not handed out, so it must not stay owned either.
                self._drop_pool_entry(entry, settings)
                raise
            if state.get("Running"):
                env = DockerConnectionEnvironment(self, identity, settings, entry.name, entry.container_id)
                env.from_pool = True
                env.take_spares(entry.spares)
                env.background(self._rename(env, self.container_name(identity)))
                log.info(
                    "docker.pool_handout",
                    extra=fields(conn=identity.conn_id, user=identity.username, container=entry.name),
                )
                return env
            # It died while waiting (an engine restart, say): drop it, try the next.
            log.warning("docker.pool_container_gone", extra=fields(container=entry.name))
            self._drop_pool_entry(entry, settings)
        return None

    def _drop_pool_entry(self, entry: PoolEntry, settings: DockerSettings) -> None:
        entry.abandon()
        # If this removal fails too, the name is no longer live: the reaper retries.
        self._spawn(self.remove(entry.name, settings.timeouts.stop))

    async def _rename(self, env: DockerConnectionEnvironment, name: str) -> None:
        """Name a handed-out pool container after its connection, for operators."""
        self._live.add(name)
        try:
            await self.engine.rename_container(env.container_id, name)
        except PairpodError as error:
            self._live.discard(name)
            log.warning(
                "docker.pool_rename_failed", extra=fields(container=env.name, error=error.operator_message)
            )
            return
        self._live.discard(env.name)
        env.name = name

    async def _pool_one(self) -> None:
        settings = self.config.docker
        name = self.container_name(None)
        template = settings.hostname
        hostname = "pairpod" if "{username}" in template else hostname_for(template, "")
        config = self.container_config(
            settings,
            cmd=list(settings.idle_command or DEFAULT_IDLE_COMMAND),
            labels=self.labels(settings, None, "connection", pool=True),
            hostname=hostname,
            env=dict(settings.env),
            username=None,
        )
        self._live.add(name)
        self._pool_filling += 1
        entry: PoolEntry | None = None
        try:
            async with asyncio.timeout(settings.timeouts.start):
                container_id = await self.create(name, config, settings)
                await self.start_container(name, settings)
                entry = PoolEntry(name, container_id)
                # A spare of each kind, so the first channel of a pooled login
                # skips the exec start (the larger part of its wait).
                for tty in (False, True):
                    spare = await self._start_spare(container_id, tty)
                    if spare is not None:
                        entry.spares[tty] = spare
        except BaseException:
            if entry is not None:
                entry.abandon()
            await asyncio.shield(self.remove(name, settings.timeouts.stop))
            raise
        finally:
            self._pool_filling -= 1
        self._pool.append(entry)

    async def _start_spare(self, container_id: str, tty: bool) -> DockerProcess | None:
        """A process waiting in the container to become a connection's first channel."""
        token = secrets.token_hex(8)
        exec_id = await self.engine.create_exec(
            container_id,
            {
                "AttachStdin": True,
                "AttachStdout": True,
                "AttachStderr": True,
                "Tty": tty,
                "Cmd": spare_command(tty, token),
                "DetachKeys": DETACH_KEYS,
            },
        )
        stream = await self.engine.start_exec(exec_id, tty)
        placeholder = PtySpec(term="dumb", cols=80, rows=24) if tty else None
        spare = DockerProcess(ExecTarget(self.engine, exec_id), stream, placeholder, lambda _: None)
        spare.token = token
        try:
            if await spare.ready():
                return spare
        except BaseException:
            spare.abandon()
            raise
        spare.abandon()
        log.info(
            "docker.spare_unavailable",
            extra=fields(tty=tty, said=spare.leftover_output().decode(errors="replace").strip()),
        )
        return None
