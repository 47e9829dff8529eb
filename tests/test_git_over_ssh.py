"""git over ssh through the gateway (local backend), with the real git client.

git's protocol v2 is asked for through the ``GIT_PROTOCOL`` variable (git
runs ssh with ``SendEnv=GIT_PROTOCOL``); like sshd's ``AcceptEnv``, pairpod
passes it on only when ``security.env_allow`` names it, else git quietly
falls back to protocol v0.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from tests.conftest import MakeGateway


def _git(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60)


@pytest.fixture
def bare_repo(tmp_path: Path) -> Path:
    work = tmp_path / "work"
    work.mkdir()
    for args in (
        ("init", "-q", "-b", "main"),
        ("config", "user.email", "t@example.org"),
        ("config", "user.name", "t"),
    ):
        _git(*args, cwd=work).check_returncode()
    (work / "README").write_text("hello over ssh\n")
    _git("add", "README", cwd=work).check_returncode()
    _git("commit", "-q", "-m", "first", cwd=work).check_returncode()
    bare = tmp_path / "repo.git"
    _git("clone", "-q", "--bare", str(work), str(bare)).check_returncode()
    return bare


@pytest.mark.parametrize("allow_git_protocol", [False, True])
def test_git_clone_over_ssh_and_protocol_v2_with_git_protocol_allowed(
    make_gateway: MakeGateway, bare_repo: Path, tmp_path: Path, allow_git_protocol: bool
) -> None:
    env_allow = ["LANG", "LC_*", "TERM", "TZ", *(["GIT_PROTOCOL"] if allow_git_protocol else [])]
    gw = make_gateway({"security": {"env_allow": env_allow}})
    ssh_command = shlex.join(["ssh", *gw.ssh_options("alice")])
    env = {**os.environ, "GIT_SSH_COMMAND": ssh_command, "GIT_TRACE_PACKET": "1"}
    clone = tmp_path / f"clone-{allow_git_protocol}"
    result = _git(
        "-c",
        "protocol.version=2",
        "clone",
        f"ssh://alice@127.0.0.1:{gw.port}{bare_repo}",
        str(clone),
        env=env,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert (clone / "README").read_text() == "hello over ssh\n"
    # The server's first packet says "version 2" only when it speaks protocol v2.
    spoke_v2 = re.search(r"packet:\s+\S+< version 2$", result.stderr, re.MULTILINE) is not None
    assert spoke_v2 is allow_git_protocol, result.stderr[-3000:]
