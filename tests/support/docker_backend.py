"""Driving the Docker backend directly (no SSH) in tests."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from pairpod.backends.base import Process, ProcessSpec, PtySpec, Stream
from pairpod.backends.docker import DockerBackend, DockerEnvironment
from pairpod.config import Config
from tests.support.docker_env import containers, docker_config, remove_all
from tests.support.identity import identity, new_instance_id


@asynccontextmanager
async def running_backend(
    config: Config,
    instance_id: str | None = None,
) -> AsyncIterator[DockerBackend]:
    """A started DockerBackend; stopped after, and nothing of its instance may remain."""
    backend = DockerBackend(config, instance_id or new_instance_id())
    await backend.start()
    try:
        yield backend
    finally:
        await backend.stop()
        left = containers(instance=backend.instance_id)
        remove_all(instance=backend.instance_id)
        assert left == [], f"containers left behind: {[c['Names'] for c in left]}"


@asynccontextmanager
async def environment(
    mode: str = "connection", image: str = "busybox", user: str = "alice", **docker: Any
) -> AsyncIterator[DockerEnvironment]:
    """One environment on a fresh backend.

    ``mode`` is ``connection``, ``session``, or ``pool``: a connection-mode
    container taken from a full warm pool, whose first processes are its spares.
    """
    if mode == "pool":
        config = docker_config("connection", image, warm_pool=1, **docker)
    else:
        config = docker_config(mode, image, **docker)
    async with running_backend(config) as backend:
        if mode == "pool":
            await eventually(lambda: backend.pool_size() == 1, "the warm pool to fill", 60)
        env = await backend.open(identity(config, user))
        try:
            yield env
        finally:
            await env.close()


async def read_all(process: Process, stream: Stream = Stream.STDOUT) -> bytes:
    """Everything a process writes on ``stream`` until it ends."""
    chunks = []
    while data := await process.read(stream):
        chunks.append(data)
    return b"".join(chunks)


async def read_until(process: Process, marker: bytes, stream: Stream = Stream.STDOUT) -> bytes:
    """Output up to and including ``marker`` (fails if the stream ends first)."""
    seen = b""
    while marker not in seen:
        data = await process.read(stream)
        assert data, f"stream ended before {marker!r}; got {seen!r}"
        seen += data
    return seen


async def run(
    environment: DockerEnvironment, command: str, stdin: bytes = b"", pty: PtySpec | None = None, **spec: Any
) -> tuple[bytes, bytes, Any]:
    """Run a command to completion: (stdout, stderr, ExitStatus)."""
    process = await environment.start(ProcessSpec(command=command, pty=pty, **spec))
    if stdin:
        await process.write(stdin)
    if pty is None:
        await process.write_eof()
    out, err = await asyncio.gather(read_all(process, Stream.STDOUT), read_all(process, Stream.STDERR))
    return out, err, await process.wait()


async def eventually(check: Callable[[], Any], what: str, limit: float = 20.0) -> Any:
    """Poll an observable condition (async or not) until it holds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {limit}s waiting for {what}")
        await asyncio.sleep(0.05)
