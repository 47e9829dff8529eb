"""The gateway on either event loop: uvloop (the default when installed) and asyncio's own.

The rest of the suite runs on the default loop. Here the core SSH behaviours
(exec, PTY, sftp and scp, several channels, flow control, sharing) run again
on the other one: each test imported below runs with this module's fixtures,
which serve it from asyncio's loop.
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pairpod.errors import ConfigError
from pairpod.eventloop import loop_factory, loop_name, new_event_loop
from tests.conformance.test_sessions import (
    test_binary_data_round_trips_unchanged,
    test_exec_with_a_pty_merges_stderr_and_sets_term,
    test_exit_status_is_the_programs,
    test_interactive_shell_sees_size_and_resize,
    test_several_channels_run_at_once_on_one_connection,
    test_sftp_and_scp_round_trip_files_byte_identical,
    test_stdout_and_stderr_stay_separate_without_a_pty,
)
from tests.conftest import MakeGateway
from tests.support.client import connect
from tests.support.gateway import ClientKey, GatewayProcess, GatewayThread, base_config, wait_until
from tests.support.gateway import write_config as write_yaml
from tests.test_sharing_ssh import terms, test_read_only_input_never_reaches_the_program

__all__ = [
    "terms",
    "test_binary_data_round_trips_unchanged",
    "test_exec_with_a_pty_merges_stderr_and_sets_term",
    "test_exit_status_is_the_programs",
    "test_interactive_shell_sees_size_and_resize",
    "test_read_only_input_never_reaches_the_program",
    "test_several_channels_run_at_once_on_one_connection",
    "test_sftp_and_scp_round_trip_files_byte_identical",
    "test_stdout_and_stderr_stay_separate_without_a_pty",
]

ASYNCIO = {"event_loop": "asyncio"}
try:
    import uvloop  # noqa: F401

    HAVE_UVLOOP = True
except ImportError:
    HAVE_UVLOOP = False
#: The loop ``event_loop: auto`` (the default) gives.
DEFAULT_LOOP = "uvloop" if HAVE_UVLOOP else "asyncio"


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, client_key: ClientKey) -> Iterator[GatewayThread]:
    """One gateway on asyncio's loop for the module's session tests."""
    gateway = GatewayThread(
        base_config(tmp_path_factory.mktemp("asyncio-gw"), client_key, ASYNCIO), client_key
    )
    gateway.start()
    yield gateway
    gateway.stop()


@pytest.fixture
def open_gw(make_gateway: MakeGateway) -> GatewayThread:
    """A sharing gateway on asyncio's loop (the sharing tests' fixture, on the other loop)."""
    return make_gateway(
        {**ASYNCIO, "sharing": {"open": True, "public_host": "gw.example.test", "public_port": 2222}}
    )


def _wchan(pid: int) -> str:
    return Path(f"/proc/{pid}/wchan").read_text()


def _bytes_written(pid: int) -> int:
    io = dict(line.split(": ") for line in Path(f"/proc/{pid}/io").read_text().splitlines())
    return int(io["wchar"])


def test_the_module_gateway_runs_on_asyncio(gw: GatewayThread) -> None:
    assert loop_name(gw.loop) == "asyncio"


@pytest.mark.parametrize("loop", ["auto", "asyncio"])
async def test_a_client_that_stops_reading_stops_the_program(
    make_gateway: MakeGateway, tmp_path: Path, loop: str
) -> None:
    gateway = make_gateway({"event_loop": loop})
    assert loop_name(gateway.loop) == (DEFAULT_LOOP if loop == "auto" else "asyncio")
    size = 48 << 20
    pid_file = tmp_path / "pid"
    async with await connect(gateway) as conn:
        process = await conn.create_process(
            f"echo $$ > {pid_file}; exec head -c {size} /dev/zero", encoding=None
        )
        # Nobody reads: the program must block on its output, far short of the end.
        wait_until(lambda: pid_file.exists() and pid_file.read_text().strip(), message="program started")
        pid = int(pid_file.read_text())
        # Blocked writing its pipe ("pipe_write", "anon_pipe_write", by kernel version).
        wait_until(lambda: _wchan(pid).endswith("pipe_write"), message="program blocked")
        written = _bytes_written(pid)
        # SSH window, socket buffers, the gateway's output mark and the pipe: a few MiB.
        assert written < 16 << 20
        # Reading again takes the rest, every byte.
        total = 0
        while data := await process.stdout.read(1 << 20):
            total += len(data)
        assert total == size
        assert (await process.wait(timeout=60)).exit_status == 0


@pytest.mark.parametrize("loop", ["auto", "asyncio"])
async def test_a_terminal_programs_output_arrives_whole(make_gateway: MakeGateway, loop: str) -> None:
    gateway = make_gateway({"event_loop": loop})
    async with await connect(gateway) as conn:
        result = await conn.run("seq 1 100000", term_type="xterm", timeout=60)
    assert str(result.stdout).split() == [str(n) for n in range(1, 100001)]


def test_default_serve_runs_on_uvloop_and_programs_get_no_descriptor_of_the_gateway(
    tmp_path: Path, client_key: ClientKey
) -> None:
    if not HAVE_UVLOOP:
        pytest.skip("uvloop is not installed")
    # A descriptor the gateway inherits (not close-on-exec) must not reach programs.
    inherited = tmp_path / "inherited"
    config = base_config(tmp_path, client_key).model_dump(mode="json", exclude_none=True)
    with inherited.open("w") as handle:
        os.set_inheritable(handle.fileno(), True)
        path = write_yaml(tmp_path / "gw.yaml", config)
        served = GatewayProcess(path, key=client_key, pass_fds=[handle.fileno()]).start()
    try:
        # ls (forked: not the last command) lists the shell's descriptors; no pipeline, no pipe of its own.
        result = served.ssh("echo hi; ls -l /proc/$$/fd; exit 0")
        assert "gateway.event_loop loop=uvloop" in served.log()
        lines = result.stdout.decode().splitlines()
        assert lines[0] == "hi"
        targets = dict(re.findall(r"(\d+) -> (.+)", "\n".join(lines[1:])))
        own = {targets["0"], targets["1"], targets["2"], "/dev/null"}
        # Only the program's own stdio (uvloop leaves copies of it), nothing else.
        assert set(targets.values()) <= own, " ".join(lines)
    finally:
        assert served.terminate() == 0


def test_uvloop_asked_for_but_missing_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # an import of it now fails
    with pytest.raises(ConfigError, match=r"event_loop: uvloop is not installed"):
        loop_factory("uvloop")
    assert loop_factory("auto") is asyncio.new_event_loop


def test_asyncio_chosen_is_asyncio_even_with_uvloop_installed() -> None:
    loop = new_event_loop("asyncio")
    try:
        assert loop_name(loop) == "asyncio"
    finally:
        loop.close()
