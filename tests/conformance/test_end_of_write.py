"""``eow@openssh.com`` on every backend: a program whose reader went away ends."""

from __future__ import annotations

import pytest

from tests.support.gateway import GatewayThread
from tests.support.pipelines import run_into_head

# OpenSSH's sshd takes about 0.3 s; a loose liveness bound, not a speed goal.
PIPELINE_SECONDS = 15.0


def test_eow_closed_stdout_ends_the_program(gw: GatewayThread) -> None:
    run = run_into_head(gw.ssh_argv("yes eow-conformance"))
    assert run.out == b"eow-conformance\n"
    assert run.elapsed < PIPELINE_SECONDS


def test_eow_closes_stdout_only(gw: GatewayThread, backend_name: str) -> None:
    # yes gets SIGPIPE (status 141) on its next write; the shell itself is not
    # killed, goes on and exits with a status of its choosing, as under sshd.
    if backend_name == "docker-session":
        pytest.skip("the program is the container's main process: it is sent SIGPIPE itself")
    run = run_into_head(gw.ssh_argv("yes; exit $(($? == 141 ? 42 : 1))"))
    assert run.out == b"y\n"
    assert run.status == 42
