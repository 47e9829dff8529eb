"""Reading a PROXY header before AsyncSSH sees the stream.

``ProxyProtocolListener`` is handed to ``asyncssh.create_server(tunnel=...)``:
AsyncSSH asks it for a server and gives it the factory of its connections.
Each accepted socket first meets a small gate protocol. From a trusted
address the gate waits for a PROXY header (bounded in size and time), then
gives the transport to a new AsyncSSH connection, wrapped so that the
``peername`` it reports is the client's address from the header: logs,
lockout, ``from=`` and webhooks then all see the real client. From any other
address a PROXY header is refused and the stream goes to AsyncSSH untouched.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Callable, Sequence
from typing import Any, cast

from pairpod.log import fields, get_logger
from pairpod.proxy.codec import Address, ProxyHeaderError, could_be_header, parse

log = get_logger("proxy")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
SessionFactory = Callable[[str, int], asyncio.BaseProtocol]


class AddressedTransport:
    """A transport that reports the PROXY header's client as its peer."""

    def __init__(self, transport: asyncio.Transport, peername: Address) -> None:
        self._transport = transport
        self._peername = peername

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """The client's address for ``peername``; the socket's for everything else."""
        if name == "peername":
            return self._peername
        if name == "proxy_peername":
            return self._transport.get_extra_info("peername", default)
        return self._transport.get_extra_info(name, default)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def is_trusted(peer: Any, networks: Sequence[Network]) -> bool:
    """Whether a socket peer address lies in one of ``networks``."""
    try:
        address = ipaddress.ip_address(peer[0])
    except (TypeError, ValueError, IndexError):
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in networks)


class ProxyGate(asyncio.Protocol):
    """The first protocol of an accepted socket: checks for a PROXY header, then hands over."""

    def __init__(self, session_factory: SessionFactory, networks: Sequence[Network], timeout: float) -> None:
        self._factory = session_factory
        self._networks = networks
        self._timeout = timeout
        self._transport: asyncio.Transport | None = None
        self._peer: Any = None
        self._trusted = False
        self._buffer = b""
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Decide whether this peer must send a header."""
        # A cast: uvloop's transports do not derive from asyncio.Transport.
        self._transport = cast(asyncio.Transport, transport)
        self._peer = transport.get_extra_info("peername")
        self._trusted = is_trusted(self._peer, self._networks)
        if self._trusted:
            self._timer = asyncio.get_running_loop().call_later(self._timeout, self._expired)

    def data_received(self, data: bytes) -> None:
        """Header bytes (trusted peers) or the first SSH bytes (others)."""
        self._buffer += data
        if not self._trusted:
            # An SSH client's first bytes are "SSH-": a header here is refused.
            if could_be_header(self._buffer[:1]):
                self._refuse("a PROXY header from an address not in proxy_protocol.trusted")
            else:
                self._hand_over(None)
            return
        try:
            header = parse(self._buffer)
        except ProxyHeaderError as error:
            self._refuse(str(error))
            return
        if header is None:
            return
        self._buffer = self._buffer[header.length :]
        self._hand_over(header.source)

    def eof_received(self) -> bool | None:
        """The peer gave up before the header ended."""
        self._refuse("the connection ended before a PROXY header")
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        """Gone before the hand-over: nothing to clean up but the timer."""
        self._cancel_timer()

    def _expired(self) -> None:
        self._refuse("no PROXY header in time")

    def _refuse(self, reason: str) -> None:
        self._cancel_timer()
        log.info("proxy.refused", extra=fields(remote=_format(self._peer), reason=reason))
        if self._transport is not None:
            self._transport.abort()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _hand_over(self, source: Address | None) -> None:
        self._cancel_timer()
        transport = self._transport
        assert transport is not None
        conn = self._factory("", 0)
        wrapped: Any = transport if source is None else AddressedTransport(transport, source)
        if source is not None:
            log.debug("proxy.client", extra=fields(remote=_format(source), balancer=_format(self._peer)))
        transport.set_protocol(conn)
        conn.connection_made(wrapped)
        rest, self._buffer = self._buffer, b""
        if rest and not transport.is_closing():
            conn.data_received(rest)  # type: ignore[attr-defined]


class ProxyProtocolListener:
    """What AsyncSSH calls to listen (its ``tunnel`` argument) when PROXY is on."""

    def __init__(self, trusted: Sequence[str], timeout: float) -> None:
        self._networks = [ipaddress.ip_network(item, strict=False) for item in trusted]
        self._timeout = timeout

    async def create_server(
        self, session_factory: SessionFactory, listen_host: str, listen_port: int
    ) -> asyncio.AbstractServer:
        """Listen on ``listen_host:listen_port`` with a PROXY gate before each connection."""
        loop = asyncio.get_running_loop()
        return await loop.create_server(
            lambda: ProxyGate(session_factory, self._networks, self._timeout),
            listen_host,
            listen_port,
            reuse_address=True,
        )


def _format(peer: Any) -> str:
    try:
        host, port = peer[0], peer[1]
    except (TypeError, IndexError):
        return "?"
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
