"""A browser's WebSocket as a shared Terminal's participant sees it (its Sink).

It works the same whether the Terminal is in this process or on another
replica: the PTY's size, which the page draws at, comes through
:meth:`WebSink.resized` before the output drawn for it.

The Terminal's ``write`` must not block, and a WebSocket send is a
coroutine: the sink queues what the Terminal gives it, in order with the
status messages, and one task (:meth:`WebSink.pump`) sends it. The queue
is the channel buffer an SSH viewer has in AsyncSSH: past ``high`` bytes the
participant is paused, and the Terminal applies the same per-viewer backlog
policy as to SSH viewers (queue up to ``sharing.viewer_backlog``, then a
screen snapshot instead); below ``low`` it resumes. A slow browser therefore
costs bounded memory and never holds the owner back.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from typing import Any, Protocol

from pairpod.sharing.joinable import Seat
from pairpod.sharing.terminal import Sink

#: Queued bytes past which the participant is paused, and where it resumes.
HIGH_WATER = 1 << 18
LOW_WATER = 1 << 16
# Consecutive output chunks are sent as one WebSocket message up to this size.
_MESSAGE_BYTES = 1 << 16
# Where the latest notice goes in the queue.
_NOTICE = object()


class Socket(Protocol):
    """What the sink needs of a WebSocket (aiohttp's ``WebSocketResponse``)."""

    async def send_bytes(self, data: bytes) -> None:
        """Send one binary message (waits while the peer is not reading)."""

    async def send_str(self, data: str) -> None:
        """Send one text message."""


def message(kind: str, **values: Any) -> str:
    """A status message to the page (a JSON text frame)."""
    return json.dumps({"type": kind, **values})


class WebSink(Sink):
    """Output, notices and the end for one browser, sent in order by :meth:`pump`."""

    def __init__(
        self,
        *,
        sent_size: tuple[int, int] | None = None,
        high: int = HIGH_WATER,
        low: int = LOW_WATER,
    ) -> None:
        # The PTY size as the page was last told it (in the hello, then in a size message).
        self._sent_size = sent_size
        self._high = high
        self._low = low
        self._items: deque[bytes | str | object] = deque()
        # The latest notice, sent where _NOTICE stands in the queue (see notify).
        self._notice: str | None = None  # the latest notice waiting to be sent
        self._pending = 0
        self._wakeup = asyncio.Event()
        self._paused = False
        self.participant: Seat | None = None
        #: Why the Terminal let go of this viewer (None while it is attached).
        self.ended: str | None = None

    def attach(self, participant: Seat) -> None:
        """The seat this sink feeds (known once the join returns)."""
        self.participant = participant
        self._check_pressure()

    def resized(self, cols: int, rows: int) -> None:
        """The PTY's size, before the output drawn for it: queued for the page unless it
        draws at that size already.

        Called only when the size changed (the joinable wrapper or the replica link
        compares it per output chunk), so output itself is queued without a check.
        """
        if (cols, rows) != self._sent_size:
            self._sent_size = (cols, rows)
            self._items.append(message("size", cols=cols, rows=rows))
            self._wakeup.set()

    def write(self, data: bytes) -> None:
        """Terminal output: queued."""
        self._items.append(data)
        self._pending += len(data)
        self._wakeup.set()
        self._check_pressure()

    def notify(self, text: str) -> None:
        """A notice (already drawn in the terminal): the page shows it in its status line.

        The page shows only the latest notice, so one waits here at a time and a
        newer one replaces its text: a browser that stops reading while others
        join and leave (each a notice) costs no more memory than one.
        """
        if self._notice is None:
            self._items.append(_NOTICE)
            self._wakeup.set()
        self._notice = text

    def close(self, reason: str) -> None:
        """Kicked, or the session ended: the page is told, then the socket closes."""
        self.ended = reason
        self._items.append(message("end", reason=reason))
        self._wakeup.set()

    def _check_pressure(self) -> None:
        if not self._paused and self._pending > self._high and self.participant is not None:
            self._paused = True
            self.participant.pause_writing()

    async def pump(self, socket: Socket) -> None:
        """Send everything queued, in order, until the end message is sent."""
        while True:
            while not self._items:
                self._wakeup.clear()
                await self._wakeup.wait()
            item = self._items.popleft()
            if item is _NOTICE:
                item = message("notice", text=self._notice)
                self._notice = None
            if isinstance(item, str):
                await socket.send_str(item)
                if self.ended is not None and not self._items:
                    return
                continue
            assert isinstance(item, bytes)
            parts = [item]
            size = len(item)
            while self._items and isinstance(self._items[0], bytes) and size < _MESSAGE_BYTES:
                chunk = self._items.popleft()
                assert isinstance(chunk, bytes)
                parts.append(chunk)
                size += len(chunk)
            await socket.send_bytes(parts[0] if len(parts) == 1 else b"".join(parts))
            self._pending -= size
            if self._paused and self._pending <= self._low and self.participant is not None:
                self._paused = False
                self.participant.resume_writing()
