"""The Kubernetes exec protocol: the frame codec with bytes, the WebSocket client on the test server.

The codec is checked against the test API server's own implementation of the
server side (an independent reading of the protocol), and the client against
the server itself: real WebSocket, real TLS and token, commands really run.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from kubernetes_asyncio import client, config

from pairpod.backends.kubernetes.stream import (
    CLOSE,
    PROTOCOLS,
    STATUS,
    STDERR,
    STDIN,
    STDOUT,
    V4_PROTOCOL,
    V5_PROTOCOL,
    ChannelClosed,
    ExecClient,
    ExecCodec,
    ExecProtocolError,
    ExecRefused,
    ExecResult,
    ExecStream,
    Finished,
    Output,
    exec_url,
    parse_status,
)
from pairpod.errors import BackendUnavailable
from testing.kube_apiserver import exec_ws
from testing.kube_apiserver.fixture import KubeApiServerThread, kube_apiserver
from testing.kube_apiserver.kubetools import SERVE, pod_manifest, start_pod
from tests.support.images import busybox_image
from tests.support.kube_env import core_api

__all__ = ["kube_apiserver"]

WAIT = 30.0

# --- the codec, with bytes -----------------------------------------------------------------


@given(st.binary(min_size=1))
def test_stdin_frames_decode_on_the_server_side_as_sent(data: bytes) -> None:
    for protocol in PROTOCOLS:
        frame = exec_ws.decode_frame(ExecCodec(protocol).stdin(data), protocol)
        assert (frame.kind, frame.data) == ("stdin", data)


@given(st.integers(1, 10_000), st.integers(1, 10_000))
def test_resize_frames_carry_width_and_height(cols: int, rows: int) -> None:
    payload = ExecCodec.resize(cols, rows)
    assert payload[0] == 4
    assert json.loads(payload[1:]) == {"Width": cols, "Height": rows}
    frame = exec_ws.decode_frame(payload, V5_PROTOCOL)
    assert (frame.kind, frame.width, frame.height) == ("resize", cols, rows)


def test_v5_closes_stdin_with_255_0_and_v4_cannot() -> None:
    v5 = ExecCodec(V5_PROTOCOL)
    assert v5.can_close_stdin
    close = v5.close_stdin()
    assert close == bytes([CLOSE, STDIN])
    assert exec_ws.decode_frame(close, V5_PROTOCOL).kind == "close"
    with pytest.raises(ExecProtocolError):
        v5.stdin(b"after the end")
    v4 = ExecCodec(V4_PROTOCOL)
    assert not v4.can_close_stdin
    assert v4.close_stdin() is None
    assert v4.stdin(b"still open") == b"\x00still open"


@given(st.sampled_from([STDOUT, STDERR]), st.binary(), st.sampled_from(PROTOCOLS))
def test_output_frames_from_the_server(channel: int, data: bytes, protocol: str) -> None:
    event = ExecCodec(protocol).receive(exec_ws.encode_frame(channel, data))
    # The server's readiness signal is an empty frame: nothing to act on.
    assert event == (Output(channel, data) if data else None)


@given(st.integers(0, 255))
def test_exit_codes_as_the_kubelet_reports_them(code: int) -> None:
    codec = ExecCodec(V5_PROTOCOL)
    event = codec.receive(exec_ws.encode_frame(STATUS, json.dumps(exec_ws.exit_status(code)).encode()))
    assert isinstance(event, Finished)
    assert event.result.exit_code == code
    assert codec.finished


def test_status_shapes_from_upstream() -> None:
    # Verbatim from a cluster: the status channel after `exit 3`.
    nonzero = (
        b'{"metadata":{},"status":"Failure","message":"command terminated with non-zero exit '
        b'code: error executing command [sh -c exit 3], exit code 3","reason":'
        b'"NonZeroExitCode","details":{"causes":[{"reason":"ExitCode","message":"3"}]}}'
    )
    assert parse_status(nonzero) == ExecResult(
        exit_code=3,
        reason="NonZeroExitCode",
        message="command terminated with non-zero exit code: error executing command [sh -c exit 3], "
        "exit code 3",
    )
    assert parse_status(b'{"metadata":{},"status":"Success"}') == ExecResult(exit_code=0)
    internal = parse_status(json.dumps(exec_ws.internal_error_status("no such file")).encode())
    assert internal.exit_code is None
    assert internal.reason == "InternalError"
    assert "no such file" in internal.message


@pytest.mark.parametrize(
    "payload",
    [
        b"not json",
        b"[1, 2]",
        b'{"status":"Failure","reason":"NonZeroExitCode","details":{"causes":[]}}',
        b'{"status":"Failure","reason":"NonZeroExitCode","details":{"causes":[{"reason":"ExitCode",'
        b'"message":"three"}]}}',
    ],
)
def test_malformed_status_is_a_protocol_error(payload: bytes) -> None:
    with pytest.raises(ExecProtocolError):
        parse_status(payload)


def test_unknown_and_close_frames_from_the_server() -> None:
    assert ExecCodec(V5_PROTOCOL).receive(bytes([CLOSE, STDOUT])) == ChannelClosed(STDOUT)
    for protocol, payload in (
        (V4_PROTOCOL, bytes([CLOSE, STDOUT])),
        (V5_PROTOCOL, b"\x07data"),
        (V5_PROTOCOL, bytes([STDIN]) + b"echo"),
    ):
        with pytest.raises(ExecProtocolError):
            ExecCodec(protocol).receive(payload)
    assert ExecCodec(V5_PROTOCOL).receive(b"") is None
    with pytest.raises(ExecProtocolError):
        ExecCodec("v3.channel.k8s.io")


def test_exec_url_repeats_command_and_drops_stderr_with_a_tty() -> None:
    url = exec_url(
        "https://api:6443/", "ns a", "p", "shell", ["sh", "-c", "echo a&b=c"], stdin=True, tty=True
    )
    assert url == (
        "https://api:6443/api/v1/namespaces/ns%20a/pods/p/exec?command=sh&command=-c&"
        "command=echo+a%26b%3Dc&container=shell&stdin=true&stdout=true&stderr=false&tty=true"
    )


# --- the client, on the test server ------------------------------------------------------------


@pytest.fixture(scope="module")
def shell_pod(kube_apiserver: KubeApiServerThread) -> Iterator[tuple[str, str]]:
    """One running busybox pod for the module's exec sessions: (namespace, pod)."""
    namespace = f"exec-{uuid.uuid4().hex[:8]}"
    kube_apiserver.create_namespace(namespace)

    async def make() -> None:
        async with core_api(kube_apiserver) as core:
            manifest = pod_manifest("shell", busybox_image(), SERVE)
            manifest["spec"]["containers"][0]["name"] = "shell"
            await start_pod(core, namespace, manifest)

    asyncio.run(make())
    yield namespace, "shell"
    kube_apiserver.delete_namespace(namespace)


async def _client(server: KubeApiServerThread, **overrides: Any) -> ExecClient:
    configuration = client.Configuration()
    await config.load_kube_config(config_file=str(server.kubeconfig), client_configuration=configuration)
    for key, value in overrides.items():
        setattr(configuration, key, value)
    return ExecClient(configuration)


async def _drain(stream: ExecStream) -> tuple[bytes, bytes, ExecResult | None]:
    out, err, result = b"", b"", None
    async with asyncio.timeout(WAIT):
        while (event := await stream.receive()) is not None:
            if isinstance(event, Output):
                if event.channel == STDOUT:
                    out += event.data
                else:
                    err += event.data
            elif isinstance(event, Finished):
                result = event.result
    return out, err, result


async def test_v5_session_streams_closes_stdin_and_reports_the_exit_code(
    kube_apiserver: KubeApiServerThread, shell_pod: tuple[str, str]
) -> None:
    namespace, pod = shell_pod
    execs = await _client(kube_apiserver)
    try:
        stream = await execs.open(namespace, pod, "shell", ["sh", "-c", "wc -c; echo to-stderr >&2; exit 5"])
        assert stream.protocol == V5_PROTOCOL
        await stream.send_stdin(b"x" * 100_000)
        assert await stream.close_stdin()
        out, err, result = await _drain(stream)
    finally:
        await execs.close()
    assert out.strip() == b"100000"
    assert err == b"to-stderr\n"
    assert result is not None
    assert (result.exit_code, result.reason) == (5, "NonZeroExitCode")


async def test_v4_fallback_works_but_cannot_close_stdin(
    kube_apiserver: KubeApiServerThread, shell_pod: tuple[str, str]
) -> None:
    namespace, pod = shell_pod
    execs = await _client(kube_apiserver)
    try:
        stream = await execs.open(
            namespace, pod, "shell", ["sh", "-c", "head -c 4; echo; exit 0"], protocols=(V4_PROTOCOL,)
        )
        assert stream.protocol == V4_PROTOCOL
        assert not await stream.close_stdin()
        await stream.send_stdin(b"abcd")
        out, _, result = await _drain(stream)
    finally:
        await execs.close()
    assert out == b"abcd\n"
    assert result == ExecResult(exit_code=0)


async def test_tty_session_gets_its_size_from_resize_frames(
    kube_apiserver: KubeApiServerThread, shell_pod: tuple[str, str]
) -> None:
    namespace, pod = shell_pod
    execs = await _client(kube_apiserver)
    try:
        stream = await execs.open(
            namespace, pod, "shell", ["sh", "-c", "echo ready; read -r line; stty size; exit 0"], tty=True
        )
        seen = b""
        async with asyncio.timeout(WAIT):
            while b"ready" not in seen:
                event = await stream.receive()
                assert isinstance(event, Output), event
                assert event.channel == STDOUT  # a terminal has one output stream
                seen += event.data
        await stream.resize(123, 45)
        await stream.send_stdin(b"go\r")
        out, _, result = await _drain(stream)
    finally:
        await execs.close()
    assert b"45 123" in out
    assert result == ExecResult(exit_code=0)


async def test_a_command_that_cannot_run_ends_with_a_failure_status(
    kube_apiserver: KubeApiServerThread, shell_pod: tuple[str, str]
) -> None:
    namespace, pod = shell_pod
    execs = await _client(kube_apiserver)
    try:
        stream = await execs.open(namespace, pod, "shell", ["/no/such/program"], stdin=False)
        _, _, result = await _drain(stream)
    finally:
        await execs.close()
    assert result is not None and result.exit_code is None
    assert result.reason == "InternalError"
    assert "/no/such/program" in result.message


async def test_refusals_and_an_unreachable_server_are_typed(
    kube_apiserver: KubeApiServerThread, shell_pod: tuple[str, str]
) -> None:
    namespace, _ = shell_pod
    execs = await _client(kube_apiserver)
    try:
        with pytest.raises(ExecRefused) as missing:
            await execs.open(namespace, "no-such-pod", "shell", ["true"])
        assert missing.value.status == 404
    finally:
        await execs.close()
    wrong_token = await _client(
        kube_apiserver, api_key={"BearerToken": "not-the-token"}, api_key_prefix={"BearerToken": "Bearer"}
    )
    try:
        with pytest.raises(ExecRefused) as unauthorised:
            await wrong_token.open(namespace, "shell", "shell", ["true"])
        assert unauthorised.value.status == 401
    finally:
        await wrong_token.close()
    listener = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    listener.close()
    await listener.wait_closed()
    nowhere = await _client(kube_apiserver, host=f"https://127.0.0.1:{port}")
    try:
        with pytest.raises(BackendUnavailable):
            await nowhere.open(namespace, "shell", "shell", ["true"])
    finally:
        await nowhere.close()
