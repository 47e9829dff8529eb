"""Sans-I/O codecs for Docker's attach/exec streams and pairpod's process preamble.

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

**The preamble.** pairpod starts every process through a tiny POSIX-sh wrapper
that prints one line before it ``exec``s the real program: its PID (needed to
deliver signals, since the Engine API has no exec-signal call) or why it cannot
run. :class:`PreambleReader` takes that first line off the front of a stream.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

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


# --- the preamble ------------------------------------------------------------

PREAMBLE_PREFIX = b"pairpod:"
# A preamble longer than this is not ours: the wrapper did not run as expected.
_PREAMBLE_MAX = 256


@dataclass(frozen=True)
class Preamble:
    """What the wrapper reported before running the program.

    Exactly one of ``pid`` (the program's PID inside the container, with
    ``reader``, the PID of the process reading its stdout when there is one),
    ``error`` (a short reason, e.g. ``nosftp``) or ``ready`` (a spare process
    waiting for its instructions) is set. ``garbage`` holds the bytes received
    when the line was not a preamble at all (the wrapper itself could not run;
    the engine's or the shell's error text is in it).
    """

    pid: int | None = None
    reader: int | None = None
    error: str | None = None
    garbage: bytes = b""
    ready: bool = False


class PreambleReader:
    """Take the wrapper's first line off the front of a stream.

    Feed it bytes until it returns a :class:`Preamble`; the bytes after the
    line come back with it and belong to the program. With a TTY the line ends
    in ``\\r\\n`` (the terminal's output processing), without one in ``\\n``.
    """

    __slots__ = ("_buffer", "done")

    def __init__(self) -> None:
        self._buffer = bytearray()
        self.done = False

    def feed(self, data: bytes) -> tuple[Preamble | None, bytes]:
        """Consume ``data``; return ``(preamble, rest)`` once the line is complete."""
        if self.done:
            return None, data
        self._buffer += data
        newline = self._buffer.find(b"\n")
        if newline < 0:
            if len(self._buffer) > _PREAMBLE_MAX or not PREAMBLE_PREFIX.startswith(
                bytes(self._buffer[: len(PREAMBLE_PREFIX)])
            ):
                return self._finish(Preamble(garbage=bytes(self._buffer)), b"")
            return None, b""
        line = bytes(self._buffer[:newline]).rstrip(b"\r")
        rest = bytes(self._buffer[newline + 1 :])
        return self._finish(parse_preamble(line), rest)

    def feed_eof(self) -> Preamble:
        """The stream ended before a complete line: whatever came is garbage."""
        if self.done:
            raise RuntimeError("preamble already complete")
        return self._finish(Preamble(garbage=bytes(self._buffer)), b"")[0]  # type: ignore[return-value]

    def _finish(self, preamble: Preamble, rest: bytes) -> tuple[Preamble, bytes]:
        self.done = True
        self._buffer = bytearray()
        return preamble, rest


def parse_preamble(line: bytes) -> Preamble:
    """Parse ``pairpod:pid:<n>[:<reader>]``, ``pairpod:error:<reason>`` or ``pairpod:ready``."""
    if line == PREAMBLE_PREFIX + b"ready":
        return Preamble(ready=True)
    if line.startswith(PREAMBLE_PREFIX):
        kind, _, value = line[len(PREAMBLE_PREFIX) :].partition(b":")
        pid, _, reader = value.partition(b":")
        if kind == b"pid" and pid.isdigit() and (not reader or reader.isdigit()):
            return Preamble(pid=int(pid), reader=int(reader) if reader else None)
        if kind == b"error" and value:
            return Preamble(error=value.decode("ascii", "replace"))
    return Preamble(garbage=line)
