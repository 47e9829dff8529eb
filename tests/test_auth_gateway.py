"""Authentication through the whole gateway: real OpenSSH client, real HTTP peers."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from pairpod.auth import verify_password
from tests.conftest import MakeGateway
from tests.support.docker_env import docker_overrides
from tests.support.gateway import GatewayThread
from tests.support.http_peers import AuthWebhookPeer, ConfigWebhookPeer
from tests.support.images import busybox_image


async def run_ssh(
    gw: GatewayThread, user: str, command: str, tmp: Path, password: str | None = None, use_key: bool = True
) -> tuple[int, str, str]:
    """The real OpenSSH client, without blocking this loop; a password comes from askpass."""
    env = dict(os.environ)
    options = ["-o", "PubkeyAuthentication=no"] if not use_key else []
    if password is not None:
        options += ["-o", "NumberOfPasswordPrompts=1"]
    argv = gw.ssh_argv(command, user=user, options=options, batch=password is None)
    if password is not None:
        secret = tmp / f"secret-{user}"
        secret.write_text(password)
        askpass = tmp / "askpass"
        askpass.write_text(f"#!/bin/sh\ncat '{secret}'\n")
        askpass.chmod(0o700)
        env.update(SSH_ASKPASS=str(askpass), SSH_ASKPASS_REQUIRE="force", DISPLAY=":0")
        argv = ["setsid", "-w", *argv]
    process = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def test_hash_password_prints_a_verifiable_argon2id_hash() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pairpod.cli", "hash-password"],
        input="correct horse\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0
    hashed = result.stdout.strip()
    assert hashed.startswith("$argon2id$")
    assert "correct horse" not in result.stdout
    assert verify_password(hashed, "correct horse")
    assert not verify_password(hashed, "wrong horse")


@pytest.fixture
async def webhooks() -> AsyncIterator[tuple[AuthWebhookPeer, ConfigWebhookPeer]]:
    auth, config = AuthWebhookPeer(), ConfigWebhookPeer()
    await auth.start()
    await config.start()
    yield auth, config
    await auth.stop()
    await config.stop()


async def test_password_login_and_config_webhook_override_reach_the_session(
    make_gateway: MakeGateway, tmp_path: Path, webhooks: tuple[AuthWebhookPeer, ConfigWebhookPeer]
) -> None:
    from pairpod.auth import hash_password

    _, config_hook = webhooks
    config_hook.answers["carol"] = {
        "config": {"local": {"env": {"CAROL_PROFILE": "from-webhook"}}, "security": {"env_allow": ["LANG"]}}
    }
    gw = await asyncio.to_thread(
        make_gateway,
        {
            "auth": {
                "users": {"carol": {"password_hash": hash_password("s3cret pass")}},
                "config_webhook": {"url": config_hook.config_url},
            },
        },
    )
    code, out, err = await run_ssh(
        gw, "carol", 'echo "profile=$CAROL_PROFILE"', tmp_path, password="s3cret pass", use_key=False
    )
    assert code == 0, err
    assert out == "profile=from-webhook\n"
    code, out, _ = await run_ssh(gw, "carol", "echo in", tmp_path, password="wrong", use_key=False)
    assert code == 255 and out == ""


async def test_config_webhook_gives_one_user_another_container_image(
    make_gateway: MakeGateway, tmp_path: Path, webhooks: tuple[AuthWebhookPeer, ConfigWebhookPeer]
) -> None:
    overrides = docker_overrides(image="debian")
    _, config_hook = webhooks
    config_hook.answers["dave"] = {
        "config": {"docker": {"image": busybox_image(), "env": {"DAVE_TEAM": "tools"}}}
    }
    gw = await asyncio.to_thread(
        make_gateway, {**overrides, "auth": {"config_webhook": {"url": config_hook.config_url}}}
    )
    probe = 'if [ -e /etc/debian_version ]; then echo debian; else echo other; fi; echo "team=$DAVE_TEAM"'
    results = await asyncio.gather(run_ssh(gw, "dave", probe, tmp_path), run_ssh(gw, "erin", probe, tmp_path))
    assert [(code, out) for code, out, _ in results] == [
        (0, "other\nteam=tools\n"),
        (0, "debian\nteam=\n"),
    ], results


async def test_webhook_that_fails_denies_and_the_gateway_keeps_serving(
    make_gateway: MakeGateway, tmp_path: Path, webhooks: tuple[AuthWebhookPeer, ConfigWebhookPeer]
) -> None:
    _, config_hook = webhooks
    config_hook.modes["dave"] = "malformed"
    gw = await asyncio.to_thread(
        make_gateway,
        {
            "auth": {"config_webhook": {"url": config_hook.config_url}},
        },
    )
    code, out, _ = await run_ssh(gw, "dave", "echo in", tmp_path)
    assert code == 255 and out == ""
    code, out, err = await run_ssh(gw, "erin", "echo still-serving", tmp_path)
    assert code == 0, err
    assert out == "still-serving\n"
