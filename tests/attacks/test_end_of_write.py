"""``ssh gw 'yes' | head -1``: the client's stdout closes, so the program must end.

OpenSSH's client then sends ``eow@openssh.com``; the gateway closes the
program's stdout, the program ends on SIGPIPE, the connection closes and its
environment is removed. Before, the program, the connection and the container
lived on (seen after 10 minutes).
"""

from __future__ import annotations

import secrets
from typing import Any

import pytest

from tests.attacks.conftest import ServeGateway, assert_probe_login_prompt
from tests.support.docker_env import containers, docker_overrides, remove_all
from tests.support.gateway import processes_matching, wait_until
from tests.support.pipelines import run_into_head

# OpenSSH's sshd takes about 0.3 s here; a loose liveness bound, not a speed goal.
PIPELINE_SECONDS = 10.0


def backend_overrides(backend: str, instance: str) -> dict[str, Any]:
    """Overrides for ``backend``, with an instance id no other gateway on the engine uses."""
    if backend == "local":
        return {"backend": "local", "instance_id": instance}
    return {**docker_overrides(backend.removeprefix("docker-")), "instance_id": instance}


@pytest.mark.parametrize("backend", ["local", "docker-connection", "docker-session"])
def test_program_ends_when_the_clients_stdout_closes(serve: ServeGateway, backend: str) -> None:
    instance = f"attack-eow-{secrets.token_hex(4)}"
    gateway = serve(backend_overrides(backend, instance))
    marker = f"eow-{secrets.token_hex(4)}"
    try:
        run = run_into_head(gateway.ssh_argv(f"yes {marker}"))
        print(f"{backend}: ssh gw yes | head -1 returned in {run.elapsed:.2f}s")

        assert run.out == f"{marker}\n".encode()
        assert run.elapsed < PIPELINE_SECONDS
        # It ended the way it does under sshd: its next write after the close got SIGPIPE.
        wait_until(lambda: "exit_signal=PIPE" in gateway.log(), message="the program's SIGPIPE")
        if backend == "local":
            wait_until(lambda: not processes_matching(marker), message="the program to be gone")
        else:
            wait_until(lambda: not containers(instance=instance), message="the container to be gone")
        assert_probe_login_prompt(gateway)
    finally:
        if backend != "local":
            # The gateway is killed at the end: what it was still removing is ours to remove.
            gateway.kill()
            remove_all(instance=instance)
