"""Logins with the real OpenSSH client: keys, passwords, keyboard-interactive, certificates.

Keys and certificates are made with ssh-keygen. Passwords reach ssh through
an askpass script (``SSH_ASKPASS_REQUIRE=force``, no controlling terminal
thanks to ``setsid``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncssh
import pytest

from pairpod.auth import hash_password
from tests.support.http_peers import KeySourcePeer
from tests.test_auth_chain import Harness, start_harness, stop_harness


@dataclass(frozen=True)
class Key:
    """An ssh-keygen key pair."""

    private: Path

    @property
    def public(self) -> Path:
        return self.private.with_name(self.private.name + ".pub")

    @property
    def line(self) -> str:
        return " ".join(self.public.read_text().split()[:2])

    @property
    def cert(self) -> Path:
        return self.private.with_name(self.private.name + "-cert.pub")


def keygen(directory: Path, name: str) -> Key:
    path = directory / name
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(path)], check=True)
    return Key(path)


def sign(ca: Key, key: Key, *args: str) -> Path:
    """Make ``key``'s certificate with ``ssh-keygen -s``."""
    subprocess.run(
        ["ssh-keygen", "-q", "-s", str(ca.private), "-I", "test-id", *args, str(key.public)],
        check=True,
    )
    return key.cert


@dataclass(frozen=True)
class Keys:
    alice: Key
    stranger: Key
    ca: Key
    other_ca: Key


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    directory = tmp_path_factory.mktemp("openssh-keys")
    return Keys(*(keygen(directory, n) for n in ("alice", "stranger", "ca", "other_ca")))


@pytest.fixture(scope="module")
def host_key() -> asyncssh.SSHKey:
    return asyncssh.generate_private_key("ssh-ed25519")


@pytest.fixture(scope="module")
def alice_hash() -> str:
    return hash_password("wonderland")


@pytest.fixture
async def server(
    host_key: asyncssh.SSHKey, keys: Keys, tmp_path: Path, alice_hash: str
) -> AsyncIterator[Harness]:
    forced = keygen(tmp_path, "forced")
    (tmp_path / "forced_key").write_text(str(forced.private))
    harness = await start_harness(
        host_key,
        {
            "users": {
                "alice": {"keys": [keys.alice.line], "password_hash": alice_hash},
                "robot": {"keys": [f'restrict,command="echo forced" {forced.line}']},
            },
            "trusted_user_ca_keys": str(keys.ca.public),
        },
    )
    harness.forced_key = forced  # type: ignore[attr-defined]
    yield harness
    await stop_harness(harness)


async def ssh(
    harness: Harness,
    user: str,
    *options: str,
    password: str | None = None,
    tmp: Path | None = None,
) -> tuple[int, dict[str, Any] | None, str]:
    """Run the OpenSSH client; return (exit code, the session's JSON, stderr)."""
    env = dict(os.environ)
    argv = [
        "ssh", "-F", "/dev/null", "-p", str(harness.port),
        "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
        "-o", "LogLevel=ERROR", "-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none",
        "-o", "ConnectTimeout=20",
    ]  # fmt: skip
    if password is None:
        argv += ["-o", "BatchMode=yes"]
    else:
        assert tmp is not None
        secret = tmp / "password"
        secret.write_text(password)
        askpass = tmp / "askpass"
        askpass.write_text(f"#!/bin/sh\ncat '{secret}'\n")
        askpass.chmod(0o700)
        env.update(SSH_ASKPASS=str(askpass), SSH_ASKPASS_REQUIRE="force", DISPLAY=":0")
        argv = ["setsid", "-w", *argv, "-o", "NumberOfPasswordPrompts=1"]
    argv += [*options, f"{user}@127.0.0.1", "client-command"]
    process = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    out, err = await process.communicate()
    rc = process.returncode
    assert rc is not None
    return rc, (json.loads(out) if rc == 0 and out else None), err.decode(errors="replace")


def key_options(key: Key, *extra: str) -> list[str]:
    return ["-i", str(key.private), "-o", "PreferredAuthentications=publickey", *extra]


def rejects(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [dict(getattr(r, "pairpod_fields", {})) for r in caplog.records if r.getMessage() == "auth.reject"]


@pytest.fixture(autouse=True)
def _capture(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "pairpod")


async def test_key_login(server: Harness, keys: Keys) -> None:
    rc, out, err = await ssh(server, "alice", *key_options(keys.alice))
    assert rc == 0, err
    assert out is not None and out["user"] == "alice" and out["method"] == "publickey"
    assert out["command"] == "client-command"


async def test_forced_command_and_restrict(server: Harness) -> None:
    forced: Key = server.forced_key  # type: ignore[attr-defined]
    rc, out, err = await ssh(server, "robot", *key_options(forced))
    assert rc == 0, err
    assert out is not None and out["command"] == "echo forced"
    assert out["pty"] is False and out["port_forwarding"] is False


async def test_unknown_key_is_denied(server: Harness, keys: Keys, caplog: pytest.LogCaptureFixture) -> None:
    rc, _, err = await ssh(server, "alice", *key_options(keys.stranger))
    assert rc == 255 and "Permission denied" in err
    assert rejects(caplog)[0]["reason"].startswith("static_keys: key not listed")


async def test_password_login(server: Harness, tmp_path: Path) -> None:
    opts = ["-o", "PreferredAuthentications=password"]
    rc, out, err = await ssh(server, "alice", *opts, password="wonderland", tmp=tmp_path)
    assert rc == 0, err
    assert out is not None and out["method"] == "password"
    rc, out, err = await ssh(server, "alice", *opts, password="Guess-123", tmp=tmp_path)
    assert rc == 255 and "Permission denied" in err


async def test_keyboard_interactive_login(server: Harness, tmp_path: Path) -> None:
    opts = ["-o", "PreferredAuthentications=keyboard-interactive"]
    rc, out, err = await ssh(server, "alice", *opts, password="wonderland", tmp=tmp_path)
    assert rc == 0, err
    assert out is not None and out["method"] == "keyboard-interactive"
    rc, out, err = await ssh(server, "alice", *opts, password="Guess-123", tmp=tmp_path)
    assert rc == 255


def cert_options(key: Key) -> list[str]:
    return key_options(key, "-o", f"CertificateFile={key.cert}")


async def test_certificate_login_with_force_command(server: Harness, keys: Keys) -> None:
    sign(keys.ca, keys.stranger, "-n", "alice,ops", "-V", "+1h", "-O", "force-command=uptime")
    rc, out, err = await ssh(server, "alice", *cert_options(keys.stranger))
    assert rc == 0, err
    assert out is not None and out["method"] == "certificate"
    assert out["forced"] == "uptime" and out["command"] == "uptime" and out["pty"] is True


@pytest.mark.parametrize(
    ("case", "args", "reason"),
    [
        ("expired", ["-n", "alice", "-V", "20000101:20000102"], "refused by the SSH layer"),
        ("wrong_ca", ["-n", "alice", "-V", "+1h"], "is not trusted"),
        ("other_principal", ["-n", "bob", "-V", "+1h"], "do not include 'alice'"),
        ("no_principal", ["-V", "+1h"], "lacks a principal list"),
        (
            "source_address",
            ["-n", "alice", "-V", "+1h", "-O", "source-address=10.0.0.0/8"],
            "refused by the SSH layer",
        ),
    ],
)
async def test_bad_certificates_are_denied(
    server: Harness,
    keys: Keys,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    case: str,
    args: list[str],
    reason: str,
) -> None:
    key = keygen(tmp_path, "user")
    sign(keys.other_ca if case == "wrong_ca" else keys.ca, key, *args)
    rc, _, err = await ssh(server, "alice", *cert_options(key))
    assert rc == 255 and "Permission denied" in err
    await server.lost.get()  # the server side has seen the connection end
    assert any(r["method"] == "certificate" and reason in r["reason"] for r in rejects(caplog)), rejects(
        caplog
    )


async def test_github_user_with_openssh(host_key: asyncssh.SSHKey, keys: Keys) -> None:
    peer = KeySourcePeer()
    peer.keys["alice"] = keys.alice.line + "\n"
    await peer.start()
    harness = await start_harness(
        host_key, {"github_users": ["alice"], "key_sources": {"github": {"url": peer.url}}}
    )
    try:
        rc, out, err = await ssh(harness, "alice", *key_options(keys.alice))
        assert rc == 0, err
        assert out is not None and out["source"] == "github(alice)"
        rc, _, _ = await ssh(harness, "alice", *key_options(keys.stranger))
        assert rc == 255
    finally:
        await stop_harness(harness)
        await peer.stop()
