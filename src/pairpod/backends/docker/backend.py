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

from pairpod.backends.base import Identity
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
from pairpod.backends.container.wrapper import DEFAULT_IDLE_COMMAND
from pairpod.backends.docker import pool
from pairpod.backends.docker.api import Engine, EngineError
from pairpod.backends.docker.container import Steps, container_config, hostname_for
from pairpod.backends.docker.disk import DiskLimit
from pairpod.backends.docker.environment import (
    DockerConnectionEnvironment,
    DockerEnvironment,
    DockerSessionEnvironment,
)
from pairpod.backends.docker.pool import PoolEntry
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
        return settings.warm_pool if pool.eligible(settings) else 0

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

            def ended(_: BaseException | None) -> None:
                if not done.done():
                    done.set_result(None)

            stream.set_consumer(lambda _: None, ended)
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
            pooled = await pool.take(self, identity)
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
        config = container_config(
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

    async def _pool_one(self) -> None:
        self._pool_filling += 1
        try:
            entry = await pool.start_container(self)
        finally:
            self._pool_filling -= 1
        self._pool.append(entry)
