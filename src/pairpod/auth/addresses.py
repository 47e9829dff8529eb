"""Client addresses: OpenSSH ``from=`` pattern lists and lockout keys."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from functools import lru_cache

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_ip(address: str) -> IPAddress | None:
    """The IP of ``address``; an IPv4-mapped IPv6 address becomes plain IPv4."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


@lru_cache(maxsize=1024)
def _wildcard(pattern: str) -> re.Pattern[str]:
    parts = [".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern]
    return re.compile("".join(parts), re.IGNORECASE)


def check_pattern(pattern: str) -> None:
    """Raise ValueError unless ``pattern`` is a usable ``from=`` entry."""
    body = pattern[1:] if pattern.startswith("!") else pattern
    if not body or any(c.isspace() for c in body):
        raise ValueError(f"empty or blank pattern {pattern!r}")
    if "/" in body:
        try:
            ipaddress.ip_network(body, strict=False)
        except ValueError:
            raise ValueError(f"invalid CIDR {body!r}") from None


def match_from(patterns: Iterable[str], address: str) -> bool:
    """Whether ``address`` passes an OpenSSH ``from=`` pattern list.

    As in OpenSSH: a matching negated entry (``!pattern``) refuses at once;
    otherwise at least one entry must match. Entries are wildcards (``*``,
    ``?``) or CIDR blocks. Names are matched against the IP text only, since
    pairpod does no reverse DNS (like OpenSSH's default ``UseDNS no``).
    """
    ip = parse_ip(address)
    if ip is None:
        return False
    texts = {str(ip), address}
    matched = False
    for raw in patterns:
        negated = raw.startswith("!")
        pattern = raw[1:] if negated else raw
        if not pattern:
            return False
        if "/" in pattern:
            try:
                network = ipaddress.ip_network(pattern, strict=False)
            except ValueError:
                return False  # unreadable entry: refuse rather than guess
            hit = ip.version == network.version and ip in network
        else:
            hit = any(_wildcard(pattern).fullmatch(text) for text in texts)
        if hit and negated:
            return False
        matched = matched or hit
    return matched


def lockout_key(address: str) -> str:
    """The unit an address lockout applies to.

    IPv6 clients usually own a whole /64, so one address per attempt would
    dodge a per-address lock; the /64 is locked instead.
    """
    ip = parse_ip(address)
    if ip is None:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((int(ip) >> 64 << 64, 64)))
    return str(ip)
