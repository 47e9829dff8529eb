"""Malformed requests on the web listener: one short line each, a few a minute per source.

aiohttp answers a request it cannot parse (bytes that are not HTTP, a request
line or a header past the listener's limits, a header without a colon) with
400 and closes the connection, and logs that through its server logger at
ERROR with the parser's traceback. A client sending garbage in a loop would
fill the log with them. The listener gives aiohttp a :class:`RequestLog` as
that logger: a parse error becomes ``web.bad_request`` at INFO, with the
client's address and the kind of error (its class, never its message: that
quotes the request's bytes, which may hold a link's token). One source (an
address, or an IPv6 /64) logs at most :data:`BURST` of them at once and then
one every :data:`INTERVAL` seconds; the lines held back are counted and the
count is reported, as ``suppressed``, with the source's next line. Anything
else aiohttp logs (a handler's bug and its traceback) reaches its logger
unchanged.
"""

from __future__ import annotations

import logging
import re
from collections import OrderedDict
from collections.abc import MutableMapping
from typing import Any

from aiohttp import http_exceptions

from pairpod.auth.addresses import lockout_key
from pairpod.log import fields, get_logger
from pairpod.rates import SourceRates

log = get_logger("web")

#: Lines one source may log at once, and then one every INTERVAL seconds.
BURST = 3
INTERVAL = 20.0
#: Sources remembered at most (both for their rate and for their held-back count).
MAX_SOURCES = 10_000

_WORD = re.compile(r"(?<!^)(?=[A-Z])")


class RequestLog(logging.LoggerAdapter[logging.Logger]):
    """aiohttp's server logger for one listener: a malformed request is one bounded line."""

    def __init__(self) -> None:
        """Everything but a refused request goes on to aiohttp's own server logger."""
        super().__init__(logging.getLogger("aiohttp.server"), {})
        self._rates = SourceRates(1 / INTERVAL, BURST, max_sources=MAX_SOURCES)
        self._held: OrderedDict[str, int] = OrderedDict()

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        """Log as aiohttp asked, unless the record is a refused request's parse error."""
        error = kwargs.get("exc_info")
        if isinstance(error, http_exceptions.HttpProcessingError):
            # aiohttp passes the client's address as the message's argument; the
            # argument is cut short in case a version passes something else there.
            self._refused(str(args[0])[:64] if args else "", error)
        else:
            super().log(level, msg, *args, **kwargs)

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        """Nothing to add to aiohttp's own lines."""
        return msg, kwargs

    def _refused(self, address: str, error: http_exceptions.HttpProcessingError) -> None:
        source = lockout_key(address) if address else ""
        if not self._rates.allow(source):
            self._held[source] = self._held.pop(source, 0) + 1
            while len(self._held) > MAX_SOURCES:
                self._held.popitem(last=False)
            return
        log.info(
            "web.bad_request",
            extra=fields(
                addr=address or None,
                reason=_WORD.sub(" ", type(error).__name__).lower(),
                suppressed=self._held.pop(source, None),
            ),
        )
