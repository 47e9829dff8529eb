"""How AsyncSSH's connections meet their TCP transport: writes joined, reads fed in slices.

**Writes.** AsyncSSH writes every SSH packet to the socket on its own, and
since 2.x also sends an SSH_MSG_IGNORE packet before each one: two send()
system calls per 32 KiB of channel data. Gathering the writes made during one
event-loop turn into a single write roughly halves the system calls on bulk
transfers (measured in bench/throughput.py).

**Reads.** AsyncSSH keeps unparsed input in one ``bytes`` object and slices
it again for every packet it takes off the front, so each packet costs a copy
of everything still behind it. A busy gateway reads 256 KiB at a time (asyncio's
maximum), and with 32 KiB packets every byte was copied about ten times over:
a fifth of the gateway's CPU on bulk uploads. Feeding AsyncSSH the read in
slices bounds that to a few copies without reading the socket more often
(smaller reads measured slower: more system calls, and smaller writes onwards).
Measured: a quarter less CPU in AsyncSSH's receive path with large reads, and
up to 12% less gateway CPU on a bulk upload into a container (noisy runs).

**Ignore packets.** The SSH_MSG_IGNORE AsyncSSH puts before every packet is
the old countermeasure against predictable IVs in CBC mode (OpenSSH sends one
only with CBC ciphers). With an AEAD cipher (AES-GCM, ChaCha20-Poly1305) every
packet's nonce comes from its sequence number, so the empty packet protects
nothing, and on bulk transfers it costs a packet's worth of work (framing,
encryption, a random padding read) per 32 KiB of data. pairpod leaves it out
while an AEAD cipher is in use; with any other cipher AsyncSSH's behaviour stands.

**Keepalive.** AsyncSSH re-arms its keepalive timer at every read; pairpod
re-arms it only when it fires before the interval of silence is over.

**Guessed key exchange packets.** A client may send its first key exchange
packet right after its KEXINIT, guessing the algorithms (dropbear does).
RFC 4253 section 7.1: the guess is wrong, and the packet must be ignored, when
the two sides' *first* key exchange algorithms differ or their first host key
algorithms differ. AsyncSSH 2.24 ignores it only when the negotiated algorithm
is not the client's first, so it took dropbear's packet, then got the re-sent
one and disconnected ("Key exchange not in progress"). pairpod applies the
RFC's rule once AsyncSSH has processed the KEXINIT.

This is the only place pairpod touches AsyncSSH's private attributes.
"""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

import asyncssh
from asyncssh.constants import MSG_IGNORE, MSG_KEXINIT
from asyncssh.encryption import ChachaEncryption, GCMEncryption
from asyncssh.packet import SSHPacket

# Largest piece of received data handed to AsyncSSH at once, about two packets
# of the usual size (slices of 32 to 128 KiB measured alike).
FEED_SLICE = 64 * 1024


class CoalescingTransport:
    """Delegates to a transport, but joins the writes of one loop turn."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._pending: list[bytes] = []
        self._loop = asyncio.get_running_loop()

    def write(self, data: bytes) -> None:
        """Queue ``data``; it is written at the end of this loop turn."""
        if not self._pending:
            self._loop.call_soon(self.flush)
        self._pending.append(data)

    def flush(self) -> None:
        """Write everything queued, as one buffer."""
        if self._pending:
            data = b"".join(self._pending) if len(self._pending) > 1 else self._pending[0]
            self._pending.clear()
            if not self._transport.is_closing():
                self._transport.write(data)

    def writelines(self, chunks: Any) -> None:
        """Queue several buffers."""
        for chunk in chunks:
            self.write(chunk)

    def get_write_buffer_size(self) -> int:
        """Bytes not yet written, including those queued here."""
        return self._transport.get_write_buffer_size() + sum(map(len, self._pending))

    def close(self) -> None:
        """Flush, then close."""
        self.flush()
        self._transport.close()

    def write_eof(self) -> None:
        """Flush, then half-close."""
        self.flush()
        self._transport.write_eof()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def _feed_in_slices(conn: asyncssh.SSHServerConnection) -> None:
    """Have the transport's reads reach AsyncSSH at most FEED_SLICE bytes at a time."""
    receive = conn.data_received

    def data_received(data: bytes, datatype: asyncssh.DataType = None) -> None:
        if len(data) <= FEED_SLICE:
            receive(data)
            return
        view = memoryview(data)  # slices of a view are not copies
        for start in range(0, len(data), FEED_SLICE):
            if conn._transport is None:
                return  # a slice closed the connection: the rest is moot
            receive(view[start : start + FEED_SLICE])  # type: ignore[arg-type]

    # The transport looks its protocol's method up at every read, so this takes effect at once.
    conn.data_received = data_received  # type: ignore[method-assign]


# How much may wait in the socket transport before AsyncSSH pauses its channels
# (asyncio's default is 64 KiB).
_SEND_HIGH_WATER = 1 << 20
_SEND_LOW_WATER = 1 << 18

_EMPTY_STRING = b"\x00\x00\x00\x00"  # an SSH string of no bytes: the ignore packet's body


def _skip_ignore_packets_under_aead(conn: asyncssh.SSHServerConnection) -> None:
    """Drop AsyncSSH's automatic empty SSH_MSG_IGNORE while the cipher is AEAD."""
    send = conn.send_packet

    def send_packet(pkttype: int, *args: bytes, handler: Any = None) -> None:
        if (
            pkttype == MSG_IGNORE
            and args == (_EMPTY_STRING,)
            and isinstance(conn._send_encryption, (GCMEncryption, ChachaEncryption))
        ):
            return
        send(pkttype, *args, handler=handler)

    # AsyncSSH sends the ignore packet through self.send_packet: the instance attribute wins.
    conn.send_packet = send_packet  # type: ignore[method-assign]


def _lazy_keepalive(conn: asyncssh.SSHServerConnection) -> None:
    """Re-arm the keepalive timer when it fires early, not at every read.

    AsyncSSH cancels its keepalive timer and makes a new one each time data
    arrives: on a bulk upload that is a timer (and a heap entry left behind)
    per slice read. Here a read only notes the time; when the timer fires
    before ``keepalive_interval`` of silence has passed, it is set again for
    the rest. A silent client is detected exactly as before.
    """
    loop = asyncio.get_running_loop()
    last_read = loop.time()
    fire = conn._keepalive_timer_callback

    def reset() -> None:
        nonlocal last_read
        if conn._auth_complete:
            last_read = loop.time()
            if conn._keepalive_timer is None:
                conn._set_keepalive_timer()

    def callback() -> None:
        interval = conn._keepalive_interval
        silent = loop.time() - last_read
        if interval and silent < interval:
            conn._keepalive_timer = loop.call_later(interval - silent, callback)
            return
        fire()

    # AsyncSSH calls and schedules these through self: the instance attributes win.
    conn._reset_keepalive_timer = reset  # type: ignore[method-assign]
    conn._keepalive_timer_callback = callback  # type: ignore[method-assign]


def kexinit_guess_fields(kexinit: bytes) -> tuple[bytes, bytes, bool]:
    """A KEXINIT payload's first key exchange and host key algorithms, and its
    ``first_kex_packet_follows`` flag (RFC 4253 section 7.1)."""
    packet = SSHPacket(kexinit)
    packet.get_byte()  # message type
    packet.get_bytes(16)  # cookie
    kex_algs = packet.get_namelist()
    host_key_algs = packet.get_namelist()
    for _ in range(8):  # ciphers, MACs, compression (both ways), languages
        packet.get_namelist()
    follows = packet.get_boolean()
    return (kex_algs[0] if kex_algs else b"", host_key_algs[0] if host_key_algs else b"", follows)


def guess_is_wrong(client_kexinit: bytes, server_kexinit: bytes) -> bool:
    """Whether the client sent a guessed key exchange packet that must be ignored."""
    client_kex, client_host_key, follows = kexinit_guess_fields(client_kexinit)
    server_kex, server_host_key, _ = kexinit_guess_fields(server_kexinit)
    return follows and (client_kex != server_kex or client_host_key != server_host_key)


def _judge_kex_guess_by_rfc(conn: asyncssh.SSHServerConnection) -> None:
    """Ignore a client's guessed key exchange packet exactly when RFC 4253 says it is wrong."""
    process = conn.process_packet

    def judge() -> None:
        if conn._client_kexinit and conn._server_kexinit:
            conn._ignore_first_kex = guess_is_wrong(conn._client_kexinit, conn._server_kexinit)

    def process_packet(pkttype: int, pktid: int, packet: SSHPacket) -> Any:
        result = process(pkttype, pktid, packet)
        if pkttype != MSG_KEXINIT:
            return result
        if not inspect.isawaitable(result):
            judge()
            return result

        async def then_judge() -> None:
            await result
            # AsyncSSH holds further input until this returns: the guessed packet comes after.
            judge()

        return then_judge()

    # AsyncSSH dispatches each received packet through self.process_packet.
    conn.process_packet = process_packet  # type: ignore[method-assign]


def tune_transport(conn: asyncssh.SSHServerConnection) -> None:
    """Tune a just-made connection (once): a deeper send buffer, write
    coalescing, sliced reads, no ignore packets under AEAD, lazy keepalive, the
    RFC's rule for guessed key exchange packets."""
    transport = conn._transport
    if transport is not None and not isinstance(transport, CoalescingTransport):
        transport.set_write_buffer_limits(high=_SEND_HIGH_WATER, low=_SEND_LOW_WATER)
        conn._transport = CoalescingTransport(transport)  # type: ignore[assignment]  # duck-typed
        _feed_in_slices(conn)
        _skip_ignore_packets_under_aead(conn)
        _lazy_keepalive(conn)
        _judge_kex_guess_by_rfc(conn)
