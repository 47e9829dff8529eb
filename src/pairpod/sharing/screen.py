"""The screen model of a shared terminal: what a late joiner must see at once.

:class:`ScreenModel` is fed the PTY output of a shared session and renders, on
demand, a :meth:`~ScreenModel.snapshot`: the bytes that redraw the current
screen (both buffers, cursor, pen, scroll region, modes, title) on a fresh
terminal of the same size. It parses lazily, within a time budget, so the
owner's throughput never waits for pyte.

pyte 0.8 parses well, but its screen differs from a terminal's in many places.
:class:`DualScreen` fixes what a redraw needs (each override says what it
fixes), :class:`ModelStream` and ``_PYTE_TRAPS`` keep pyte away from what it
misreads, and a property test (any screen, and any output after it, looks the
same on a terminal fed only the snapshot) keeps them honest. Not modelled, so
a joiner may see them differently: dim and invisible text, underline styles
and colours, scrollback, DECCOLM (ignored, as xterm does by default),
double-width lines.
"""

from __future__ import annotations

import codecs
import copy
import re
import time
import unicodedata
from collections import defaultdict, deque
from collections.abc import Callable, Iterable

import pyte
from pyte import charsets as cs
from pyte import graphics as g
from pyte.screens import Char, Savepoint, StaticDefaultDict, wcwidth

from pairpod.log import get_logger

__all__ = [
    "DualScreen",
    "EscapeTracker",
    "ModelStream",
    "ScreenModel",
    "render_screen",
    "visible_cells",
]

# Private modes that switch buffers; they never stay in ``Screen.mode``.
_ALT_SCREEN_MODES = frozenset({47, 1047, 1049})
_SAVE_CURSOR_MODE = 1048
# DECCOLM would make pyte resize to 132 columns: the PTY does not change size,
# and xterm ignores the request by default, so we do too.
_IGNORED_PRIVATE_MODES = frozenset({3})
# Reverse video is left to the viewer's terminal (replayed as a mode) rather
# than baked into every cell as pyte does.
_REPLAY_ONLY_PRIVATE_MODES = frozenset({5})
_DECOM, _DECAWM, _DECTCEM = 6, 7, 25
_IRM, _LNM = 4, 20
# The same modes as pyte stores them in ``Screen.mode`` (private ones shifted).
_WRAP_FLAG, _INSERT_FLAG = _DECAWM << 5, _IRM
# Modes a terminal may still have on from an earlier redraw: switched off in a
# snapshot unless the model has them on (cursor keys, reverse video, mouse
# reporting in all encodings, focus events, bracketed paste).
_RESET_PRIVATE_MODES = (1, 5, 9, 66, 1000, 1001, 1002, 1003, 1004, 1005, 1006, 1015, 1016, 2004)

log = get_logger("sharing.screen")

# pyte types its buffer as a dict; at run time it is a defaultdict (rows appear on use).
_Buffer = dict[int, StaticDefaultDict[int, Char]]


class DualScreen(pyte.Screen):
    """A pyte screen with a main and an alternate buffer, as a terminal has.

    ``buffer`` is always the buffer on display; :attr:`main_buffer` and
    :attr:`alt_buffer` name them explicitly (pyte only flags ``?1049h``).
    Also tracks what a redraw must replay and pyte does not keep: private and
    public modes as sets of numbers, keypad mode (``ESC =`` / ``ESC >``).

    A wide character is stored with an empty-string stub in the next cell.
    Overwriting one half leaves the other in the buffer; such a half shows as
    a blank (see :func:`_row_cells`), as on a terminal.
    """

    def __init__(self, columns: int, lines: int) -> None:
        # pyte's __init__ calls reset(), which needs these.
        self.in_alt = False
        self.keypad_application = False
        self.private_modes: set[int] = {_DECAWM, _DECTCEM}
        self.public_modes: set[int] = set()
        self._other_buffer: _Buffer | None = None
        self._other_savepoints: list[Savepoint] = []
        # The blank of the last full erase (ED 2), while no cell changed since.
        self._cleared_with: Char | None = None
        super().__init__(columns, lines)
        self._other_buffer = self._new_buffer()

    def _new_buffer(self) -> _Buffer:
        return defaultdict(lambda: StaticDefaultDict(self.default_char))

    @property
    def main_buffer(self) -> _Buffer:
        """The normal screen's cells."""
        assert self._other_buffer is not None
        return self._other_buffer if self.in_alt else self.buffer

    @property
    def alt_buffer(self) -> _Buffer:
        """The alternate screen's cells."""
        assert self._other_buffer is not None
        return self.buffer if self.in_alt else self._other_buffer

    @property
    def main_savepoints(self) -> list[Savepoint]:
        """The normal screen's saved cursor (zero or one entry)."""
        return self._other_savepoints if self.in_alt else self.savepoints

    @property
    def alt_savepoints(self) -> list[Savepoint]:
        """The alternate screen's saved cursor (zero or one entry)."""
        return self.savepoints if self.in_alt else self._other_savepoints

    def reset(self) -> None:
        """RIS: back to the main screen, both buffers cleared, modes at defaults."""
        if getattr(self, "in_alt", False):
            self._swap()
        super().reset()
        if self._other_buffer is not None:
            self._other_buffer.clear()
        self.savepoints = []
        self._other_savepoints = []
        self.keypad_application = False
        self.private_modes = {_DECAWM, _DECTCEM}
        self.public_modes = set()

    def _swap(self) -> None:
        assert self._other_buffer is not None
        self.buffer, self._other_buffer = self._other_buffer, self.buffer
        self.savepoints, self._other_savepoints = self._other_savepoints, self.savepoints
        self.in_alt = not self.in_alt
        self.dirty.update(range(self.lines))

    def _switch(self, mode: int, enter: bool) -> None:
        if enter:
            if mode == 1049:
                self.save_cursor()
            if not self.in_alt:
                self._swap()
            if mode == 1049:
                self.buffer.clear()
        else:
            if self.in_alt:
                if mode == 1047:
                    self.buffer.clear()
                self._swap()
            if mode == 1049:
                self.restore_cursor()

    def set_mode(self, *modes: int, **kwargs: bool) -> None:
        """SM / DECSET, with the alternate screen and the modes pyte leaves out."""
        if not kwargs.get("private"):
            self.public_modes.update(modes)
            super().set_mode(*modes)
            return
        rest = []
        for mode in modes:
            if mode in _ALT_SCREEN_MODES:
                self._switch(mode, True)
            elif mode == _SAVE_CURSOR_MODE:
                self.save_cursor()
            elif mode in _IGNORED_PRIVATE_MODES:
                continue
            else:
                self.private_modes.add(mode)
                if mode not in _REPLAY_ONLY_PRIVATE_MODES:
                    rest.append(mode)
        if rest:
            super().set_mode(*rest, private=True)

    def reset_mode(self, *modes: int, **kwargs: bool) -> None:
        """RM / DECRST, mirroring :meth:`set_mode`."""
        if not kwargs.get("private"):
            self.public_modes.difference_update(modes)
            super().reset_mode(*modes)
            return
        rest = []
        for mode in modes:
            if mode in _ALT_SCREEN_MODES:
                self._switch(mode, False)
            elif mode == _SAVE_CURSOR_MODE:
                self.restore_cursor()
            elif mode in _IGNORED_PRIVATE_MODES:
                continue
            else:
                self.private_modes.discard(mode)
                if mode not in _REPLAY_ONLY_PRIVATE_MODES:
                    rest.append(mode)
        if rest:
            super().reset_mode(*rest, private=True)

    def _set_private_flag(self, mode: int, on: bool) -> None:
        # Without pyte's side effects (DECOM homes the cursor).
        if on:
            self.private_modes.add(mode)
            self.mode.add(mode << 5)
        else:
            self.private_modes.discard(mode)
            self.mode.discard(mode << 5)

    def save_cursor(self) -> None:
        """DECSC into this buffer's single slot."""
        super().save_cursor()
        del self.savepoints[:-1]

    def restore_cursor(self) -> None:
        """DECRC from this buffer's slot, which stays (restoring twice is allowed)."""
        if not self.savepoints:
            self._set_private_flag(_DECOM, False)
            self.cursor_position()
            return
        point = self.savepoints[-1]
        self.g0_charset = point.g0_charset
        self.g1_charset = point.g1_charset
        self.charset = point.charset
        self._set_private_flag(_DECOM, point.origin)
        self._set_private_flag(_DECAWM, point.wrap)
        self.cursor = copy.copy(point.cursor)
        self.ensure_hbounds()
        self.ensure_vbounds(use_margins=True)

    def resize(self, lines: int | None = None, columns: int | None = None) -> None:
        """Resize both buffers (pyte resizes only the one on display)."""
        lines = lines or self.lines
        columns = columns or self.columns
        old_lines, old_columns = self.lines, self.columns
        if (lines, columns) == (old_lines, old_columns):
            return
        # pyte's resize saves and restores the cursor around its work: keep
        # that away from the program's own saved cursor.
        saved, self.savepoints = self.savepoints, []
        super().resize(lines, columns)
        self.savepoints = saved
        # pyte leaves the cursor where it was, possibly off the new screen, and
        # keeps tab stops past the last column; saved cursors too may be off it.
        self.ensure_hbounds()
        self.ensure_vbounds()
        self.tabstops = {t for t in self.tabstops if t < min(old_columns, columns)} | {
            t for t in range(8, columns, 8) if t >= old_columns
        }
        for points in (self.savepoints, self._other_savepoints):
            for point in points:
                point.cursor.x = min(point.cursor.x, columns - 1)
                point.cursor.y = min(point.cursor.y, lines - 1)
        other = self._other_buffer
        if other is not None:
            shift = old_lines - lines
            if shift > 0:  # as pyte does: lines leave at the top
                moved = {y - shift: line for y, line in other.items() if y >= shift}
                other.clear()
                other.update(moved)
            if columns < old_columns:
                for line in other.values():
                    for x in [x for x in line if x >= columns]:
                        del line[x]

    def draw(self, data: str) -> None:
        """Draw text at the cursor, as xterm does (pyte's loop, with its gaps fixed).

        Differences from pyte: a zero-width character (combining mark, joiner,
        variation selector) never wraps the line and attaches to the character
        before it, also when that is a wide one; a wide character that does
        not fit in the last column wraps first; unprintable characters are
        skipped instead of ending the run.
        """
        data = data.translate(self.g1_charset if self.charset else self.g0_charset)
        mode = self.mode
        cursor = self.cursor
        columns = self.columns
        for char in data:
            width = wcwidth(char)
            if width <= 0:
                if width == 0:
                    self._combine(char)
                continue
            if cursor.x + width > columns:
                if _WRAP_FLAG in mode:
                    self.dirty.add(cursor.y)
                    self.carriage_return()
                    self.linefeed()
                else:
                    cursor.x = max(columns - width, 0)
            if _INSERT_FLAG in mode:
                self.insert_characters(width)
            line = self.buffer[cursor.y]
            x = cursor.x
            line[x] = cursor.attrs._replace(data=char)
            if width == 2 and x + 1 < columns:
                line[x + 1] = cursor.attrs._replace(data="")
            cursor.x = min(x + width, columns)
        self.dirty.add(cursor.y)

    def _combine(self, char: str) -> None:
        x, y = self.cursor.x, self.cursor.y
        if x:
            x -= 1
        elif y:
            x, y = self.columns - 1, y - 1
        else:
            return
        line = self.buffer[y]
        if x and _is_stub(line[x].data) and _is_wide(line[x - 1].data):
            x -= 1  # the right half of a wide character: the mark goes on the character
        cell = line[x]
        data = cell.data
        if _is_stub(data) or (_is_wide(data) and not (x + 1 < self.columns and _is_stub(line[x + 1].data))):
            # A half whose other half was overwritten shows as a blank (see
            # _row_cells): the mark goes on that blank, as on a terminal.
            data = " "
        line[x] = cell._replace(data=unicodedata.normalize("NFC", data + char))
        self.dirty.add(y)

    # Erasing, as a terminal does it: every cell of the range becomes a blank
    # with the current background (BCE) and no other attribute. pyte changes
    # only the cells its sparse buffer happens to hold, stamps the whole pen
    # (underline, bold...) on them, and raises on unknown parameters.

    # Erasing costs the same however wide the screen is: a whole row becomes an
    # empty one whose default cell is the blank (pyte's rows are
    # StaticDefaultDicts), and a whole screen on the default background is one
    # clear of the buffer. Only a partial row is erased cell by cell, and then
    # only the cells the row holds when the blank is its default.

    def _blank(self) -> Char:
        default = self.default_char
        bg = self.cursor.attrs.bg
        return default if bg == "default" else default._replace(bg=bg)

    def _erase(self, y: int, columns: range, blank: Char | None = None) -> None:
        blank = blank or self._blank()
        self.dirty.add(y)
        if columns.start <= 0 and columns.stop >= self.columns:
            line = self.buffer.get(y)
            if blank.bg == "default":
                self.buffer.pop(y, None)
            elif line is None:
                self.buffer[y] = StaticDefaultDict(blank)
            else:  # rows are never shared between two places: reuse it
                line.clear()
                line.default = blank
            return
        line = self.buffer[y]
        if line.default == blank:
            for x in [x for x in line if x in columns]:
                del line[x]
        else:
            for x in columns:
                line[x] = blank

    def erase_in_line(self, how: int = 0, private: bool = False) -> None:
        """EL 0/1/2; others are ignored, as terminals do."""
        x = min(self.cursor.x, self.columns - 1)
        spans = {0: range(x, self.columns), 1: range(x + 1), 2: range(self.columns)}
        if how in spans:
            self._erase(self.cursor.y, spans[how])

    def erase_in_display(self, how: int = 0, *args: object, **kwargs: object) -> None:
        """ED 0/1/2; 3 erases scrollback only (none here); others are ignored."""
        rows = {0: range(self.cursor.y + 1, self.lines), 1: range(self.cursor.y), 2: range(self.lines)}.get(
            how
        )
        if rows is None:
            return
        blank = self._blank()
        whole = range(self.columns)
        if how == 2:
            # Every change to a cell marks its row dirty (pyte's bookkeeping, which
            # nothing else here reads): after a full erase only the rows changed
            # since need erasing again, so a flood of clear-screens costs one row each.
            targets: Iterable[int] = rows
            if blank == self._cleared_with:
                targets = [y for y in self.dirty if y < self.lines]
            elif blank.bg == "default":
                self.buffer.clear()
                targets = ()
            for y in targets:
                self._erase(y, whole, blank)
            self.dirty.clear()
            self._cleared_with = blank
            return
        for y in rows:
            self._erase(y, whole, blank)
        self.erase_in_line(how)

    def delete_lines(self, count: int | None = None) -> None:
        """DL. pyte's own leaves a row in place when the row that should move up
        into it was never written (its buffer keeps only written rows), so a
        line deleted after a clear-screen stayed on screen."""
        count = count or 1
        top, bottom = self.margins or pyte.screens.Margins(0, self.lines - 1)
        if not top <= self.cursor.y <= bottom:
            return
        self.dirty.update(range(self.cursor.y, self.lines))
        for y in range(self.cursor.y, bottom + 1):
            below = y + count
            if below <= bottom and below in self.buffer:
                self.buffer[y] = self.buffer.pop(below)
            else:
                self.buffer.pop(y, None)
        self.carriage_return()

    def erase_characters(self, count: int | None = None) -> None:
        """ECH."""
        x = min(self.cursor.x, self.columns - 1)
        self._erase(self.cursor.y, range(x, min(x + (count or 1), self.columns)))

    def insert_characters(self, count: int | None = None) -> None:
        """ICH: what is pushed past the right margin is lost (pyte keeps the last cell
        out of sight, and DCH would bring it back); the inserted cells are blanks
        with the current background, as DCH's, not the row's default."""
        count = count or 1
        line = self.buffer[self.cursor.y]
        start, columns = self.cursor.x, self.columns
        kept = {
            x + (count if x >= start else 0): cell
            for x, cell in line.items()
            if x < start or x + count < columns
        }
        blank = self._blank()
        kept.update(dict.fromkeys(range(start, min(start + count, columns)), blank))
        line.clear()
        line.update(kept)
        self.dirty.add(self.cursor.y)

    def delete_characters(self, count: int | None = None) -> None:
        """DCH: the cells after the cursor move left and blanks with the current
        background come in at the right margin (pyte brings in its default cell
        or the row's, which differ on a row erased with a colour)."""
        count = count or 1
        line = self.buffer[self.cursor.y]
        start, columns = self.cursor.x, self.columns
        kept = {
            x - (count if x >= start else 0): cell
            for x, cell in line.items()
            if x < start or start + count <= x < columns
        }
        kept.update(dict.fromkeys(range(max(columns - count, start), columns), self._blank()))
        line.clear()
        line.update(kept)
        self.dirty.add(self.cursor.y)

    def set_tab_stop(self) -> None:
        """HTS; in the pending-wrap state the cursor is on the last column."""
        self.tabstops.add(min(self.cursor.x, self.columns - 1))

    def cursor_to_line(self, line: int | None = None) -> None:
        """VPA; pyte asserts when origin mode is on without margins."""
        if self.margins is None:
            self.cursor.y = (line or 1) - 1
            self.ensure_vbounds()
        else:
            super().cursor_to_line(line)

    def report_device_status(self, mode: int) -> None:
        """DSR: the owner's terminal answers the program, never the model."""

    def report_device_attributes(self, mode: int = 0, **kwargs: bool) -> None:
        """DA: the owner's terminal answers the program, never the model."""

    def set_keypad_application(self) -> None:
        """DECKPAM (``ESC =``)."""
        self.keypad_application = True

    def set_keypad_numeric(self) -> None:
        """DECKPNM (``ESC >``)."""
        self.keypad_application = False


class ModelStream(pyte.Stream):
    """pyte's parser, fed text we decoded ourselves.

    ``use_utf8`` stays False for pyte's state machine so that it honours
    ``ESC ( 0`` and SO/SI (it skips them in UTF-8 mode); the bytes are decoded
    as UTF-8 here, as a UTF-8 terminal does.
    """

    escape = {**pyte.Stream.escape, "=": "set_keypad_application", ">": "set_keypad_numeric"}

    def __init__(self, screen: DualScreen) -> None:
        super().__init__(screen)
        self.use_utf8 = False
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")

    def feed_bytes(self, data: bytes) -> None:
        text = self._decoder.decode(data)
        if text:
            self.feed(text.translate(_C1_CONTROLS))

    def select_other_charset(self, code: str) -> None:
        """``ESC % G`` / ``ESC % @``: we stay in UTF-8 (as xterm in UTF-8 mode)."""


# C1 controls as characters: not interpreted by UTF-8 terminals, and pyte
# would stop drawing at the first one. (U+009B and U+009D, which pyte reads
# as CSI and OSC, go too: xterm does not treat them so in UTF-8 either.)
_C1_CONTROLS = dict.fromkeys(range(0x80, 0xA0))

# Sequences pyte misreads, removed (or, for colon SGR, rewritten) before it
# parses: vim sends several. One split exactly at a slice boundary gets through.
_PYTE_TRAPS = re.compile(
    rb"\x1b[P^_X][^\x1b]*(?:\x1b\\)?"  # DCS/PM/APC/SOS: pyte would draw the payload
    rb"|\x1b\[[<=>][\x30-\x3f]*[\x20-\x2f]*[\x40-\x7e]"  # CSI with a <=> marker
    # CSI ? with a final other than h l J K (vim's CSI ? 4 m): pyte raises on them
    rb"|\x1b\[\?[\x30-\x3f]*[\x40-\x49\x4c-\x67\x69-\x6b\x6d-\x7e]"
    rb"|\x1b\[[\x30-\x3f]*[\x20-\x2f]+[\x40-\x7e]"  # CSI with intermediates
    rb"|(\x1b\[[0-9;]*:[0-9:;]*m)"  # SGR with colon sub-parameters (group 1)
    rb"|[\x00-\x06\x10-\x1a\x1c-\x1f]+"  # C0 controls no terminal draws
)


def _colon_sgr(sequence: bytes) -> bytes:
    params = []
    for param in sequence[2:-1].split(b";"):
        subs = param.split(b":")
        if len(subs) > 1 and subs[0] in (b"38", b"48"):
            if subs[1] == b"5" and len(subs) >= 3:
                params.append(b";".join((subs[0], b"5", subs[2] or b"0")))
                continue
            if subs[1] == b"2" and len(subs) >= 5:
                params.append(b";".join((subs[0], b"2", *(s or b"0" for s in subs[-3:]))))
                continue
            continue
        if subs[0] in (b"58", b"59"):  # underline colour: not modelled
            continue
        params.append(subs[0])
    return b"\x1b[" + b";".join(params) + b"m"


def _sanitize(data: bytes) -> bytes:
    if not _PYTE_TRAPS.search(data):
        return data
    return _PYTE_TRAPS.sub(lambda m: _colon_sgr(m.group(1)) if m.group(1) else b"", data)


# State that outlives a screenful of output, found in bytes we drop unparsed.
_STICKY = re.compile(rb"\x1b\[\?([0-9;]*)([hl])|\x1b\[([0-9]*)(?:;([0-9]*))?r|\x1b(c)")


class EscapeTracker:
    """Knows, cheaply, whether a byte stream is between escape sequences.

    Something may be written into a terminal's stream (a notice) only where
    the stream is not inside an escape sequence or a multi-byte character. This
    looks only at the last escape sequence of each chunk (``rfind`` plus one
    short regular-expression match), so it can run on every chunk of output.
    When the stream stops mid-sequence, :meth:`tail` gives the unfinished
    bytes: appended to a snapshot, they put a joiner's terminal in the same
    place, so the live output that follows continues the sequence there.
    """

    _COMPLETE = re.compile(
        rb"\x1b(?:"
        rb"\[[\x30-\x3f]*[\x20-\x2f]*[\x40-\x7e]"  # CSI
        rb"|\][^\x07\x1b]*\x07"  # OSC ended by BEL (ended by ST, the ST is the last ESC)
        rb"|[\x20-\x2f]+[\x30-\x7e]"  # charset designations and the like
        rb"|[\x30-\x4f\x51-\x57\x59\x5a\x5c\x60-\x7e]"  # two-byte; not [ ] P X ^ _
        rb")"
    )
    _MAX_PARTIAL = 4096
    _KEEP = 16

    _ALT_SCREEN = re.compile(rb"\x1b\[\?(?:1049|1047|47)([hl])")

    def __init__(self) -> None:
        self._partial = b""
        self._truncated = False
        self._char_tail = b""
        #: Whether the stream last switched to the alternate screen (a cheap
        #: guess that needs no parsing; a switch split across chunks is missed).
        self.in_alt = False
        #: Whether the stream ends with a newline (or is empty).
        self.at_line_start = True

    @property
    def at_ground(self) -> bool:
        """True when the bytes so far end outside any sequence or character."""
        return not self._partial and not self._char_tail

    def tail(self) -> bytes:
        """The unfinished sequence or character the stream ends with (often empty).

        A very long unfinished string (a clipboard OSC) gives only its start,
        enough for a terminal to take the rest of it as the string's payload.
        """
        if self._partial:
            return self._partial[: self._KEEP] if self._truncated else self._partial
        return self._char_tail

    def feed(self, data: bytes) -> None:
        """Account for the next chunk of the stream."""
        if not data:
            return
        self.at_line_start = data.endswith(b"\n")
        # rfind of one byte is a memrchr: plain text (a log flood) costs next to nothing.
        start = data.rfind(b"\x1b")
        if start >= 0 and b"\x1b[?" in data:
            switches = self._ALT_SCREEN.findall(data)
            if switches:
                self.in_alt = switches[-1] == b"h"
        truncated = False
        if start >= 0:
            tail = data[start:]
        elif self._partial:
            tail = self._partial + data
            truncated = self._truncated
        else:
            tail = b""
        if tail and not self._COMPLETE.match(tail):
            if len(tail) > self._MAX_PARTIAL:  # a long string: keep its ends
                tail = tail[: self._KEEP] + tail[-self._KEEP :]
                truncated = True
            self._partial, self._truncated = tail, truncated
        else:
            self._partial, self._truncated = b"", False
        self._char_tail = _unfinished_character(data) if data[-1] >= 0x80 else b""


def _unfinished_character(data: bytes) -> bytes:
    """The bytes of a UTF-8 character cut off at the end of ``data``, if any."""
    size = len(data)
    for back in range(1, min(4, size) + 1):
        byte = data[size - back]
        if byte < 0x80:
            return b""
        if byte >= 0xC0:
            need = 2 if byte < 0xE0 else 3 if byte < 0xF0 else 4
            return data[size - back :] if back < need else b""
    return b""


# --- rendering ---------------------------------------------------------------------

_FG_CODES = {name: code for code, name in {**g.FG_ANSI, **g.FG_AIXTERM}.items() if name != "default"}
_BG_CODES = {name: code for code, name in {**g.BG_ANSI, **g.BG_AIXTERM}.items() if name != "default"}
# pyte stores 256-colour indexes as their RGB value; map back to the index
# (the lowest one) so a viewer's palette applies as it does for the owner.
_PALETTE = {value: index for index, value in reversed(list(enumerate(g.FG_BG_256)))}
_HEX6 = re.compile(r"[0-9a-fA-F]{6}")
_CHARSET_CODES = {id(table): code for code, table in cs.MAPS.items()}
_TITLE_JUNK = dict.fromkeys([*range(0x20), *range(0x7F, 0xA0)])

_DEFAULT_ATTRS = Char(" ")


def _colour(name: str, codes: dict[str, int], extended: int) -> str | None:
    if name == "default":
        return None
    if name in codes:
        return str(codes[name])
    if name in _PALETTE:
        return f"{extended};5;{_PALETTE[name]}"
    if _HEX6.fullmatch(name):
        red, green, blue = (int(name[i : i + 2], 16) for i in (0, 2, 4))
        return f"{extended};2;{red};{green};{blue}"
    return None


def sgr(attrs: Char) -> str:
    """The SGR sequence that sets exactly ``attrs`` (starting from a reset)."""
    parts = ["0"]
    if attrs.bold:
        parts.append("1")
    if attrs.italics:
        parts.append("3")
    if attrs.underscore:
        parts.append("4")
    if attrs.blink:
        parts.append("5")
    if attrs.reverse:
        parts.append("7")
    if attrs.strikethrough:
        parts.append("9")
    fg = _colour(attrs.fg, _FG_CODES, 38)
    if fg:
        parts.append(fg)
    bg = _colour(attrs.bg, _BG_CODES, 48)
    if bg:
        parts.append(bg)
    return "\x1b[" + ";".join(parts) + "m"


def _style(attrs: Char) -> Char:
    return attrs._replace(data=" ")


def _is_stub(data: str) -> bool:
    """Whether a cell holds no character of its own (a wide character's right half)."""
    return not data or wcwidth(data[0]) == 0


def _is_wide(data: str) -> bool:
    return bool(data) and wcwidth(data[0]) == 2


def _row_cells(line: StaticDefaultDict[int, Char], columns: int) -> list[Char | None]:
    """One entry per column: a Char to draw, or None for the right half of a wide one.

    Cells that cannot be shown as stored (see the module docstring) become
    blanks with their attributes.
    """
    cells: list[Char | None] = []
    x = 0
    while x < columns:
        cell = line[x]
        data = cell.data
        if data == "" or wcwidth(data[0]) == 0:  # a stub whose wide character is gone
            cells.append(cell._replace(data=" "))
            x += 1
            continue
        if wcwidth(data[0]) == 2:
            stub = line[x + 1].data if x + 1 < columns else None
            if stub is not None and all(wcwidth(c) == 0 for c in stub):
                # pyte puts a combining mark drawn after a wide character on its
                # stub; a terminal puts it on the character.
                cells.append(cell._replace(data=data + stub) if stub else cell)
                cells.append(None)
                x += 2
                continue
            cells.append(cell._replace(data=" "))
            x += 1
            continue
        cells.append(cell)
        x += 1
    return cells


def visible_cells(screen: pyte.Screen, buffer: _Buffer | None = None) -> list[list[Char | None]]:
    """What a terminal shows of a buffer, cell by cell (for comparing screens)."""
    source = screen.buffer if buffer is None else buffer
    return [_row_cells(source[y], screen.columns) for y in range(screen.lines)]


def _cup(row: int, column: int) -> str:
    return f"\x1b[{row + 1};{column + 1}H"


def _render_row(out: list[str], screen: pyte.Screen, buffer: _Buffer, y: int, clear: bool) -> None:
    """Draw one row; with ``clear``, erase it first (else it must already be blank)."""
    cells = _row_cells(buffer[y], screen.columns) if y in buffer else []
    end = len(cells)
    while end and cells[end - 1] is not None and cells[end - 1] == _DEFAULT_ATTRS:
        end -= 1
    if clear:
        out.append(_cup(y, 0) + "\x1b[0m\x1b[2K")
    if not end:
        return
    if not clear:
        out.append(_cup(y, 0))
    pen: Char | None = None
    for cell in cells[:end]:
        if cell is None:
            continue
        style = _style(cell)
        if style != pen:
            out.append(sgr(style))
            pen = style
        out.append(cell.data)
    out.append("\x1b[0m")


def _neutral_prefix(screen: DualScreen) -> str:
    """Put a terminal in a state where absolute drawing works, whatever its state."""
    parts = ["\x1b[?25l"]
    if _DECOM in screen.private_modes:
        parts.append("\x1b[?6l")
    if _IRM in screen.public_modes:
        parts.append("\x1b[4l")
    if screen.charset or _CHARSET_CODES.get(id(screen.g0_charset), "B") != "B":
        parts.append("\x1b(B\x0f")
    return "".join(parts)


def _cursor_state(screen: DualScreen) -> str:
    """Put back what :func:`_neutral_prefix` changed, then the cursor and pen."""
    parts = []
    cursor = screen.cursor
    if _DECOM in screen.private_modes:
        parts.append("\x1b[?6h")  # homes the cursor: position after it
    top = screen.margins.top if (_DECOM in screen.private_modes and screen.margins) else 0
    x, y = cursor.x, cursor.y
    if x >= screen.columns:
        # "Pending wrap": the last column was just drawn and the next character
        # goes to the next line. Only drawing that last cell again recreates it.
        # (Without autowrap this leaves the cursor in the last column, as CUP would.)
        cells = _row_cells(screen.buffer[y], screen.columns)
        last = screen.columns - 1
        if cells[last] is None:
            last -= 1
        cell = cells[last] or _DEFAULT_ATTRS
        parts.append(_cup(y - top, last) + sgr(_style(cell)) + cell.data)
    else:
        parts.append(_cup(y - top, min(x, screen.columns - 1)))
    parts.append(sgr(cursor.attrs))
    if _IRM in screen.public_modes:
        parts.append("\x1b[4h")
    g0 = _CHARSET_CODES.get(id(screen.g0_charset), "B")
    g1 = _CHARSET_CODES.get(id(screen.g1_charset), "0")
    if g0 != "B":
        parts.append(f"\x1b({g0}")
    if g1 != "0":
        parts.append(f"\x1b){g1}")
    if screen.charset:
        parts.append("\x0e")
    if _DECTCEM in screen.private_modes:
        parts.append("\x1b[?25h")
    return "".join(parts)


# The drawing state a redraw relies on between its steps: absolute positions,
# replace mode, autowrap, ASCII, default pen.
_NEUTRAL = "\x1b[?6l\x1b[4l\x1b[?7h\x1b(B\x1b)0\x0f\x1b[0m"


def _saved_cursor(screen: DualScreen, point: Savepoint) -> str:
    """Put a terminal in the state a saved cursor records; the caller then saves it.

    Margins must be the full screen here, so that a position is absolute even
    with origin mode on.
    """
    cursor = point.cursor
    parts = ["\x1b[?6h"] if point.origin else []
    parts.append(_cup(min(cursor.y, screen.lines - 1), min(cursor.x, screen.columns - 1)))
    parts.append(sgr(cursor.attrs))
    g0 = _CHARSET_CODES.get(id(point.g0_charset), "B")
    g1 = _CHARSET_CODES.get(id(point.g1_charset), "0")
    if g0 != "B":
        parts.append(f"\x1b({g0}")
    if g1 != "0":
        parts.append(f"\x1b){g1}")
    if point.charset:
        parts.append("\x0e")
    if not point.wrap:
        parts.append("\x1b[?7l")
    return "".join(parts)


def render_screen(screen: DualScreen) -> bytes:
    """An escape-sequence stream that redraws ``screen`` on any terminal of its size.

    Works on a fresh terminal and on one showing anything else (a viewer being
    brought back after falling behind): it first cancels any half-received
    sequence, then sets every piece of state it relies on. Both buffers and
    both saved cursors are recreated, so the program's next move (leaving the
    alternate screen, restoring its cursor) looks right too.
    """
    out: list[str] = [
        # CAN ends a sequence the terminal may be in the middle of; ST ends a string.
        "\x18\x1b\\",
        "\x1b[?25l\x1b[?1049l\x1b[r",
        _NEUTRAL,
    ]
    # Modes off first: some (reverse video) change how cells are drawn.
    off = [m for m in _RESET_PRIVATE_MODES if m not in screen.private_modes]
    if off:
        out.append("\x1b[?" + ";".join(map(str, off)) + "l")
    alt_rows: list[str] = []
    for y in range(screen.lines):
        _render_row(alt_rows, screen, screen.alt_buffer, y, clear=False)
    if not screen.in_alt and (alt_rows or screen.alt_savepoints):
        # An unused alternate screen keeps its cells and saved cursor (mode 47
        # shows them again), so they are drawn too, out of sight.
        out.append("\x1b[?47h\x1b[H\x1b[2J")
        out.extend(alt_rows)
        if screen.alt_savepoints:
            out.append(_saved_cursor(screen, screen.alt_savepoints[-1]) + "\x1b7" + _NEUTRAL)
        out.append("\x1b[?47l")
    out.append("\x1b[H\x1b[2J")
    for y in range(screen.lines):
        _render_row(out, screen, screen.main_buffer, y, clear=False)
    if screen.in_alt:
        if screen.main_savepoints:
            # ?1049h saves the cursor that ?1049l will bring back.
            out.append(_saved_cursor(screen, screen.main_savepoints[-1]) + "\x1b[?1049h" + _NEUTRAL)
        else:
            out.append("\x1b[?47h")
        # The explicit clear also serves terminals without an alternate screen.
        out.append("\x1b[H\x1b[2J")
        out.extend(alt_rows)
    if screen.savepoints:
        out.append(_saved_cursor(screen, screen.savepoints[-1]) + "\x1b7" + _NEUTRAL)
    default_stops = set(range(8, screen.columns, 8))
    if screen.tabstops != default_stops:
        out.append("\x1b[3g")
        out.extend(_cup(0, stop) + "\x1bH" for stop in sorted(screen.tabstops) if stop < screen.columns)
    if screen.margins is not None:
        out.append(f"\x1b[{screen.margins.top + 1};{screen.margins.bottom + 1}r")
    if _DECAWM not in screen.private_modes:
        out.append("\x1b[?7l")
    on = sorted(screen.private_modes - {_DECOM, _DECAWM, _DECTCEM})
    if on:
        out.append("\x1b[?" + ";".join(map(str, on)) + "h")
    if _LNM in screen.public_modes:
        out.append("\x1b[20h")
    out.append("\x1b=" if screen.keypad_application else "\x1b>")
    title = screen.title.translate(_TITLE_JUNK)
    if title:
        out.append(f"\x1b]2;{title}\x07")
    out.append(_cursor_state(screen))
    return "".join(out).encode("utf-8", "replace")


def _fit(text: str, columns: int) -> str:
    """``text`` cut or padded to exactly ``columns`` terminal cells."""
    out, used = [], 0
    for char in text:
        if ord(char) < 0x20 or 0x7F <= ord(char) < 0xA0:
            continue
        width = max(wcwidth(char), 0)
        if used + width > columns:
            break
        out.append(char)
        used += width
    return "".join(out) + " " * (columns - used)


class ScreenModel:
    """The screen of a shared terminal, parsed lazily from its output.

    Call :meth:`feed` with every chunk of output (cheap), :meth:`resize` when
    the PTY changes size, and :meth:`advance` now and then (after delivering
    output) to parse within the time budget. :meth:`snapshot` gives the bytes
    that redraw the current screen on a joiner's terminal.

    pyte parses well under 1 MB/s, so ``feed`` only queues (no copy) and
    ``advance`` spends at most ``parse_share`` of wall-clock time, in slices
    of :attr:`SLICE` bytes. Under bulk output the queue is bounded by
    ``max_pending``: past it the *oldest* bytes are dropped unparsed, after a
    regular-expression scan for the state that outlives a screenful (private
    modes such as the alternate screen, the scroll region, full resets);
    parsing resumes at the next escape sequence or line start. Such output
    has scrolled away anyway: the newest bytes redraw a full screen.
    """

    #: Bytes parsed at a time: one or two milliseconds of pyte's time.
    SLICE = 1024
    #: The largest screen modelled, whatever the PTY's size: the model's memory
    #: and the cost of one escape sequence grow with its cells. A larger PTY is
    #: modelled by its top-left corner (a late joiner sees that much of it).
    MAX_COLS = 400
    MAX_ROWS = 200
    #: A flood is over when nothing was dropped for this long (seconds).
    FLOOD_QUIET = 0.5

    def __init__(
        self,
        cols: int,
        rows: int,
        *,
        max_pending: int = 24 * 1024,
        parse_share: float = 0.1,
        max_step: float = 0.005,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._screen = DualScreen(*self._bounded(cols, rows))
        self._stream = ModelStream(self._screen)
        self._pending: deque[bytes | tuple[int, int]] = deque()
        self._offset = 0  # into the first pending chunk
        self._pending_bytes = 0
        self._max_pending = max_pending
        self._share = parse_share
        self._max_step = max_step
        self._clock = clock
        self._budget = max_step
        self._last = clock()
        self._need_boundary = False
        #: Bytes dropped unparsed because output outran the parsing budget.
        self.dropped_bytes = 0
        #: Slices pyte failed on (a bug of its own; the slice's rest is lost).
        self.parse_errors = 0
        self._last_drop = float("-inf")

    @property
    def screen(self) -> DualScreen:
        """The pyte screen as parsed so far (call :meth:`catch_up` first for "now")."""
        return self._screen

    @property
    def pending_bytes(self) -> int:
        """Bytes fed but not parsed yet."""
        return self._pending_bytes

    @property
    def size(self) -> tuple[int, int]:
        """``(cols, rows)`` as parsed so far."""
        return self._screen.columns, self._screen.lines

    def feed(self, data: bytes) -> None:
        """Queue output for parsing; O(1). Drops the oldest queued output past the bound."""
        if not data:
            return
        self._pending.append(data)
        self._pending_bytes += len(data)
        # Some slack, so that a flood drops in a few large steps, not per chunk.
        if self._pending_bytes > self._max_pending + self._max_pending // 2:
            self._drop(self._pending_bytes - self._max_pending)

    def resize(self, cols: int, rows: int) -> None:
        """The PTY changed size here in the stream (applied in order with the output)."""
        self._pending.append(self._bounded(cols, rows))

    @classmethod
    def _bounded(cls, cols: int, rows: int) -> tuple[int, int]:
        return min(max(cols, 1), cls.MAX_COLS), min(max(rows, 1), cls.MAX_ROWS)

    def advance(self) -> bool:
        """Parse within the time budget; True if output is still pending.

        While output is being dropped (a flood), nothing is parsed: what we
        would parse now is older than what will be dropped next, so it would
        be wasted. The tail is parsed when a screen is needed, or once the
        flood is over.
        """
        now = self._clock()
        self._budget = min(self._budget + (now - self._last) * self._share, self._max_step)
        self._last = now
        if now - self._last_drop < self.FLOOD_QUIET:
            return True
        if self._budget > 0 and self._pending:
            start = now
            while self._pending and self._clock() - start < self._budget:
                self._parse_one()
            self._budget -= self._clock() - start
        return bool(self._pending)

    def catch_up(self) -> None:
        """Parse everything pending now (bounded by the pending limit)."""
        while self._pending:
            self._parse_one()

    def snapshot(self) -> bytes:
        """The bytes that redraw the current screen on a fresh terminal of this size."""
        self.catch_up()
        return render_screen(self._screen)

    def cursor(self) -> tuple[int, int]:
        """The cursor's ``(column, row)`` after catching up."""
        self.catch_up()
        cursor = self._screen.cursor
        return min(cursor.x, self._screen.columns - 1), cursor.y

    def render_notice(self, text: str, row: int, restore_row: int | None = None) -> bytes:
        """Bytes that show ``text`` on ``row`` and put the terminal back as it was.

        With ``restore_row``, that row (an earlier notice) is redrawn first.
        The row's cells are not in the model: :meth:`render_rows` puts them back.
        """
        self.catch_up()
        screen = self._screen
        out = [_neutral_prefix(screen)]
        if restore_row is not None and restore_row != row and restore_row < screen.lines:
            _render_row(out, screen, screen.buffer, restore_row, clear=True)
        row = min(row, screen.lines - 1)
        out.append(_cup(row, 0) + "\x1b[0;7m" + _fit(text, screen.columns) + "\x1b[0m")
        out.append(_cursor_state(screen))
        return "".join(out).encode("utf-8", "replace")

    def render_rows(self, rows: Iterable[int]) -> bytes:
        """Bytes that redraw some rows from the model and put the terminal back."""
        self.catch_up()
        screen = self._screen
        out = [_neutral_prefix(screen)]
        for y in rows:
            if 0 <= y < screen.lines:
                _render_row(out, screen, screen.buffer, y, clear=True)
        out.append(_cursor_state(screen))
        return "".join(out).encode("utf-8", "replace")

    # --- internals ---------------------------------------------------------------

    def _parse_one(self) -> None:
        item = self._pending[0]
        if isinstance(item, tuple):
            self._pending.popleft()
            cols, rows = item
            self._screen.resize(lines=rows, columns=cols)
            return
        end = min(self._offset + self.SLICE, len(item))
        piece = item[self._offset : end]
        if end >= len(item):
            self._pending.popleft()
            self._offset = 0
        else:
            self._offset = end
        self._pending_bytes -= len(piece)
        if self._need_boundary:
            piece = self._skip_to_boundary(piece)
            if not piece:
                return
        try:
            self._stream.feed_bytes(_sanitize(piece))
        except Exception:
            # Whatever a program prints must not break the session: the rest of
            # this slice is lost and pyte's parser starts afresh.
            self.parse_errors += 1
            log.warning("sharing.screen_parse_error", exc_info=True)

    def _skip_to_boundary(self, piece: bytes) -> bytes:
        # After a drop the bytes may start inside a sequence or a character:
        # resume at the next escape sequence or line break, with a fresh parser.
        esc = piece.find(b"\x1b")
        newline = piece.find(b"\n")
        if esc < 0 and newline < 0:
            self.dropped_bytes += len(piece)
            self._apply_sticky(piece)
            return b""
        at_line = newline >= 0 and (esc < 0 or newline < esc)
        start = newline if at_line else esc
        self.dropped_bytes += start
        self._need_boundary = False
        self._stream = ModelStream(self._screen)
        if at_line:
            # The cursor is wherever the last parsed bytes left it, and the "\r"
            # before this "\n" was dropped or skipped with the rest: the line
            # after it starts at the left margin of the next row, as on the
            # owner's terminal, not from that stale column (wrapping there).
            self._screen.carriage_return()
        return piece[start:]

    def _drop(self, excess: int) -> None:
        self._last_drop = self._clock()
        while excess > 0 and self._pending:
            item = self._pending[0]
            if isinstance(item, tuple):
                self._pending.popleft()
                self._screen.resize(lines=item[1], columns=item[0])
                continue
            available = len(item) - self._offset
            take = min(available, excess)
            dropped = item[self._offset : self._offset + take]
            if take == available:
                self._pending.popleft()
                self._offset = 0
            else:
                self._offset += take
            self._pending_bytes -= take
            self.dropped_bytes += take
            excess -= take
            self._apply_sticky(dropped)
        self._need_boundary = True

    def _apply_sticky(self, data: bytes) -> None:
        if b"\x1b" not in data:  # a memchr, far quicker than the regular expression
            return
        screen = self._screen
        for match in _STICKY.finditer(data):
            modes, action, top, bottom, reset = match.groups()
            if reset:
                screen.reset()
            elif action:
                numbers = [int(m) for m in modes.split(b";") if m.isdigit()]
                if action == b"h":
                    screen.set_mode(*numbers, private=True)
                else:
                    screen.reset_mode(*numbers, private=True)
            else:
                screen.set_margins(int(top) if top else None, int(bottom) if bottom else None)
