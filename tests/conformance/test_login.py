"""What a session looks like from inside, compared with what OpenSSH's sshd gives the same client.

Terminal modes (``stty -a`` after ssh sent its full mode list from a real
terminal), the login environment (USER, LOGNAME, HOME, SHELL, PATH,
SSH_CONNECTION, SSH_CLIENT, SSH_TTY, TERM and the working directory), and
window changes kept in order with the input that follows them, under load.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.client import connect
from tests.support.gateway import GatewayThread, Tmux, wait_until
from tests.support.sshd import LoginView, Reference, login_view, terminal_modes

# What sshd sets for a command run with a terminal, and pairpod must too.
LOGIN_VARIABLES = (
    "USER",
    "LOGNAME",
    "HOME",
    "SHELL",
    "PATH",
    "SSH_CONNECTION",
    "SSH_CLIENT",
    "SSH_TTY",
    "TERM",
)


def test_terminal_modes_are_those_sshd_sets(
    gw: GatewayThread, sshd_reference: Reference, tmp_path: Path
) -> None:
    expected = sshd_reference.modes
    seen = terminal_modes(gw, tmp_path / "gw")
    differences = {
        name: (expected.get(name), seen.get(name))
        for name in sorted(set(expected) | set(seen))
        if expected.get(name) != seen.get(name)
    }
    assert differences == {}, "mode: (sshd, pairpod)"
    # The mode that made output staircase on the local backend.
    assert seen["onlcr"] == "on"


def check_login_view(view: LoginView, server_port: int) -> None:
    """The rules sshd follows: login variables from the passwd entry, start in $HOME, addresses."""
    name, _, _, _, _, home, shell = view.passwd
    env = view.env
    assert (env["USER"], env["LOGNAME"], env["HOME"], env["SHELL"]) == (name, name, home, shell or "/bin/sh")
    assert view.cwd == home
    client_ip, client_port, server_ip, port = env["SSH_CONNECTION"].split(" ")
    assert (client_ip, server_ip, port) == ("127.0.0.1", "127.0.0.1", str(server_port))
    assert client_port.isdigit()
    assert env["SSH_CLIENT"] == f"{client_ip} {client_port} {port}"
    assert env["SSH_TTY"].startswith("/dev/pts/")


def test_login_environment_is_what_sshd_gives(gw: GatewayThread, sshd_reference: Reference) -> None:
    expected = sshd_reference.login
    check_login_view(expected, sshd_reference.server.port)  # the rules hold for sshd itself
    seen = login_view(gw)
    missing = [name for name in LOGIN_VARIABLES if name in expected.env and name not in seen.env]
    assert missing == []
    check_login_view(seen, gw.port)
    assert seen.env["TERM"] == expected.env["TERM"]
    if seen.passwd[2] == expected.passwd[2]:
        # The same user on both sides: the very same values.
        for name in ("USER", "LOGNAME", "HOME", "SHELL"):
            assert seen.env[name] == expected.env[name], name
        assert seen.cwd == expected.cwd


@pytest.fixture
def cpu_load() -> Iterator[None]:
    """A busy loop on every core while the test runs (what exposed the reordering)."""
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 2)]
    try:
        yield
    finally:
        for process in busy:
            process.kill()
            process.wait()


def client_terminal_columns(term: Tmux) -> int:
    """The width of the terminal ssh runs in, as the kernel has it (what ssh reads on SIGWINCH)."""
    tmux = ["tmux", "-S", term.socket]
    tty = subprocess.run(
        [*tmux, "display-message", "-p", "-t", term.name, "#{pane_tty}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    size = subprocess.run(["stty", "-F", tty, "size"], capture_output=True, text=True).stdout
    return int(size.split()[1]) if size.strip() else 0


def window_changes_sent(log: Path) -> int:
    """How many window-change requests ssh says it has sent (its own debug log)."""
    text = log.read_text(errors="replace") if log.exists() else ""
    return text.count("request window-change")


def test_window_changes_apply_before_later_input_under_load(
    gw: GatewayThread, tmp_path: Path, cpu_load: None
) -> None:
    term = Tmux("resize", tmp_path)
    try:
        log = tmp_path / "ssh.log"
        term.start(gw.ssh_argv(options=["-tt", "-o", "LogLevel=DEBUG2", "-E", str(log)]), width=90, height=25)
        term.type("echo READY-$((1+1))\n")
        term.wait_for(r"READY-2", timeout=60)
        for round_ in range(20):
            width = 60 + round_
            sent = window_changes_sent(log)
            term.resize(width, 18 + round_ % 4)
            # tmux may defer resizing its pane, and ssh acts on its SIGWINCH only in its next
            # loop: a loaded ssh that wakes to the signal and to keys typed meanwhile sends
            # the keys first. So wait until the kernel has the size and ssh has sent it.
            wait_until(
                lambda w=width, n=sent: client_terminal_columns(term) == w and window_changes_sent(log) > n,
                timeout=30,
                message=f"ssh to send the window change to {width} columns",
            )
            # Typed right after the resize: the shell must already see the new size.
            term.type(f"clear; stty size; echo ROUND-$(({round_}+100))\n")
            match = term.wait_for(rf"(\d+) (\d+)\s*\n.*ROUND-{round_ + 100}", timeout=60)
            assert int(match.group(2)) == width, f"round {round_}: stty size {match.group(0)!r}"
    finally:
        term.close()


async def test_window_change_and_the_input_right_behind_it_stay_in_order_under_load(
    gw: GatewayThread, cpu_load: None
) -> None:
    # The window change and the command are sent in one go (one TCP write), so
    # they arrive together: nothing but the gateway's ordering keeps the resize first.
    async with await connect(gw) as conn:
        process = await conn.create_process(term_type="xterm", term_size=(90, 25))
        output = ""

        async def read_until(marker: str) -> str:
            nonlocal output
            async with asyncio.timeout(60):
                while marker not in output:
                    output += await process.stdout.read(65536)
            before, _, output = output.partition(marker)
            return before

        process.stdin.write("echo READY-$((1+1))\n")
        await read_until("READY-2")
        for round_ in range(20):
            width = 60 + round_
            process.change_terminal_size(width, 20)
            process.stdin.write(f"stty size; echo ROUND-$(({round_}+100))\n")
            sizes = re.findall(r"(\d+) (\d+)\r?\n", await read_until(f"ROUND-{round_ + 100}"))
            assert sizes and sizes[-1] == ("20", str(width)), f"round {round_}: {sizes}"
        process.stdin.write("exit\n")
        await process.wait(timeout=60)


async def test_input_waits_while_a_window_change_is_being_applied(
    gw: GatewayThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A resize that takes its time (a busy engine): input sent after it must wait for it.
    applying, release = threading.Event(), threading.Event()
    events: list[str] = []
    open_environment = gw.gateway.open_environment

    async def recording_environment(identity, **options):  # type: ignore[no-untyped-def]
        environment = await open_environment(identity, **options)
        start = environment.start

        async def started(spec):  # type: ignore[no-untyped-def]
            process = await start(spec)
            resize, write = process.resize, process.write

            async def slow_resize(*size):  # type: ignore[no-untyped-def]
                events.append("resize")
                applying.set()
                await asyncio.to_thread(release.wait, 60)
                await resize(*size)
                events.append("resized")

            async def recorded_write(data):  # type: ignore[no-untyped-def]
                events.append("write")
                await write(data)

            process.resize, process.write = slow_resize, recorded_write
            return process

        environment.start = started
        return environment

    monkeypatch.setattr(gw.gateway, "open_environment", recording_environment)
    try:
        async with await connect(gw) as conn:
            process = await conn.create_process(
                "echo READY; read line; stty size", term_type="xterm", term_size=(90, 25)
            )
            assert (await process.stdout.readline()).strip() == "READY"
            process.change_terminal_size(70, 20)
            process.stdin.write("go\n")
            await asyncio.to_thread(applying.wait, 60)
            # A whole command on another channel later, the input is still held back.
            assert (await conn.run("echo later")).stdout == "later\n"
            assert "write" not in events
            release.set()
            result = await process.wait(timeout=60)
        assert str(result.stdout).split()[-2:] == ["20", "70"]
        assert events[:3] == ["resize", "resized", "write"]
    finally:
        release.set()
