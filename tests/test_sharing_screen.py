"""The screen model: what a late joiner sees, and that it stays off the hot path."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pyte
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from pairpod.sharing.screen import (
    DualScreen,
    EscapeTracker,
    ModelStream,
    ScreenModel,
    render_screen,
    visible_cells,
)

COLS, ROWS = 40, 10


def model_of(data: bytes, cols: int = COLS, rows: int = ROWS) -> ScreenModel:
    model = ScreenModel(cols, rows)
    model.feed(data)
    model.catch_up()
    return model


def state(screen: DualScreen) -> dict[str, Any]:
    """Everything about a screen that a redraw must reproduce."""
    cursor = screen.cursor

    def slot(points: list[Any]) -> Any:
        if not points:
            return None
        p = points[-1]
        return (
            min(p.cursor.x, screen.columns - 1),
            p.cursor.y,
            p.cursor.attrs,
            p.g0_charset,
            p.g1_charset,
            p.charset,
            p.origin,
            p.wrap,
        )

    return {
        "main": visible_cells(screen, screen.main_buffer),
        "alt": visible_cells(screen, screen.alt_buffer),
        "in_alt": screen.in_alt,
        "cursor": (cursor.x, cursor.y),
        "pen": cursor.attrs,
        "private_modes": screen.private_modes,
        "public_modes": screen.public_modes,
        "margins": screen.margins,
        "tabstops": screen.tabstops,
        "title": screen.title,
        "keypad": screen.keypad_application,
        "charsets": (screen.g0_charset, screen.g1_charset, screen.charset),
        "main_slot": slot(screen.main_savepoints),
        "alt_slot": slot(screen.alt_savepoints),
    }


def redraw(model: ScreenModel) -> ScreenModel:
    """A fresh model fed only the snapshot of ``model``."""
    cols, rows = model.size
    return model_of(model.snapshot(), cols, rows)


def plain_pyte(data: bytes, cols: int = COLS, rows: int = ROWS) -> pyte.Screen:
    screen = pyte.Screen(cols, rows)
    pyte.ByteStream(screen).feed(data)
    return screen


SHELL = (
    b"alice@box:~$ ls --color\r\n"
    b"\x1b[0m\x1b[01;34mdocs\x1b[0m  \x1b[01;32mrun.sh\x1b[0m  notes.txt\r\n"
    b"alice@box:~$ vim notes.txt\r\n"
)
VIM = (
    b"\x1b[?1049h\x1b[22;0;0t\x1b[>4;2m\x1b[?1h\x1b=\x1b[H\x1b[2J"
    b"\x1b]2;notes.txt - VIM\x07"
    b"\x1b[1;1H\x1b[33m  1 \x1b[mfirst line with \x1b[1;31mred bold\x1b[m text"
    b"\x1b[2;1H\x1b[33m  2 \x1b[m\x1b[38;5;208mtwo-five-six\x1b[m \x1b[48;2;10;20;30mtruecolour\x1b[m"
    b"\x1b[3;1H\x1b[33m  3 \x1b[m\xe4\xb8\xad\xe6\x96\x87 wide \x1b[4;3munder-italic\x1b[m"
    b"\x1b[4;1H\x1b[94m~\x1b[m\x1b[5;1H\x1b[94m~\x1b[m"
    b"\x1b[10;1H\x1b[1m-- INSERT --\x1b[m\x1b[10;30H3,5\x1b[10;37HAll"
    b"\x1b[2 q\x1bP+q436f\x1b\\"
    b"\x1b[3;5H"
)


def test_late_joiner_sees_a_full_screen_program_exactly() -> None:
    model = model_of(SHELL + VIM)
    snapshot = model.snapshot()
    screen = model.screen
    assert screen.in_alt
    assert screen.display[0].startswith("  1 first line with red bold text")
    # A fresh pyte screen (no alternate screen of its own) shows the same.
    fresh = plain_pyte(snapshot)
    assert fresh.display == screen.display
    assert visible_cells(fresh) == visible_cells(screen)
    assert (fresh.cursor.x, fresh.cursor.y) == (screen.cursor.x, screen.cursor.y) == (4, 2)
    assert fresh.title == "notes.txt - VIM"
    # A full model fed the snapshot has the same state everywhere, including
    # the shell screen underneath and the modes vim set.
    again = redraw(model)
    assert state(again.screen) == state(screen)
    assert {1}.issubset(again.screen.private_modes) and again.screen.keypad_application


def test_after_the_snapshot_the_program_leaving_looks_right_too() -> None:
    model = model_of(SHELL + VIM)
    again = redraw(model)
    leave = b"\x1b[?1l\x1b>\x1b[?1049l\x1b[23;0;0talice@box:~$ "
    for m in (model, again):
        m.feed(leave)
        m.catch_up()
    assert not again.screen.in_alt
    assert again.screen.display == model.screen.display
    assert again.screen.display[2].startswith("alice@box:~$ vim notes.txt")
    assert state(again.screen) == state(model.screen)


def test_colours_and_attributes_round_trip() -> None:
    sgrs = [
        b"1",
        b"3",
        b"4",
        b"5",
        b"7",
        b"9",
        b"31",
        b"42",
        b"93",
        b"104",
        b"105",
        b"38;5;196",
        b"48;5;17",
        b"38;5;250",
        b"38;2;1;2;3",
        b"48;2;250;128;0",
        b"1;4;7;32;45",
    ]
    data = b"".join(b"\x1b[%sm%d\x1b[m " % (code, i) for i, code in enumerate(sgrs))
    model = model_of(data)
    fresh = plain_pyte(model.snapshot())
    assert visible_cells(fresh) == visible_cells(model.screen)
    styled = {cell[1:] for row in visible_cells(model.screen) for cell in row if cell}
    assert len(styled) > len(sgrs) // 2  # the test does exercise many styles


def test_colon_sgr_and_misread_sequences_are_handled() -> None:
    model = model_of(
        b"\x1b[>4;2mA\x1b[38:2::255:0:0mB\x1b[mC\x01D\x1bP+q544e\x1b\\E\x1b[?u\x1b[<uF"
        b"\x1b[?4m\x1b[?6n\x1b[3K\x1b[5J"
    )
    assert model.parse_errors == 0
    row = visible_cells(model.screen)[0]
    assert "".join(c.data for c in row[:6] if c) == "ABCDEF"
    a, b, c = row[0], row[1], row[2]
    assert a is not None and not a.underscore  # CSI > 4;2 m is not SGR 4
    assert b is not None and b.fg == "ff0000"
    assert c is not None and c.fg == "default"


def text_of(screen: pyte.Screen) -> list[str]:
    """Rows as text, from the cells a terminal shows (pyte's ``display`` can crash)."""
    return ["".join(c.data for c in row if c is not None) for row in visible_cells(screen)]


def test_wide_characters() -> None:
    # CJK in the middle, one that does not fit in the last column, and one
    # whose left half is overwritten.
    model = model_of(
        b"\xe4\xb8\xad\xe6\x96\x87|"
        + b"\x1b[1;40H\xe4\xb8\xad"
        + b"\x1b[2;1H\xe4\xb8\xad\xe6\x96\x87\x1b[2;1Hx"
    )
    screen = model.screen
    with pytest.raises(IndexError):
        screen.display  # noqa: B018 - pyte itself cannot show the orphaned half
    assert text_of(screen)[0] == "中文|" + " " * 34 + " "  # last column: a blank
    assert text_of(screen)[1].startswith("x 文")
    fresh = plain_pyte(model.snapshot())
    assert visible_cells(fresh) == visible_cells(screen)
    assert fresh.display[0] == "中文|".ljust(COLS - 2)  # pyte's display counts 中文 as 2 each
    assert fresh.display[1].startswith("x 文")


def test_pending_wrap_survives_the_redraw() -> None:
    full_row = b"\x1b[5;1H" + b"x" * COLS
    model = model_of(full_row)
    assert model.screen.cursor.x == COLS  # the next character goes to the next line
    again = redraw(model)
    assert again.screen.cursor.x == COLS
    for m in (model, again):
        m.feed(b"next")
        m.catch_up()
    assert again.screen.display == model.screen.display
    assert again.screen.display[5].startswith("next")


def test_scroll_region_and_origin_mode_survive_the_redraw() -> None:
    data = b"".join(b"\x1b[%d;1Hrow %d" % (y + 1, y) for y in range(ROWS))
    data += b"\x1b[3;7r\x1b[?6h\x1b[5;2H"
    model = model_of(data)
    again = redraw(model)
    assert state(again.screen) == state(model.screen)
    more = b"\r\nA\r\nB\r\nC\r\nD\r\nE"
    for m in (model, again):
        m.feed(more)
        m.catch_up()
    assert again.screen.display == model.screen.display
    assert model.screen.display[0] == "row 0".ljust(COLS)  # outside the region: kept
    assert model.screen.display[9] == "row 9".ljust(COLS)


def test_line_drawing_characters() -> None:
    model = model_of(b"\x1b(0lqqk\x1b(B ok\r\n\x1b)0\x0ex\x0f|")
    assert model.screen.display[0].startswith("┌──┐ ok")
    assert model.screen.display[1].startswith("│|")
    assert plain_pyte(model.snapshot()).display[:2] == model.screen.display[:2]


def test_alternate_screen_variants() -> None:
    screen = DualScreen(10, 3)
    stream = ModelStream(screen)
    stream.feed_bytes(b"main\x1b[?47halt47")
    assert screen.in_alt
    assert screen.display[0] == "    alt47 "  # 47 neither clears nor moves the cursor
    stream.feed_bytes(b"\x1b[?47l")
    assert not screen.in_alt and screen.display[0].startswith("main")
    stream.feed_bytes(b"\x1b[?47h")
    assert screen.display[0].startswith("    alt47")  # 47 shows the old cells again
    stream.feed_bytes(b"\x1b[?1047l\x1b[?1047h")
    assert screen.display[0] == " " * 10  # 1047 clears when leaving
    stream.feed_bytes(b"\x1b[?1047l\x1b[2;2H\x1b[?1049h\x1b[Hvim\x1b[?1049l")
    assert not screen.in_alt
    assert (screen.cursor.x, screen.cursor.y) == (1, 1)  # 1049 restores the cursor
    assert screen.display[0].startswith("main")


def test_saved_cursor_is_one_slot_and_restores_twice() -> None:
    screen = DualScreen(10, 3)
    stream = ModelStream(screen)
    stream.feed_bytes(b"\x1b[2;3H\x1b7" * 1000 + b"\x1b[H\x1b8a\x1b[H\x1b8b")
    assert len(screen.savepoints) == 1
    assert screen.display[1] == "  b".ljust(10)


def test_resize_reaches_both_buffers() -> None:
    model = model_of(
        b"\r\n".join(b"main %d" % y for y in range(ROWS))
        + b"\x1b[?1049h"
        + b"\r\n".join(b"alt %d wide" % y for y in range(ROWS))
    )
    model.resize(8, 6)
    model.catch_up()
    screen = model.screen
    assert (screen.columns, screen.lines) == (8, 6)
    assert len(visible_cells(screen, screen.main_buffer)) == 6
    assert all(len(row) == 8 for row in visible_cells(screen, screen.main_buffer))
    assert screen.display[-1] == "alt 9 wi"
    assert state(redraw(model).screen) == state(screen)


def test_resize_is_applied_in_order_with_the_output() -> None:
    model = ScreenModel(20, 4)
    model.feed(b"\x1b[1;20Hx")  # column 20 exists only before the resize
    model.resize(10, 4)
    model.feed(b"\x1b[1;20Hy")  # clamped to column 10 after it
    model.catch_up()
    assert model.screen.display[0] == " " * 9 + "y"


class TickingClock:
    """A clock that moves 1 ms each time it is read: parsing "takes time"."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 0.001
        return self.now


def test_feeding_does_not_parse_and_advance_keeps_to_its_budget() -> None:
    clock = TickingClock()
    model = ScreenModel(COLS, ROWS, parse_share=0.1, max_step=0.005, clock=clock)
    chunk = b"\x1b[31mhello\x1b[m world\r\n" * 1000  # twenty slices
    model.feed(chunk)
    assert model.pending_bytes == len(chunk)
    assert model.screen.display[0].strip() == ""  # nothing parsed by feed()
    model.advance()  # the initial budget: a few slices at most
    parsed_first = len(chunk) - model.pending_bytes
    assert 0 < parsed_first < len(chunk)
    model.advance()  # no time has passed: no budget
    assert len(chunk) - model.pending_bytes == parsed_first
    clock.now += 1.0  # a second later, 10 % of it (capped) may be spent
    while model.advance():
        clock.now += 1.0
    assert model.pending_bytes == 0
    assert model.screen.display[0].startswith("hello world")


def test_nothing_is_parsed_in_the_background_during_a_flood() -> None:
    clock = TickingClock()
    model = ScreenModel(COLS, ROWS, max_pending=8192, clock=clock)
    model.feed(b"x" * 20_000)  # more than the bound: the oldest is dropped
    assert model.pending_bytes == 8192 and model.dropped_bytes == 20_000 - 8192
    clock.now += 0.2  # budget enough for all of it...
    assert model.advance() and model.pending_bytes == 8192  # ...but it would be wasted
    clock.now += 1.0  # nothing dropped for a while: the flood is over
    while model.advance():
        clock.now += 10.0
    assert model.pending_bytes == 0


def test_snapshot_parses_what_is_pending() -> None:
    model = ScreenModel(COLS, ROWS, clock=TickingClock())
    model.feed(b"pending text")
    assert b"pending text" in model.snapshot()
    assert model.pending_bytes == 0


def test_pending_output_is_bounded_and_the_newest_screen_survives() -> None:
    lines = b"".join(b"\x1b[32mline %06d\x1b[m of bulk output\r\n" % i for i in range(40000))
    model = ScreenModel(COLS, ROWS, max_pending=16 * 1024)
    for i in range(0, len(lines), 4096):
        model.feed(lines[i : i + 4096])
        assert model.pending_bytes <= 24 * 1024  # the bound, plus half as slack
    assert model.dropped_bytes > len(lines) - 20 * 1024
    reference = plain_pyte(lines)  # everything parsed, the slow way
    assert model.snapshot() and model.screen.display == reference.display
    assert visible_cells(model.screen) == visible_cells(reference)


def test_state_in_dropped_output_is_kept() -> None:
    model = ScreenModel(COLS, ROWS, max_pending=4096)
    model.feed(b"\x1b[?1049h\x1b[?2004h\x1b[2;8r")
    model.feed(b"x" * 100_000)  # forces the mode changes out unparsed
    model.feed(b"\r\nlast line")
    model.catch_up()
    assert model.dropped_bytes > 0
    screen = model.screen
    assert screen.in_alt and 2004 in screen.private_modes
    assert screen.margins is not None and (screen.margins.top, screen.margins.bottom) == (1, 7)
    assert "last line" in "".join(screen.display)


def test_a_line_after_dropped_output_starts_where_the_owner_sees_it() -> None:
    # A flood that ends mid-row (``cat`` of a file without a final newline,
    # then the shell's next line): the model had parsed up to some column, the
    # rest of the flood and its "\r" were dropped, and the line after it must
    # still start a row of its own, not wrap from that stale column.
    model = ScreenModel(COLS, ROWS, max_pending=4096)
    flood = b"x" * (COLS * 3 + COLS - 3)
    model.feed(flood)
    assert model.cursor() == (COLS - 3, 3)  # parsed (a viewer's redraw) near the row's end
    rest = b"x" * 100_000 + b"\r\nflood-42\r\n$ "
    model.feed(rest)
    assert b"flood-42" in model.snapshot() and model.dropped_bytes > 0
    rows = [row.rstrip() for row in model.screen.display]
    assert rows[4:6] == ["flood-42", "$"]  # the rows after the last one parsed
    assert model.cursor() == (2, 5)


def test_escape_tracker() -> None:
    tracker = EscapeTracker()
    assert tracker.at_ground and tracker.tail() == b""
    for chunk, tail in [
        (b"plain text", b""),
        (b"\x1b[3", b"\x1b[3"),
        (b"1m red", b""),
        (b"\x1b]2;a long title", b"\x1b]2;a long title"),
        (b" continued", b"\x1b]2;a long title continued"),
        (b"\x07after", b""),
        (b"\x1b]0;t\x1b", b"\x1b"),
        (b"\\", b""),
        (b"\x1b", b"\x1b"),
        (b"(", b"\x1b("),
        (b"0", b""),
        (b"ok \xe4\xb8", b"\xe4\xb8"),
        (b"\xad", b""),
        (b"\x1bP+q\x1b\\", b""),
        (b"\x1b7", b""),
        (b"\x1b]52;c;" + b"QUJD" * 5000, b"\x1b]52;c;QUJDQUJDQ"),  # its start only
        (b"QUJD\x07", b""),
    ]:
        tracker.feed(chunk)
        assert tracker.tail() == tail, chunk
        assert tracker.at_ground is (tail == b"")
    assert not tracker.in_alt and not tracker.at_line_start
    for chunk, in_alt, line_start in [
        (b"\x1b[?1049h\x1b[H", True, False),
        (b"\x1b[?2004h", True, False),
        (b"\x1b[?47l\x1b[?1047hx\r\n", True, True),
        (b"\x1b[?1049l$ ", False, False),
    ]:
        tracker.feed(chunk)
        assert (tracker.in_alt, tracker.at_line_start) == (in_alt, line_start)


def test_notice_overlay_puts_everything_back() -> None:
    model = model_of(SHELL + VIM + b"\x1b[4h\x1b(0")
    before = state(model.screen)
    owner = model_of(SHELL + VIM + b"\x1b[4h\x1b(0")  # the owner's terminal
    owner.feed(model.render_notice("pairpod: github:bob joined (read-only)", ROWS - 1))
    owner.catch_up()
    assert owner.screen.display[-1].startswith("pairpod: github:bob joined (read-only)")
    assert owner.screen.buffer[ROWS - 1][0].reverse
    after = state(owner.screen)
    assert after["cursor"] == before["cursor"] and after["pen"] == before["pen"]
    assert after["public_modes"] == before["public_modes"]  # insert mode back on
    assert after["charsets"] == before["charsets"]
    assert after["main_slot"] == before["main_slot"]  # the program's saved cursor untouched
    owner.feed(model.render_rows([ROWS - 1]))
    owner.catch_up()
    assert state(owner.screen) == before


# --- the property: any screen state survives a redraw, and what follows too ---------

_TEXT = st.text(alphabet=st.sampled_from([*"abQ0 -", "中", "é", "\u0301", "─"]), min_size=1, max_size=8).map(
    str.encode
)
_FIXED = st.sampled_from(
    [
        b"\r",
        b"\n",
        b"\x08",
        b"\t",
        b"\x1bM",
        b"\x1bD",
        b"\x1bE",
        b"\x1b7",
        b"\x1b8",
        b"\x1b=",
        b"\x1b>",
        b"\x1b(0",
        b"\x1b(B",
        b"\x1b)B",
        b"\x0e",
        b"\x0f",
        b"\x1bH",
        b"\x1b[3g",
        b"\x1b[g",
        b"\x1b[4h",
        b"\x1b[4l",
        b"\x1b[20h",
        b"\x1b[20l",
        b"\x1b[r",
        b"\x1b]2;a title\x07",
        b"\x1bc",
        b"\x1b[?4m",
        b"\x1b[?6n",
        b"\x1b[6n",
        b"\x1b[c",
    ]
)
_MOVE = st.builds(lambda r, c: b"\x1b[%d;%dH" % (r, c), st.integers(1, 7), st.integers(1, 14))
_EDIT = st.builds(
    lambda n, f: b"\x1b[%d%s" % (n, f),
    st.integers(0, 4),
    st.sampled_from(
        [b"A", b"B", b"C", b"D", b"@", b"P", b"X", b"L", b"M", b"J", b"K", b"G", b"d", b"E", b"F"]
    ),
)
_SGR = st.lists(
    st.sampled_from(
        [
            "0",
            "1",
            "3",
            "4",
            "5",
            "7",
            "9",
            "22",
            "27",
            "31",
            "42",
            "93",
            "104",
            "38;5;196",
            "48;5;17",
            "38;2;1;2;3",
            "39",
        ]
    ),
    max_size=3,
).map(lambda ps: ("\x1b[" + ";".join(ps) + "m").encode())
_MODE = st.builds(
    lambda m, hl: b"\x1b[?%d%s" % (m, hl),
    st.sampled_from([1, 6, 7, 25, 47, 1047, 1048, 1049, 2004, 1000]),
    st.sampled_from([b"h", b"l"]),
)
_MARGINS = st.builds(lambda t, b: b"\x1b[%d;%dr" % (t, b), st.integers(1, 6), st.integers(1, 6))
_OPS = st.lists(st.one_of(_TEXT, _FIXED, _MOVE, _EDIT, _SGR, _MODE, _MARGINS), max_size=40)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(before=_OPS, after=_OPS)
# A wide character half overwritten, then a combining mark after the half that
# is left (shown as a blank): the mark goes on that blank, not elsewhere.
@example(before=["中".encode(), b"\x1b[1;2H", b"a", b"\x1b[1;2H"], after=["\u0301".encode()])
@example(before=["中".encode(), b"\x1b[1;1H", b"a"], after=[b"\x1b[1;3H", "\u0301".encode()])
@example(before=[b"a", "中".encode(), b"\x1b[1;2H", b"b"], after=[b"\x1b[1;4H", "\u0301".encode()])
# Characters inserted or deleted on a row erased with a colour: what comes in is
# a blank with the current background (the snapshot draws that row's cells).
@example(before=[b"\x1b[42m", b"\x1b[0J"], after=[b"\x1b[0@"])
@example(before=[b"\x1b[42m", b"\x1b[2K", b"\x1b[0m"], after=[b"\x1b[3P"])
# A line deleted below rows never written since a clear-screen: the row goes.
@example(before=[], after=[b"\x1b[2J", b"0", b"\x1b[0M"])
def test_any_screen_survives_a_redraw(before: list[bytes], after: list[bytes]) -> None:
    cols, rows = 12, 6
    model = model_of(b"".join(before), cols, rows)
    snapshot = model.snapshot()
    again = model_of(snapshot, cols, rows)
    assert state(again.screen) == state(model.screen)
    if not any(wide in op for op in before for wide in (b"\xcc\x81", b"\xe4\xb8\xad")):
        # A plain pyte screen shows the same cells and cursor (pyte's own
        # handling of wide and combining characters at the margin differs
        # from a terminal's, see the screen module).
        plain = plain_pyte(snapshot, cols, rows)
        assert visible_cells(plain) == visible_cells(model.screen)
        assert (min(plain.cursor.x, cols - 1), plain.cursor.y) == (
            min(model.screen.cursor.x, cols - 1),
            model.screen.cursor.y,
        )
    # And the program's next output lands the same way on both.
    for m in (model, again):
        m.feed(b"".join(after))
        m.catch_up()
    assert state(again.screen) == state(model.screen)


@pytest.fixture
def big_model() -> Iterator[ScreenModel]:
    yield model_of(
        b"".join(b"\x1b[%d;1H\x1b[3%dm%s" % (y + 1, y % 8, b"#" * 200) for y in range(60)), 200, 60
    )


def test_snapshot_of_a_large_screen_redraws_it(big_model: ScreenModel) -> None:
    again = redraw(big_model)
    assert state(again.screen) == state(big_model.screen)
    assert render_screen(big_model.screen) == big_model.snapshot()


def test_a_model_of_any_size_holds_a_bounded_screen() -> None:
    model = model_of(b"\x1b[41m\x1b[2J\x1b[65535;65535Hx", 65535, 65535)
    assert model.size == (ScreenModel.MAX_COLS, ScreenModel.MAX_ROWS)
    model.resize(2**32 - 1, 2**32 - 1)
    assert model.size == (ScreenModel.MAX_COLS, ScreenModel.MAX_ROWS)
    assert visible_cells(model.screen)[-1][-1].data == "x"  # the far corner, clamped


def test_repeated_clear_screens_erase_what_was_drawn_between_them() -> None:
    model = model_of(
        b"\x1b[41m\x1b[2J\x1b[5;5Hx\x1b[2J\x1b[44m\x1b[7;1Hy\x1b[2J\x1b[9;9Hz\x1b[2J\x1b[1;1Hw", 20, 10
    )
    cells = visible_cells(model.screen)
    assert cells[0][0].data == "w"
    assert all(
        cell.bg == "blue" and cell.data == " "
        for row in cells
        for cell in row
        if cell is not None and cell.data != "w"
    )
