"""The exec subresource on the wire, with a plain WebSocket client.

These pin the protocol details a client of our own relies on: subprotocol
negotiation, channel bytes, the v5 close frame, the v4 fallback, resize,
and the status message's JSON.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import urlencode

import aiohttp
import pytest
from kubernetes_asyncio import client

from ..kubetools import SERVE, WAIT, RawApi, pod_manifest, start_pod

V5 = "v5.channel.k8s.io"
V4 = "v4.channel.k8s.io"


@pytest.fixture
async def pod(core: client.CoreV1Api, kube_namespace: str, busybox: str) -> str:
    """A running pod to exec into."""
    await start_pod(core, kube_namespace, pod_manifest("ws", busybox, SERVE))
    return "ws"


def exec_path(namespace: str, pod: str, command: list[str], **flags: str) -> str:
    """The exec URL path with a repeated ``command`` parameter."""
    query = [("command", part) for part in command] + list(flags.items())
    return f"/api/v1/namespaces/{namespace}/pods/{pod}/exec?{urlencode(query)}"


async def collect(ws: aiohttp.ClientWebSocketResponse) -> dict[int, Any]:
    """Read frames until the server closes: bytes per channel, and the status JSON."""
    out: dict[int, Any] = {1: b"", 2: b"", 3: None}
    frames: list[bytes] = []
    async with asyncio.timeout(WAIT):
        async for message in ws:
            assert message.type == aiohttp.WSMsgType.BINARY, message
            frames.append(message.data)
            channel, data = message.data[0], message.data[1:]
            if channel == 3:
                out[3] = json.loads(data)
            else:
                out[channel] += data
    out[0] = frames
    return out


async def test_v5_streams_and_status(raw: RawApi, kube_namespace: str, pod: str) -> None:
    path = exec_path(
        kube_namespace, pod, ["sh", "-c", "echo out; echo err >&2; exit 3"], stdout="true", stderr="true"
    )
    async with raw.ws_connect(path, (V5, V4)) as ws:
        assert ws.protocol == V5
        result = await collect(ws)
    assert result[0][0] == b"\x01"  # the server's "ready" frame: empty, on stdout
    assert (result[1], result[2]) == (b"out\n", b"err\n")
    assert result[3] == {
        "metadata": {},
        "status": "Failure",
        "message": "command terminated with non-zero exit code: exit status 3",
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": "3"}]},
    }


async def test_success_status(raw: RawApi, kube_namespace: str, pod: str) -> None:
    path = exec_path(kube_namespace, pod, ["true"], stdout="1")
    async with raw.ws_connect(path, (V5,)) as ws:
        result = await collect(ws)
    assert result[3] == {"metadata": {}, "status": "Success"}


async def test_v5_close_frame_ends_stdin(raw: RawApi, kube_namespace: str, pod: str) -> None:
    # kubernetes_asyncio spells booleans "True"; the server reads them as Go does.
    path = exec_path(
        kube_namespace, pod, ["sh", "-c", "cat; echo eof"], stdin="True", stdout="True", stderr="False"
    )
    async with raw.ws_connect(path, (V5,)) as ws:
        await ws.send_bytes(b"\x00")  # an empty stdin frame is not an EOF
        await ws.send_bytes(b"\x00hello ")
        await ws.send_bytes(b"\x00world\n")
        await ws.send_bytes(bytes([255, 0]))
        result = await collect(ws)
    assert result[1] == b"hello world\neof\n"
    assert result[3]["status"] == "Success"


async def test_v4_fallback(raw: RawApi, kube_namespace: str, pod: str) -> None:
    path = exec_path(
        kube_namespace, pod, ["sh", "-c", "head -c 5; echo; exit 2"], stdin="true", stdout="true"
    )
    async with raw.ws_connect(path, (V4,)) as ws:
        assert ws.protocol == V4
        # v4 has no close frame: the server must ignore it, not end stdin.
        await ws.send_bytes(bytes([255, 0]))
        await ws.send_bytes(b"\x00abcdefgh")
        result = await collect(ws)
    assert result[1] == b"abcde\n"
    assert result[3]["details"]["causes"][0]["message"] == "2"


async def test_resize_reaches_the_terminal(raw: RawApi, kube_namespace: str, pod: str) -> None:
    path = exec_path(kube_namespace, pod, ["sh"], stdin="true", stdout="true", tty="true")
    async with raw.ws_connect(path, (V5,)) as ws:
        await ws.send_bytes(b"\x04" + json.dumps({"Width": 123, "Height": 45}).encode())
        # Frames are handled in order: the resize is applied before this runs.
        await ws.send_bytes(b"\x00stty size; exit 0\n")
        result = await collect(ws)
        assert b"45 123\r\n" in result[1]
    path = exec_path(kube_namespace, pod, ["sh"], stdin="true", stdout="true", tty="true")
    async with raw.ws_connect(path, (V5,)) as ws:
        await ws.send_bytes(b"\x04" + json.dumps({"Width": 80, "Height": 24}).encode())
        await ws.send_bytes(b"\x04" + json.dumps({"Width": 200, "Height": 50}).encode())
        await ws.send_bytes(b"\x00stty size; exit 0\n")
        result = await collect(ws)
    assert b"50 200\r\n" in result[1]
    assert b"24 80" not in result[1]
    # With a terminal there is one output stream.
    assert result[2] == b""


async def test_refusals(raw: RawApi, kube_namespace: str, pod: str) -> None:
    path = exec_path(kube_namespace, pod, ["true"], stdout="true")
    # No subprotocol we speak: refused before the upgrade.
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        async with raw.ws_connect(path, ("channel.k8s.io",)):
            pass
    assert refused.value.status == 400
    # Not a WebSocket at all.
    status, body = await raw.json("POST", path)
    assert (status, body["reason"], body["message"]) == (400, "BadRequest", "Upgrade request required")
    status, body = await raw.json("GET", exec_path(kube_namespace, pod, [], stdout="true"))
    assert (status, body["message"]) == (400, "you must specify at least 1 command")
    status, body = await raw.json("GET", exec_path(kube_namespace, "ghost", ["true"], stdout="true"))
    assert status == 404
    assert body == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": 'pods "ghost" not found',
        "reason": "NotFound",
        "details": {"name": "ghost", "kind": "pods"},
        "code": 404,
    }


async def test_client_leaving_mid_command(raw: RawApi, kube_namespace: str, pod: str) -> None:
    path = exec_path(kube_namespace, pod, ["sh", "-c", "echo started; sleep 3600"], stdout="true")
    async with raw.ws_connect(path, (V5,)) as ws:
        async with asyncio.timeout(WAIT):
            while True:
                message = await ws.receive()
                if message.data == b"\x01started\n":
                    break
    # The server is still serving other execs afterwards.
    async with raw.ws_connect(exec_path(kube_namespace, pod, ["echo", "again"], stdout="true"), (V5,)) as ws:
        result = await collect(ws)
    assert result[1] == b"again\n"
