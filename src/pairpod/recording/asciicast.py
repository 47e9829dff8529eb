"""asciicast v2 lines (sans-I/O): the header and one event per line.

Format: https://docs.asciinema.org/manual/asciicast/v2/ — a JSON header line,
then ``[time, code, data]`` lines; ``o`` output, ``i`` input, ``r`` resize
(``"COLSxROWS"``).
"""

from __future__ import annotations

import codecs
import json
from collections.abc import Mapping
from typing import Any

OUTPUT = "o"
INPUT = "i"
RESIZE = "r"


def header(
    width: int,
    height: int,
    timestamp: int,
    *,
    env: Mapping[str, str],
    title: str,
    metadata: Mapping[str, Any],
) -> bytes:
    """The first line of a recording."""
    line = {
        "version": 2,
        "width": width,
        "height": height,
        "timestamp": timestamp,
        "env": dict(env),
        "title": title,
        "pairpod": dict(metadata),
    }
    return json.dumps(line, ensure_ascii=False).encode() + b"\n"


def event(elapsed: float, code: str, data: str) -> bytes:
    """One event line, ``elapsed`` seconds after the start."""
    # ASCII-only JSON (non-ASCII as \\u escapes) encodes about a fifth faster.
    return json.dumps([round(elapsed, 6), code, data]).encode() + b"\n"


def resize_data(cols: int, rows: int) -> str:
    """The data of a resize event."""
    return f"{cols}x{rows}"


class TextDecoder:
    """UTF-8 bytes to text across chunk boundaries (invalid bytes become U+FFFD)."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")

    def decode(self, data: bytes) -> str:
        """The text of ``data``; an incomplete sequence at its end waits for the next chunk."""
        return self._decoder.decode(data)

    def flush(self) -> str:
        """What is left of an incomplete sequence at the end."""
        return self._decoder.decode(b"", final=True)
