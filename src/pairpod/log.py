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
from typing import Any

_FIELDS_ATTR = "pairpod_fields"


def fields(**values: Any) -> dict[str, Any]:
    """Wrap event fields for the ``extra=`` argument of a logging call."""
    return {_FIELDS_ATTR: {k: v for k, v in values.items() if v is not None}}


def _quote(value: Any) -> str:
    text = str(value)
    if text == "" or any(c.isspace() or c in '"=' for c in text):
        return json.dumps(text)
    return text


class TextFormatter(logging.Formatter):
    """``2026-01-01T00:00:00.000Z info event key=value ...``"""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        parts = [f"{stamp}.{int(record.msecs):03d}Z", record.levelname.lower(), record.getMessage()]
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


def setup_logging(level: str, fmt: str) -> None:
    """Send pairpod's log to stderr in the chosen format; quiet AsyncSSH's chatter."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # AsyncSSH logs every packet-level step at info; ours says what matters.
    logging.getLogger("asyncssh").setLevel(logging.WARNING)


def get_logger(name: str) -> logging.Logger:
    """A logger under the ``pairpod`` namespace."""
    return logging.getLogger(f"pairpod.{name}")
