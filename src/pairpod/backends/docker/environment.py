"""The Docker environments: one container per connection, or one per channel."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import TYPE_CHECKING

from pairpod.backends.base import Identity, Process, ProcessSpec
from pairpod.backends.container.environment import ContainerEnvironment, process_env
from pairpod.backends.container.wrapper import LOGIN_VARIABLES, exportable, sh_quote, wrapper_args
from pairpod.backends.container.wrapper import wrapped_command as wrapper_command
from pairpod.backends.docker.api import EngineError, HijackedStream
from pairpod.backends.docker.container import DETACH_KEYS, Steps, container_config, hostname_for
from pairpod.backends.docker.process import ContainerTarget, DockerProcess, ExecTarget
from pairpod.config import DockerSettings
from pairpod.errors import BackendError, PairpodError
from pairpod.log import fields, get_logger

if TYPE_CHECKING:
    from pairpod.backends.docker.backend import DockerBackend

log = get_logger("backend.docker")

# How long a container that failed an exec may take to show it has stopped.
_SETTLE_TIMEOUT = 2.0

# --- environments ----------------------------------------------------------------------


def wrapped_command(
    settings: DockerSettings, spec: ProcessSpec, env: Mapping[str, str], *, main: bool = False
) -> list[str]:
    """The argv that runs ``spec`` through :data:`WRAPPER` (environment set by the exec).

    The wrapper sets the login variables from the passwd entry; those ``env``
    sets explicitly are handed to it again so that they win, as they do
    when a spare or the Kubernetes backend exports everything. ``main``: it
    is the container's main process (session mode).
    """
    explicit = {k: v for k, v in env.items() if k in LOGIN_VARIABLES}
    return wrapper_command(settings.shell, spec, explicit, main=main, cd_home=settings.workdir is None)


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


class DockerEnvironment(ContainerEnvironment["DockerProcess"]):
    """Base of both modes: tracks processes and closes once."""

    config_section = "docker"
    settings: DockerSettings
    backend: DockerBackend

    def __init__(self, backend: DockerBackend, identity: Identity, settings: DockerSettings) -> None:
        super().__init__(identity, settings)
        self.backend = backend

    async def _started(self, process: DockerProcess) -> None:
        """Wait for the wrapper's preamble; turn its failures into typed errors."""
        await self._await_started(process, f"image {self.settings.image}", self._environment_gone)

    async def _environment_gone(self, detail: str) -> BackendError:
        return BackendError(f"environment cannot run processes: {detail}")


class DockerConnectionEnvironment(DockerEnvironment):
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
        env = process_env(self.settings.env, self.identity, spec)
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
            self._left_pool()
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
        env = process_env(self.settings.env, self.identity, spec)
        await spare.launch(spec.pty, spare_instructions(self.settings, spec, env, spare.token))
        preamble = await spare.preamble()
        if preamble.pid is None and preamble.error is None and not preamble.garbage:
            spare.abandon()  # it ended without a word: not worth an error, fall back
            return None
        try:
            await self._started(spare)
        finally:
            self._left_pool()
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


class DockerSessionEnvironment(DockerEnvironment):
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
        env = process_env(settings.env, self.identity, spec)
        config = container_config(
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
