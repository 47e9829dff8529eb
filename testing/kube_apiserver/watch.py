"""The watch stream: newline-delimited JSON events over a chunked response.

Each line is ``{"type": "ADDED|MODIFIED|DELETED|BOOKMARK|ERROR", "object": {...}}``.
The stream ends at ``timeoutSeconds``, after an ERROR event (410 for a
compacted resourceVersion), on server shutdown, or when the client leaves.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

from aiohttp import web

from .resources import ResourceType
from .store import Store, Watcher
from .tables import to_table

Obj = dict[str, Any]


def _as_table_event(rtype: ResourceType, event: Obj, include: str, first: bool) -> Obj:
    if event["type"] in ("ERROR", "BOOKMARK"):
        return event
    obj = event["object"]
    meta = {"resourceVersion": obj.get("metadata", {}).get("resourceVersion", "")}
    table = to_table(rtype, [obj], meta, include, with_columns=first)
    return {"type": event["type"], "object": table}


async def serve_watch(
    request: web.Request,
    store: Store,
    watcher: Watcher,
    *,
    timeout_seconds: float | None,
    table_include: str | None,
) -> web.StreamResponse:
    """Stream a registered watcher's events until it ends; always unregisters it."""
    response = web.StreamResponse(status=200)
    response.content_type = "application/json"
    response.enable_chunked_encoding()
    # Clients must see the stream open before the first event arrives (an
    # empty watch is valid and long-lived).
    await response.prepare(request)
    rtype = watcher.rtype
    first = True
    try:
        async with asyncio.timeout(timeout_seconds):
            while True:
                event = await watcher.queue.get()
                if event is None:
                    break
                if table_include is not None:
                    event = _as_table_event(rtype, event, table_include, first)
                    first = first and event["type"] in ("ERROR", "BOOKMARK")
                await response.write(json.dumps(event, separators=(",", ":")).encode() + b"\n")
                if event["type"] == "ERROR":
                    break
    except TimeoutError:
        pass
    except ConnectionResetError:
        # The client left; nothing more to say to it.
        return response
    finally:
        store.unwatch(watcher)
    with contextlib.suppress(ConnectionResetError):
        await response.write_eof()
    return response
