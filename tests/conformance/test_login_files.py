"""Files from an auth webhook's answer (ContainerSSH's ``files``) on every backend.

They are written before the first process, mode 0600, owned by the user the
session's processes run as; a backend with an environment per channel
cannot keep them and refuses the login with one clear line.
"""

from __future__ import annotations

import asyncio
import base64
import shutil
import uuid
from pathlib import Path
from typing import Any

from tests.conformance.conftest import PER_CHANNEL_ENVIRONMENTS
from tests.conftest import MakeGateway
from tests.support.containerssh_peer import ContainerSSHPeer, containerssh_peer
from tests.support.gateway import ClientKey

__all__ = ["containerssh_peer"]  # the ``peer`` fixture


async def test_files_from_the_auth_answer_are_in_the_environment(
    make_gateway: MakeGateway,
    backend_name: str,
    backend_overrides: dict[str, Any],
    peer: ContainerSSHPeer,
    tmp_path: Path,
) -> None:
    key = ClientKey.create(tmp_path / "webhook-key")
    directory = f"/tmp/pairpod-files-{uuid.uuid4().hex[:8]}"
    content = b"line one\n\x00\xffbinary tail"
    peer.pubkeys["kim"] = {" ".join(key.public_line.split()[:2])}
    peer.auth_answers["kim"] = {
        "files": {
            f"{directory}/sub/token": {"value": base64.b64encode(content).decode(), "sensitive": True},
        }
    }
    gw = await asyncio.to_thread(make_gateway, {**backend_overrides, "auth": {"webhook": {"url": peer.url}}})
    probe = f'stat -c "%a %u" {directory}/sub/token; id -u; od -An -tx1 {directory}/sub/token'
    try:
        result = await asyncio.to_thread(gw.ssh, probe, user="kim", key=key)
    finally:
        if backend_name == "local":
            shutil.rmtree(directory, ignore_errors=True)
    if backend_name in PER_CHANNEL_ENVIRONMENTS:
        assert result.returncode != 0 and result.stdout == b""
        assert b"cannot place the login's files in the environment" in result.stderr
        return
    assert result.returncode == 0, result.stderr
    mode_owner, uid, *dump = result.stdout.decode().splitlines()
    assert mode_owner == f"600 {uid}"
    assert bytes.fromhex("".join(dump).replace(" ", "")) == content
    assert peer.problems == []
