"""One browser joined to a shared Terminal through its link's WebSocket.

The browser is one more participant of the Terminal (a :class:`WebSink`),
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
from pairpod.log import fields, get_logger
from pairpod.sharing.terminal import Participant, Terminal, TerminalEnded
from pairpod.sharing.tokens import Access, SharedSession, ShareLink
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
    return min(max(cols, 1), limit.cols), min(max(rows, 1), limit.rows)


async def _read(socket: web.WebSocketResponse, participant: Participant, limit: PtyLimit) -> None:
    """The browser's messages until it goes: keystrokes and window sizes."""
    async for msg in socket:
        if msg.type is WSMsgType.BINARY:
            await participant.send_input(msg.data)
        elif msg.type is WSMsgType.TEXT:
            size = parse_resize(msg.data, limit)
            if size is None:
                await socket.close(code=WSCloseCode.UNSUPPORTED_DATA, message=b"unknown message")
                return
            if participant.access is Access.READ_WRITE:
                participant.resize(*size)
        else:  # an error (a message past sharing.web.max_message): the socket is closing
            return


async def serve_viewer(
    socket: web.WebSocketResponse,
    link: ShareLink,
    session: SharedSession[Terminal],
    *,
    address: str,
    audit: Callable[..., None],
    max_participants: int,
    limit: PtyLimit,
) -> None:
    """Attach the browser on ``socket`` to the session until either side goes."""
    terminal = session.terminal
    if sum(not p.owner for p in terminal.participants()) >= max_participants:
        await socket.send_str(
            message("end", reason=f"this shared session is full (max {max_participants} participants)")
        )
        return
    cols, rows = terminal.size
    await socket.send_str(
        message("hello", owner=session.owner, access=link.access.label, cols=cols, rows=rows)
    )
    sink = WebSink(lambda: terminal.size, sent_size=(cols, rows))
    try:
        participant = terminal.join(sink, name=WEB_VIEWER, access=link.access, cols=cols, rows=rows)
    except TerminalEnded as error:
        await socket.send_str(message("end", reason=error.user_message))
        return
    sink.attach(participant)
    details = {
        "session": session.session_id,
        "link": link.link_id,
        "participant": participant.id,
        "addr": address,
    }
    log.info("web.join", extra=fields(**details, access=link.access.value))
    audit("join", **details, name=WEB_VIEWER, access=link.access.value)
    pump = asyncio.create_task(sink.pump(socket))
    reader = asyncio.create_task(_read(socket, participant, limit))
    try:
        await asyncio.wait({pump, reader}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        participant.leave()
        for task in (pump, reader):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await task
    log.info("web.leave", extra=fields(**details, reason=sink.ended or "the browser left"))
    audit("leave", **details, name=WEB_VIEWER)
