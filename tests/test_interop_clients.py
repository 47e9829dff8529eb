"""Clients nobody here wrote: dropbear's ``dbclient`` and PuTTY's ``plink`` and ``pscp``.

Each logs in with the test key converted to its own format, checks the
gateway's host key against the real fingerprint, runs commands (exit status,
stdin) and copies files that must arrive byte-identical.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest

from tests.conftest import MakeGateway
from tests.support.gateway import ClientKey, GatewayThread, require


def host_key_fingerprint(gw: GatewayThread) -> str:
    """``SHA256:...`` of the gateway's (first) host key, from its public key file."""
    public = Path(f"{gw.config.host_keys[0]}.pub")
    out = subprocess.run(
        ["ssh-keygen", "-l", "-f", str(public)], capture_output=True, text=True, check=True
    ).stdout
    return out.split()[1]


def payload(size: int = 2 * 1024 * 1024 + 13) -> bytes:
    """Random bytes of an odd size (no line or block structure to hide a bug)."""
    return os.urandom(size)


# --- dropbear -----------------------------------------------------------------------------


class Dropbear:
    """dbclient with the test key in dropbear's format, and a home of its own."""

    def __init__(self, gw: GatewayThread, key: ClientKey, home: Path) -> None:
        self.gw = gw
        self.home = home
        self.key = home / "id_dropbear"
        (home / ".ssh").mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [require("dropbearconvert"), "openssh", "dropbear", str(key.private), str(self.key)],
            check=True,
            capture_output=True,
        )

    def run(
        self, command: str, input: bytes | None = None, options: Sequence[str] = ()
    ) -> subprocess.CompletedProcess[bytes]:
        """Run ``command`` on the gateway; ``-y`` accepts (and prints) the host key."""
        argv = [
            require("dbclient"),
            "-y",
            "-i",
            str(self.key),
            "-p",
            str(self.gw.port),
            *options,
            "alice@127.0.0.1",
            command,
        ]
        return subprocess.run(
            argv, input=input, capture_output=True, timeout=60, env={**os.environ, "HOME": str(self.home)}
        )


@pytest.fixture
def dropbear(gateway: GatewayThread, client_key: ClientKey, tmp_path: Path) -> Dropbear:
    return Dropbear(gateway, client_key, tmp_path / "dropbear-home")


def test_dbclient_logs_in_runs_a_command_and_gets_its_exit_status(dropbear: Dropbear) -> None:
    result = dropbear.run("echo hello from $((6*7)); exit 3")
    assert result.stdout == b"hello from 42\n", result.stderr
    assert result.returncode == 3
    # It saw the gateway's real host key.
    assert host_key_fingerprint(dropbear.gw) in result.stderr.decode()


def test_dbclient_stdin_reaches_the_program_and_a_file_arrives_byte_identical(
    dropbear: Dropbear, tmp_path: Path
) -> None:
    data = payload()
    target = tmp_path / "from-dbclient.bin"
    result = dropbear.run(f"cat > {target}; sha256sum < {target}", input=data)
    assert result.returncode == 0, result.stderr
    assert target.read_bytes() == data
    assert result.stdout.split()[0].decode() == hashlib.sha256(data).hexdigest()


def test_dbclient_logs_in_when_its_guessed_key_exchange_packet_is_wrong(
    make_gateway: MakeGateway, client_key: ClientKey, tmp_path: Path
) -> None:
    # dbclient sends a guessed first KEXDH_INIT for its first choice
    # (curve25519-sha256). With another first choice on the server the guess
    # is wrong (RFC 4253 section 7.1) and must be ignored, not taken.
    gw = make_gateway({"ssh": {"kex_algorithms": ["mlkem768x25519-sha256", "curve25519-sha256"]}})
    result = Dropbear(gw, client_key, tmp_path / "home").run("echo in; exit 5")
    assert result.stdout == b"in\n", result.stderr
    assert result.returncode == 5


# --- PuTTY --------------------------------------------------------------------------------


class Putty:
    """plink and pscp with the test key in PuTTY's format, pinned to the host key."""

    def __init__(self, gw: GatewayThread, key: ClientKey, directory: Path) -> None:
        self.gw = gw
        self.key = directory / "key.ppk"
        directory.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [require("puttygen"), str(key.private), "-O", "private", "-o", str(self.key)],
            check=True,
            capture_output=True,
        )
        self.host_key = host_key_fingerprint(gw)

    def common(self, host_key: str | None = None) -> list[str]:
        """-batch: never prompt; -hostkey: accept this key (the gateway's) and no other."""
        return ["-batch", "-P", str(self.gw.port), "-i", str(self.key), "-hostkey", host_key or self.host_key]

    def plink(
        self,
        command: str,
        input: bytes | None = None,
        options: Sequence[str] = (),
        host_key: str | None = None,
    ) -> subprocess.CompletedProcess[bytes]:
        """Run ``command`` with plink."""
        return subprocess.run(
            [require("plink"), "-ssh", *self.common(host_key), *options, "alice@127.0.0.1", command],
            input=input,
            capture_output=True,
            timeout=60,
        )

    def pscp(self, *args: str) -> subprocess.CompletedProcess[bytes]:
        """Run pscp with ``args`` (remote paths as ``alice@127.0.0.1:PATH``)."""
        return subprocess.run(
            [require("pscp"), *self.common(), *args],
            capture_output=True,
            timeout=120,
            stdin=subprocess.DEVNULL,
        )


@pytest.fixture
def putty(gateway: GatewayThread, client_key: ClientKey, tmp_path: Path) -> Putty:
    return Putty(gateway, client_key, tmp_path / "putty")


def test_plink_runs_a_command_with_stdin_and_gets_its_exit_status(putty: Putty) -> None:
    data = payload(300_000)
    result = putty.plink("cat; echo; echo err >&2; exit 4", input=data)
    assert result.stdout == data + b"\n"
    assert b"err" in result.stderr
    assert result.returncode == 4


def test_plink_refuses_a_gateway_whose_host_key_does_not_match(putty: Putty, tmp_path: Path) -> None:
    other = ClientKey.create(tmp_path / "other")
    wrong = subprocess.run(
        ["ssh-keygen", "-l", "-f", f"{other.private}.pub"], capture_output=True, text=True, check=True
    ).stdout.split()[1]
    result = putty.plink("echo ran", host_key=wrong)
    assert result.returncode != 0
    assert b"ran" not in result.stdout
    assert re.search(rb"(?i)host key", result.stderr), result.stderr


def test_plink_with_a_terminal_sees_one(putty: Putty) -> None:
    result = putty.plink("tty; echo TERM=$TERM", options=["-t"])
    assert b"/dev/pts/" in result.stdout, result.stderr
    assert result.returncode == 0


@pytest.mark.parametrize("protocol", ["-sftp", "-scp"])
def test_pscp_copies_files_both_ways_byte_identical(putty: Putty, tmp_path: Path, protocol: str) -> None:
    data = payload()
    local = tmp_path / "local.bin"
    local.write_bytes(data)
    remote = tmp_path / "remote.bin"
    up = putty.pscp(protocol, str(local), f"alice@127.0.0.1:{remote}")
    assert up.returncode == 0, up.stderr
    assert remote.read_bytes() == data
    back = tmp_path / "back.bin"
    down = putty.pscp(protocol, f"alice@127.0.0.1:{remote}", str(back))
    assert down.returncode == 0, down.stderr
    assert back.read_bytes() == data
