"""Structured logging: one line per event, as ``key=value`` text or as JSON.

Call sites log an event name with fields::

    log.info("channel.exec", extra=fields(conn="c1", user="alice", command="ls"))

and the formatter renders them. Secrets never reach this module: callers pass
identities and reasons, not passwords or keys.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from typing import Any

_FIELDS_ATTR = "pairpod_fields"


def fields(**values: Any) -> dict[str, Any]:
    """Wrap event fields for the ``extra=`` argument of a logging call."""
    return {_FIELDS_ATTR: {k: v for k, v in values.items() if v is not None}}


# Characters a text-log value may hold unquoted: printable ASCII without spaces,
# quotes or '=' (which would make ``key=value`` ambiguous).
_BARE = frozenset(chr(c) for c in range(0x21, 0x7F)) - {'"', "=", "\\"}


def _quote(value: Any) -> str:
    """A value as written in a text log line: bare when it is plain, else a JSON string.

    JSON escapes every control character and (with ``ensure_ascii``) everything
    past ASCII, so an escape sequence or a backspace from a client's command
    can never reach the operator's terminal raw; DEL is escaped by hand
    because JSON allows it unescaped.
    """
    text = str(value)
    if text and all(c in _BARE for c in text):
        return text
    return json.dumps(text).replace("\x7f", "\\u007f")


class TextFormatter(logging.Formatter):
    """``2026-01-01T00:00:00.000Z info event key=value ...``"""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        message = record.getMessage()
        if any(not (" " <= c < "\x7f") for c in message):  # a library's message with controls
            message = _quote(message)
        parts = [f"{stamp}.{int(record.msecs):03d}Z", record.levelname.lower(), message]
        for key, value in getattr(record, _FIELDS_ATTR, {}).items():
            parts.append(f"{key}={_quote(value)}")
        if record.exc_info:
            parts.append("error=" + _quote(self.formatException(record.exc_info)))
        return " ".join(parts)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``{"ts":..., "level":..., "event":..., ...fields}``."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": record.created,
            "level": record.levelname.lower(),
            "event": record.getMessage(),
        }
        entry.update(getattr(record, _FIELDS_ATTR, {}))
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class RateLimit(logging.Filter):
    """Let through at most ``burst`` warnings or errors of one kind per ``period``.

    A resource error (out of file descriptors, an engine down) can repeat
    thousands of times a second; the log must say so without filling the
    disk. The kind is the logger and event name; what was held back is
    counted and reported with the next line of that kind that passes.
    Info and debug lines are not limited: they are not emitted in loops.
    """

    def __init__(
        self, burst: int = 10, period: float = 10.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__()
        self._burst = burst
        self._period = period
        self._clock = clock
        self._windows: dict[tuple[str, str], tuple[float, int, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        """False to drop ``record``; a passing record may carry the count dropped before it."""
        if record.levelno < logging.WARNING:
            return True
        key = (record.name, str(record.msg))
        now = self._clock()
        start, passed, dropped = self._windows.get(key, (now, 0, 0))
        if now - start >= self._period:
            start, passed = now, 0
        if passed >= self._burst:
            self._windows[key] = (start, passed, dropped + 1)
            return False
        if len(self._windows) > 1000:  # bounded: forget the oldest kinds
            self._windows.clear()
        self._windows[key] = (start, passed + 1, 0)
        if dropped:
            extra = dict(getattr(record, _FIELDS_ATTR, {}))
            extra["suppressed"] = dropped
            setattr(record, _FIELDS_ATTR, extra)
        return True


def setup_logging(level: str, fmt: str) -> None:
    """Send pairpod's log to stderr in the chosen format; quiet AsyncSSH's chatter."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(RateLimit())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # AsyncSSH logs every packet-level step at info; ours says what matters.
    logging.getLogger("asyncssh").setLevel(logging.WARNING)


def get_logger(name: str) -> logging.Logger:
    """A logger under the ``pairpod`` namespace."""
    return logging.getLogger(f"pairpod.{name}")
