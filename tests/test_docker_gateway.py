"""The Docker backend behind a real gateway, driven by real SSH clients."""

from __future__ import annotations

import asyncio
import logging
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from pairpod.config import default_instance_id
from tests.conftest import MakeGateway
from tests.support.client import connect
from tests.support.docker_engine import PrivateEngine
from tests.support.docker_env import containers, docker_overrides
from tests.support.gateway import (
    ClientKey,
    GatewayProcess,
    base_config,
    wait_until,
    write_config,
)
from tests.support.images import busybox_image


def _instance_containers(gw) -> list[str]:  # type: ignore[no-untyped-def]
    return [c["Names"] for c in containers(instance=gw.gateway.instance_id)]


@pytest.fixture
def private_engine() -> Iterator[PrivateEngine]:
    """A dockerd of this test's own, with the busybox test image loaded."""
    engine = PrivateEngine().start()
    try:
        engine.load_image(busybox_image())
        yield engine
    finally:
        engine.destroy()


def test_unreachable_engine_gives_the_user_one_line_and_a_failure(
    make_gateway: MakeGateway, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.INFO, "pairpod")
    gw = make_gateway(docker_overrides(host="unix:///run/pairpod-test-no-engine.sock"))
    result = gw.ssh("true")
    assert result.returncode != 0
    assert b"backend unavailable, try again later" in result.stderr
    # The gateway itself keeps serving: the next login gets the same clear answer.
    again = gw.ssh("true")
    assert again.returncode != 0
    assert b"backend unavailable, try again later" in again.stderr
    # The operator gets a warning naming the engine, not a traceback.
    failures = [r for r in caplog.records if r.getMessage() == "environment.failed"]
    assert failures and all(r.levelno == logging.WARNING for r in failures)
    assert "pairpod-test-no-engine.sock" in str(failures[0].__dict__.get("pairpod_fields"))
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]


@pytest.mark.parametrize(
    ("settings", "line"),
    [
        ({"image": "pairpod-test/does-not-exist:1", "pull": "never"}, b"environment image not available"),
        (
            {"image": "127.0.0.1:1/pairpod-test/absent:1", "pull": "if-missing"},
            b"could not fetch the environment image",
        ),
        ({"image": "busybox", "idle_command": ["/bin/sh", "-c", "exit 3"]}, b"environment failed to start"),
    ],
    ids=["missing-image", "pull-failure", "exits-at-once"],
)
def test_start_failures_give_the_user_one_clear_line(
    make_gateway: MakeGateway, settings: dict[str, object], line: bytes
):
    image = str(settings.pop("image"))
    overrides = docker_overrides(image=image, **settings)  # type: ignore[arg-type]
    gw = make_gateway(overrides)
    result = gw.ssh("true")
    assert result.returncode != 0
    assert line in result.stderr, result.stderr
    assert not result.stderr.startswith(b"pairpod: pulling")  # a command's stderr stays its own
    if settings.get("pull") == "if-missing":  # on a terminal, told while it pulls
        interactive = gw.ssh("true", options=["-tt"])
        assert f"pairpod: pulling image {image}...\r\npairpod: ".encode() in interactive.stderr
    wait_until(lambda: _instance_containers(gw) == [], message="nothing left behind")


def test_client_killed_mid_session_removes_its_container(make_gateway: MakeGateway):
    gw = make_gateway(docker_overrides(image="busybox"))
    client = subprocess.Popen(
        gw.ssh_argv("echo started; exec sleep 1000"), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        assert client.stdout is not None
        assert client.stdout.readline() == b"started\n"
        assert len(_instance_containers(gw)) == 1
        client.send_signal(signal.SIGKILL)
        client.wait(10)
        wait_until(lambda: _instance_containers(gw) == [], message="the container to be removed")
    finally:
        if client.poll() is None:
            client.kill()
            client.wait(10)


def test_gateway_killed_with_sigkill_and_restarted_removes_what_it_left(
    tmp_path: Path, client_key: ClientKey
):
    """``pairpod serve`` as an operator runs it: the config names no instance id."""
    config = base_config(tmp_path, client_key, docker_overrides(image="busybox", warm_pool=1))
    data = config.model_dump(mode="json", exclude={"instance_id"})
    gateway = GatewayProcess(write_config(tmp_path / "pairpod.yaml", data), key=client_key)
    instance_id = default_instance_id()  # the host's name
    client = subprocess.Popen(["true"])
    try:
        gateway.start()
        assert f"instance={instance_id}" in gateway.log()
        client = subprocess.Popen(
            gateway.ssh_argv("echo up; exec sleep 1000"), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
        )
        assert client.stdout is not None
        assert client.stdout.readline() == b"up\n"
        wait_until(
            lambda: len(containers(instance=instance_id)) == 2,
            message="a session's container and a refilled pool",
        )
        stranded = {c["ID"] for c in containers(instance=instance_id)}

        gateway.proc.kill()  # type: ignore[union-attr]
        gateway.proc.wait(10)  # type: ignore[union-attr]
        client.wait(10)
        assert {c["ID"] for c in containers(instance=instance_id)} == stranded  # a crash removes nothing

        gateway.start()  # the same config, so the same instance id: what it left is reaped
        assert gateway.ssh("echo again").stdout == b"again\n"
        wait_until(
            lambda: not stranded & {c["ID"] for c in containers(instance=instance_id)},
            message="the earlier run's containers to be removed",
        )
        assert gateway.terminate() == 0
        assert containers(instance=instance_id) == []
    finally:
        client.kill()
        gateway.kill()
        subprocess.run(
            ["docker", "rm", "-f", *(c["ID"] for c in containers(instance=instance_id))], capture_output=True
        )


async def test_fifty_connections_at_once_each_get_their_own_container(make_gateway: MakeGateway):
    gw = make_gateway(docker_overrides(image="busybox"))
    users = [f"u{n}" for n in range(50)]
    conns = await asyncio.gather(*(connect(gw, user=user) for user in users))
    try:
        # Each session is held open (stdin) so all fifty containers live at once.
        processes = await asyncio.gather(*(c.create_process("hostname; cat") for c in conns))
        hostnames = await asyncio.gather(*(p.stdout.readline() for p in processes))
        assert hostnames == [f"{user}\n" for user in users]  # the container is named after its user
        live = containers(instance=gw.gateway.instance_id)
        assert len({c["ID"] for c in live}) == 50
        assert sorted(c["Labels"].split("pairpod.user=")[1].split(",")[0] for c in live) == sorted(users)
        for process in processes:
            process.stdin.write_eof()
        results = await asyncio.gather(*(p.wait(timeout=60) for p in processes))
        assert [r.exit_status for r in results] == [0] * 50
    finally:
        for conn in conns:
            conn.close()
    wait_until(lambda: _instance_containers(gw) == [], message="every container removed")


async def test_graceful_shutdown_removes_every_container(make_gateway: MakeGateway):
    gw = make_gateway(docker_overrides(image="busybox", warm_pool=1))
    wait_until(lambda: gw.gateway.backend.pool_size() == 1, message="the warm pool")
    clients = []
    for _ in range(3):
        conn = await connect(gw)
        process = await conn.create_process("echo up; exec sleep 1000")
        assert await process.stdout.readline() == "up\n"
        clients.append(conn)
    # Three sessions, and the pool refilled after the first took its container.
    wait_until(
        lambda: gw.gateway.backend.pool_size() == 1 and len(_instance_containers(gw)) == 4,
        message="three sessions and a refilled pool",
    )
    instance_id = gw.gateway.instance_id
    gw.stop()
    gw.stop = lambda: None  # type: ignore[method-assign]  # already stopped
    for conn in clients:
        conn.close()
    assert containers(instance=instance_id) == []


async def test_engine_stopped_and_started_again_during_a_run(
    make_gateway: MakeGateway, private_engine: PrivateEngine
):
    gw = make_gateway(docker_overrides(image="busybox", host=private_engine.host))
    assert gw.ssh("echo before").stdout == b"before\n"

    # A session is running when the engine goes away.
    async with await connect(gw) as conn:
        process = await conn.create_process("echo ready; exec sleep 1000")
        assert await process.stdout.readline() == "ready\n"
        private_engine.stop()
        ended = await process.wait(timeout=60)
        assert ended.exit_status != 0 or ended.exit_signal is not None
        again = await conn.run("true")
        assert again.exit_status != 0
        assert "backend unavailable, try again later" in str(again.stderr)

    # New logins are told, and the gateway keeps running.
    down = gw.ssh("true")
    assert down.returncode != 0
    assert b"backend unavailable, try again later" in down.stderr

    # Every connection is gone; removing their containers failed with the engine down.
    backend = gw.gateway.backend
    wait_until(
        lambda: gw.connection_count() == 0 and not backend.live_names(),
        message="the connections to be cleaned up",
    )

    # The engine is back: no gateway restart needed.
    private_engine.start()
    stranded = private_engine.containers()
    assert len(stranded) == 1  # the session's container, stopped with the engine
    assert gw.ssh("echo after").stdout == b"after\n"
    # What the outage left goes at the next reaping; the last login's own
    # container goes as its connection's cleanup finishes.
    assert gw.call(backend.reap_orphans()) == stranded
    wait_until(lambda: private_engine.containers() == [], message="no containers left")
