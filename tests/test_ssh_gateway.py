"""Gateway behaviour around the sessions: auth, limits, timeouts, denials, cleanup."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import asyncssh
import pytest

from tests.conftest import MakeGateway
from tests.support.client import connect
from tests.support.gateway import (
    ClientKey,
    GatewayProcess,
    GatewayThread,
    Tmux,
    processes_matching,
    unique_sleep,
    wait_until,
    write_config,
    zombie_children,
)


def test_banner_is_shown_before_login(make_gateway: MakeGateway) -> None:
    gw = make_gateway({"banner": "Authorised use only."})
    result = gw.ssh("true", options=["-o", "LogLevel=INFO"])
    assert b"Authorised use only." in result.stderr
    assert result.returncode == 0


def test_unknown_key_is_denied(gateway: GatewayThread, tmp_path: Path) -> None:
    stranger = ClientKey.create(tmp_path / "stranger")
    result = gateway.ssh("echo in", key=stranger)
    assert result.returncode == 255
    assert b"Permission denied" in result.stderr
    assert result.stdout == b""


def test_per_user_keys_admit_only_that_user(make_gateway: MakeGateway, tmp_path: Path) -> None:
    bob = ClientKey.create(tmp_path / "bob")
    gw = make_gateway({"auth": {"users": {"bob": {"keys": [bob.public_line]}}}})
    assert gw.ssh("echo $USER", user="bob", key=bob).returncode == 0
    assert gw.ssh("true", user="carol", key=bob).returncode == 255


def test_login_timeout_closes_idle_unauthenticated_connections(make_gateway: MakeGateway) -> None:
    gw = make_gateway({"ssh": {"login_timeout": "1s"}})
    with socket.create_connection(("127.0.0.1", gw.port), timeout=30) as sock:
        received = b""
        while chunk := sock.recv(4096):
            received += chunk
    assert received.startswith(b"SSH-2.0-OpenSSH_compatible pairpod_")  # then EOF: hung up


def test_keepalive_drops_a_client_that_stopped_answering(make_gateway: MakeGateway) -> None:
    gw = make_gateway({"ssh": {"keepalive_interval": "1s", "keepalive_count_max": 2}})
    marker = unique_sleep()  # a unique argument: bash execs the command itself
    client = subprocess.Popen(
        gw.ssh_argv(marker), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:

        def remote() -> list[int]:
            return [pid for pid in processes_matching(marker) if pid != client.pid]

        wait_until(remote, message="remote sleep")
        assert gw.connection_count() == 1
        client.send_signal(signal.SIGSTOP)  # the TCP connection stays, nobody answers
        wait_until(lambda: gw.connection_count() == 0, timeout=30, message="keepalive disconnect")
        wait_until(lambda: not remote(), message="remote process ended")
    finally:
        client.send_signal(signal.SIGCONT)
        client.kill()
        client.wait()


async def test_max_sessions_limits_channels_per_connection(make_gateway: MakeGateway) -> None:
    gw = make_gateway({"ssh": {"max_sessions": 2}})
    async with await connect(gw) as conn:
        first = await conn.create_process("cat")
        second = await conn.create_process("cat")
        with pytest.raises(asyncssh.ChannelOpenError, match="too many sessions"):
            await conn.create_process("cat")
        first.stdin.write_eof()
        await first.wait(timeout=20)
        # A closed channel frees its slot.
        third = await conn.run("echo third", timeout=20)
        assert third.stdout == "third\n"
        second.stdin.write_eof()
        await second.wait(timeout=20)


@pytest.mark.parametrize(
    ("overrides", "argv_options", "command", "message"),
    [
        ({"allow_exec": False}, [], "echo hi", b"running commands is disabled"),
        ({"allow_shell": False}, ["-T"], None, b"interactive shells are disabled"),
    ],
    ids=["exec", "shell"],
)
def test_denied_requests_explain_on_stderr(
    make_gateway: MakeGateway,
    overrides: dict[str, bool],
    argv_options: list[str],
    command: str | None,
    message: bytes,
) -> None:
    gw = make_gateway({"security": overrides})
    result = gw.ssh(*([command] if command else []), options=argv_options, input=b"")
    assert result.returncode == 1
    assert message in result.stderr
    assert result.stdout == b""
    # The gateway keeps serving: the other request kind still works.
    other = gw.ssh(input=b"echo still-serving\n", options=["-T"]) if command else gw.ssh("echo x")
    assert other.returncode in (0, 1)


def test_denied_subsystem_fails_sftp_with_a_message(make_gateway: MakeGateway, tmp_path: Path) -> None:
    gw = make_gateway({"security": {"subsystems": []}})
    result = subprocess.run(
        ["sftp", *gw.ssh_options(), "-P", str(gw.port), "-b", "-", "127.0.0.1"],
        input=b"ls\n",
        capture_output=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert b"subsystem 'sftp' is not allowed" in result.stderr


def test_denied_pty_is_explained(make_gateway: MakeGateway, tmp_path: Path) -> None:
    gw = make_gateway({"security": {"allow_pty": False}})
    # An interactive login from a real terminal carries on without a PTY when refused.
    term = Tmux("nopty", tmp_path)
    try:
        term.start(gw.ssh_argv())
        term.type("tty || echo no-tty-$((40+2))\n")
        term.wait_for("no-tty-42")
        assert "pairpod: terminal (pty) allocation is not allowed here" in term.screen()
    finally:
        term.close()
    # With a command, OpenSSH's client gives up with its standard refusal message.
    forced = gw.ssh("tty", options=["-tt"], input=b"")
    assert forced.returncode == 255
    assert b"PTY allocation request failed" in forced.stderr


def test_force_command_replaces_the_request(make_gateway: MakeGateway) -> None:
    gw = make_gateway({"security": {"force_command": 'echo "forced:$SSH_ORIGINAL_COMMAND"'}})
    result = gw.ssh("echo asked")
    assert result.stdout == b"forced:echo asked\n"


def test_missing_shell_falls_back_to_sh(make_gateway: MakeGateway) -> None:
    gw = make_gateway({"local": {"shell": ["/nonexistent/bash", "-l"]}})
    result = gw.ssh("echo fallback-ok")
    assert result.stdout == b"fallback-ok\n"


def test_failing_backend_tells_the_user_one_line(make_gateway: MakeGateway) -> None:
    gw = make_gateway({"local": {"user": "no-such-user-pairpod"}})
    for _ in range(2):  # and the gateway keeps serving
        result = gw.ssh("echo never")
        assert result.returncode == 1
        assert result.stdout == b""
        lines = result.stderr.decode().strip().splitlines()
        assert lines == ["pairpod: backend error"]


def test_client_killed_leaves_no_process_zombie_or_task(gateway: GatewayThread) -> None:
    first, second = unique_sleep(), unique_sleep()
    client = subprocess.Popen(
        gateway.ssh_argv(f"{first} & {second} & wait"),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    seen: set[int] = set()

    def remote() -> list[int]:
        found = [p for marker in (first, second) for p in processes_matching(marker) if p != client.pid]
        seen.update(found)
        return found

    wait_until(lambda: len(remote()) >= 2, message="remote processes")
    client.kill()
    client.wait()
    wait_until(lambda: gateway.connection_count() == 0, message="connection closed")
    wait_until(lambda: not remote(), message="remote processes gone")
    wait_until(lambda: gateway.task_count() <= gateway.baseline_tasks, message="tasks ended")
    # This session's processes, not every child of the test process: an earlier
    # test's gateway (same process, another event loop) may have left its own.
    assert set(zombie_children(os.getpid())) & seen == set()


def test_control_master_multiplexes_openssh_sessions(gateway: GatewayThread, tmp_path: Path) -> None:
    socket_path = tmp_path / "cm"
    master = subprocess.Popen(
        gateway.ssh_argv(options=["-M", "-S", str(socket_path), "-N"]), stdin=subprocess.DEVNULL
    )
    try:
        mux = ["-o", f"ControlPath={socket_path}"]
        wait_until(lambda: socket_path.exists(), message="control socket")
        fifo = tmp_path / "fifo"
        reader = subprocess.Popen(
            gateway.ssh_argv(f"mkfifo {fifo} && cat {fifo}", options=mux),
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
        )
        wait_until(fifo.exists, message="fifo")
        writer = gateway.ssh(f"echo through-the-fifo > {fifo}", options=mux)
        assert writer.returncode == 0
        out, _ = reader.communicate(timeout=30)
        assert out == b"through-the-fifo\n"
        assert gateway.connection_count() == 1
    finally:
        master.terminate()
        master.wait(10)


def test_rsync_round_trips_a_tree(gateway: GatewayThread, tmp_path: Path) -> None:
    source = tmp_path / "src"
    (source / "sub").mkdir(parents=True)
    (source / "a.bin").write_bytes(os.urandom(300_000))
    (source / "sub" / "b.txt").write_text("hello\n")
    remote = tmp_path / "remote"
    back = tmp_path / "back"
    ssh_cmd = " ".join(["ssh", *gateway.ssh_options(), "-p", str(gateway.port)])
    for src, dst in ((f"{source}/", f"127.0.0.1:{remote}/"), (f"127.0.0.1:{remote}/", f"{back}/")):
        result = subprocess.run(["rsync", "-a", "-e", ssh_cmd, src, dst], capture_output=True, timeout=60)
        assert result.returncode == 0, result.stderr
    assert (back / "a.bin").read_bytes() == (source / "a.bin").read_bytes()
    assert (back / "sub" / "b.txt").read_text() == "hello\n"


def test_sigterm_tells_users_ends_sessions_and_exits_zero(tmp_path: Path, client_key: ClientKey) -> None:
    authorized = tmp_path / "authorized_keys"
    authorized.write_text(client_key.public_line + "\n")
    config = write_config(
        tmp_path / "pairpod.yaml",
        {
            "listen": "127.0.0.1:0",
            "host_keys": [str(tmp_path / "host_key")],
            "auth": {"authorized_keys": str(authorized)},
            "shutdown_grace": "1s",  # sessions may run on this long after SIGTERM
        },
    )
    gw = server = GatewayProcess(config, key=client_key).start()
    try:
        marker = unique_sleep()
        client = subprocess.Popen(
            gw.ssh_argv(marker), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )

        def remote() -> list[int]:
            return [pid for pid in processes_matching(marker) if pid != client.pid]

        wait_until(remote, message="session running")
        started = time.monotonic()
        assert server.terminate(timeout=30) == 0
        stopped_in = time.monotonic() - started
        _, stderr = client.communicate(timeout=30)
        assert b"pairpod: the gateway is restarting; this session ends within 1s" in stderr
        assert b"pairpod: the gateway is restarting, disconnecting" in stderr
        assert client.returncode != 0
        assert not remote()
        assert "gateway.stopped" in server.log()
        print(f"graceful stop took {stopped_in:.2f}s")
    finally:
        server.kill()
