"""The Kubernetes backend driven directly, on the API test server: pods, processes, modes."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from pairpod.backends.base import ProcessSpec, PtySpec, Stream
from pairpod.backends.kubernetes import KubernetesConnectionEnvironment, KubernetesProcess
from pairpod.backends.kubernetes.stream import V4_PROTOCOL
from pairpod.backends.output import HIGH_WATER
from pairpod.errors import SubsystemUnavailable
from testing.kube_apiserver.fixture import KubeApiServerThread, kube_apiserver, kube_namespace
from tests.support.docker_backend import eventually, read_all, read_until, run
from tests.support.identity import identity
from tests.support.kube_env import (
    TESTER_UID,
    core_api,
    kubernetes_config,
    pods,
    running_backend,
    wait_pod_gone,
)

__all__ = ["kube_apiserver", "kube_namespace"]

TEMPLATE = {
    "metadata": {"labels": {"team": "blue"}, "annotations": {"note": "from the template"}},
    "spec": {
        "securityContext": {"runAsUser": TESTER_UID, "runAsGroup": TESTER_UID},
        "containers": [{"name": "shell", "env": [{"name": "FROM_TEMPLATE", "value": "yes"}]}],
    },
}


async def test_pod_is_labelled_hardened_and_deleted_on_close(
    kube_apiserver: KubeApiServerThread, kube_namespace: str
) -> None:
    config = kubernetes_config(kube_apiserver, kube_namespace, pod=TEMPLATE)
    async with running_backend(config) as backend, core_api(kube_apiserver) as core:
        env = await backend.open(identity(config, user="alice@example.com", conn="c1"))
        assert isinstance(env, KubernetesConnectionEnvironment)
        pod = await core.read_namespaced_pod(env.pod.name, kube_namespace)
        assert pod.status.phase == "Running"
        assert pod.metadata.labels == {
            "team": "blue",
            "pairpod.managed": "true",
            "pairpod.instance": backend.instance_id,
            "pairpod.mode": "connection",
            "pairpod.connection": "c1",
            "pairpod.user": "alice_example.com",
        }
        assert pod.metadata.annotations == {"note": "from the template", "pairpod.user": "alice@example.com"}
        spec = pod.spec
        assert spec.restart_policy == "Never"
        assert spec.automount_service_account_token is False
        assert not spec.volumes  # no service-account token was mounted
        shell = spec.containers[0]
        assert shell.security_context.run_as_non_root is True
        assert shell.security_context.allow_privilege_escalation is False
        assert shell.security_context.capabilities.drop == ["ALL"]
        assert shell.resources.limits == {"memory": "512Mi", "cpu": "1", "ephemeral-storage": "1Gi"}

        out, _, status = await run(
            env, "id -u; echo $FROM_TEMPLATE; grep -E '^(CapEff|NoNewPrivs)' /proc/self/status"
        )
        assert status.code == 0
        lines = out.decode().split("\n")
        assert lines[0] == str(TESTER_UID)
        assert lines[1] == "yes"
        assert "CapEff:\t0000000000000000" in lines
        assert "NoNewPrivs:\t1" in lines

        await env.close()
        # close() returns once the pod is gone, not merely asked to go.
        assert await pods(core, kube_namespace, instance=backend.instance_id) == []


async def test_processes_streams_env_pty_signals_and_kill(
    kube_apiserver: KubeApiServerThread, kube_namespace: str
) -> None:
    config = kubernetes_config(kube_apiserver, kube_namespace)
    async with running_backend(config) as backend:
        env = await backend.open(identity(config, env={"FROM_LOGIN": "login", "not valid": "x"}))
        try:
            out, err, status = await run(
                env, "echo out; echo err >&2; echo $FROM_LOGIN $LANG; exit 3", env={"LANG": "C.UTF-8"}
            )
            assert (out, err, status.code) == (b"out\nlogin C.UTF-8\n", b"err\n", 3)

            # stdin EOF reaches the program (v5 close frame).
            out, _, status = await run(env, "wc -c", stdin=b"y" * 300_000)
            assert (out.strip(), status.code) == (b"300000", 0)

            # A PTY: TERM, size, resize.
            pty = PtySpec(term="xterm-256color", cols=100, rows=30)
            process = await env.start(
                ProcessSpec(command="echo $TERM; stty size; read -r x; stty size", pty=pty)
            )
            await read_until(process, b"30 100")
            await process.resize(70, 20)
            await process.write(b"go\r")
            rest = await read_all(process)
            assert b"20 70" in rest
            assert (await process.wait()).code == 0

            # A signal, through a second exec that knows the PID.
            process = await env.start(
                ProcessSpec(
                    command="trap 'echo got-USR1; exit 4' USR1; echo ready; "
                    "while :; do sleep 1 & wait $!; done"
                )
            )
            await read_until(process, b"ready")
            await process.signal("USR1")
            assert b"got-USR1" in await read_all(process)
            assert (await process.wait()).code == 4

            # kill() ends the program and everything it started.
            process = await env.start(ProcessSpec(command="sleep 1001 & sleep 1002 & echo started; wait"))
            await read_until(process, b"started")
            await process.kill()
            assert (await process.wait()).signal == "KILL"
            out, _, _ = await run(env, "ps -eo args")
            assert b"sleep 100" not in out

            # sftp-server is found; an image without one says so (below, busybox).
            sftp = await env.start(ProcessSpec(subsystem="sftp"))
            await sftp.kill()
        finally:
            await env.close()


async def test_root_image_falls_back_once_unless_non_root_is_required(
    kube_apiserver: KubeApiServerThread, kube_namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    config = kubernetes_config(kube_apiserver, kube_namespace, image="busybox")
    caplog.set_level(logging.WARNING, "pairpod")
    async with running_backend(config) as backend:
        env = await backend.open(identity(config))
        out, _, _ = await run(env, "id -u")
        assert out == b"0\n"
        with pytest.raises(SubsystemUnavailable) as no_sftp:
            await env.start(ProcessSpec(subsystem="sftp"))
        assert "no sftp-server" in no_sftp.value.user_message
        second = await backend.open(identity(config))
        assert (await run(second, "id -u"))[0] == b"0\n"
        await asyncio.gather(env.close(), second.close())
    # Learnt once: the second login's pod went straight to running as root.
    assert [r.getMessage() for r in caplog.records].count("kubernetes.image_runs_as_root") == 1

    strict = kubernetes_config(
        kube_apiserver,
        kube_namespace,
        image="busybox",
        pod={"spec": {"securityContext": {"runAsNonRoot": True}}},
    )
    async with running_backend(strict) as backend, core_api(kube_apiserver) as core:
        with pytest.raises(Exception) as refused:
            await backend.open(identity(strict))
        assert refused.value.user_message == (  # type: ignore[attr-defined]
            "environment image runs as root, which this gateway does not allow"
        )
        assert await pods(core, kube_namespace, instance=backend.instance_id) == []


async def test_v4_server_cannot_close_stdin_but_everything_else_works(
    kube_apiserver: KubeApiServerThread, kube_namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    config = kubernetes_config(kube_apiserver, kube_namespace, image="busybox")
    caplog.set_level(logging.INFO, "pairpod")
    async with running_backend(config) as backend:
        backend.api.exec_protocols = (V4_PROTOCOL,)  # as a server before Kubernetes 1.30
        env = await backend.open(identity(config))
        try:
            process = await env.start(ProcessSpec(command="head -c 5; echo; cat"))
            assert isinstance(process, KubernetesProcess) and process.protocol == V4_PROTOCOL
            await process.write(b"hello")
            await process.write_eof()  # cannot reach `cat`: it keeps its stdin
            assert await read_until(process, b"hello\n") == b"hello\n"
            assert "kubernetes.stdin_eof_unsupported" in [r.getMessage() for r in caplog.records]
            await process.kill()  # ending the channel still ends it
            assert (await process.wait()).signal == "KILL"
            # With a PTY, EOF is the terminal's EOF character, which needs no close frame.
            tty = await env.start(
                ProcessSpec(command="cat; echo cat-ended", pty=PtySpec(term="xterm", cols=80, rows=24))
            )
            await tty.write(b"typed\r")
            await read_until(tty, b"typed")
            await tty.write_eof()
            assert b"cat-ended" in await read_all(tty)
            assert (await tty.wait()).code == 0
            assert await tty.read(Stream.STDERR) == b""
        finally:
            await env.close()


async def test_session_mode_gives_each_process_a_pod_deleted_when_it_ends(
    kube_apiserver: KubeApiServerThread, kube_namespace: str
) -> None:
    config = kubernetes_config(kube_apiserver, kube_namespace, mode="session", image="busybox")
    async with running_backend(config) as backend, core_api(kube_apiserver) as core:
        env = await backend.open(identity(config, conn="sess1"))
        assert await pods(core, kube_namespace, instance=backend.instance_id) == []
        first = await env.start(ProcessSpec(command="touch /tmp/mark; cat"))
        second = await env.start(ProcessSpec(command="ls /tmp/mark"))
        assert (await second.wait()).code != 0  # a pod of its own: no mark
        running = await pods(core, kube_namespace, instance=backend.instance_id, mode="session")
        names = [p.metadata.name for p in running]
        # The first's pod runs; the second's may already be gone.
        assert [n for n in names if not n.endswith("-s2")] == [n for n in names if n.endswith("-s1")]
        assert any(n.endswith("-s1") for n in names)
        assert all(p.metadata.labels["pairpod.connection"] == "sess1" for p in running)
        await first.write(b"bye")
        await first.write_eof()
        assert await read_all(first) == b"bye"
        for name in names:
            await wait_pod_gone(core, kube_namespace, name)
        leftover = await env.start(ProcessSpec(command="sleep 1000"))
        await env.close()
        assert (await leftover.wait()).signal == "KILL"
        assert await pods(core, kube_namespace, instance=backend.instance_id) == []


async def test_warm_pool_hands_out_a_running_pod_and_refills(
    kube_apiserver: KubeApiServerThread, kube_namespace: str, tmp_path: Path
) -> None:
    config = kubernetes_config(kube_apiserver, kube_namespace, image="busybox", warm_pool=1)
    async with running_backend(config) as backend, core_api(kube_apiserver) as core:
        await eventually(lambda: backend.pool_size() == 1, "the pool to fill", 60)
        pooled = await pods(core, kube_namespace, instance=backend.instance_id, pool="true")
        assert len(pooled) == 1 and "pairpod.user" not in pooled[0].metadata.labels
        env = await backend.open(identity(config, user="bob", conn="pooled1"))
        assert isinstance(env, KubernetesConnectionEnvironment)
        assert env.pod.name == pooled[0].metadata.name
        assert (await run(env, "echo from-pool"))[0] == b"from-pool\n"
        await env._settle()  # the labelling runs beside the login
        pod = await core.read_namespaced_pod(env.pod.name, kube_namespace)
        assert pod.metadata.labels["pairpod.user"] == "bob"
        assert pod.metadata.labels["pairpod.connection"] == "pooled1"
        assert pod.metadata.annotations["pairpod.user"] == "bob"
        await eventually(lambda: backend.pool_size() == 1, "the pool to refill", 60)
        # A login whose settings differ (a per-user override) does not take from the pool.
        other = config.model_copy(
            update={"kubernetes": config.kubernetes.model_copy(update={"shell": ["/bin/sh"]})}
        )
        env2 = await backend.open(identity(other))
        assert backend.pool_size() == 1
        await asyncio.gather(env.close(), env2.close())


async def test_output_nobody_reads_pauses_the_exec_stream_and_loses_nothing(
    kube_apiserver: KubeApiServerThread, kube_namespace: str
) -> None:
    config = kubernetes_config(kube_apiserver, kube_namespace, image="busybox")
    size = 16 * HIGH_WATER
    async with running_backend(config) as backend:
        env = await backend.open(identity(config))
        try:
            process = await env.start(ProcessSpec(command=f"head -c {size} /dev/zero"))
            assert isinstance(process, KubernetesProcess)
            # Nobody reads: the gateway stops taking frames off the WebSocket
            # (the server's sends then wait) instead of buffering the output.
            await eventually(lambda: process._flow.paused, "reading the exec stream paused")
            assert HIGH_WATER < process._flow.buffered < 2 * HIGH_WATER
            total = 0
            while data := await process.read(Stream.STDOUT, 1 << 18):
                assert not data.strip(b"\0")
                total += len(data)
            assert total == size
            assert (await process.wait()).code == 0
        finally:
            await env.close()
