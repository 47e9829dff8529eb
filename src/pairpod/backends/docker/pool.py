"""The Docker warm pool: started containers, each with spare processes waiting in it.

A pool container is created and started ahead of logins, with a spare
process of each kind (with and without a TTY) waiting in it for its
instructions; a login in ``mode: connection`` takes one that still runs and
renames it after its connection. The loop that keeps the pool full is the
container backends' (:mod:`pairpod.backends.container.backend`).
"""

from __future__ import annotations

import asyncio
import secrets
from typing import TYPE_CHECKING

from pairpod.backends.base import Identity, PtySpec
from pairpod.backends.container.wrapper import DEFAULT_IDLE_COMMAND, FALLBACK_SHELL, WRAPPER
from pairpod.backends.docker.api import Engine
from pairpod.backends.docker.container import DETACH_KEYS, container_config, hostname_for
from pairpod.backends.docker.environment import DockerConnectionEnvironment
from pairpod.backends.docker.process import DockerProcess, ExecTarget
from pairpod.config import DockerSettings
from pairpod.errors import PairpodError
from pairpod.log import fields, get_logger

if TYPE_CHECKING:
    from pairpod.backends.docker.backend import DockerBackend

log = get_logger("backend.docker")

# A handed-out pool container is replaced after the login's first process
# starts, or after this long at the latest.
REFILL_DELAY = 2.0


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
        "1",
    ]


def eligible(settings: DockerSettings) -> bool:
    """Whether these settings allow a pool: a per-user volume cannot be mounted ahead of knowing the user."""
    return settings.mode == "connection" and not settings.home_volume


async def take(backend: DockerBackend, identity: Identity) -> DockerConnectionEnvironment | None:
    """A started pool container for this login, if the pool has one that still runs."""
    settings = identity.config.docker
    if settings != backend.config.docker or not eligible(settings):
        return None
    while backend._pool:
        entry = backend._pool.popleft()
        # Refill once the login is served: a container start running beside the
        # login's first exec would slow both (and the exec is what the user waits for).
        asyncio.get_running_loop().call_later(REFILL_DELAY, backend._pool_wakeup.set)
        try:
            state = (await backend.engine.inspect_container(entry.container_id)).get("State", {})
        except BaseException:
            # Unknown state (engine down, or the login was cancelled): the
            # container is not handed out, so it must not stay owned either.
            drop_entry(backend, entry, settings)
            raise
        if state.get("Running"):
            env = DockerConnectionEnvironment(backend, identity, settings, entry.name, entry.container_id)
            env.from_pool = True
            env.take_spares(entry.spares)
            env.background(rename(backend, env, backend.container_name(identity)))
            log.info(
                "docker.pool_handout",
                extra=fields(conn=identity.conn_id, user=identity.username, container=entry.name),
            )
            return env
        # It died while waiting (an engine restart, say): drop it, try the next.
        log.warning("docker.pool_container_gone", extra=fields(container=entry.name))
        drop_entry(backend, entry, settings)
    return None


def drop_entry(backend: DockerBackend, entry: PoolEntry, settings: DockerSettings) -> None:
    """Give up a pool container: its spares now, the container in the background."""
    entry.abandon()
    # If this removal fails too, the name is no longer live: the reaper retries.
    backend._spawn(backend.remove(entry.name, settings.timeouts.stop))


async def rename(backend: DockerBackend, env: DockerConnectionEnvironment, name: str) -> None:
    """Name a handed-out pool container after its connection, for operators."""
    backend._live.add(name)
    try:
        await backend.engine.rename_container(env.container_id, name)
    except PairpodError as error:
        backend._live.discard(name)
        log.warning(
            "docker.pool_rename_failed", extra=fields(container=env.name, error=error.operator_message)
        )
        return
    backend._live.discard(env.name)
    env.name = name


async def start_container(backend: DockerBackend) -> PoolEntry:
    """Start one pool container with its spares (counted as filling while it starts)."""
    settings = backend.config.docker
    name = backend.container_name(None)
    template = settings.hostname
    hostname = "pairpod" if "{username}" in template else hostname_for(template, "")
    config = container_config(
        settings,
        cmd=list(settings.idle_command or DEFAULT_IDLE_COMMAND),
        labels=backend.labels(settings, None, "connection", pool=True),
        hostname=hostname,
        env=dict(settings.env),
        username=None,
    )
    backend._live.add(name)
    entry: PoolEntry | None = None
    try:
        async with asyncio.timeout(settings.timeouts.start):
            container_id = await backend.create(name, config, settings)
            await backend.start_container(name, settings)
            entry = PoolEntry(name, container_id)
            # A spare of each kind, so the first channel of a pooled login
            # skips the exec start (the larger part of its wait).
            for tty in (False, True):
                spare = await start_spare(backend.engine, container_id, tty)
                if spare is not None:
                    entry.spares[tty] = spare
    except BaseException:
        if entry is not None:
            entry.abandon()
        await asyncio.shield(backend.remove(name, settings.timeouts.stop))
        raise
    return entry


async def start_spare(engine: Engine, container_id: str, tty: bool) -> DockerProcess | None:
    """A process waiting in the container to become a connection's first channel."""
    token = secrets.token_hex(8)
    exec_id = await engine.create_exec(
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
    stream = await engine.start_exec(exec_id, tty)
    placeholder = PtySpec(term="dumb", cols=80, rows=24) if tty else None
    spare = DockerProcess(ExecTarget(engine, exec_id), stream, placeholder, lambda _: None)
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
