"""The PROXY protocol codec, with bytes: v1, v2, malformed and truncated input."""

from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pairpod.proxy.codec import V2_SIGNATURE, ProxyHeader, ProxyHeaderError, parse


def v2(command: int = 1, family: int = 0x11, body: bytes = b"", version: int = 2) -> bytes:
    return V2_SIGNATURE + bytes([(version << 4) | command, family]) + struct.pack("!H", len(body)) + body


def inet4(src: str, dst: str, sport: int, dport: int) -> bytes:
    return (
        ipaddress.IPv4Address(src).packed
        + ipaddress.IPv4Address(dst).packed
        + struct.pack("!HH", sport, dport)
    )


def test_v1_tcp4() -> None:
    data = b"PROXY TCP4 192.0.2.7 10.0.0.1 51234 2222\r\nSSH-2.0-OpenSSH_9.2\r\n"
    header = parse(data)
    assert header == ProxyHeader(
        version=1, length=42, source=("192.0.2.7", 51234), destination=("10.0.0.1", 2222)
    )
    assert data[header.length :] == b"SSH-2.0-OpenSSH_9.2\r\n"


def test_v1_tcp6_and_unknown() -> None:
    header = parse(b"PROXY TCP6 2001:db8::1 ::1 1 65535\r\n")
    assert header is not None and header.source == ("2001:db8::1", 1)
    assert parse(b"PROXY UNKNOWN\r\n") == ProxyHeader(version=1, length=15)
    assert parse(b"PROXY UNKNOWN ffff::1 ::1 1 2\r\n") == ProxyHeader(version=1, length=31)


@pytest.mark.parametrize(
    "data, problem",
    [
        (b"PROXY TCP4 192.0.2.7 10.0.0.1 51234\r\n", "needs"),
        (b"PROXY TCP4 300.0.2.7 10.0.0.1 1 2\r\n", "invalid address"),
        (b"PROXY TCP4 ::1 10.0.0.1 1 2\r\n", "invalid address"),
        (b"PROXY TCP4 192.0.2.7 10.0.0.1 65536 2\r\n", "invalid port"),
        (b"PROXY TCP4 192.0.2.7 10.0.0.1 -1 2\r\n", "invalid port"),
        (b"PROXY UDP4 192.0.2.7 10.0.0.1 1 2\r\n", "not TCP4"),
        (b"PROXY TCP4 192.0.2.7 10.0.0.1 1 2\n", "CRLF"),
        (b"PROXY " + b"1" * 200, "longer than 107"),
        (b"PROXY TCP4 192.0.2.\xff 10.0.0.1 1 2\r\n", "not ASCII"),
        (b"SSH-2.0-OpenSSH_9.2\r\n", "did not start with a PROXY header"),
        (b"GET / HTTP/1.1\r\n", "did not start"),
    ],
)
def test_v1_malformed(data: bytes, problem: str) -> None:
    with pytest.raises(ProxyHeaderError, match=problem):
        parse(data)


def test_v2_proxy_inet4_and_inet6_with_tlvs_and_rest() -> None:
    body = inet4("198.51.100.9", "10.0.0.1", 40000, 2222) + b"\x04\x00\x01x"  # a TLV after
    data = v2(body=body) + b"SSH-2.0-x\r\n"
    header = parse(data)
    assert header == ProxyHeader(
        version=2, length=16 + len(body), source=("198.51.100.9", 40000), destination=("10.0.0.1", 2222)
    )
    assert data[header.length :] == b"SSH-2.0-x\r\n"
    six = (
        ipaddress.IPv6Address("2001:db8::5").packed
        + ipaddress.IPv6Address("::1").packed
        + struct.pack("!HH", 7, 22)
    )
    assert parse(v2(family=0x21, body=six)) == ProxyHeader(
        version=2, length=52, source=("2001:db8::5", 7), destination=("::1", 22)
    )


def test_v2_local_and_unspecified_carry_no_address() -> None:
    assert parse(v2(command=0, family=0x00)) == ProxyHeader(version=2, length=16)
    assert parse(v2(family=0x00)) == ProxyHeader(version=2, length=16)
    assert parse(v2(family=0x31, body=b"\x00" * 216)) == ProxyHeader(version=2, length=232)


@pytest.mark.parametrize(
    "data, problem",
    [
        (v2(version=1), "version 1"),
        (v2(command=2), "unknown command"),
        (v2(family=0x12, body=inet4("1.2.3.4", "5.6.7.8", 1, 2)), "datagram"),
        (v2(family=0x11, body=b"\x01\x02\x03"), "truncated"),
        (v2(family=0x21, body=inet4("1.2.3.4", "5.6.7.8", 1, 2)), "truncated"),
        (v2(family=0x41), "unknown address family"),
    ],
)
def test_v2_malformed(data: bytes, problem: str) -> None:
    with pytest.raises(ProxyHeaderError, match=problem):
        parse(data)


@pytest.mark.parametrize(
    "whole",
    [
        b"PROXY TCP4 192.0.2.7 10.0.0.1 51234 2222\r\n",
        v2(body=inet4("198.51.100.9", "10.0.0.1", 40000, 2222)),
        v2(command=0, family=0),
    ],
)
def test_every_truncation_asks_for_more(whole: bytes) -> None:
    for cut in range(len(whole)):
        assert parse(whole[:cut]) is None, cut
    assert parse(whole) is not None


def _contract(data: bytes) -> None:
    """A header no longer than the input, ``None`` (more needed), or ProxyHeaderError."""
    try:
        header = parse(data)
    except ProxyHeaderError:
        return
    if header is not None:
        assert 0 < header.length <= len(data)
        # What a header took is decided by the header alone: more bytes do not change it.
        assert parse(data + b"SSH-2.0-x\r\n") == header


@given(st.binary(max_size=300))
def test_any_bytes_give_a_header_more_or_a_clear_error(data: bytes) -> None:
    _contract(data)


@given(st.sampled_from([b"PROXY ", V2_SIGNATURE]), st.binary(max_size=300))
def test_anything_after_a_valid_start_gives_a_header_more_or_a_clear_error(start: bytes, tail: bytes) -> None:
    _contract(start + tail)


@given(
    st.ip_addresses(v=4),
    st.ip_addresses(v=4),
    st.integers(0, 65535),
    st.integers(0, 65535),
    st.binary(max_size=40),
)
def test_v1_and_v2_round_trip(src, dst, sport: int, dport: int, rest: bytes) -> None:  # type: ignore[no-untyped-def]
    line = f"PROXY TCP4 {src} {dst} {sport} {dport}\r\n".encode()
    for data in (line, v2(body=inet4(str(src), str(dst), sport, dport))):
        header = parse(data + rest)
        assert header is not None
        assert (header.source, header.destination) == ((str(src), sport), (str(dst), dport))
        assert header.length == len(data)
