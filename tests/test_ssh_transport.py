"""The transport tuning under AsyncSSH: sliced reads keep every byte, in order;
empty ignore packets are left out under AEAD ciphers only; a client's guessed
key exchange packet is ignored exactly when RFC 4253 says the guess is wrong."""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
from pathlib import Path

import asyncssh
import pytest
from asyncssh.connection import SSHConnection
from asyncssh.constants import MSG_IGNORE

from pairpod.ssh.transport import FEED_SLICE, CoalescingTransport, tune_transport
from tests.support.gateway import require


class _Sink(asyncssh.SSHServerSession[bytes]):
    """Hashes what the client sends; answers its length and digest at EOF."""

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self._size = 0
        self._chan: asyncssh.SSHServerChannel[bytes] | None = None

    def connection_made(self, chan: asyncssh.SSHServerChannel[bytes]) -> None:
        self._chan = chan

    def exec_requested(self, command: str) -> bool:
        return True

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        self._hash.update(data)
        self._size += len(data)

    def eof_received(self) -> bool:
        assert self._chan is not None
        self._chan.write(f"{self._size} {self._hash.hexdigest()}".encode())
        self._chan.exit(0)
        return True


class _Source(_Sink):
    """Answers an exec of N with N bytes of output."""

    def exec_requested(self, command: str) -> bool:
        self._answer_size = int(command)
        return True

    def session_started(self) -> None:
        assert self._chan is not None
        self._chan.write(b"x" * self._answer_size)
        self._chan.exit(0)


class _Server(asyncssh.SSHServer):
    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        tune_transport(conn)
        assert isinstance(conn._transport, CoalescingTransport)

    def begin_auth(self, username: str) -> bool:
        return False

    def session_requested(self) -> asyncssh.SSHServerSession[bytes]:
        return _Sink()


class _SourceServer(_Server):
    def session_requested(self) -> asyncssh.SSHServerSession[bytes]:
        return _Source()


async def test_bulk_input_reaches_the_session_whole_through_sliced_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    fed: list[int] = []
    receive = asyncssh.SSHServerConnection.data_received

    def spy(self: asyncssh.SSHServerConnection, data: bytes, datatype: asyncssh.DataType = None) -> None:
        fed.append(len(data))
        receive(self, data, datatype)

    monkeypatch.setattr(asyncssh.SSHServerConnection, "data_received", spy)
    host_key = asyncssh.generate_private_key("ssh-ed25519")
    server = await asyncssh.create_server(
        _Server, "127.0.0.1", 0, server_host_keys=[host_key], encoding=None
    )
    port = server.sockets[0].getsockname()[1]
    payload = os.urandom(6 * 1024 * 1024 + 5)
    try:
        async with asyncssh.connect(
            "127.0.0.1", port, known_hosts=None, agent_path=None, config=None, username="u"
        ) as conn:
            result = await conn.run("sink", input=payload, encoding=None, check=True)
    finally:
        server.close()
    assert result.stdout == f"{len(payload)} {hashlib.sha256(payload).hexdigest()}".encode()
    assert max(fed) <= FEED_SLICE


@pytest.mark.parametrize(("cipher", "ignores_expected"), [
    ("aes128-gcm@openssh.com", False),
    ("chacha20-poly1305@openssh.com", False),
    ("aes128-ctr", True),
])
async def test_empty_ignore_packets_are_left_out_only_under_aead_ciphers(
    monkeypatch: pytest.MonkeyPatch, cipher: str, ignores_expected: bool
):
    ignores: list[int] = []
    process_ignore = SSHConnection._packet_handlers[MSG_IGNORE]

    def count(self: SSHConnection, pkttype: int, pktid: int, packet: object) -> None:
        ignores.append(pktid)
        process_ignore(self, pkttype, pktid, packet)

    monkeypatch.setitem(SSHConnection._packet_handlers, MSG_IGNORE, count)
    host_key = asyncssh.generate_private_key("ssh-ed25519")
    server = await asyncssh.create_server(
        _SourceServer, "127.0.0.1", 0, server_host_keys=[host_key], encoding=None,
        encryption_algs=[cipher],
    )
    port = server.sockets[0].getsockname()[1]
    size = 2 * 1024 * 1024
    try:
        async with asyncssh.connect(
            "127.0.0.1", port, known_hosts=None, agent_path=None, config=None, username="u",
            encryption_algs=[cipher],
        ) as conn:
            assert conn.get_extra_info("send_cipher") == cipher
            result = await conn.run(str(size), encoding=None, check=True)
    finally:
        server.close()
    assert result.stdout == b"x" * size
    # The client sends its own ignore packets: count only the server's (64 data packets or more).
    if ignores_expected:
        assert len(ignores) >= size // 32768
    else:
        assert len(ignores) < size // 32768 // 2


class _UntunedServer(_Server):
    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        pass


@pytest.mark.parametrize(("server_class", "logs_in"), [(_Server, True), (_UntunedServer, False)])
async def test_guessed_key_exchange_packet_is_judged_by_the_first_choices(
    tmp_path: Path, server_class: type[_Server], logs_in: bool
):
    # dbclient guesses curve25519-sha256 and sends its KEXDH_INIT at once. The
    # server's first choice differs, so by RFC 4253 section 7.1 the guess is
    # wrong even though curve25519-sha256 is what gets negotiated; dbclient then
    # sends its KEXDH_INIT again. Untuned AsyncSSH took the guessed packet and
    # disconnected at the second: if that case starts logging in, AsyncSSH
    # applies the RFC's rule itself and the tuning can go.
    host_key = asyncssh.generate_private_key("ssh-ed25519")
    server = await asyncssh.create_server(
        server_class, "127.0.0.1", 0, server_host_keys=[host_key], encoding=None,
        kex_algs=["mlkem768x25519-sha256", "curve25519-sha256"],
    )
    port = server.sockets[0].getsockname()[1]
    try:
        result = await asyncio.to_thread(
            subprocess.run,
            [require("dbclient"), "-y", "-p", str(port), "u@127.0.0.1", "sink"],
            stdin=subprocess.DEVNULL, capture_output=True, timeout=60,
            env={**os.environ, "HOME": str(tmp_path)},
        )
    finally:
        server.close()
    empty = f"0 {hashlib.sha256(b'').hexdigest()}".encode()
    assert (result.stdout == empty) is logs_in, result.stderr
