"""PROXY protocol (v1, v2) in front of the SSH listener."""

from pairpod.proxy.codec import ProxyHeader, ProxyHeaderError, parse
from pairpod.proxy.listener import ProxyProtocolListener

__all__ = ["ProxyHeader", "ProxyHeaderError", "ProxyProtocolListener", "parse"]
