"""The exec subresource: the Kubernetes channel protocol over WebSocket.

Frames are binary WebSocket messages whose first byte is the channel:
0 stdin, 1 stdout, 2 stderr, 3 status (a metav1.Status JSON when the command
ends), 4 resize (``{"Width": W, "Height": H}``). ``v5.channel.k8s.io`` adds
``[255, channel]`` to close a channel (stdin EOF); ``v4.channel.k8s.io`` has
no way to close stdin, so there such a frame is ignored as upstream would.

The codec half is pure; ``serve_exec`` is the aiohttp/Docker edge.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import dataclass
from typing import Any

import aiodocker
from aiodocker.exceptions import DockerError
from aiohttp import WSMsgType, web

from .docker_exec import DockerExecSession
from .params import parse_bool
from .status import ApiError, bad_request

log = logging.getLogger(__name__)

STDIN, STDOUT, STDERR, STATUS, RESIZE = 0, 1, 2, 3, 4
CLOSE = 255
V5 = "v5.channel.k8s.io"
V4 = "v4.channel.k8s.io"
PROTOCOLS = (V5, V4)


# --- codec -----------------------------------------------------------------------


@dataclass(frozen=True)
class ExecOptions:
    """What the query string of an exec request asks for."""

    command: list[str]
    container: str | None
    stdin: bool
    stdout: bool
    stderr: bool
    tty: bool


def parse_exec_options(query: Any) -> ExecOptions:
    """Read ``command`` (repeated), ``container`` and the stream flags; 400 when unusable."""
    command = list(query.getall("command", []))
    if not command:
        raise bad_request("you must specify at least 1 command")
    options = ExecOptions(
        command=command,
        container=query.get("container") or None,
        stdin=parse_bool(query, "stdin"),
        stdout=parse_bool(query, "stdout"),
        stderr=parse_bool(query, "stderr"),
        tty=parse_bool(query, "tty"),
    )
    if not (options.stdin or options.stdout or options.stderr):
        raise bad_request("you must specify at least 1 of stdin, stdout, stderr")
    if options.tty and options.stderr:
        # A terminal has one output stream: the kubelet drops stderr, silently.
        options = ExecOptions(options.command, options.container, options.stdin, options.stdout, False, True)
    return options


def choose_protocol(offered: list[str]) -> str | None:
    """The subprotocol to answer with: the first we support, in our order of preference."""
    for protocol in PROTOCOLS:
        if protocol in offered:
            return protocol
    return None


def encode_frame(channel: int, data: bytes = b"") -> bytes:
    """One binary WebSocket payload for a channel."""
    return bytes([channel]) + data


@dataclass(frozen=True)
class Frame:
    """A decoded client frame: ``stdin`` data, ``resize``, ``close`` of a channel, ``ignore``."""

    kind: str
    data: bytes = b""
    width: int = 0
    height: int = 0
    channel: int = 0


def decode_frame(payload: bytes, protocol: str) -> Frame:
    """Interpret one binary message from the client."""
    if not payload:
        return Frame("ignore")
    channel, data = payload[0], payload[1:]
    if channel == STDIN:
        return Frame("stdin", data) if data else Frame("ignore")
    if channel == RESIZE:
        try:
            size = json.loads(data)
            return Frame("resize", width=int(size["Width"]), height=int(size["Height"]))
        except (ValueError, KeyError, TypeError):
            return Frame("ignore")
    if channel == CLOSE and protocol == V5 and data:
        return Frame("close", channel=data[0])
    return Frame("ignore")


def exit_status(code: int) -> dict[str, Any]:
    """The status-channel message for an exit code, in the kubelet's shape."""
    if code == 0:
        return {"metadata": {}, "status": "Success"}
    return {
        "metadata": {},
        "status": "Failure",
        "message": f"command terminated with non-zero exit code: exit status {code}",
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]},
    }


def internal_error_status(message: str) -> dict[str, Any]:
    """The status-channel message when the command could not be run at all.

    The kubelet wraps the runtime's error as ``apierrors.NewInternalError``.
    """
    cause = f"error executing command in container: {message}"
    return {
        "metadata": {},
        "status": "Failure",
        "message": f"Internal error occurred: {cause}",
        "reason": "InternalError",
        "details": {"causes": [{"message": cause}]},
        "code": 500,
    }


# --- the edge --------------------------------------------------------------------


def _offered_protocols(request: web.Request) -> list[str]:
    header = request.headers.get("Sec-WebSocket-Protocol", "")
    return [p.strip() for p in header.split(",") if p.strip()]


def _is_websocket(request: web.Request) -> bool:
    return (
        request.headers.get("Upgrade", "").lower() == "websocket"
        and "upgrade" in request.headers.get("Connection", "").lower()
    )


async def serve_exec(
    request: web.Request,
    docker: aiodocker.Docker,
    container_id: str,
    options: ExecOptions,
) -> web.StreamResponse:
    """Upgrade to WebSocket and relay one Docker exec until the command ends."""
    if not _is_websocket(request):
        upgrade = request.headers.get("Upgrade", "")
        if upgrade.upper().startswith("SPDY"):
            # kubectl before 1.30 speaks only SPDY; this server does not.
            raise bad_request(
                f"Upgrade request required: this test server speaks the exec "
                f"protocol over WebSocket only ({', '.join(PROTOCOLS)}), "
                f"not {upgrade}"
            )
        raise bad_request("Upgrade request required")
    offered = _offered_protocols(request)
    protocol = choose_protocol(offered)
    if protocol is None:
        raise ApiError(
            400,
            "BadRequest",
            f"requested protocol(s) are not supported: {offered}; supports {list(PROTOCOLS)}",
        )
    try:
        session = await DockerExecSession.start(
            docker,
            container_id,
            options.command,
            stdin=options.stdin,
            stdout=options.stdout,
            stderr=options.stderr,
            tty=options.tty,
        )
    except DockerError as error:
        raise ApiError(
            500,
            "InternalError",
            f"Internal error occurred: error executing command in container: {error.message}",
        ) from None
    ws = web.WebSocketResponse(protocols=(protocol,), autoping=True, max_msg_size=16 * 2**20)
    try:
        await ws.prepare(request)
        # Upstream signals readiness with an empty frame on the lowest channel
        # the client reads from.
        first = STDOUT if options.stdout else STDERR if options.stderr else STATUS
        await ws.send_bytes(encode_frame(first))
        await _relay(ws, session, protocol)
    finally:
        await session.close()
    return ws


# Docker reports a command it could not start as output text and exit 126/127;
# a kubelet reports it as an InternalError status instead.
_START_FAILURE = b"OCI runtime exec failed"
_START_FAILURE_CODES = (126, 127)


async def _relay(ws: web.WebSocketResponse, session: DockerExecSession, protocol: str) -> None:
    held: list[tuple[int, bytes]] = []

    async def pump_out() -> None:
        first = True
        while (chunk := await session.read()) is not None:
            stream, data = chunk
            channel = STDOUT if session.tty or stream == 1 else STDERR
            if first and data.startswith(_START_FAILURE):
                held.append((channel, data))
            else:
                await ws.send_bytes(encode_frame(channel, data))
            first = False

    async def pump_in() -> None:
        async for message in ws:
            if message.type != WSMsgType.BINARY:
                continue
            frame = decode_frame(message.data, protocol)
            log.debug("exec frame in: %r -> %s", message.data[:40], frame.kind)
            if frame.kind == "stdin":
                await session.write(frame.data)
            elif frame.kind == "resize":
                with contextlib.suppress(DockerError):
                    await session.resize(frame.width, frame.height)
            elif frame.kind == "close" and frame.channel == STDIN:
                session.close_stdin()

    output = asyncio.ensure_future(pump_out())
    inbound = asyncio.ensure_future(pump_in())
    try:
        done, _ = await asyncio.wait({output, inbound}, return_when=asyncio.FIRST_COMPLETED)
        if output in done:
            output.result()
            code = await session.exit_code()
            if held and code in _START_FAILURE_CODES:
                text = held[0][1].decode(errors="replace").strip()
                status = internal_error_status(f"failed to exec in container: {text}")
            else:
                for channel, data in held:
                    await ws.send_bytes(encode_frame(channel, data))
                status = (
                    exit_status(code)
                    if code >= 0
                    else internal_error_status("the exit code of the command could not be read")
                )
            await ws.send_bytes(encode_frame(STATUS, json.dumps(status).encode()))
            await ws.close()
        # Otherwise the client went away first: the process loses its streams.
    except ConnectionResetError:
        log.debug("exec client disconnected")
    finally:
        for task in (output, inbound):
            task.cancel()
        await asyncio.gather(output, inbound, return_exceptions=True)
