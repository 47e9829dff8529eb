"""Who a web request comes from, behind reverse proxies or not.

``X-Forwarded-For`` is believed only from ``sharing.web.trusted_proxies``:
anyone else could write any address into it (and dodge the lockout). From a
trusted proxy the client is the rightmost address in the header that is not
itself a trusted proxy (each proxy appends the address it saw).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from pairpod.auth.addresses import IPAddress, parse_ip

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class ClientAddresses:
    """Resolves a request's client address given the trusted proxies."""

    def __init__(self, trusted_proxies: Iterable[str]) -> None:
        self._trusted: list[Network] = [ipaddress.ip_network(cidr, strict=False) for cidr in trusted_proxies]

    def _is_trusted(self, ip: IPAddress | None) -> bool:
        return ip is not None and any(ip.version == net.version and ip in net for net in self._trusted)

    def trusted(self, peer: str) -> bool:
        """Whether ``peer`` (a connection's address) is one of the trusted proxies."""
        return self._is_trusted(parse_ip(peer))

    def client(self, peer: str | None, forwarded_for: str | None) -> str:
        """The client's address: the peer's, or from ``X-Forwarded-For`` when the peer is trusted."""
        peer_ip = parse_ip(peer or "")
        address = str(peer_ip) if peer_ip is not None else (peer or "unknown")
        if not forwarded_for or not self._is_trusted(peer_ip):
            return address
        for hop in reversed([part.strip() for part in forwarded_for.split(",")]):
            ip = parse_ip(hop.strip("[]"))
            if ip is None:
                return address  # an unreadable hop: believe nothing past it
            address = str(ip)
            if not self._is_trusted(ip):
                break
        return address
