"""One browser joined to a shared Terminal through its link's WebSocket.

The Terminal may be in this process or on another replica (a
:class:`~pairpod.sharing.joinable.Joinable` either way). The browser is one
more participant of it (a :class:`WebSink`),
named ``web viewer`` so the owner's notices say "web viewer joined". It
gets a ``hello`` (who shares, its access, the PTY size), the current screen,
then live output. A read-write page's binary messages are keystrokes and its
``resize`` messages count in the smallest-read-write size policy; a
read-only page's keystrokes are dropped by the Terminal and its size never
reaches the PTY.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable

from aiohttp import WSCloseCode, WSMsgType, web

from pairpod.config import PtyLimit
from pairpod.errors import PairpodError
from pairpod.log import fields, get_logger
from pairpod.sharing.joinable import Joinable, Seat
from pairpod.sharing.tokens import Access
from pairpod.web.sink import WebSink, message

log = get_logger("web")

#: The participant name of every browser (the owner's notices: "web viewer joined").
WEB_VIEWER = "web viewer"


def parse_resize(text: str, limit: PtyLimit) -> tuple[int, int] | None:
    """``{"type": "resize", "cols": C, "rows": R}`` as a size within ``limit``; None if it is not one."""
    try:
        data = json.loads(text)
    except ValueError:
        return None
    if not isinstance(data, dict) or data.get("type") != "resize":
        return None
    cols, rows = data.get("cols"), data.get("rows")
    if type(cols) is not int or type(rows) is not int:
        return None
    return limit.bound(cols, rows)


async def _read(socket: web.WebSocketResponse, seat: Seat, access: Access, limit: PtyLimit) -> None:
    """The browser's messages until it goes: keystrokes and window sizes."""
    async for msg in socket:
        if msg.type is WSMsgType.BINARY:
            await seat.send_input(msg.data)
        elif msg.type is WSMsgType.TEXT:
            size = parse_resize(msg.data, limit)
            if size is None:
                await socket.close(code=WSCloseCode.UNSUPPORTED_DATA, message=b"unknown message")
                return
            if access is Access.READ_WRITE:
                seat.resize(*size)
        else:  # an error (a message past sharing.web.max_message): the socket is closing
            return


async def serve_viewer(
    socket: web.WebSocketResponse,
    session: Joinable,
    *,
    address: str,
    audit: Callable[..., None],
    limit: PtyLimit,
) -> None:
    """Attach the browser on ``socket`` to the session (here or on another replica) until either side goes."""
    # Joined at the PTY's size: a read-write page changes nothing until it says its own.
    cols, rows = session.size
    sink = WebSink(sent_size=(cols, rows))
    try:
        seat = await session.attach(sink, name=WEB_VIEWER, cols=cols, rows=rows)
    except PairpodError as error:  # full, ended, its replica lost
        await socket.send_str(message("end", reason=error.user_message))
        return
    sink.attach(seat)
    details = {
        "session": session.session_id,
        "link": session.link_id,
        "participant": seat.id,
        "addr": address,
    }
    log.info("web.join", extra=fields(**details, access=session.access.value, where=session.where))
    audit("join", **details, name=WEB_VIEWER, access=session.access.value)
    pump = reader = None
    try:
        # The hello goes first; the screen and anything since wait in the sink's queue.
        await socket.send_str(
            message("hello", owner=session.owner, access=session.access.label, cols=cols, rows=rows)
        )
        pump = asyncio.create_task(sink.pump(socket))
        reader = asyncio.create_task(_read(socket, seat, session.access, limit))
        await asyncio.wait({pump, reader}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        seat.leave()
        for task in (pump, reader):
            if task is None:
                continue
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await task
        # Also when the viewer is cut (its handler cancelled at shutdown): a join is never
        # left without its leave in the audit log.
        log.info("web.leave", extra=fields(**details, reason=sink.ended or "the browser left"))
        audit("leave", **details, name=WEB_VIEWER)
