"""A sans-I/O codec for Docker's multiplexed attach/exec streams.

Nothing here does I/O: bytes go in, events come out, so every case is tested
with plain bytes.

**The multiplexed stream.** Without a TTY, Docker interleaves a process's
stdout and stderr on one connection as frames::

    [stream: u8][0][0][0][length: u32 big-endian][payload: length bytes]

where stream is 0 (stdin, written on stdout), 1 (stdout), 2 (stderr) or 3
(an error from the engine itself). :class:`Demuxer` turns arbitrary chunks of
that byte stream back into ``(stream, payload)`` pieces. It hands out payload
bytes as soon as they arrive rather than waiting for a whole frame, so a slow
trickle of output is never held back.

"""

from __future__ import annotations

import struct

STDIN = 0
STDOUT = 1
STDERR = 2
SYSTEMERR = 3

_HEADER = struct.Struct(">BxxxL")
HEADER_SIZE = _HEADER.size  # 8


class StreamProtocolError(ValueError):
    """The bytes are not a valid multiplexed stream."""


def encode_frame(stream: int, payload: bytes) -> bytes:
    """One frame of the multiplexed stream format (the engine's side of it)."""
    if stream not in (STDIN, STDOUT, STDERR, SYSTEMERR):
        raise ValueError(f"unknown stream {stream}")
    return _HEADER.pack(stream, len(payload)) + payload


class Demuxer:
    """Split a multiplexed Docker stream into ``(stream, payload)`` pieces.

    ``feed`` returns the pieces the new bytes complete, in order. A frame's
    payload may come out in several pieces; adjacent pieces of the same stream
    within one ``feed`` call are joined. Empty frames produce nothing. Stream 0
    (stdin echoed back) is reported as stdout, as the Engine documents.
    """

    __slots__ = ("_header", "_remaining", "_stream")

    def __init__(self) -> None:
        self._header = bytearray()
        self._stream = STDOUT
        self._remaining = 0

    @property
    def at_frame_boundary(self) -> bool:
        """True when no frame is partly received (a clean place for the stream to end)."""
        return self._remaining == 0 and not self._header

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        """Consume ``data``; return the completed payload pieces."""
        # Runs of one stream are gathered as views and joined once at the end,
        # so a chunk holding many small frames costs one copy, not one per frame.
        runs: list[tuple[int, list[memoryview]]] = []
        view = memoryview(data)
        pos = 0
        end = len(view)
        while pos < end:
            if self._remaining:
                take = min(self._remaining, end - pos)
                piece = view[pos : pos + take]
                pos += take
                self._remaining -= take
                if runs and runs[-1][0] == self._stream:
                    runs[-1][1].append(piece)
                else:
                    runs.append((self._stream, [piece]))
                continue
            if not self._header and end - pos >= HEADER_SIZE:
                # The common case: a whole header in hand, no copy into the buffer.
                stream, length = _HEADER.unpack_from(view, pos)
                pos += HEADER_SIZE
            else:
                need = HEADER_SIZE - len(self._header)
                self._header += view[pos : pos + need]
                pos += min(need, end - pos)
                if len(self._header) < HEADER_SIZE:
                    break
                stream, length = _HEADER.unpack(self._header)
                self._header.clear()
            if stream > SYSTEMERR:
                raise StreamProtocolError(f"unknown stream type {stream} in frame header")
            self._stream = STDOUT if stream == STDIN else stream
            self._remaining = length
        if len(runs) == 1 and len(runs[0][1]) == 1 and len(runs[0][1][0]) == end:
            return [(runs[0][0], data)]  # one frame's payload is the whole chunk: no copy
        return [(stream, b"".join(pieces)) for stream, pieces in runs]
