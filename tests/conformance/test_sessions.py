"""Every SSH session feature, through a real gateway, on each backend."""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
import threading
from pathlib import Path

import pytest

from tests.support.client import connect
from tests.support.gateway import GatewayThread, Tmux


def test_exit_status_is_the_programs(gw: GatewayThread) -> None:
    assert gw.ssh("exit 7").returncode == 7
    assert gw.ssh("true").returncode == 0


def test_stdout_and_stderr_stay_separate_without_a_pty(gw: GatewayThread) -> None:
    result = gw.ssh("echo out; echo err >&2; echo out2")
    assert result.stdout == b"out\nout2\n"
    assert result.stderr == b"err\n"


def test_stdin_eof_reaches_the_program(gw: GatewayThread) -> None:
    result = gw.ssh("cat; echo done", input=b"x")
    assert result.stdout == b"xdone\n"
    assert result.returncode == 0


def test_binary_data_round_trips_unchanged(gw: GatewayThread) -> None:
    payload = os.urandom(3 * 1024 * 1024 + 17)
    result = gw.ssh("cat", input=payload)
    assert hashlib.sha256(result.stdout).hexdigest() == hashlib.sha256(payload).hexdigest()


def test_shell_without_a_pty_reads_commands_from_stdin(gw: GatewayThread) -> None:
    result = gw.ssh(input=b"echo from-stdin-$((6*7))\n", options=["-T"])
    assert b"from-stdin-42" in result.stdout
    assert result.returncode == 0


def test_exec_with_a_pty_merges_stderr_and_sets_term(gw: GatewayThread) -> None:
    env = {**os.environ, "TERM": "xterm-256color"}
    result = subprocess.run(
        gw.ssh_argv("tty; echo TERM=$TERM; echo err >&2", options=["-tt"]),
        capture_output=True,
        timeout=60,
        env=env,
        stdin=subprocess.DEVNULL,
    )
    assert b"/dev/pts/" in result.stdout
    assert b"TERM=xterm-256color" in result.stdout
    assert b"err" in result.stdout  # a terminal has one output stream
    assert result.returncode == 0


def test_env_requests_are_filtered_by_env_allow(gw: GatewayThread) -> None:
    result = gw.ssh(
        'echo "lc=$LC_PAIRPOD_TEST secret=${PAIRPOD_SECRET_TEST:-unset}"',
        options=["-o", "SetEnv=LC_PAIRPOD_TEST=yes PAIRPOD_SECRET_TEST=leaked"],
    )
    assert result.stdout == b"lc=yes secret=unset\n"


def test_interactive_shell_sees_size_and_resize(gw: GatewayThread, tmp_path: Path) -> None:
    term = Tmux("shell", tmp_path)
    try:
        term.start(gw.ssh_argv(options=["-tt"]), width=90, height=25)
        term.type("stty size; echo MARK-$((1+1))\n")
        term.wait_for(r"MARK-2")
        rows, cols = map(int, term.wait_for(r"(\d+) (\d+)\s*\n.*MARK-2").groups())
        assert cols == 90
        assert rows in (24, 25)  # tmux may keep a status line
        term.resize(70, 18)
        term.type_once_width(70, "clear; stty size; echo MARK-$((2+1))\n")
        match = term.wait_for(r"(\d+) (\d+)\s*\n.*MARK-3")
        assert int(match.group(2)) == 70
        assert int(match.group(1)) in (17, 18)
    finally:
        term.close()


def test_full_screen_program_is_told_of_window_changes(gw: GatewayThread, tmp_path: Path) -> None:
    program = "trap 'echo WINCH $(stty size)' WINCH; echo READY; while true; do sleep 1 & wait $!; done"
    term = Tmux("winch", tmp_path)
    try:
        term.start(gw.ssh_argv(program, options=["-tt"]), width=80, height=24)
        term.wait_for("READY")
        term.resize(60, 20)
        match = term.wait_for(r"WINCH (\d+) 60")
        assert int(match.group(1)) in (19, 20)
    finally:
        term.close()


async def test_window_change_during_a_slow_start_reaches_the_program(
    gw: GatewayThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Hold the first process start (as an image pull or a pod being scheduled would).
    asked, released = threading.Event(), threading.Event()
    open_environment = gw.gateway.open_environment

    async def slow_first_start(identity, **options):  # type: ignore[no-untyped-def]
        environment = await open_environment(identity, **options)
        start = environment.start

        async def gated(spec):  # type: ignore[no-untyped-def]
            if not asked.is_set():
                asked.set()
                await asyncio.to_thread(released.wait, 60)
            return await start(spec)

        environment.start = gated  # type: ignore[method-assign]
        return environment

    monkeypatch.setattr(gw.gateway, "open_environment", slow_first_start)
    try:
        async with await connect(gw) as conn:
            process = await conn.create_process("read go; stty size", term_type="xterm", term_size=(80, 24))
            await asyncio.to_thread(asked.wait, 60)
            process.change_terminal_size(100, 30)
            # The gateway handles a connection's messages in order: once a later
            # request is answered, the window change has been seen.
            assert (await conn.run("echo later")).stdout == "later\n"
            released.set()
            process.stdin.write("go\n")
            result = await process.wait(timeout=60)
        assert str(result.stdout).split()[-2:] == ["30", "100"]
    finally:
        released.set()


async def test_killed_program_is_reported_with_exit_signal(gw: GatewayThread) -> None:
    async with await connect(gw) as conn:
        result = await conn.run("kill -KILL $$")
    assert result.exit_signal is not None
    assert result.exit_signal[0] == "KILL"


async def test_signal_request_reaches_the_program(gw: GatewayThread) -> None:
    async with await connect(gw) as conn:
        process = await conn.create_process(
            "trap 'echo got-TERM; exit 3' TERM; echo ready; while true; do sleep 1 & wait $!; done"
        )
        assert (await process.stdout.readline()) == "ready\n"
        process.send_signal("TERM")
        result = await process.wait(timeout=20)
    assert "got-TERM" in result.stdout
    assert result.exit_status == 3


async def test_untrapped_signal_ends_the_program_with_exit_signal(gw: GatewayThread) -> None:
    async with await connect(gw) as conn:
        process = await conn.create_process("echo ready; exec sleep 1000")
        assert (await process.stdout.readline()) == "ready\n"
        process.send_signal("INT")
        result = await process.wait(timeout=20)
    assert result.exit_signal is not None and result.exit_signal[0] == "INT"


@pytest.mark.parametrize("pty", [False, True], ids=["no-pty", "pty"])
async def test_break_interrupts_the_program(gw: GatewayThread, pty: bool) -> None:
    async with await connect(gw) as conn:
        process = await conn.create_process("echo ready; exec sleep 1000", term_type="xterm" if pty else None)
        assert (await process.stdout.readline()).strip() == "ready"
        process.send_break(100)
        result = await process.wait(timeout=20)
    assert result.exit_signal is not None and result.exit_signal[0] == "INT"


async def test_several_channels_run_at_once_on_one_connection(gw: GatewayThread) -> None:
    async with await connect(gw) as conn:
        first = await conn.create_process("cat")
        second = await conn.create_process("echo second-done")
        # The second finishes while the first still waits for input.
        second_result = await second.wait(timeout=20)
        assert second_result.stdout == "second-done\n"
        first.stdin.write("first-input\n")
        first.stdin.write_eof()
        first_result = await first.wait(timeout=20)
    assert first_result.stdout == "first-input\n"


async def test_many_parallel_channels_keep_their_data_apart(gw: GatewayThread) -> None:
    async with await connect(gw) as conn:

        async def echo(n: int) -> str:
            result = await conn.run("cat", input=f"channel-{n}\n" * 1000, timeout=30)
            return str(result.stdout)

        outputs = await asyncio.gather(*(echo(n) for n in range(5)))
    for n, output in enumerate(outputs):
        assert output == f"channel-{n}\n" * 1000


def _control_master(gw: GatewayThread, tmp_path: Path) -> tuple[list[str], subprocess.Popen[bytes]]:
    socket = tmp_path / "cm.sock"
    master = subprocess.Popen(
        gw.ssh_argv(options=["-M", "-S", str(socket), "-N"]),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    check = gw.ssh_argv(options=["-S", str(socket), "-O", "check"])
    from tests.support.gateway import wait_until

    wait_until(lambda: subprocess.run(check, capture_output=True).returncode == 0, message="control master")
    return ["-o", f"ControlPath={socket}"], master


def test_sftp_and_scp_round_trip_files_byte_identical(gw: GatewayThread, tmp_path: Path) -> None:
    options, master = _control_master(gw, tmp_path)
    try:
        original = tmp_path / "original.bin"
        original.write_bytes(os.urandom(2 * 1024 * 1024 + 3))
        back_sftp = tmp_path / "back-sftp.bin"
        back_scp = tmp_path / "back-scp.bin"
        batch = tmp_path / "batch"
        batch.write_text(f"put {original} /tmp/pairpod-sftp.bin\nget /tmp/pairpod-sftp.bin {back_sftp}\n")
        sftp = subprocess.run(
            ["sftp", *gw.ssh_options(extra=options), "-P", str(gw.port), "-b", str(batch), "127.0.0.1"],
            capture_output=True,
            timeout=60,
        )
        assert sftp.returncode == 0, sftp.stderr
        assert back_sftp.read_bytes() == original.read_bytes()
        scp_base = ["scp", *gw.ssh_options(extra=options), "-P", str(gw.port)]
        up = subprocess.run(
            [*scp_base, str(original), "127.0.0.1:/tmp/pairpod-scp.bin"], capture_output=True, timeout=60
        )
        assert up.returncode == 0, up.stderr
        down = subprocess.run(
            [*scp_base, "127.0.0.1:/tmp/pairpod-scp.bin", str(back_scp)], capture_output=True, timeout=60
        )
        assert down.returncode == 0, down.stderr
        assert back_scp.read_bytes() == original.read_bytes()
        listing = gw.ssh("ls -l /tmp/pairpod-scp.bin", options=options)
        assert str(original.stat().st_size).encode() in listing.stdout
    finally:
        master.terminate()
        master.wait(10)


async def test_sftp_client_sees_the_environments_files(gw: GatewayThread) -> None:
    async with await connect(gw) as conn:
        await conn.run("mkdir -p /tmp/pairpod-sftp-dir && echo content > /tmp/pairpod-sftp-dir/f", check=True)
        async with conn.start_sftp_client() as sftp:
            names = await sftp.listdir("/tmp/pairpod-sftp-dir")
            async with sftp.open("/tmp/pairpod-sftp-dir/f", "rb") as handle:
                data = await handle.read()
    assert "f" in names
    assert data == b"content\n"
