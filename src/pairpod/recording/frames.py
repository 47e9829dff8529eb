"""The frames the gateway sends its recording worker process (sans-I/O).

Each frame: kind (1 byte), recording id (4), elapsed seconds (8, a double),
payload length (4), payload. A decoder takes bytes as they come and returns
whole frames; a length over ``MAX_PAYLOAD`` is an error, never an allocation.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

_HEADER = struct.Struct("!BIdI")
MAX_PAYLOAD = 16 << 20


class Kind(enum.IntEnum):
    """What a frame carries."""

    OPEN = 1  # JSON: path, header, max_bytes, log fields
    OUTPUT = 2  # bytes the program wrote
    INPUT = 3  # bytes sent to the program
    RESIZE = 4  # "COLSxROWS"
    GAP = 5  # how many events were dropped here (decimal)
    CLOSE = 6  # the session ended
    AUDIT = 7  # JSON: path, line (an audit line of a channel without a PTY)


@dataclass(frozen=True)
class Frame:
    """One decoded frame."""

    kind: Kind
    recording: int
    elapsed: float
    payload: bytes


class FrameError(ValueError):
    """The stream is not a frame stream (a bug, or a corrupted pipe)."""


def encode(kind: Kind, recording: int, elapsed: float, payload: bytes = b"") -> bytes:
    """One frame."""
    return _HEADER.pack(kind, recording, elapsed, len(payload)) + payload


class FrameDecoder:
    """Bytes in, frames out."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[Frame]:
        """Every frame completed by ``data``."""
        self._buffer += data
        frames = []
        offset = 0
        buffer = self._buffer
        while len(buffer) - offset >= _HEADER.size:
            kind, recording, elapsed, size = _HEADER.unpack_from(buffer, offset)
            if size > MAX_PAYLOAD:
                raise FrameError(f"frame of {size} bytes (max {MAX_PAYLOAD})")
            try:
                frame_kind = Kind(kind)
            except ValueError:
                raise FrameError(f"unknown frame kind {kind}") from None
            end = offset + _HEADER.size + size
            if len(buffer) < end:
                break
            with memoryview(buffer) as view:  # one copy of the payload, not two
                payload = view[offset + _HEADER.size : end].tobytes()
            frames.append(Frame(frame_kind, recording, elapsed, payload))
            offset = end
        del buffer[:offset]
        return frames
