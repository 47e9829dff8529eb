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

Everything about the Engine's HTTP API lives in :mod:`.docker_api`; the stream
format in :mod:`.docker_stream`; the wrapper and what else the Kubernetes
backend shares in :mod:`.common`.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
from collections.abc import Callable, Mapping
from typing import Any

from pairpod.backends import common
from pairpod.backends.base import (
    ExitStatus,
    Identity,
    Process,
    ProcessSpec,
    PtySpec,
)
from pairpod.backends.common import (
    DEFAULT_IDLE_COMMAND,
    FALLBACK_SHELL,
    LABEL_CONNECTION,
    LABEL_INSTANCE,
    LABEL_MANAGED,
    LABEL_MODE,
    LABEL_POOL,
    LABEL_USER,
    LOGIN_VARIABLES,
    WRAPPER,
    exit_status,
    exportable,
    kill_tree_command,
    name_part,
    sh_quote,
    signal_command,
    wrapper_args,
)
from pairpod.backends.common import (
    stty_modes as stty_modes,  # re-exported: part of this module's tested surface
)
from pairpod.backends.container_backend import ContainerBackend
from pairpod.backends.container_env import ContainerEnvironment
from pairpod.backends.container_process import HELPER_TIMEOUT, ContainerProcess
from pairpod.backends.docker_api import (
    Engine,
    EngineError,
    HijackedStream,
)
from pairpod.backends.docker_disk import DiskLimit
from pairpod.backends.docker_stream import (
    STDERR,
    STDOUT,
    SYSTEMERR,
    Demuxer,
    PreambleReader,
)
from pairpod.config import Config, DockerSettings
from pairpod.errors import (
    BackendError,
    BackendUnavailable,
    EnvironmentExited,
    ImagePullFailed,
    ImageUnavailable,
    PairpodError,
    StartTimeout,
)
from pairpod.log import fields, get_logger

log = get_logger("backend.docker")

# --- constants -----------------------------------------------------------------------

# The Engine holds back a typed byte that starts its detach sequence until the
# next one arrives (and the default, Ctrl-P Ctrl-Q, would delay every Ctrl-P).
# So the sequence starts with Ctrl-\, the byte least used alone in practice, and
# is long enough never to be typed by accident.
DETACH_KEYS = "ctrl-\\,ctrl-@,ctrl-^,ctrl-_,ctrl-\\,ctrl-@,ctrl-^,ctrl-_"

# How many log lines an operator sees when a container dies at start.
_LOG_TAIL = 20
# How long a container that failed an exec may take to show it has stopped.
_SETTLE_TIMEOUT = 2.0
# A handed-out pool container is replaced after the login's first process
# starts, or after this long at the latest.
_POOL_REFILL_DELAY = 2.0


def memory_bytes(size: str) -> int:
    """``512m`` -> bytes (1024-based, like docker)."""
    match = re.fullmatch(r"(\d+)([bkmg]?)", size.lower())
    if match is None:
        raise BackendError(f"docker.limits.memory: bad size {size!r}")
    scale = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[match.group(2)]
    return int(match.group(1)) * scale


def hostname_for(template: str, username: str) -> str:
    """The container hostname: the template filled in, made a valid host label."""
    return common.hostname_for(template, username, "docker.hostname")


def volume_name_for(template: str, username: str) -> str:
    """A per-user named volume, e.g. ``pairpod-home-alice``."""
    try:
        text = template.format(username=username)
    except (KeyError, IndexError, ValueError) as error:
        raise BackendError(f"docker.home_volume: bad template {template!r}: {error}") from None
    name = re.sub(r"[^a-zA-Z0-9_.-]+", "-", text).strip("-.")
    if not name:
        raise BackendError(f"docker.home_volume: {template!r} gives an empty name")
    return name


def home_mount_target(settings: DockerSettings) -> str:
    """Where the home volume goes: the workdir if set, else the user's usual home."""
    if settings.workdir:
        return settings.workdir
    user = (settings.user or "root").split(":", 1)[0]
    return "/root" if user in ("root", "0") else f"/home/{user}"


class PoolEntry:
    """A started warm-pool container and the spare processes waiting in it."""

    def __init__(self, name: str, container_id: str) -> None:
        self.name = name
        self.container_id = container_id
        self.spares: dict[bool, DockerProcess] = {}  # by "has a TTY"

    def abandon(self) -> None:
        """Drop the spares (the container is going)."""
        for spare in self.spares.values():
            spare.abandon()
        self.spares.clear()


class Steps:
    """Which step of preparing an environment is under way (for timeout messages)."""

    def __init__(self, first: str) -> None:
        self.now = first

    def timeout_error(self, settings: DockerSettings) -> StartTimeout:
        """The error for a start that ran out of time during the current step."""
        return StartTimeout(
            f"{self.now} ({settings.image}) took longer than docker.timeouts.start "
            f"({settings.timeouts.start}s)"
        )


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
            env: DockerEnvironment = SessionEnvironment(self, identity, settings)
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
    ) -> ConnectionEnvironment:
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
        return ConnectionEnvironment(self, identity, settings, name, container_id)

    # --- warm pool -----------------------------------------------------------------

    @staticmethod
    def _pool_eligible_settings(settings: DockerSettings) -> bool:
        # A per-user volume cannot be mounted ahead of knowing the user.
        return settings.mode == "connection" and not settings.home_volume

    async def _take_from_pool(self, identity: Identity) -> ConnectionEnvironment | None:
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
                env = ConnectionEnvironment(self, identity, settings, entry.name, entry.container_id)
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

    async def _rename(self, env: ConnectionEnvironment, name: str) -> None:
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


# --- environments ----------------------------------------------------------------------


def wrapped_command(settings: DockerSettings, spec: ProcessSpec, env: Mapping[str, str], *,
                    main: bool = False) -> list[str]:
    """The argv that runs ``spec`` through :data:`WRAPPER` (environment set by the exec).

    The wrapper sets the login variables from the passwd entry; those ``env``
    sets explicitly are handed to it again so that they win, as they do
    when a spare or the Kubernetes backend exports everything. ``main``: it
    is the container's main process (session mode).
    """
    explicit = {k: v for k, v in env.items() if k in LOGIN_VARIABLES}
    return common.wrapped_command(settings.shell, spec, explicit, main=main,
                                  cd_home=settings.workdir is None)


def spare_command(tty: bool, token: str) -> list[str]:
    """The argv of a spare process that waits for its instructions on stdin."""
    return [
        FALLBACK_SHELL,
        "-c",
        WRAPPER,
        "pairpod",
        "spare",
        token,
        "tty" if tty else "pipe",
        "1" if tty else "2",
    ]


def spare_instructions(
    settings: DockerSettings, spec: ProcessSpec, env: Mapping[str, str], token: str
) -> bytes:
    """What a spare reads to become ``spec``: its arguments, shell-quoted, then the token.

    A shell can only export valid names; others are left out (logged).
    """
    exports, skipped = exportable(env)
    if skipped:
        log.info("docker.env_skipped", extra=fields(names=",".join(skipped)))
    words = wrapper_args(settings.shell, spec, exports, cd_home=settings.workdir is None)
    return (" ".join(sh_quote(w) for w in words) + "\n" + token + "\n").encode()


def process_env(settings: DockerSettings, identity: Identity, spec: ProcessSpec) -> dict[str, str]:
    """Variables for one process: config, then identity, then the client's."""
    return common.process_env(settings.env, identity, spec)


class DockerEnvironment(ContainerEnvironment["DockerProcess"]):
    """Base of both modes: tracks processes and closes once."""

    config_section = "docker"
    settings: DockerSettings

    def __init__(self, backend: DockerBackend, identity: Identity, settings: DockerSettings) -> None:
        super().__init__(identity, settings)
        self.backend = backend

    async def _started(self, process: DockerProcess) -> None:
        """Wait for the wrapper's preamble; turn its failures into typed errors."""
        await self._await_started(process, f"image {self.settings.image}", self._environment_gone)

    async def _environment_gone(self, detail: str) -> BackendError:
        return BackendError(f"environment cannot run processes: {detail}")


class ConnectionEnvironment(DockerEnvironment):
    """``mode: connection``: one container; each process is an exec in it."""

    def __init__(
        self,
        backend: DockerBackend,
        identity: Identity,
        settings: DockerSettings,
        name: str,
        container_id: str,
    ) -> None:
        super().__init__(backend, identity, settings)
        self.name = name
        self.container_id = container_id
        self.description = f"docker container {name} ({container_id[:12]})"
        # Set for a container taken from the warm pool: its first process
        # starting is the moment to start a replacement.
        self.from_pool = False
        self._spares: dict[bool, DockerProcess] = {}

    def take_spares(self, spares: dict[bool, DockerProcess]) -> None:
        """Spare processes from the pool, used by the first channels."""
        self._spares = dict(spares)
        spares.clear()

    async def start(self, spec: ProcessSpec) -> Process:
        """Run ``spec`` as an exec in the connection's container."""
        self._check_open()
        engine = self.backend.engine
        tty = spec.pty is not None
        spare = self._spares.pop(tty, None)
        if spare is not None:
            process = await self._start_spare(spare, spec)
            if process is not None:
                return process
        env = process_env(self.settings, self.identity, spec)
        config = {
            "AttachStdin": True,
            "AttachStdout": True,
            "AttachStderr": True,
            "Tty": tty,
            "Cmd": wrapped_command(self.settings, spec, env),
            "Env": [f"{k}={v}" for k, v in env.items()],
            "DetachKeys": DETACH_KEYS,
        }
        try:
            exec_id = await engine.create_exec(self.container_id, config)
            stream = await engine.start_exec(exec_id, tty)
        except EngineError as error:
            # 404: no such container; 409 (or 500 from exec start): not running.
            if error.status in (404, 409) or "not running" in error.engine_message:
                raise await self._environment_gone(error.engine_message) from None
            raise
        process = DockerProcess(ExecTarget(engine, exec_id, self), stream, spec.pty, self.discard)
        try:
            await self._started(process)
        finally:
            if self.from_pool:
                self.from_pool = False
                self.backend.pool_refill()
        if spec.pty is not None:
            # The wrapper already set the size if the image has stty; this covers
            # images without it (and costs one call).
            await process.resize(spec.pty.cols, spec.pty.rows)
        return process

    async def _start_spare(self, spare: DockerProcess, spec: ProcessSpec) -> Process | None:
        """Turn a waiting spare into ``spec``; None if the spare is gone (use an exec)."""
        if not spare.usable_spare:
            spare.abandon()
            return None
        spare.adopt(self, self.discard)
        env = process_env(self.settings, self.identity, spec)
        await spare.launch(spec.pty, spare_instructions(self.settings, spec, env, spare.token))
        preamble = await spare.preamble()
        if preamble.pid is None and preamble.error is None and not preamble.garbage:
            spare.abandon()  # it ended without a word: not worth an error, fall back
            return None
        try:
            await self._started(spare)
        finally:
            if self.from_pool:
                self.from_pool = False
                self.backend.pool_refill()
        if spec.pty is not None:
            await spare.resize(spec.pty.cols, spec.pty.rows)
        return spare

    async def _environment_gone(self, detail: str) -> BackendError:
        # A dying container can still read as running for a moment: give it a
        # short while to settle, so the operator gets its exit code and logs.
        try:
            async with asyncio.timeout(_SETTLE_TIMEOUT):
                await self.backend.engine.wait_container(self.container_id)
        except TimeoutError:
            return BackendError(f"container {self.name} cannot run processes: {detail}")
        except PairpodError:
            return BackendError(f"container {self.name} is gone: {detail}")
        return await self.backend.exited_error(self.name)

    async def run_helper(self, argv: list[str]) -> int | None:
        """Run a short command in the container (no TTY, no input); its exit code."""
        return await self.backend.run_helper(self.container_id, argv)

    async def _close(self) -> None:
        for process in [*self._processes, *self._spares.values()]:
            process.abandon()
        self._spares.clear()
        await self._settle()
        await self.backend.remove(self.name, self.settings.timeouts.stop)
        self.backend.forget(self)
        log.info("docker.container_removed", extra=self._log_fields(container=self.name))


class SessionEnvironment(DockerEnvironment):
    """``mode: session``: each process is its own container running the command."""

    shares_filesystem = False

    def __init__(self, backend: DockerBackend, identity: Identity, settings: DockerSettings) -> None:
        super().__init__(backend, identity, settings)
        self._count = 0
        self.description = f"docker session containers of {identity.conn_id}"

    async def start(self, spec: ProcessSpec) -> Process:
        """Create, attach to and start a container for this one process."""
        self._check_open()
        backend = self.backend
        settings = self.settings
        self._count += 1
        name = backend.container_name(self.identity, f"s{self._count}")
        tty = spec.pty is not None
        env = process_env(settings, self.identity, spec)
        config = backend.container_config(
            settings,
            cmd=wrapped_command(settings, spec, env, main=True),
            labels=backend.labels(settings, self.identity, "session"),
            hostname=hostname_for(settings.hostname, self.identity.username),
            env=env,
            username=self.identity.username,
            session=True,
            tty=tty,
        )
        backend._live.add(name)
        steps = Steps("creating the container")
        stream: HijackedStream | None = None
        try:
            async with asyncio.timeout(settings.timeouts.start):
                container_id = await backend.create(name, config, settings, steps=steps)
                steps.now = "attaching to the container"
                stream = await backend.engine.attach_container(container_id, DETACH_KEYS)
                steps.now = "starting the container"
                await backend.engine.start_container(container_id)
        except BaseException as error:
            if stream is not None:
                stream.close()
            await asyncio.shield(backend.remove(name, settings.timeouts.stop))
            if isinstance(error, TimeoutError):
                raise steps.timeout_error(settings) from None
            raise
        process = DockerProcess(ContainerTarget(self, name, container_id), stream, spec.pty, self.discard)
        await self._started(process)
        if spec.pty is not None:
            await process.resize(spec.pty.cols, spec.pty.rows)
        return process

    async def _close(self) -> None:
        processes = list(self._processes)
        for process in processes:
            process.abandon()
        await asyncio.gather(*(p.kill() for p in processes), return_exceptions=True)
        self.backend.forget(self)


# --- processes -------------------------------------------------------------------------


class ExecTarget:
    """How a process that is an exec is signalled, killed and waited for."""

    def __init__(
        self, engine: Engine, exec_id: str, environment: ConnectionEnvironment | None = None
    ) -> None:
        self.engine = engine
        self.exec_id = exec_id
        # None only for a spare not yet handed to a connection.
        self.environment = environment

    def _env(self) -> ConnectionEnvironment:
        if self.environment is None:
            raise BackendError("a spare process has no environment yet")
        return self.environment

    async def signal(self, name: str, pid: int) -> None:
        await self._env().run_helper(signal_command(name, pid))

    async def kill(self, pid: int | None) -> None:
        if pid is not None:
            await self._env().run_helper(kill_tree_command(pid))

    async def end_reader(self, pid: int) -> None:
        await self._env().run_helper(signal_command("KILL", pid))

    async def exit_code(self) -> int | None:
        """The exit code, once the exec has ended (its stream is already at its end)."""
        delay = 0.005
        # The engine records the code before it closes the stream, so this is
        # normally answered at once. A program can also close its output and
        # keep running; then its end is waited for, polling ever more slowly.
        while True:
            info = await self.engine.inspect_exec(self.exec_id)
            if not info.get("Running") and info.get("ExitCode") is not None:
                return int(info["ExitCode"])
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)

    async def resize(self, cols: int, rows: int) -> None:
        await self.engine.resize_exec(self.exec_id, cols, rows)

    async def release(self) -> None:
        """Nothing to remove: exec instances go with their container."""


class ContainerTarget:
    """How a process that is a whole container (session mode) is handled."""

    def __init__(self, environment: SessionEnvironment, name: str, container_id: str) -> None:
        self.environment = environment
        self.name = name
        self.container_id = container_id

    async def signal(self, name: str, pid: int) -> None:
        # The init (PID 1) forwards it to the program.
        await self.environment.backend.engine.kill_container(self.container_id, f"SIG{name}")

    async def kill(self, pid: int | None) -> None:
        await self.release()

    async def end_reader(self, pid: int) -> None:
        await self.environment.backend.run_helper(self.container_id, signal_command("KILL", pid))

    async def exit_code(self) -> int | None:
        return await self.environment.backend.engine.wait_container(self.container_id)

    async def resize(self, cols: int, rows: int) -> None:
        await self.environment.backend.engine.resize_container(self.container_id, cols, rows)

    async def release(self) -> None:
        env = self.environment
        await env.backend.remove(self.name, env.settings.timeouts.stop)


class DockerProcess(ContainerProcess):
    """A program in a container, reached through one hijacked Engine stream."""

    log_prefix = "docker"

    def __init__(
        self,
        target: ExecTarget | ContainerTarget,
        stream: HijackedStream,
        pty: PtySpec | None,
        on_done: Callable[[DockerProcess], None],
    ) -> None:
        super().__init__(pty)
        self._target = target
        self._stream = stream
        self._on_done = on_done
        self._demuxer = None if pty is not None else Demuxer()
        self._engine_errors = bytearray()
        self._preamble_reader = PreambleReader()
        self._preamble_stream = STDOUT if pty is not None else STDERR
        # Only spares say "ready" (before their instructions, then the preamble).
        self._ready: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._finisher: asyncio.Task[None] | None = None
        self._resizes_pending = 0
        self._resize_idle = asyncio.Event()
        self._resize_idle.set()
        self.token = ""  # a spare's end-of-instructions line
        stream.set_consumer(self._on_data, self._on_eof)

    # --- data from the engine -------------------------------------------------------

    def _on_data(self, data: bytes) -> None:
        if self._demuxer is None:
            pieces: list[tuple[int, bytes]] = [(STDOUT, data)]
        else:
            try:
                pieces = self._demuxer.feed(data)
            except ValueError as error:
                log.warning("docker.stream_corrupt", extra=fields(error=str(error)))
                self._stream.close()
                return
        for stream, payload in pieces:
            if stream == SYSTEMERR:
                self._engine_errors += payload
                continue
            if stream == self._preamble_stream:
                payload = self._take_preamble(payload)
            self._pipes[stream].feed(payload)
        self._hold_back_if_full()

    def _take_preamble(self, payload: bytes) -> bytes:
        while payload and not self._preamble_reader.done:
            preamble, payload = self._preamble_reader.feed(payload)
            if preamble is None:
                break
            if preamble.ready and not self._ready.done():
                self._ready.set_result(True)
                self._preamble_reader = PreambleReader()  # the real preamble follows
                continue
            self._preamble.set_result(preamble)
        return payload

    def _on_eof(self, exc: BaseException | None) -> None:
        if not self._ready.done():
            self._ready.set_result(False)
        if not self._preamble.done():
            self._preamble.set_result(self._preamble_reader.feed_eof())
        for pipe in self._pipes.values():
            pipe.end()
        if self._engine_errors:
            log.warning(
                "docker.stream_error",
                extra=fields(error=self._engine_errors.decode(errors="replace").strip()),
            )
        if self._finisher is None:
            self._finisher = asyncio.ensure_future(self._finish())

    async def _finish(self) -> None:
        """After the stream ends: learn the exit code, release the container."""
        status: ExitStatus
        code = None
        if not self._abandoned:
            try:
                code = await self._target.exit_code()
            except PairpodError as error:
                if not self._killed:
                    log.warning("docker.exit_status_unknown", extra=fields(error=error.operator_message))
        if code is not None:
            status = exit_status(code)
        elif self._killed:
            status = ExitStatus(code=None, signal="KILL")
        else:
            status = ExitStatus(code=255)
        with contextlib.suppress(PairpodError):
            await self._target.release()
        self._stream.close()
        if not self._status.done():
            self._status.set_result(status)
        self._on_done(self)

    # --- used by the environment ----------------------------------------------------

    def leftover_output(self) -> bytes:
        """Everything buffered, for error messages when the wrapper did not run."""
        return self._pipes[STDOUT].drain() + self._pipes[STDERR].drain() + bytes(self._engine_errors)

    async def ready(self) -> bool:
        """For a spare: whether it is up and waiting for instructions."""
        return await asyncio.shield(self._ready)

    def adopt(self, environment: ConnectionEnvironment, on_done: Callable[[DockerProcess], None]) -> None:
        """A spare joins an environment (it was started before there was one)."""
        assert isinstance(self._target, ExecTarget)
        self._target.environment = environment
        self._on_done = on_done

    async def launch(self, pty: PtySpec | None, instructions: bytes) -> None:
        """Tell a spare what to become."""
        self._pty = pty
        await self.write(instructions)

    @property
    def usable_spare(self) -> bool:
        """A spare that said ready and has not ended since."""
        return (
            self._ready.done()
            and self._ready.result()
            and not self._preamble.done()
            and self._finisher is None
        )

    def abandon(self) -> None:
        """The environment is going away: end the streams now, the exit code is moot."""
        self._killed = True
        self._abandoned = True
        self._stream.close()

    # --- Process -------------------------------------------------------------------------

    def _pause_output(self) -> None:
        self._stream.pause_reading()

    def _resume_output(self) -> None:
        self._stream.resume_reading()

    async def write(self, data: bytes) -> None:
        """Send input; input to a program that has ended is dropped.

        Input that follows a resize waits for it: the resize is an Engine call,
        slower than the data path, and a program reading the input ("stty
        size", a redraw) must already see the new size, as with a local PTY.
        """
        if not self._resize_idle.is_set():
            await self._resize_idle.wait()
        if self._eof_sent or self._status.done():
            return
        with contextlib.suppress(ConnectionError):
            await self._stream.write(data)

    async def _close_stdin(self) -> None:
        self._stream.write_eof()

    async def resize(self, cols: int, rows: int, pixel_width: int = 0, pixel_height: int = 0) -> None:
        """Resize the TTY through the Engine (the program gets SIGWINCH)."""
        if self._pty is None or self._status.done():
            return
        # Marked before the first await, so input sent after this resize waits for it.
        self._resizes_pending += 1
        self._resize_idle.clear()
        try:
            await self._target.resize(cols, rows)
        except PairpodError as error:
            # Racing with the program's exit is normal; anything else is worth a line.
            if not self._status.done():
                log.info("docker.resize_failed", extra=fields(error=error.operator_message))
        finally:
            self._resizes_pending -= 1
            if not self._resizes_pending:
                self._resize_idle.set()

    def _signallable(self) -> bool:
        return self._finisher is None  # the stream has not ended

    async def _send_signal(self, name: str, pid: int) -> None:
        await self._target.signal(name, pid)

    async def _end_reader(self, pid: int) -> None:
        await self._target.end_reader(pid)

    async def _kill_tree(self, pid: int | None) -> None:
        if self._finisher is None:
            await self._target.kill(pid)

    def _stop_stream(self) -> None:
        self._stream.close()
