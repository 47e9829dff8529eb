"""The replica-to-replica wire protocol, without I/O: handshake and sealed frames.

Handshake (the connecting replica speaks first; the listener says nothing to
anyone who has not proved the cluster secret)::

    client -> server   MAGIC (8) | Nc (32) | HMAC(K, "client" | Nc) (32)
    server -> client   Ns (32)   | HMAC(K, "server" | Nc | Ns) (32)

``K`` is derived from ``cluster.secret``. Each side then holds two AES-256-GCM
keys derived from ``K`` and both nonces, one per direction; a replayed client
hello learns nothing, since without ``K`` it cannot derive them.

Frames::

    length (u32, big-endian, of what follows) | AES-GCM(kind (1) | id (u32) | payload)

The GCM nonce is a per-direction frame counter, so a frame cannot be
replayed, dropped or reordered unnoticed. A length above :data:`MAX_FRAME`
is an error before anything is buffered for it.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import json
import secrets
import struct
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

MAGIC = b"PPREPL01"
NONCE_SIZE = 32
MAC_SIZE = 32
CLIENT_HELLO_SIZE = len(MAGIC) + NONCE_SIZE + MAC_SIZE
SERVER_HELLO_SIZE = NONCE_SIZE + MAC_SIZE
#: The largest frame payload a sender makes (output is split to fit).
MAX_PAYLOAD = 1 << 18
_HEADER = struct.Struct(">BI")
_TAG_SIZE = 16
#: The largest sealed frame accepted.
MAX_FRAME = _HEADER.size + MAX_PAYLOAD + _TAG_SIZE
_LENGTH = struct.Struct(">I")
_SIZE = struct.Struct(">II")


class ProtocolError(Exception):
    """The peer broke the protocol (or does not know the secret): drop the connection."""


class Kind(enum.IntEnum):
    """What a frame is. ``id`` is a request id or a joiner's stream id."""

    PING = 0
    # From the replica a user landed on, to the replica owning the session.
    LOOKUP = 1  # id: request; JSON {username, medium}
    JOIN = 2  # id: stream; JSON {username, medium, name, cols, rows, sizes}
    INPUT = 3  # id: stream; bytes
    RESIZE = 4  # id: stream; cols, rows (u32 each)
    PAUSE = 5  # id: stream
    RESUME = 6  # id: stream
    LEAVE = 7  # id: stream
    CONTROL = 8  # id: request; JSON {owner, command}
    # Back.
    REPLY = 20  # id: request; JSON
    JOINED = 21  # id: stream; JSON {ok, message, participant}
    OUTPUT = 22  # id: stream; bytes
    NOTICE = 23  # id: stream; UTF-8 text
    CLOSE = 24  # id: stream; UTF-8 reason
    SIZE = 25  # id: stream; the PTY's cols, rows (u32 each), only to a JOIN that asked for sizes


def cluster_key(secret: str) -> bytes:
    """The key every replica derives from ``cluster.secret``."""
    return hmac.new(secret.encode(), b"pairpod replica key v1", hashlib.sha256).digest()


def _mac(key: bytes, *parts: bytes) -> bytes:
    return hmac.new(key, b"".join(parts), hashlib.sha256).digest()


def _session_keys(key: bytes, client_nonce: bytes, server_nonce: bytes) -> tuple[bytes, bytes]:
    """(client-to-server, server-to-client) frame keys."""
    return (
        _mac(key, b"c2s", client_nonce, server_nonce),
        _mac(key, b"s2c", client_nonce, server_nonce),
    )


class ClientHandshake:
    """The connecting side's handshake."""

    def __init__(self, key: bytes) -> None:
        self._key = key
        self._nonce = secrets.token_bytes(NONCE_SIZE)

    def hello(self) -> bytes:
        """The first bytes to send."""
        return MAGIC + self._nonce + _mac(self._key, b"client", self._nonce)

    def finish(self, reply: bytes) -> FrameCodec:
        """Check the server's reply (exactly :data:`SERVER_HELLO_SIZE` bytes)."""
        server_nonce, proof = reply[:NONCE_SIZE], reply[NONCE_SIZE:]
        if len(reply) != SERVER_HELLO_SIZE or not hmac.compare_digest(
            proof, _mac(self._key, b"server", self._nonce, server_nonce)
        ):
            raise ProtocolError("the replica did not prove the cluster secret")
        send, receive = _session_keys(self._key, self._nonce, server_nonce)
        return FrameCodec(send, receive)


def server_handshake(key: bytes, hello: bytes) -> tuple[bytes, FrameCodec]:
    """Check a client hello (exactly :data:`CLIENT_HELLO_SIZE` bytes); the reply and the codec."""
    magic, rest = hello[: len(MAGIC)], hello[len(MAGIC) :]
    client_nonce, proof = rest[:NONCE_SIZE], rest[NONCE_SIZE:]
    if (
        len(hello) != CLIENT_HELLO_SIZE
        or not hmac.compare_digest(magic, MAGIC)
        or not hmac.compare_digest(proof, _mac(key, b"client", client_nonce))
    ):
        raise ProtocolError("bad hello (not a replica, or another cluster secret)")
    server_nonce = secrets.token_bytes(NONCE_SIZE)
    reply = server_nonce + _mac(key, b"server", client_nonce, server_nonce)
    receive, send = _session_keys(key, client_nonce, server_nonce)
    return reply, FrameCodec(send, receive)


@dataclass(frozen=True)
class Frame:
    """One decoded frame."""

    kind: Kind
    id: int
    payload: bytes

    def json(self) -> dict[str, Any]:
        """The payload as a JSON object (a ProtocolError if it is not)."""
        try:
            value = json.loads(self.payload)
        except ValueError:
            raise ProtocolError(f"{self.kind.name}: payload is not JSON") from None
        if not isinstance(value, dict):
            raise ProtocolError(f"{self.kind.name}: payload is not a JSON object")
        return value

    def size(self) -> tuple[int, int]:
        """A RESIZE or SIZE frame's (cols, rows)."""
        if len(self.payload) != _SIZE.size:
            raise ProtocolError(f"{self.kind.name}: bad payload")
        cols, rows = _SIZE.unpack(self.payload)
        return cols, rows


def size_payload(cols: int, rows: int) -> bytes:
    """The payload of a RESIZE or SIZE frame."""
    return _SIZE.pack(cols, rows)


def json_payload(value: Any) -> bytes:
    """A JSON payload."""
    return json.dumps(value, separators=(",", ":")).encode()


class FrameCodec:
    """Seals outgoing frames and opens incoming ones, for one authenticated connection."""

    def __init__(self, send_key: bytes, receive_key: bytes) -> None:
        self._send = AESGCM(send_key)
        self._receive = AESGCM(receive_key)
        self._sent = 0
        self._received = 0
        self._buffer = bytearray()

    @staticmethod
    def _nonce(counter: int) -> bytes:
        return counter.to_bytes(12, "big")

    def seal(self, kind: Kind, ident: int, payload: bytes = b"") -> bytes:
        """One frame, ready to write."""
        if len(payload) > MAX_PAYLOAD:
            raise ValueError("frame payload too large")
        sealed = self._send.encrypt(self._nonce(self._sent), _HEADER.pack(kind, ident) + payload, None)
        self._sent += 1
        return _LENGTH.pack(len(sealed)) + sealed

    def feed(self, data: bytes) -> list[Frame]:
        """Bytes received; the whole frames they complete. Raises ProtocolError."""
        self._buffer += data
        frames = []
        while len(self._buffer) >= _LENGTH.size:
            (length,) = _LENGTH.unpack_from(self._buffer)
            if not _HEADER.size + _TAG_SIZE <= length <= MAX_FRAME:
                raise ProtocolError(f"frame length {length} out of bounds")
            if len(self._buffer) < _LENGTH.size + length:
                break
            sealed = self._buffer[_LENGTH.size : _LENGTH.size + length]  # one copy: AESGCM takes any buffer
            del self._buffer[: _LENGTH.size + length]
            try:
                plain = self._receive.decrypt(self._nonce(self._received), sealed, None)
            except InvalidTag:
                raise ProtocolError("a frame failed authentication") from None
            self._received += 1
            kind, ident = _HEADER.unpack_from(plain)
            try:
                frames.append(Frame(Kind(kind), ident, plain[_HEADER.size :]))
            except ValueError:
                raise ProtocolError(f"unknown frame kind {kind}") from None
        return frames
