"""The Docker backend through its Python interface, on a real engine and local images."""

from __future__ import annotations

import asyncio
import re
import secrets
import struct

import pytest

from pairpod.backends.base import ProcessSpec, PtySpec, Stream
from pairpod.backends.container.process import exit_status
from pairpod.backends.docker import DockerBackend
from pairpod.backends.docker.container import hostname_for
from pairpod.backends.termmodes import stty_modes
from pairpod.errors import SubsystemUnavailable
from tests.support.docker_backend import environment, eventually, read_all, read_until, run, running_backend
from tests.support.docker_env import docker_config, inspect, remove_volume
from tests.support.identity import identity

# "pool": a connection-mode container from the warm pool, whose first process
# of each kind is a spare that was waiting in it.
MODES = ["connection", "session", "pool"]


# --- processes ---------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_exec_keeps_stdout_and_stderr_apart_and_reports_the_exit_code(mode: str):
    async with environment(mode) as env:
        out, err, status = await run(env, "echo out; echo err >&2; echo out2; exit 3")
    assert (out, err) == (b"out\nout2\n", b"err\n")
    assert status.code == 3 and status.signal is None


@pytest.mark.parametrize("mode", MODES)
async def test_stdin_eof_reaches_the_program_and_output_continues(mode: str):
    async with environment(mode) as env:
        out, _, status = await run(env, "cat; echo after-eof", stdin=b"x" * 100_000)
    assert out == b"x" * 100_000 + b"after-eof\n"
    assert status.code == 0


@pytest.mark.parametrize("mode", MODES)
async def test_pty_has_the_requested_size_term_and_follows_resizes(mode: str):
    pty = PtySpec(term="xterm-256color", cols=123, rows=45)
    async with environment(mode) as env:
        process = await env.start(
            ProcessSpec(
                command="tty; stty size; echo TERM=$TERM; echo err >&2; read line; stty size", pty=pty
            )
        )
        first = await read_until(process, b"err")
        await process.resize(77, 21)
        await process.write(b"go\r")
        rest = await read_all(process)
        status = await process.wait()
        assert await process.read(Stream.STDERR) == b""
    assert b"/dev/pts/" in first
    assert b"45 123\r\n" in first
    assert b"TERM=xterm-256color" in first
    assert rest.endswith(b"21 77\r\n")
    assert status.code == 0


@pytest.mark.parametrize("mode", MODES)
async def test_input_sent_after_a_resize_sees_the_new_size(mode: str):
    # As the SSH channel does: the resize is handed to its own task, then the
    # next input to the pump's. The resize is an Engine call; the input must
    # not overtake it.
    async with environment(mode) as env:
        process = await env.start(
            ProcessSpec(command="read a; stty size; read b", pty=PtySpec("xterm", 80, 24))
        )
        resize = asyncio.ensure_future(process.resize(101, 31))
        typed = asyncio.ensure_future(process.write(b"x\r"))
        await asyncio.gather(resize, typed)
        output = b""
        while not re.search(rb"\d+ \d+\r\n", output):
            data = await process.read(Stream.STDOUT)
            assert data, output
            output += data
        await process.kill()
    assert re.search(rb"(\d+ \d+)\r\n", output).group(1) == b"31 101"


@pytest.mark.parametrize("mode", ["connection", "pool"])
async def test_pty_modes_from_the_client_are_applied(mode: str):
    # 53 = ECHO off, 3 = VERASE set to ^H (RFC 4254 opcodes).
    pty = PtySpec(term="xterm", cols=80, rows=24, modes={53: 0, 3: 8})
    async with environment(mode) as env:
        out, _, _ = await run(env, "stty -a", pty=pty)
    assert re.search(rb"(^|\s)-echo(\s|$)", out), out
    assert b"erase = ^H" in out


async def test_shell_falls_back_to_sh_when_the_image_has_no_bash():
    async with environment(image="busybox", shell=["/bin/bash", "-l"]) as env:  # noqa: S604
        out, _, status = await run(env, "echo $0; readlink /proc/$$/exe")
        process = await env.start(ProcessSpec(pty=PtySpec("xterm", 80, 24)))
        await process.write(b"echo SHELL-IS-$((40+2)) $0\rexit\r")
        transcript = await read_all(process)
    assert out == b"/bin/sh\n/bin/busybox\n"
    assert status.code == 0
    assert b"SHELL-IS-42 /bin/sh" in transcript


async def test_configured_shell_is_used_when_present():
    async with environment(image="debian", shell=["/bin/bash", "-l"]) as env:  # noqa: S604
        out, _, _ = await run(env, "echo $BASH_VERSION")
    assert re.fullmatch(rb"5\.\d+.*\n", out)


@pytest.mark.parametrize("mode", MODES)
async def test_signal_request_reaches_the_program(mode: str):
    async with environment(mode) as env:
        process = await env.start(
            ProcessSpec(
                command="trap 'echo got-USR1; exit 5' USR1; echo ready; "
                "while :; do sleep 1000 & wait $!; done"
            )
        )
        await read_until(process, b"ready\n")
        await process.signal("USR1")
        out = await read_all(process)
        status = await process.wait()
    assert out == b"got-USR1\n"
    assert status.code == 5


@pytest.mark.parametrize("mode", MODES)
async def test_untrapped_signal_is_reported_as_the_exit_signal(mode: str):
    async with environment(mode) as env:
        process = await env.start(ProcessSpec(command="echo ready; exec sleep 1000"))
        await read_until(process, b"ready\n")
        await process.signal("TERM")
        status = await process.wait()
    assert status.signal == "TERM" and status.code is None


async def test_recorded_pid_can_be_signalled_from_a_second_exec():
    # What a user does by hand: note $$ in one channel, kill it from another.
    async with environment() as env:
        first = await env.start(ProcessSpec(command="echo $$; exec sleep 1000"))
        pid = int((await read_until(first, b"\n")).strip())
        _, _, killer = await run(env, f"kill -s INT {pid}")
        status = await first.wait()
    assert killer.code == 0
    assert status.signal == "INT"


@pytest.mark.parametrize("mode", MODES)
async def test_kill_ends_the_program_and_what_it_started(mode: str):
    async with environment(mode) as env:
        process = await env.start(ProcessSpec(command="sleep 1001 & sleep 1002 & echo started; wait"))
        await read_until(process, b"started\n")
        await process.kill()
        status = await process.wait()
        assert status.signal == "KILL"
        await process.kill()  # idempotent
        if mode == "connection":
            out, _, _ = await run(env, "ps -o stat,args")
            alive = [
                line
                for line in out.decode().splitlines()
                if "sleep 100" in line and not line.strip().startswith("Z")
            ]
            assert alive == []


@pytest.mark.parametrize("mode", MODES)
async def test_several_processes_run_at_once(mode: str):
    async with environment(mode) as env:
        waiting = await env.start(ProcessSpec(command="cat"))
        results = await asyncio.gather(*(run(env, f"echo n={n}") for n in range(6)))
        await waiting.write(b"still-here\n")
        await waiting.write_eof()
        assert await read_all(waiting) == b"still-here\n"
    assert sorted(out for out, _, _ in results) == [f"n={n}\n".encode() for n in range(6)]


async def test_large_output_arrives_intact_with_flow_control():
    # More than the read-side high-water mark, read slowly: nothing lost or reordered.
    async with environment() as env:
        process = await env.start(
            ProcessSpec(command="dd if=/dev/zero bs=65536 count=64 2>/dev/null | tr '\\0' 'a'; echo END")
        )
        total = b""
        while data := await process.read(Stream.STDOUT, 4096):
            total += data
        status = await process.wait()
    assert total == b"a" * (64 * 65536) + b"END\n"
    assert status.code == 0


# --- sftp ----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_sftp_subsystem_runs_the_images_sftp_server(mode: str):
    async with environment(mode, image="debian") as env:
        process = await env.start(ProcessSpec(subsystem="sftp"))
        # SSH_FXP_INIT, version 3 -> expect SSH_FXP_VERSION (type 2).
        await process.write(struct.pack(">IBI", 5, 1, 3))
        header = b""
        while len(header) < 9:
            header += await process.read(Stream.STDOUT, 9 - len(header))
        await process.kill()
    length, kind, version = struct.unpack(">IBI", header)
    assert kind == 2 and version == 3 and length >= 5


@pytest.mark.parametrize("mode", MODES)
async def test_sftp_without_sftp_server_in_the_image_is_a_clear_error(mode: str):
    async with environment(mode, image="busybox") as env:
        with pytest.raises(SubsystemUnavailable) as caught:
            await env.start(ProcessSpec(subsystem="sftp"))
    assert "no sftp-server" in caught.value.user_message
    assert "busybox" in caught.value.operator_message


async def test_unknown_subsystem_is_refused():
    async with environment() as env:
        with pytest.raises(SubsystemUnavailable):
            await env.start(ProcessSpec(subsystem="netconf"))


# --- the container -----------------------------------------------------------------


async def test_container_is_labelled_hardened_and_isolated():
    config = docker_config(image="busybox", labels={"team": "blue"})
    async with running_backend(config) as backend:
        who = identity(config, user="Alice.Smith", conn="c0ffee")
        env = await backend.open(who)
        details = inspect(env.name)
        out, _, _ = await run(env, "hostname; cat /proc/net/dev | wc -l")
        await env.close()
        remaining = [c for c in [env.name] if c in backend.live_names()]
    labels = details["Config"]["Labels"]
    assert labels["pairpod.managed"] == "true"
    assert labels["pairpod.instance"] == backend.instance_id
    assert labels["pairpod.connection"] == "c0ffee"
    assert labels["pairpod.user"] == "Alice.Smith"
    assert labels["team"] == "blue"
    host = details["HostConfig"]
    assert host["CapDrop"] == ["ALL"]
    assert set(host["CapAdd"]) == {"CHOWN", "DAC_OVERRIDE", "FOWNER", "SETGID", "SETUID", "KILL"}
    assert "no-new-privileges:true" in host["SecurityOpt"]
    assert host["NetworkMode"] == "none"
    assert host["PidsLimit"] == 256
    assert host["Memory"] == 512 * 1024 * 1024
    assert host["NanoCpus"] == 1_000_000_000
    assert host["ReadonlyRootfs"] is False
    # Hostname from the template; only loopback inside (header lines + lo).
    lines = out.decode().split()
    assert lines[0] == "alice-smith"
    assert int(lines[1]) == 3
    assert remaining == []


async def test_read_only_rootfs_leaves_tmp_writable():
    async with environment(security={"read_only_rootfs": True}) as env:
        out, err, status = await run(
            env, "touch /probe 2>&1 && echo root-writable; echo x > /tmp/ok && echo tmp-ok"
        )
    assert b"root-writable" not in out
    assert b"tmp-ok" in out
    assert status.code == 0, err


async def test_env_user_and_workdir_reach_processes():
    config = docker_config(image="debian", user="tester", workdir="/tmp", env={"FROM_CONFIG": "c"})
    async with running_backend(config) as backend:
        env = await backend.open(identity(config, env={"FROM_AUTH": "a"}))
        out, _, _ = await run(
            env, 'echo "$(id -un) $(pwd) $FROM_CONFIG $FROM_AUTH $FROM_CLIENT"', env={"FROM_CLIENT": "k"}
        )
        await env.close()
    assert out == b"tester /tmp c a k\n"


@pytest.mark.parametrize("mode", MODES)
async def test_commands_and_variables_arrive_byte_for_byte(mode: str):
    # Quotes, newlines, globs and dollars must survive every path, including
    # a spare's shell-quoted instructions.
    tricky = 'it\'s "quoted" $HOME * \\n\nsecond line; `x`'
    command = "printf '%s|' \"$TRICKY\" \"$OTHER\"\necho 'line two' '*'"
    async with environment(mode) as env:
        out, err, status = await run(env, command, env={"TRICKY": tricky, "OTHER": ""})
    assert out == f"{tricky}||line two *\n".encode(), err
    assert status.code == 0


@pytest.mark.parametrize("mode", ["connection", "session"])
async def test_closing_the_environment_removes_its_containers(mode: str):
    config = docker_config(mode, image="busybox")
    async with running_backend(config) as backend:
        env = await backend.open(identity(config))
        running = await env.start(ProcessSpec(command="exec sleep 1000"))
        await env.close()
        await env.close()  # idempotent
        status = await running.wait()
        left = await backend.engine.list_containers({"pairpod.instance": backend.instance_id})
    assert left == []
    assert status.signal == "KILL"


async def test_default_idle_command_reaps_orphaned_zombies():
    # Orphans are re-parented to PID 1. A PID 1 that never waits (plain sleep)
    # collects zombies: that control shows the probe makes them; the default
    # idle command must leave none.
    probe = "for i in 1 2 3 4 5; do (sh -c 'exit 0' &) ; done"
    count = "ps -o stat | grep -c '^Z' || true"

    async with environment(idle_command=["/bin/sleep", "1000000"]) as control:
        await run(control, probe)

        async def zombies(env=control) -> int:
            return int((await run(env, count))[0])

        assert await eventually(lambda: zombies(), "zombies under a non-reaping PID 1") >= 1

    async with environment() as env:
        await run(env, probe)

        async def no_zombies() -> bool:
            return int((await run(env, count))[0]) == 0

        await eventually(no_zombies, "the idle command to reap the zombies")
        assert (await run(env, "cat /proc/1/cmdline | tr '\\0' ' '"))[0].startswith(b"/bin/sh -c")


async def test_home_volume_keeps_files_between_connections():
    volume = f"pairpod-test-home-{secrets.token_hex(4)}-{{username}}"
    config = docker_config(image="busybox", home_volume=volume)
    try:
        async with running_backend(config) as backend:
            first = await backend.open(identity(config, user="bob"))
            await run(first, "echo kept > /root/note")
            await first.close()
            second = await backend.open(identity(config, user="bob"))
            out, _, _ = await run(second, "cat /root/note")
            await second.close()
            other = await backend.open(identity(config, user="carol"))
            out_other, _, _ = await run(other, "cat /root/note 2>/dev/null || echo none")
            await other.close()
    finally:
        for user in ("bob", "carol"):
            remove_volume(volume.format(username=user))
    assert out == b"kept\n"
    assert out_other == b"none\n"


# --- small pure helpers --------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (0, (0, None)),
        (3, (3, None)),
        (130, (None, "INT")),
        (137, (None, "KILL")),
        (143, (None, "TERM")),
        (255, (255, None)),
        (128 + 20, (148, None)),
    ],  # 20 = TSTP: not SSH
)
def test_exit_status_mapping(code: int, expected: tuple[int | None, str | None]):
    status = exit_status(code)
    assert (status.code, status.signal) == expected


def test_hostname_template_is_made_a_valid_label():
    assert hostname_for("{username}", "Alice_O'Neil") == "alice-o-neil"
    assert hostname_for("{username}", "!!!") == "pairpod"
    assert len(hostname_for("dev-{username}", "x" * 100)) == 63


def test_stty_modes_translate_rfc4254_opcodes():
    assert stty_modes({53: 0, 51: 1, 1: 3, 3: 127, 4: 255, 999: 1, 72: 1, 73: 0, 128: 38400}) == (
        "intr ^C\nerase ^?\nkill undef\nicanon\n-echo\nonlcr\n-ocrnl\nispeed 38400"
    )


def test_backend_is_what_create_backend_returns():
    from pairpod.backends import create_backend

    config = docker_config(image="busybox")
    assert isinstance(create_backend(config, "x"), DockerBackend)
