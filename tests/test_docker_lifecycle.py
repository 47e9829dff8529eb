"""Lifecycle of Docker environments: failures, reaping, the warm pool, crashes, scale."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator

import pytest

from pairpod.backends.base import ProcessSpec, PtySpec
from pairpod.backends.docker import DockerBackend
from pairpod.errors import (
    BackendError,
    BackendUnavailable,
    EnvironmentExited,
    ImagePullFailed,
    ImageUnavailable,
    StartTimeout,
)
from tests.support.docker_backend import eventually, read_all, run, running_backend
from tests.support.docker_env import (
    containers,
    docker_config,
    docker_overrides,
    inspect,
    remove_all,
)
from tests.support.identity import identity, new_instance_id
from tests.support.images import busybox_image

MODES = ["connection", "session"]


def _left(instance_id: str) -> list[str]:
    return [c["Names"] for c in containers(instance=instance_id)]


@pytest.fixture
async def silent_registry() -> AsyncIterator[str]:
    """A loopback "registry" that accepts connections and never answers a byte."""
    held: list[asyncio.StreamWriter] = []

    async def hold(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.close()
        for writer in held:
            writer.close()


# --- failures: a clear error, nothing left behind --------------------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_missing_image_with_pull_never(mode: str):
    config = docker_config(mode, image="pairpod-test/does-not-exist:1", pull="never")
    async with running_backend(config) as backend:
        with pytest.raises(ImageUnavailable) as caught:
            await backend.open(identity(config))
        assert _left(backend.instance_id) == []
    assert "pairpod-test/does-not-exist:1" in caught.value.operator_message
    assert "pull is never" in caught.value.operator_message
    assert caught.value.user_message == "environment image not available"


@pytest.mark.parametrize("pull", ["if-missing", "always"])
async def test_pull_failure_is_reported(pull: str):
    # Port 1 on loopback refuses at once: the engine's pull fails, no traffic leaves.
    image = "127.0.0.1:1/pairpod-test/absent:1"
    config = docker_config(image=image, pull=pull)
    lines: list[str] = []
    async with running_backend(config) as backend:
        with pytest.raises(ImagePullFailed) as caught:
            await backend.open(identity(config), status=lines.append)
        assert _left(backend.instance_id) == []
    assert f"pull of image {image} failed" in caught.value.operator_message
    assert caught.value.user_message == "could not fetch the environment image"
    assert lines == [f"pulling image {image}..."]


async def test_start_timeout_names_the_step_and_leaves_nothing(silent_registry: str):
    image = f"{silent_registry}/pairpod-test/slow:1"
    config = docker_config(image=image, pull="if-missing", timeouts={"start": "1s"})
    async with running_backend(config) as backend:
        with pytest.raises(StartTimeout) as caught:
            await backend.open(identity(config))
        assert _left(backend.instance_id) == []
    assert "pulling the image" in caught.value.operator_message
    assert "docker.timeouts.start (1.0s)" in caught.value.operator_message
    assert caught.value.user_message == "environment did not start in time"


async def test_container_that_exits_at_once_shows_its_logs_to_the_operator():
    config = docker_config(idle_command=["/bin/sh", "-c", "echo 'fatal: bad settings' >&2; exit 3"])
    async with running_backend(config) as backend:
        # The exit races with the start call: it is caught either while opening
        # or by the first process, with the same error and the same details.
        try:
            env = await backend.open(identity(config))
        except EnvironmentExited as error:
            caught = error
        else:
            with pytest.raises(EnvironmentExited) as info:
                await env.start(ProcessSpec(command="true"))
            caught = info.value
            await env.close()
        assert _left(backend.instance_id) == []
    assert "stopped (exit code 3)" in caught.operator_message
    assert "fatal: bad settings" in caught.operator_message
    assert caught.user_message == "environment failed to start"


async def test_unreachable_engine_is_backend_unavailable_and_not_fatal():
    config = docker_config(host="unix:///run/pairpod-test-no-engine.sock")
    backend = DockerBackend(config, new_instance_id())
    await backend.start()  # logs, does not raise: the gateway keeps serving
    try:
        with pytest.raises(BackendUnavailable) as caught:
            await backend.open(identity(config))
    finally:
        await backend.stop()
    assert caught.value.user_message == "backend unavailable, try again later"
    assert "pairpod-test-no-engine.sock" in caught.value.operator_message


@pytest.mark.parametrize("mode", MODES)
async def test_cancelling_an_open_at_any_moment_leaves_nothing(mode: str):
    # The gateway cancels a connection's environment task when the client leaves
    # mid-login. Wherever the cancellation lands, nothing may remain.
    config = docker_config(mode)
    async with running_backend(config) as backend:
        for delay in (0, 0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.4):
            task = asyncio.ensure_future(backend.open(identity(config)))
            await asyncio.sleep(delay)
            task.cancel()
            try:
                env = await task
            except asyncio.CancelledError:
                pass
            else:
                await env.close()
            assert _left(backend.instance_id) == [], f"left after cancel at {delay}s"


# --- reaping -------------------------------------------------------------------------


def kill_and_wait(container: str) -> None:
    """Stop a container behind the backend's back (as a crash or OOM would)."""
    subprocess.run(["docker", "kill", container], capture_output=True, check=True)
    subprocess.run(["docker", "wait", container], capture_output=True, check=True)


def _docker_run(instance_id: str, name: str, *labels: str) -> None:
    argv = [
        "docker",
        "run",
        "-d",
        "--network",
        "none",
        "--name",
        name,
        "--label",
        f"pairpod.instance={instance_id}",
        "--label",
        "pairpod.managed=true",
    ]
    for label in labels:
        argv += ["--label", label]
    subprocess.run([*argv, busybox_image(), "sleep", "100000"], capture_output=True, check=True)


async def test_start_up_reaps_this_instances_leftovers_only():
    mine, other = new_instance_id(), new_instance_id()
    try:
        _docker_run(mine, f"pairpod-{mine}-old")
        _docker_run(other, f"pairpod-{other}-old")
        config = docker_config()
        async with running_backend(config, mine):
            assert _left(mine) == []
            assert len(_left(other)) == 1
    finally:
        remove_all(instance=other)


async def test_reaping_removes_unowned_containers_and_keeps_live_ones():
    config = docker_config()
    async with running_backend(config) as backend:
        env = await backend.open(identity(config))
        _docker_run(backend.instance_id, f"pairpod-{backend.instance_id}-stray")
        assert await backend.reap_orphans() == [f"pairpod-{backend.instance_id}-stray"]
        assert _left(backend.instance_id) == [env.name]
        out, _, _ = await run(env, "echo alive")
        assert out == b"alive\n"
        await env.close()


async def test_reaper_loop_runs_on_its_own():
    class QuickReaper(DockerBackend):
        reap_interval = 0.1

    config = docker_config()
    backend = QuickReaper(config, new_instance_id())
    await backend.start()
    try:
        _docker_run(backend.instance_id, f"pairpod-{backend.instance_id}-stray")
        await eventually(lambda: _left(backend.instance_id) == [], "the reaper loop")
    finally:
        await backend.stop()
        remove_all(instance=backend.instance_id)


async def test_gateway_killed_with_sigkill_then_restarted_leaves_no_orphans():
    instance_id = new_instance_id()
    overrides = docker_overrides(warm_pool=2)
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.support.docker_child",
        instance_id,
        "3",
        json.dumps(overrides),
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert child.stdout is not None
        line = await asyncio.wait_for(child.stdout.readline(), 120)
        assert line.startswith(b"READY "), line
        before = _left(instance_id)
        assert len(before) == 5  # 3 connections + 2 warm
        child.kill()
        await child.wait()
        assert sorted(_left(instance_id)) == sorted(before)  # a crash removes nothing
        async with running_backend(docker_config(), instance_id):
            assert _left(instance_id) == []
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()
        remove_all(instance=instance_id)


# --- the warm pool -----------------------------------------------------------------


async def test_warm_pool_hands_out_started_containers_and_refills():
    config = docker_config(warm_pool=2)
    async with running_backend(config) as backend:
        await eventually(lambda: backend.pool_size() == 2, "the pool to fill")
        pooled = {c["ID"] for c in containers(instance=backend.instance_id, pool="true")}
        env = await backend.open(identity(config, user="dave", conn="warm1"))
        assert env.container_id in pooled
        # Renamed after its connection in the background, for operators.
        await eventually(lambda: env.name.startswith(f"pairpod-{backend.instance_id}-warm1-"), "the rename")
        assert inspect(env.name)["Id"] == env.container_id
        out, _, _ = await run(env, "echo from-pool")
        assert out == b"from-pool\n"
        await eventually(lambda: backend.pool_size() == 2, "the pool to refill")
        assert len(_left(backend.instance_id)) == 3
        # A connection whose settings differ cannot use the pool.
        other = docker_config(warm_pool=2, env={"DIFFERENT": "1"})
        cold = await backend.open(identity(other))
        assert cold.container_id not in pooled
        await cold.close()
        await env.close()


async def test_pooled_login_uses_its_waiting_spares_first():
    config = docker_config(warm_pool=1)
    async with running_backend(config) as backend:
        await eventually(lambda: backend.pool_size() == 1, "the pool to fill")
        spares = dict(backend._pool[0].spares)
        assert set(spares) == {False, True}  # one without a TTY, one with
        env = await backend.open(identity(config))
        first = await env.start(ProcessSpec(command="echo spare"))
        second = await env.start(ProcessSpec(command="echo exec"))
        shell = await env.start(ProcessSpec(pty=PtySpec("xterm", 80, 24)))
        assert first is spares[False] and shell is spares[True]
        assert second not in spares.values()
        await shell.kill()
        for process, expected in ((first, b"spare\n"), (second, b"exec\n")):
            await process.write_eof()
            assert await read_all(process) == expected
        await env.close()


async def test_dead_pool_container_is_skipped_and_removed():
    config = docker_config(warm_pool=1)
    async with running_backend(config) as backend:
        await eventually(lambda: backend.pool_size() == 1, "the pool to fill")
        (dead,) = [c["ID"] for c in containers(instance=backend.instance_id, pool="true")]
        kill_and_wait(dead)
        env = await backend.open(identity(config))
        assert env.container_id != dead
        out, _, _ = await run(env, "echo works")
        assert out == b"works\n"
        await eventually(
            lambda: dead not in {c["ID"] for c in containers(instance=backend.instance_id)},
            "the dead pool container to be removed",
        )
        await env.close()


# --- scale ---------------------------------------------------------------------------


async def test_fifty_connections_at_once_each_get_their_own_container():
    config = docker_config()
    async with running_backend(config) as backend:
        envs = await asyncio.gather(*(backend.open(identity(config, user=f"u{n}")) for n in range(50)))
        try:
            assert len({env.container_id for env in envs}) == 50
            outputs = await asyncio.gather(*(run(env, "hostname") for env in envs))
            assert sorted(out for out, _, _ in outputs) == sorted(f"u{n}\n".encode() for n in range(50))
            assert len(_left(backend.instance_id)) == 50
        finally:
            await asyncio.gather(*(env.close() for env in envs))
        assert _left(backend.instance_id) == []


async def test_closed_environment_refuses_new_processes():
    config = docker_config()
    async with running_backend(config) as backend:
        env = await backend.open(identity(config))
        await env.close()
        with pytest.raises(BackendError):
            await env.start(ProcessSpec(command="true"))
