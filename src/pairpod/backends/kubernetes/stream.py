"""The Kubernetes exec protocol: a sans-I/O frame codec and a small WebSocket client.

``GET /api/v1/namespaces/{ns}/pods/{pod}/exec?command=...&container=...&stdin=true...``
upgraded to a WebSocket speaking one of the channel subprotocols. Every binary
message starts with a channel byte::

    0 stdin     client -> server
    1 stdout    server -> client
    2 stderr    server -> client
    3 status    server -> client: one metav1.Status JSON when the command ends
    4 resize    client -> server: {"Width": W, "Height": H}
    255 close   v5 only: [255, channel] closes a channel (stdin EOF)

``v5.channel.k8s.io`` (Kubernetes 1.30 and later) is preferred. The older
``v4.channel.k8s.io`` has the same frames without the close frame, so on v4
**stdin cannot be closed**: :meth:`ExecCodec.close_stdin` returns ``None``
and the caller decides (the backend types the terminal's EOF character with
a PTY, and otherwise leaves stdin open, logging why; see
:mod:`pairpod.backends.kubernetes`).

Neither version has a signal channel, nor a way to learn the PID of the
command: signals go through a second exec (see :mod:`pairpod.backends.container.wrapper`).

:class:`ExecCodec` is pure (bytes in, events out). :class:`ExecClient` is the
I/O edge: aiohttp, with the address, CA, client certificate and bearer token
taken from a kubernetes_asyncio ``Configuration`` loaded from a kubeconfig or
the in-cluster service account.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp
from kubernetes_asyncio.client import Configuration

from pairpod.errors import BackendError, BackendUnavailable

V5_PROTOCOL = "v5.channel.k8s.io"
V4_PROTOCOL = "v4.channel.k8s.io"
# In order of preference; the server picks the first it supports.
PROTOCOLS = (V5_PROTOCOL, V4_PROTOCOL)

STDIN = 0
STDOUT = 1
STDERR = 2
STATUS = 3
RESIZE = 4
CLOSE = 255
_STDIN_BYTE = bytes((STDIN,))

# Largest message accepted from the server (output chunks are far smaller).
_MAX_MESSAGE = 16 * 1024 * 1024
# Pings keep idle sessions alive through proxies and notice a dead peer.
_HEARTBEAT = 30.0
# How long closing waits for the server's half of the closing handshake.
_CLOSE_TIMEOUT = 5.0


class ExecProtocolError(ValueError):
    """The server sent something the exec protocol does not allow."""


# --- the codec --------------------------------------------------------------------------


@dataclass(frozen=True)
class ExecResult:
    """How the command ended, as the status channel told.

    ``exit_code`` is 0 for ``Success``, the code for ``NonZeroExitCode``, and
    None when the command could not be run at all (``reason`` is then e.g.
    ``InternalError`` and ``message`` says why).
    """

    exit_code: int | None
    reason: str = ""
    message: str = ""


@dataclass(frozen=True)
class Output:
    """Bytes the command wrote on ``channel`` (STDOUT or STDERR)."""

    channel: int
    data: bytes


@dataclass(frozen=True)
class Finished:
    """The status message: the command is over."""

    result: ExecResult


@dataclass(frozen=True)
class ChannelClosed:
    """v5: the server closed one of its channels."""

    channel: int


Event = Output | Finished | ChannelClosed


def parse_status(payload: bytes) -> ExecResult:
    """Read the status channel's metav1.Status as client-go does.

    ``{"status": "Success"}`` is exit code 0; ``reason: NonZeroExitCode`` carries
    the code in the ``ExitCode`` cause's message; anything else is a failure to
    run the command.
    """
    try:
        status = json.loads(payload)
    except ValueError as error:
        raise ExecProtocolError(f"status channel: not JSON: {payload[:200]!r}") from error
    if not isinstance(status, dict):
        raise ExecProtocolError(f"status channel: not an object: {payload[:200]!r}")
    if status.get("status") == "Success":
        return ExecResult(exit_code=0)
    reason = str(status.get("reason") or "")
    message = str(status.get("message") or "")
    if reason == "NonZeroExitCode":
        details = status.get("details")
        causes = details.get("causes") if isinstance(details, dict) else None
        for cause in causes if isinstance(causes, list) else []:
            if isinstance(cause, dict) and cause.get("reason") == "ExitCode":
                try:
                    return ExecResult(
                        exit_code=int(str(cause.get("message"))), reason=reason, message=message
                    )
                except ValueError:
                    break
        raise ExecProtocolError(f"status channel: NonZeroExitCode without an exit code: {status}")
    return ExecResult(exit_code=None, reason=reason or "Failure", message=message)


class ExecCodec:
    """Frames of one exec session for a negotiated subprotocol (v5 or v4)."""

    def __init__(self, protocol: str) -> None:
        if protocol not in PROTOCOLS:
            raise ExecProtocolError(f"unsupported exec protocol {protocol!r}")
        self.protocol = protocol
        self._stdin_closed = False
        self.finished = False

    @property
    def can_close_stdin(self) -> bool:
        """Only v5 can tell the command its input ended."""
        return self.protocol == V5_PROTOCOL

    # client -> server

    def stdin(self, data: bytes | memoryview) -> bytes:
        """A stdin frame (empty data gives an empty frame, which servers ignore)."""
        if self._stdin_closed:
            raise ExecProtocolError("stdin is closed")
        return _STDIN_BYTE + data  # one copy, from bytes or a view alike

    def close_stdin(self) -> bytes | None:
        """The v5 close frame for stdin; None where the protocol cannot close it (v4)."""
        if not self.can_close_stdin:
            return None
        self._stdin_closed = True
        return bytes((CLOSE, STDIN))

    @staticmethod
    def resize(cols: int, rows: int) -> bytes:
        """A terminal size frame."""
        return bytes((RESIZE,)) + json.dumps({"Width": cols, "Height": rows}).encode()

    # server -> client

    def receive(self, payload: bytes) -> Event | None:
        """Interpret one message from the server (None: nothing to act on)."""
        if not payload:
            return None
        channel = payload[0]
        if channel in (STDOUT, STDERR):
            # Servers send an empty frame on the first output channel when ready.
            return Output(channel, payload[1:]) if len(payload) > 1 else None
        if channel == STATUS:
            if len(payload) == 1:
                return None
            self.finished = True
            return Finished(parse_status(payload[1:]))
        if channel == CLOSE and self.protocol == V5_PROTOCOL and len(payload) == 2:
            return ChannelClosed(payload[1])
        raise ExecProtocolError(f"unexpected frame on channel {channel} ({len(payload)} bytes)")


# --- the client ---------------------------------------------------------------------------


class ExecRefused(BackendError):
    """The API server answered the exec request with an error instead of a session."""

    def __init__(self, operator_message: str, status: int) -> None:
        super().__init__(operator_message)
        self.status = status


def ssl_context(configuration: Configuration) -> ssl.SSLContext | bool:
    """TLS settings as kubernetes_asyncio's own REST client derives them."""
    if not str(configuration.host).startswith("https"):
        return False
    context = ssl.create_default_context(cafile=configuration.ssl_ca_cert)
    if configuration.cert_file:
        context.load_cert_chain(configuration.cert_file, keyfile=configuration.key_file)
    if not configuration.verify_ssl:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def exec_url(
    host: str,
    namespace: str,
    pod: str,
    container: str,
    command: Sequence[str],
    *,
    stdin: bool,
    tty: bool,
) -> str:
    """The exec URL: repeated ``command=`` parameters, lower-case booleans."""
    query: list[tuple[str, str]] = [("command", arg) for arg in command]
    query += [
        ("container", container),
        ("stdin", "true" if stdin else "false"),
        ("stdout", "true"),
        # A terminal has one output stream: upstream drops stderr with a TTY.
        ("stderr", "false" if tty else "true"),
        ("tty", "true" if tty else "false"),
    ]
    path = f"/api/v1/namespaces/{quote(namespace, safe='')}/pods/{quote(pod, safe='')}/exec"
    return host.rstrip("/") + path + "?" + urlencode(query)


class ExecClient:
    """Opens exec sessions on one API server, with the credentials of a Configuration."""

    def __init__(self, configuration: Configuration) -> None:
        self.configuration = configuration
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(ssl=ssl_context(self.configuration), limit=0)
            # Proxies from the environment, as kubernetes_asyncio's own client uses them.
            self._session = aiohttp.ClientSession(connector=connector, trust_env=True)
        return self._session

    async def _headers(self) -> dict[str, str]:
        # auth_settings() runs the configuration's token refresh hook (exec
        # plugins, rotated service-account tokens) before handing the token out.
        headers: dict[str, str] = {}
        for setting in (await self.configuration.auth_settings()).values():
            if setting.get("in") == "header" and setting.get("value"):
                headers[setting["key"]] = setting["value"]
        return headers

    async def open(
        self,
        namespace: str,
        pod: str,
        container: str,
        command: Sequence[str],
        *,
        stdin: bool = True,
        tty: bool = False,
        protocols: Sequence[str] = PROTOCOLS,
    ) -> ExecStream:
        """Start ``command`` in a container; the session is ready when this returns.

        Raises :class:`ExecRefused` when the server answers with an error
        status and BackendUnavailable when it cannot be reached.
        """
        url = exec_url(str(self.configuration.host), namespace, pod, container, command, stdin=stdin, tty=tty)
        options: dict[str, Any] = {}
        if self.configuration.tls_server_name:
            options["server_hostname"] = self.configuration.tls_server_name
        if self.configuration.proxy:
            options["proxy"] = self.configuration.proxy
        try:
            ws = await self._client().ws_connect(
                url,
                protocols=tuple(protocols),
                headers=await self._headers(),
                max_msg_size=_MAX_MESSAGE,
                heartbeat=_HEARTBEAT,
                autoping=True,
                timeout=aiohttp.ClientWSTimeout(ws_close=_CLOSE_TIMEOUT),
                **options,
            )
        except aiohttp.WSServerHandshakeError as error:
            raise ExecRefused(
                f"exec in pod {namespace}/{pod} refused: HTTP {error.status} {error.message}",
                error.status,
            ) from None
        except (aiohttp.ClientError, OSError, TimeoutError) as error:
            raise BackendUnavailable(f"kubernetes API unreachable for exec: {error!r}") from None
        protocol = ws.protocol
        if protocol not in protocols:
            await ws.close()
            raise ExecRefused(
                f"exec in pod {namespace}/{pod}: the server chose no supported subprotocol "
                f"(offered {', '.join(protocols)}, got {protocol!r})",
                400,
            )
        return ExecStream(ws, ExecCodec(protocol))

    async def close(self) -> None:
        """Close the HTTP client (open sessions end)."""
        if self._session is not None:
            await self._session.close()
            self._session = None


class ExecStream:
    """One exec session: send input and resizes, receive output and the status.

    Output is read one message per :meth:`receive` call; not calling it lets
    aiohttp stop reading the socket, so a slow consumer slows the command down
    rather than filling memory.
    """

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, codec: ExecCodec) -> None:
        self._ws = ws
        self.codec = codec

    @property
    def protocol(self) -> str:
        """The negotiated subprotocol."""
        return self.codec.protocol

    async def receive(self) -> Event | None:
        """The next event; None once the connection has closed."""
        while True:
            message = await self._ws.receive()
            if message.type == aiohttp.WSMsgType.BINARY:
                event = self.codec.receive(message.data)
                if event is not None:
                    return event
            elif message.type in (
                aiohttp.WSMsgType.CLOSE,
                aiohttp.WSMsgType.CLOSING,
                aiohttp.WSMsgType.CLOSED,
                aiohttp.WSMsgType.ERROR,
            ):
                return None
            # Text frames belong to the base64 protocols, never negotiated here.

    async def _send(self, frame: bytes) -> None:
        if self._ws.closed:
            raise ConnectionResetError("the exec session has closed")
        try:
            await self._ws.send_bytes(frame)
        except (aiohttp.ClientError, RuntimeError) as error:
            raise ConnectionResetError(f"the exec session has closed: {error}") from None

    async def send_stdin(self, data: bytes | memoryview) -> None:
        """Send input (waits while the connection's buffers are full).

        Raises ConnectionError once the session has closed.
        """
        await self._send(self.codec.stdin(data))

    async def close_stdin(self) -> bool:
        """Send stdin EOF; False where the protocol cannot (v4)."""
        frame = self.codec.close_stdin()
        if frame is None:
            return False
        await self._send(frame)
        return True

    async def resize(self, cols: int, rows: int) -> None:
        """Tell the command's terminal its new size."""
        await self._send(self.codec.resize(cols, rows))

    @property
    def closed(self) -> bool:
        """Whether the connection has closed."""
        return self._ws.closed

    async def close(self) -> None:
        """Close the connection (the command loses its streams; it may keep running)."""
        await self._ws.close()
