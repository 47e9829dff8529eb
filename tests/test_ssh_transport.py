"""The transport tuning under AsyncSSH, one test per patched behaviour: sliced
reads keep every byte, in order; the writes of one loop turn reach the socket
as one; empty ignore packets are left out under AEAD ciphers only; keepalive
requests still wait for an interval of silence and still drop a client that
stopped answering; a client's guessed key exchange packet is ignored exactly
when RFC 4253 says the guess is wrong."""

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
    server = await asyncssh.create_server(_Server, "127.0.0.1", 0, server_host_keys=[host_key], encoding=None)
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


@pytest.mark.parametrize(
    ("cipher", "ignores_expected"),
    [
        ("aes128-gcm@openssh.com", False),
        ("chacha20-poly1305@openssh.com", False),
        ("aes128-ctr", True),
    ],
)
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
        _SourceServer,
        "127.0.0.1",
        0,
        server_host_keys=[host_key],
        encoding=None,
        encryption_algs=[cipher],
    )
    port = server.sockets[0].getsockname()[1]
    size = 2 * 1024 * 1024
    try:
        async with asyncssh.connect(
            "127.0.0.1",
            port,
            known_hosts=None,
            agent_path=None,
            config=None,
            username="u",
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
        server_class,
        "127.0.0.1",
        0,
        server_host_keys=[host_key],
        encoding=None,
        kex_algs=["mlkem768x25519-sha256", "curve25519-sha256"],
    )
    port = server.sockets[0].getsockname()[1]
    try:
        result = await asyncio.to_thread(
            subprocess.run,
            [require("dbclient"), "-y", "-p", str(port), "u@127.0.0.1", "sink"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=60,
            env={**os.environ, "HOME": str(tmp_path)},
        )
    finally:
        server.close()
    empty = f"0 {hashlib.sha256(b'').hexdigest()}".encode()
    assert (result.stdout == empty) is logs_in, result.stderr


class _WatchedServer(_Server):
    """A tuned server that counts the socket writes of its connection and
    notes when the connection is gone."""

    def __init__(self) -> None:
        self.socket_writes = 0
        self.lost = asyncio.Event()

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        super().connection_made(conn)
        socket_transport = conn._transport._transport  # type: ignore[union-attr]
        write = socket_transport.write

        def counted(data: bytes) -> None:
            self.socket_writes += 1
            write(data)

        socket_transport.write = counted

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.set()


async def _serve(server: _WatchedServer, **options: object) -> tuple[asyncssh.SSHAcceptor, int]:
    host_key = asyncssh.generate_private_key("ssh-ed25519")
    acceptor = await asyncssh.create_server(
        lambda: server, "127.0.0.1", 0, server_host_keys=[host_key], encoding=None, **options
    )
    return acceptor, acceptor.sockets[0].getsockname()[1]


async def test_the_writes_of_one_loop_turn_reach_the_socket_as_one() -> None:
    class Server(_WatchedServer):
        def session_requested(self) -> asyncssh.SSHServerSession[bytes]:
            return _Source()

    server = Server()
    acceptor, port = await _serve(server, encryption_algs=["aes128-gcm@openssh.com"])
    size = 4 * 1024 * 1024
    try:
        async with asyncssh.connect(
            "127.0.0.1", port, known_hosts=None, agent_path=None, config=None, username="u"
        ) as conn:
            before = server.socket_writes
            result = await conn.run(str(size), encoding=None, check=True)
            writes = server.socket_writes - before
    finally:
        acceptor.close()
    assert result.stdout == b"x" * size
    # AsyncSSH writes each packet on its own: 128 data packets of 32 KiB at least.
    packets = size // 32768
    assert writes < packets // 2, f"{writes} socket writes for {packets} packets"


async def test_keepalive_waits_for_silence_and_drops_a_client_that_stopped_answering(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # AsyncSSH re-arms its keepalive timer at every read; the tuning notes the
    # time instead and re-arms the timer for the rest when it fires early. What
    # a client sees must not change: no keepalive request while it sends, one
    # per interval once it is silent, and a disconnect when it stops answering.
    # An interval long enough that a loaded machine does not stall the sender for one.
    interval, count_max = 1.0, 2
    asked: list[float] = []
    asked_twice = asyncio.Event()
    answer = SSHConnection._process_keepalive_at_openssh_dot_com_global_request

    def count(self: SSHConnection, packet: object) -> None:
        asked.append(asyncio.get_running_loop().time())
        if len(asked) >= 2:
            asked_twice.set()
        answer(self, packet)  # type: ignore[arg-type]

    monkeypatch.setattr(SSHConnection, "_process_keepalive_at_openssh_dot_com_global_request", count)
    server = _WatchedServer()
    acceptor, port = await _serve(server, keepalive_interval=interval, keepalive_count_max=count_max)
    loop = asyncio.get_running_loop()
    try:
        async with asyncssh.connect(
            "127.0.0.1", port, known_hosts=None, agent_path=None, config=None, username="u"
        ) as conn:
            process = await conn.create_process("sink", encoding=None)
            # Busy for four intervals, sending every 20 ms (the workload, not a wait).
            busy_until = loop.time() + 4 * interval
            while loop.time() < busy_until:
                process.stdin.write(b"k" * 1024)
                await asyncio.sleep(0.02)
            assert asked == [], "keepalive requests reached a client that was sending"
            silent_since = loop.time()
            await asyncio.wait_for(asked_twice.wait(), timeout=30)
            assert asked[0] - silent_since >= interval * 0.9
            assert not server.lost.is_set()
            # Stop reading: the keepalive requests go unanswered.
            conn._transport.pause_reading()  # type: ignore[union-attr]
            await asyncio.wait_for(server.lost.wait(), timeout=30)
    finally:
        acceptor.close()
