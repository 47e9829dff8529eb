"""The replica-to-replica handshake and frames, as bytes (no sockets)."""

from __future__ import annotations

import secrets

import pytest

from pairpod.replicas.wire import (
    MAX_FRAME,
    MAX_PAYLOAD,
    ClientHandshake,
    FrameCodec,
    Kind,
    ProtocolError,
    cluster_key,
    server_handshake,
)

KEY = cluster_key("a-cluster-secret-for-tests-only")


def connected() -> tuple[FrameCodec, FrameCodec]:
    """The two ends' codecs after a handshake."""
    client = ClientHandshake(KEY)
    reply, server = server_handshake(KEY, client.hello())
    return client.finish(reply), server


def test_frames_cross_both_ways_whole_and_split() -> None:
    client, server = connected()
    sealed = client.seal(Kind.INPUT, 7, b"ls\r") + client.seal(Kind.RESIZE, 7, b"\0\0\0P\0\0\0\x18")
    frames = [frame for byte in sealed for frame in server.feed(bytes([byte]))]  # byte by byte
    assert [(f.kind, f.id, f.payload) for f in frames] == [
        (Kind.INPUT, 7, b"ls\r"),
        (Kind.RESIZE, 7, b"\0\0\0P\0\0\0\x18"),
    ]
    assert frames[1].size() == (80, 24)
    (back,) = client.feed(server.seal(Kind.OUTPUT, 7, b"x" * MAX_PAYLOAD))
    assert back.payload == b"x" * MAX_PAYLOAD


def test_a_hello_without_the_secret_is_refused() -> None:
    with pytest.raises(ProtocolError):
        server_handshake(KEY, ClientHandshake(cluster_key("another-cluster-secret")).hello())
    hello = bytearray(ClientHandshake(KEY).hello())
    hello[0] ^= 1  # not the protocol's magic
    with pytest.raises(ProtocolError):
        server_handshake(KEY, bytes(hello))


def test_a_server_without_the_secret_is_refused() -> None:
    # An impostor listening at a replica's address answers the hello with what it can
    # make: a reply for another hello (its own, under its own secret) or any bytes.
    impostor = cluster_key("another-cluster-secret")
    reply, _ = server_handshake(impostor, ClientHandshake(impostor).hello())
    for answer in (reply, secrets.token_bytes(len(reply))):
        with pytest.raises(ProtocolError):
            ClientHandshake(KEY).finish(answer)


def test_a_tampered_replayed_or_oversized_frame_is_refused() -> None:
    client, server = connected()
    sealed = bytearray(client.seal(Kind.INPUT, 1, b"rm -rf /tmp/x\r"))
    sealed[-1] ^= 1
    with pytest.raises(ProtocolError):
        server.feed(bytes(sealed))
    client, server = connected()
    frame = client.seal(Kind.INPUT, 1, b"once")
    server.feed(frame)
    with pytest.raises(ProtocolError):
        server.feed(frame)  # the same frame again: its counter is spent
    with pytest.raises(ProtocolError):
        connected()[1].feed((MAX_FRAME + 1).to_bytes(4, "big"))  # refused before any of it is buffered
