"""The configurable algorithm lists: checked at load, named in errors, and what is negotiated."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from pairpod.config import validate_config
from pairpod.errors import ConfigError
from pairpod.ssh import Gateway
from tests.conftest import MakeGateway
from tests.support.client import connect
from tests.support.gateway import ClientKey, GatewayThread, base_config


@pytest.mark.parametrize(
    ("key", "bad"),
    [
        ("kex_algorithms", "diffie-hellman-group99-sha1"),
        ("macs", "hmac-sha3-fake"),
        ("host_key_algorithms", "ssh-fake"),
        ("ciphers", "rot13"),
    ],
)
def test_unknown_algorithm_is_refused_naming_the_key(key: str, bad: str) -> None:
    with pytest.raises(ConfigError) as error:
        validate_config(
            {"ssh": {key: ["curve25519-sha256" if key == "kex_algorithms" else bad, bad]}}, "pairpod.yaml"
        )
    assert f"pairpod.yaml: ssh.{key}: " in str(error.value)
    assert bad in str(error.value)


async def test_mac_and_kex_lists_are_what_is_negotiated(make_gateway: MakeGateway) -> None:
    gw = make_gateway(
        {"ssh": {"ciphers": ["aes128-ctr"], "macs": ["hmac-sha2-512"], "kex_algorithms": ["curve448-sha512"]}}
    )
    async with await connect(gw, encryption_algs=["aes128-ctr"]) as conn:
        assert conn.get_extra_info("send_mac") == "hmac-sha2-512"
        assert (await conn.run("echo ok")).stdout == "ok\n"
    offer = refusal(gw, "no matching key exchange method found", "-o", "KexAlgorithms=curve25519-sha256")
    # Besides the configured method, only the markers for extensions and strict key exchange.
    assert offer == ["curve448-sha512", "ext-info-s", "kex-strict-s-v00@openssh.com"]


def refusal(gw: GatewayThread, what: str, *options: str) -> list[str]:
    """The gateway's offer, as OpenSSH reports it when the offer leaves it nothing to pick.

    OpenSSH reads the server's KEXINIT before the close behind it. AsyncSSH
    checks that KEXINIT in a task, so on a loaded machine the server's close
    can reach it first and it reports a bare ConnectionLost instead.
    """
    # OpenSSH reports it at INFO, below the tests' usual LogLevel.
    result = gw.ssh("true", options=["-o", "LogLevel=INFO", *options])
    assert result.returncode == 255
    match = re.search(rf"{what}\. Their offer: (\S+)", result.stderr.decode())
    assert match, result.stderr
    return match.group(1).split(",")


@pytest.fixture
def rsa_host_key(tmp_path: Path) -> Path:
    """A fresh RSA host key (it can sign with SHA-1 or SHA-2)."""
    path = tmp_path / "rsa_host_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "rsa", "-b", "2048", "-N", "", "-f", str(path)], check=True)
    return path


async def test_host_key_left_without_an_algorithm_is_a_config_error(
    tmp_path: Path, client_key: ClientKey, rsa_host_key: Path
) -> None:
    config = base_config(
        tmp_path,
        client_key,
        {"host_keys": [str(rsa_host_key)], "ssh": {"host_key_algorithms": ["ssh-ed25519"]}},
    )
    with pytest.raises(ConfigError, match=r"host_keys\[0\].*ssh\.host_key_algorithms"):
        await Gateway(config).start()


async def test_rsa_host_key_signs_with_sha2_only(make_gateway: MakeGateway, rsa_host_key: Path) -> None:
    gw = make_gateway({"host_keys": [str(rsa_host_key)]})
    # Refused in the key exchange: the server offers the RSA key with SHA-2 signatures only.
    offer = refusal(gw, "no matching host key type found", "-o", "HostKeyAlgorithms=ssh-rsa")
    assert sorted(offer) == ["rsa-sha2-256", "rsa-sha2-512"]
    async with await connect(gw, server_host_key_algs=["rsa-sha2-256"]) as conn:
        assert (await conn.run("echo ok")).stdout == "ok\n"
