"""The host-mode wire protocol: frames on one SSH channel between a host and a gateway.

``pairpod pair --via GATEWAY`` logs in as ``LOGIN+host`` and asks for the
subsystem :data:`SUBSYSTEM` on a session channel. Both directions then carry
frames, each ``[kind: u8][length: u32 big-endian][payload]``:

============  ===============  =================================================
kind          direction        payload
============  ===============  =================================================
``HELLO``     host → gateway   JSON: protocol version, session key, who may join
``WELCOME``   gateway → host   JSON: join commands, PTY size, grace period
``OUTPUT``    host → gateway   terminal output (bytes)
``INPUT``     gateway → host   read-write participants' keystrokes (bytes)
``RESIZE``    gateway → host   ``cols: u16, rows: u16``: the size the PTY must take
``END``       host → gateway   JSON: why the shared session ended (shell exit, stop)
``REVOKED``   gateway → host   JSON: which of the session's own links (ro, rw) are
                               revoked, and the links minted on it that still work
                               (their labels, see :func:`minted_label`, and the
                               number the next one takes); the host sends them
                               back in every HELLO
============  ===============  =================================================

A refusal is not a frame: the gateway writes one ``pairpod: ...`` line on the
channel's stderr and exits the channel with a status from :class:`Refusal`,
so a person who tries ``ssh LOGIN+host@gateway`` by hand reads it too.

This module is sans-I/O (as h11 is): :class:`FrameDecoder` turns bytes into
frames, :func:`encode` frames into bytes; it never touches a socket. Every
length a peer sends is checked against :data:`MAX_PAYLOAD` before anything is
buffered for it.
"""

from __future__ import annotations

import enum
import json
import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pairpod.sharing.tokens import MAX_LINKS, Access, Medium

#: The subsystem name the host asks for on its session channel.
SUBSYSTEM = "pairpod-host"
#: The username suffix of a host's connection (``alice+host``).
HOST_SUFFIX = "+host"
#: The protocol version a HELLO carries.
VERSION = 1
#: The largest payload of one frame (output is sent in smaller pieces).
MAX_PAYLOAD = 256 * 1024
#: The largest HELLO/WELCOME/END payload (JSON): small, bounded separately.
MAX_JSON = 16 * 1024
#: The largest terminal dimension a RESIZE frame carries (two bytes each).
MAX_DIMENSION = 0xFFFF

#: Numbers of minted links stay below this (a host's HELLO may not make them grow unbounded).
MAX_MINTED_NUMBER = 10**9
#: The longest grace period a WELCOME may give, in seconds (``sharing.host_grace`` is bounded by it).
MAX_GRACE = 86400

_MINTED_LABEL = re.compile(r"(web-)?(ro|rw)\.([0-9]{1,9})")  # ASCII digits: one spelling per number
_HEADER = struct.Struct(">BI")
_SIZE = struct.Struct(">HH")


class Kind(enum.IntEnum):
    """What a frame is."""

    HELLO = 1
    WELCOME = 2
    OUTPUT = 3
    INPUT = 4
    RESIZE = 5
    END = 6
    REVOKED = 7


class Refusal(enum.IntEnum):
    """Exit statuses of a refused host channel: what the host should do next."""

    #: Not allowed, or a protocol error: give up (the line says why).
    REFUSED = 1
    #: The session key has expired on the gateway: register a new session.
    EXPIRED = 3


class ProtocolError(Exception):
    """The peer sent something this protocol does not allow; the text says what."""


@dataclass(frozen=True)
class Frame:
    """One decoded frame."""

    kind: Kind
    payload: bytes

    def json(self) -> dict[str, Any]:
        """The payload as a JSON object (HELLO, WELCOME, END)."""
        try:
            value = json.loads(self.payload)
        except ValueError as error:
            raise ProtocolError(f"{self.kind.name}: not JSON: {error}") from None
        if not isinstance(value, dict):
            raise ProtocolError(f"{self.kind.name}: expected a JSON object")
        return value

    def size(self) -> tuple[int, int]:
        """A RESIZE frame's ``(cols, rows)``."""
        if len(self.payload) != _SIZE.size:
            raise ProtocolError("RESIZE: expected 4 bytes")
        cols, rows = _SIZE.unpack(self.payload)
        return cols, rows


def encode(kind: Kind, payload: bytes = b"") -> bytes:
    """One frame's bytes."""
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"payload of {len(payload)} bytes is over {MAX_PAYLOAD}")
    return _HEADER.pack(kind, len(payload)) + payload


def encode_json(kind: Kind, value: dict[str, Any]) -> bytes:
    """A HELLO, WELCOME or END frame."""
    return encode(kind, json.dumps(value, separators=(",", ":")).encode())


def encode_chunks(kind: Kind, data: bytes) -> Iterator[bytes]:
    """OUTPUT or INPUT frames for ``data``, split to fit :data:`MAX_PAYLOAD`."""
    for start in range(0, len(data), MAX_PAYLOAD):
        yield encode(kind, data[start : start + MAX_PAYLOAD])


def encode_resize(cols: int, rows: int) -> bytes:
    """A RESIZE frame (each dimension clamped to 1..65535)."""
    return encode(Kind.RESIZE, _SIZE.pack(*bounded_size(cols, rows)))


def bounded_size(
    cols: int, rows: int, max_cols: int = MAX_DIMENSION, max_rows: int = MAX_DIMENSION
) -> tuple[int, int]:
    """``cols`` x ``rows`` within 1..``max_cols`` and 1..``max_rows``."""
    return min(max(cols, 1), max_cols), min(max(rows, 1), max_rows)


def window_size(
    value: dict[str, Any], max_cols: int = MAX_DIMENSION, max_rows: int = MAX_DIMENSION
) -> tuple[int, int]:
    """The terminal size a HELLO or WELCOME gives (80x24 when absent), bounded
    whatever the peer says; ProtocolError when it is not two numbers."""
    cols, rows = value.get("cols", 80), value.get("rows", 24)
    if not isinstance(cols, int) or not isinstance(rows, int):
        raise ProtocolError("cols and rows must be numbers")
    return bounded_size(cols, rows, max_cols, max_rows)


def printable(text: object, limit: int = 200) -> str:
    """A peer's text fit to print on a terminal: no control characters (no escape
    sequences), at most ``limit`` characters; anything not a string is empty."""
    if not isinstance(text, str):
        return ""
    return "".join(c for c in text[:limit] if c.isprintable())


def revoked_links(value: dict[str, Any]) -> list[str]:
    """The ``revoked`` of a HELLO, WELCOME or REVOKED payload: which of ``ro``, ``rw``."""
    revoked = value.get("revoked", [])
    if not isinstance(revoked, list) or not all(a in ("ro", "rw") for a in revoked):
        raise ProtocolError("revoked must be a list of ro and rw")
    return sorted(set(revoked))


def minted_label(access: Access, medium: Medium, number: int) -> str:
    """The public label a minted link's token is derived from: ``ro.3``, ``web-rw.7``."""
    return f"{'web-' if medium is Medium.WEB else ''}{access.value}.{number}"


def parse_minted_label(label: str) -> tuple[Access, Medium, int]:
    """A label of :func:`minted_label` back into its parts; ProtocolError if it is not one."""
    match = _MINTED_LABEL.fullmatch(label)
    if match is None:
        raise ProtocolError(f"not a minted link: {printable(label, 40)!r}")
    medium = Medium.WEB if match.group(1) else Medium.SSH
    return Access(match.group(2)), medium, int(match.group(3))


def minted_links(value: dict[str, Any]) -> tuple[list[str], int]:
    """The ``minted`` and ``next`` of a HELLO, WELCOME or REVOKED payload: the labels of
    the live links minted on the session (at most :data:`MAX_LINKS`), and the number
    the next one takes (never one a revoked link had, so it stays revoked)."""
    minted = value.get("minted", [])
    number = value.get("next", 0)
    if not isinstance(minted, list) or len(minted) > MAX_LINKS or not all(isinstance(m, str) for m in minted):
        raise ProtocolError(f"minted must be a list of at most {MAX_LINKS} links")
    numbers = [parse_minted_label(label)[2] for label in minted]
    if type(number) is not int or not 0 <= number < MAX_MINTED_NUMBER:
        raise ProtocolError(f"next must be a number from 0 to {MAX_MINTED_NUMBER - 1}")
    # Else the next mint would hand out a live link's number again (the same token).
    if any(n >= number for n in numbers):
        raise ProtocolError("next must be above every minted link's number")
    return sorted(set(minted)), number


def grace_period(value: dict[str, Any]) -> float:
    """The ``grace`` of a WELCOME in seconds (0 when absent); ProtocolError unless it is
    a number from 0 to :data:`MAX_GRACE` (not a boolean, not NaN)."""
    grace = value.get("grace", 0)
    if isinstance(grace, bool) or not isinstance(grace, int | float) or not 0 <= grace <= MAX_GRACE:
        raise ProtocolError(f"grace must be a number of seconds from 0 to {MAX_GRACE}")
    return float(grace)


class FrameDecoder:
    """Bytes in, frames out; a bad header raises :class:`ProtocolError`."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[Frame]:
        """The frames completed by ``data`` (the rest waits for more bytes)."""
        self._buffer += data
        buffer = self._buffer
        frames = []
        offset = 0
        # A view: each payload is copied once, straight into its frame.
        with memoryview(buffer) as view:
            while len(buffer) - offset >= _HEADER.size:
                kind_value, length = _HEADER.unpack_from(buffer, offset)
                try:
                    kind = Kind(kind_value)
                except ValueError:
                    raise ProtocolError(f"unknown frame kind {kind_value}") from None
                limit = (
                    MAX_JSON if kind in (Kind.HELLO, Kind.WELCOME, Kind.END, Kind.REVOKED) else MAX_PAYLOAD
                )
                if length > limit:
                    raise ProtocolError(f"{kind.name} frame of {length} bytes (at most {limit})")
                end = offset + _HEADER.size + length
                if len(buffer) < end:
                    break
                frames.append(Frame(kind, bytes(view[offset + _HEADER.size : end])))
                offset = end
        del buffer[:offset]  # once per feed, not once per frame (the view is released)
        return frames

    @property
    def pending(self) -> int:
        """Bytes of an unfinished frame."""
        return len(self._buffer)
