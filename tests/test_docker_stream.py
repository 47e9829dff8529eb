"""The sans-I/O Docker stream codecs, tested with bytes only."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pairpod.backends.container.wrapper import Preamble, PreambleReader, parse_preamble, wrapper_failure
from pairpod.backends.docker.stream import (
    STDERR,
    STDIN,
    STDOUT,
    SYSTEMERR,
    Demuxer,
    StreamProtocolError,
    encode_frame,
)
from pairpod.errors import CommandNotFound

frames_strategy = st.lists(st.tuples(st.sampled_from([STDOUT, STDERR]), st.binary(max_size=300)), max_size=30)


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    chunks, last = [], 0
    for point in points:
        chunks.append(data[last:point])
        last = point
    chunks.append(data[last:])
    return chunks


def _collect(chunks: list[bytes]) -> tuple[dict[int, bytes], Demuxer]:
    demuxer = Demuxer()
    out = {STDOUT: b"", STDERR: b"", SYSTEMERR: b""}
    for chunk in chunks:
        for stream, payload in demuxer.feed(chunk):
            assert payload, "empty pieces must not be reported"
            out[stream] += payload
    return out, demuxer


@given(frames=frames_strategy, cuts=st.lists(st.integers(min_value=0), max_size=40))
def test_any_chunking_gives_back_each_stream(frames: list[tuple[int, bytes]], cuts: list[int]):
    wire = b"".join(encode_frame(s, p) for s, p in frames)
    out, demuxer = _collect(_split(wire, cuts))
    assert out[STDOUT] == b"".join(p for s, p in frames if s == STDOUT)
    assert out[STDERR] == b"".join(p for s, p in frames if s == STDERR)
    assert demuxer.at_frame_boundary


@given(frames=frames_strategy)
def test_byte_at_a_time_keeps_order_across_streams(frames: list[tuple[int, bytes]]):
    wire = b"".join(encode_frame(s, p) for s, p in frames)
    demuxer = Demuxer()
    pieces: list[tuple[int, bytes]] = []
    for i in range(len(wire)):
        pieces.extend(demuxer.feed(wire[i : i + 1]))
    # Rebuild the frame sequence by merging adjacent pieces of one stream.
    merged: list[tuple[int, bytes]] = []
    for stream, payload in pieces:
        if merged and merged[-1][0] == stream:
            merged[-1] = (stream, merged[-1][1] + payload)
        else:
            merged.append((stream, payload))
    expected: list[tuple[int, bytes]] = []
    for stream, payload in frames:
        if not payload:
            continue
        if expected and expected[-1][0] == stream:
            expected[-1] = (stream, expected[-1][1] + payload)
        else:
            expected.append((stream, payload))
    assert merged == expected


def test_partial_payload_is_delivered_before_the_frame_completes():
    wire = encode_frame(STDOUT, b"hello world")
    demuxer = Demuxer()
    assert demuxer.feed(wire[:10]) == [(STDOUT, b"he")]
    assert not demuxer.at_frame_boundary
    assert demuxer.feed(wire[10:]) == [(STDOUT, b"llo world")]
    assert demuxer.at_frame_boundary


def test_partial_header_is_not_a_boundary():
    demuxer = Demuxer()
    assert demuxer.feed(encode_frame(STDERR, b"x")[:3]) == []
    assert not demuxer.at_frame_boundary


def test_stdin_stream_is_reported_as_stdout_and_systemerr_is_kept():
    wire = encode_frame(STDIN, b"a") + encode_frame(SYSTEMERR, b"oops")
    assert Demuxer().feed(wire) == [(STDOUT, b"a"), (SYSTEMERR, b"oops")]


def test_large_frame_length_uses_all_four_bytes():
    payload = bytes(range(256)) * 300  # 76800 bytes: needs more than 16 bits
    out, _ = _collect([encode_frame(STDERR, payload)])
    assert out[STDERR] == payload


def test_unknown_stream_type_is_a_protocol_error():
    with pytest.raises(StreamProtocolError):
        Demuxer().feed(b"\x07\x00\x00\x00\x00\x00\x00\x01x")


def test_encode_rejects_unknown_stream():
    with pytest.raises(ValueError):
        encode_frame(9, b"")


# --- preamble ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b"pairpod:pid:42", Preamble(pid=42)),
        (b"pairpod:pid:42:43", Preamble(pid=42, reader=43)),
        (b"pairpod:pid:42:x", Preamble(garbage=b"pairpod:pid:42:x")),
        (b"pairpod:error:nosftp", Preamble(error="nosftp")),
        (b"pairpod:ready", Preamble(ready=True)),
        (b"pairpod:pid:", Preamble(garbage=b"pairpod:pid:")),
        (b"pairpod:pid:-1", Preamble(garbage=b"pairpod:pid:-1")),
        (b"sh: not found", Preamble(garbage=b"sh: not found")),
    ],
)
def test_parse_preamble(line: bytes, expected: Preamble):
    assert parse_preamble(line) == expected


@given(
    rest=st.binary(max_size=50),
    cuts=st.lists(st.integers(min_value=0), max_size=10),
    crlf=st.booleans(),
)
def test_preamble_reader_any_chunking(rest: bytes, cuts: list[int], crlf: bool):
    wire = b"pairpod:pid:1234" + (b"\r\n" if crlf else b"\n") + rest
    reader = PreambleReader()
    got: Preamble | None = None
    after = b""
    for chunk in _split(wire, cuts):
        if got is None:
            got, tail = reader.feed(chunk)
            after += tail
        else:
            after += chunk
    assert got == Preamble(pid=1234)
    assert after == rest


def test_preamble_reader_reports_foreign_output_at_once():
    reader = PreambleReader()
    preamble, rest = reader.feed(b"OCI runtime exec failed")
    assert preamble == Preamble(garbage=b"OCI runtime exec failed")
    assert rest == b""
    assert reader.done


def test_preamble_reader_at_eof_returns_what_came():
    reader = PreambleReader()
    assert reader.feed(b"pairpod:pi") == (None, b"")
    assert reader.feed_eof() == Preamble(garbage=b"pairpod:pi")


def test_preamble_reader_gives_up_on_an_overlong_line():
    reader = PreambleReader()
    preamble, _ = reader.feed(b"pairpod:" + b"x" * 300)
    assert preamble is not None and preamble.garbage.startswith(b"pairpod:")


def test_a_container_dying_during_an_exec_is_not_a_missing_program():
    # The runtime's words when the container's main process ended as the exec
    # started: the caller then reports the container's exit (code, logs).
    gone = Preamble(
        garbage=b"OCI runtime exec failed: exec failed: unable to create new parent process: "
        b"namespace path: lstat /proc/1915/ns/ipc: no such file or directory: unknown"
    )
    assert "namespace path" in wrapper_failure(gone, b"", "img")
    missing = Preamble(
        garbage=b'OCI runtime exec failed: exec failed: unable to start container process: exec: "/bin/sh": '
        b"stat /bin/sh: no such file or directory: unknown"
    )
    with pytest.raises(CommandNotFound):
        wrapper_failure(missing, b"", "img")
