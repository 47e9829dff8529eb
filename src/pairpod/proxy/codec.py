"""PROXY protocol v1 and v2 headers (sans-I/O): bytes in, a header or a clear error out.

Spec: https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt. The
parser never reads past the header and never allocates for a length it has
not checked: v1 is at most 107 bytes, v2 at most 16 + 65535.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

V1_PREFIX = b"PROXY "
V1_MAX = 107  # the longest v1 line, CRLF included
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
_V2_FIXED = 16  # signature, version/command, family/protocol, length

Address = tuple[str, int]


class ProxyHeaderError(ValueError):
    """The bytes are not a valid PROXY header (the connection must be closed)."""


@dataclass(frozen=True)
class ProxyHeader:
    """A parsed header.

    ``source`` and ``destination`` are ``None`` when the header carries no
    address (v1 ``UNKNOWN``, v2 ``LOCAL`` or an unspecified/Unix family): the
    connection's own peer address then stands.
    """

    version: int
    length: int  # bytes of the stream the header took
    source: Address | None = None
    destination: Address | None = None


def could_be_header(data: bytes) -> bool:
    """Whether ``data`` starts like a PROXY header (v1 or v2), as far as it goes."""
    for prefix in (V1_PREFIX, V2_SIGNATURE):
        n = min(len(data), len(prefix))
        if n and data[:n] == prefix[:n]:
            return True
    return False


def parse(data: bytes) -> ProxyHeader | None:
    """The header at the start of ``data``, or ``None`` while more bytes are needed.

    Raises ProxyHeaderError when ``data`` cannot be (the start of) a header.
    """
    if not data:
        return None
    if not could_be_header(data):
        raise ProxyHeaderError("the connection did not start with a PROXY header")
    if data.startswith(V2_SIGNATURE[:1]):
        return _parse_v2(data)
    return _parse_v1(data)


def _parse_v1(data: bytes) -> ProxyHeader | None:
    end = data.find(b"\r\n", 0, V1_MAX)
    if end < 0:
        if len(data) >= V1_MAX:
            raise ProxyHeaderError(f"PROXY v1 header longer than {V1_MAX} bytes")
        if b"\n" in data or b"\r" in data[:-1]:
            raise ProxyHeaderError("PROXY v1 header not ended by CRLF")
        return None
    line = data[:end]
    try:
        text = line.decode("ascii")
    except UnicodeDecodeError:
        raise ProxyHeaderError("PROXY v1 header is not ASCII") from None
    parts = text.split(" ")
    length = end + 2
    if len(parts) >= 2 and parts[1] == "UNKNOWN":
        return ProxyHeader(version=1, length=length)
    if len(parts) != 6:
        raise ProxyHeaderError("PROXY v1 header needs: PROXY TCP4|TCP6 SRC DST SPORT DPORT")
    _, family, src, dst, sport, dport = parts
    kinds: dict[str, type[ipaddress.IPv4Address] | type[ipaddress.IPv6Address]] = {
        "TCP4": ipaddress.IPv4Address,
        "TCP6": ipaddress.IPv6Address,
    }
    kind = kinds.get(family)
    if kind is None:
        raise ProxyHeaderError(f"PROXY v1 protocol {family!r} is not TCP4, TCP6 or UNKNOWN")
    return ProxyHeader(
        version=1,
        length=length,
        source=(_address(kind, src), _port(sport)),
        destination=(_address(kind, dst), _port(dport)),
    )


def _address(kind: type[ipaddress.IPv4Address] | type[ipaddress.IPv6Address], text: str) -> str:
    try:
        return str(kind(text))
    except ValueError:
        raise ProxyHeaderError(f"PROXY v1 header has an invalid address {text!r}") from None


def _port(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or len(text) > 5 or int(text) > 65535:
        raise ProxyHeaderError(f"PROXY v1 header has an invalid port {text!r}")
    return int(text)


# v2 families (high nibble) and the size of their address block.
_V2_INET, _V2_INET6, _V2_UNIX = 0x1, 0x2, 0x3
_V2_STREAM = 0x1


def _parse_v2(data: bytes) -> ProxyHeader | None:
    if len(data) < _V2_FIXED:
        return None
    version_command, family_protocol, size = struct.unpack_from("!BBH", data, 12)
    if version_command >> 4 != 2:
        raise ProxyHeaderError(f"PROXY v2 header with version {version_command >> 4}")
    command = version_command & 0x0F
    if command not in (0, 1):
        raise ProxyHeaderError(f"PROXY v2 header with unknown command {command}")
    length = _V2_FIXED + size
    if len(data) < length:
        return None
    if command == 0:  # LOCAL: the balancer's own connection (a health check)
        return ProxyHeader(version=2, length=length)
    family, protocol = family_protocol >> 4, family_protocol & 0x0F
    body = data[_V2_FIXED:length]
    if family in (_V2_INET, _V2_INET6):
        if protocol != _V2_STREAM:
            raise ProxyHeaderError("PROXY v2 header for a datagram (UDP) connection")
        width = 4 if family == _V2_INET else 16
        if size < 2 * width + 4:
            raise ProxyHeaderError("PROXY v2 address block is truncated")
        src = ipaddress.ip_address(body[:width])
        dst = ipaddress.ip_address(body[width : 2 * width])
        sport, dport = struct.unpack_from("!HH", body, 2 * width)
        return ProxyHeader(version=2, length=length, source=(str(src), sport), destination=(str(dst), dport))
    if family in (0, _V2_UNIX):  # unspecified, or a Unix socket: no IP to use
        return ProxyHeader(version=2, length=length)
    raise ProxyHeaderError(f"PROXY v2 header with unknown address family {family}")
