"""A write-coalescing wrapper for AsyncSSH's TCP transport.

AsyncSSH writes every SSH packet to the socket on its own, and since 2.x also
sends an SSH_MSG_IGNORE packet before each one: two send() system calls per
32 KiB of channel data. Gathering the writes made during one event-loop turn
into a single write roughly halves the system calls on bulk transfers
(measured in bench/throughput.py). This is the only place pairpod touches
AsyncSSH's private ``_transport`` attribute.
"""

from __future__ import annotations

import asyncio
from typing import Any

import asyncssh


class CoalescingTransport:
    """Delegates to a transport, but joins the writes of one loop turn."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._pending: list[bytes] = []
        self._loop = asyncio.get_running_loop()

    def write(self, data: bytes) -> None:
        """Queue ``data``; it is written at the end of this loop turn."""
        if not self._pending:
            self._loop.call_soon(self.flush)
        self._pending.append(data)

    def flush(self) -> None:
        """Write everything queued, as one buffer."""
        if self._pending:
            data = b"".join(self._pending) if len(self._pending) > 1 else self._pending[0]
            self._pending.clear()
            if not self._transport.is_closing():
                self._transport.write(data)

    def writelines(self, chunks: Any) -> None:
        """Queue several buffers."""
        for chunk in chunks:
            self.write(chunk)

    def get_write_buffer_size(self) -> int:
        """Bytes not yet written, including those queued here."""
        return self._transport.get_write_buffer_size() + sum(map(len, self._pending))

    def close(self) -> None:
        """Flush, then close."""
        self.flush()
        self._transport.close()

    def write_eof(self) -> None:
        """Flush, then half-close."""
        self.flush()
        self._transport.write_eof()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def coalesce_writes(conn: asyncssh.SSHServerConnection) -> None:
    """Install the coalescing wrapper on a just-made connection."""
    transport = conn._transport
    if transport is not None and not isinstance(transport, CoalescingTransport):
        conn._transport = CoalescingTransport(transport)
