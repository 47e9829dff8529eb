"""Terminal modes a client sends with its PTY request: one table for every backend.

The opcodes are RFC 4254 section 8's (and RFC 8160's IUTF8). Each mode is
applied as OpenSSH's sshd applies it: a flag opcode sets or clears its bit,
a character opcode sets a control character (255 disables it), opcodes 128
and 129 set the line speeds. The local backend applies them with termios on
its PTY (:func:`apply_modes`); the container backends hand them to ``stty``
inside the environment (:func:`stty_modes`).
"""

from __future__ import annotations

import termios
from collections.abc import Mapping

# Character opcodes: (stty name, termios index name). Names Linux lacks
# (dsusp, flush, status) stay in the table so the opcodes are known, but are
# skipped where the platform has no such character.
CHARACTERS: dict[int, tuple[str, str]] = {
    1: ("intr", "VINTR"),
    2: ("quit", "VQUIT"),
    3: ("erase", "VERASE"),
    4: ("kill", "VKILL"),
    5: ("eof", "VEOF"),
    6: ("eol", "VEOL"),
    7: ("eol2", "VEOL2"),
    8: ("start", "VSTART"),
    9: ("stop", "VSTOP"),
    10: ("susp", "VSUSP"),
    11: ("dsusp", "VDSUSP"),
    12: ("rprnt", "VREPRINT"),
    13: ("werase", "VWERASE"),
    14: ("lnext", "VLNEXT"),
    15: ("flush", "VFLUSH"),
    16: ("swtch", "VSWTCH"),
    17: ("status", "VSTATUS"),
    18: ("discard", "VDISCARD"),
}
# Characters GNU and busybox stty on Linux do not know.
_NOT_ON_LINUX = {"dsusp", "flush", "status"}

# Flag opcodes: (stty name, termios field, termios bit name).
FLAGS: dict[int, tuple[str, str, str]] = {
    30: ("ignpar", "iflag", "IGNPAR"),
    31: ("parmrk", "iflag", "PARMRK"),
    32: ("inpck", "iflag", "INPCK"),
    33: ("istrip", "iflag", "ISTRIP"),
    34: ("inlcr", "iflag", "INLCR"),
    35: ("igncr", "iflag", "IGNCR"),
    36: ("icrnl", "iflag", "ICRNL"),
    37: ("iuclc", "iflag", "IUCLC"),
    38: ("ixon", "iflag", "IXON"),
    39: ("ixany", "iflag", "IXANY"),
    40: ("ixoff", "iflag", "IXOFF"),
    41: ("imaxbel", "iflag", "IMAXBEL"),
    42: ("iutf8", "iflag", "IUTF8"),
    50: ("isig", "lflag", "ISIG"),
    51: ("icanon", "lflag", "ICANON"),
    52: ("xcase", "lflag", "XCASE"),
    53: ("echo", "lflag", "ECHO"),
    54: ("echoe", "lflag", "ECHOE"),
    55: ("echok", "lflag", "ECHOK"),
    56: ("echonl", "lflag", "ECHONL"),
    57: ("noflsh", "lflag", "NOFLSH"),
    58: ("tostop", "lflag", "TOSTOP"),
    59: ("iexten", "lflag", "IEXTEN"),
    60: ("echoctl", "lflag", "ECHOCTL"),
    61: ("echoke", "lflag", "ECHOKE"),
    62: ("pendin", "lflag", "PENDIN"),
    70: ("opost", "oflag", "OPOST"),
    71: ("olcuc", "oflag", "OLCUC"),
    72: ("onlcr", "oflag", "ONLCR"),
    73: ("ocrnl", "oflag", "OCRNL"),
    74: ("onocr", "oflag", "ONOCR"),
    75: ("onlret", "oflag", "ONLRET"),
    90: ("cs7", "cflag", "CS7"),
    91: ("cs8", "cflag", "CS8"),
    92: ("parenb", "cflag", "PARENB"),
    93: ("parodd", "cflag", "PARODD"),
}
ISPEED = 128
OSPEED = 129
VEOF = 5
# What clients send for a disabled character (_POSIX_VDISABLE).
_DISABLED = 255

_FIELD_INDEX = {"iflag": 0, "oflag": 1, "cflag": 2, "lflag": 3}
# Python's termios lacks IUTF8 on some versions; its value is fixed by the Linux ABI.
_EXTRA_BITS = {"IUTF8": 0o40000}


def _bit(name: str) -> int | None:
    return getattr(termios, name, None) or _EXTRA_BITS.get(name)


def apply_modes(fd: int, modes: Mapping[int, int]) -> None:
    """Apply the client's modes to the terminal ``fd`` (its slave side), as sshd does."""
    attrs = termios.tcgetattr(fd)
    chars = attrs[6]
    for opcode, value in sorted(modes.items()):
        if opcode in FLAGS:
            _, field, bit_name = FLAGS[opcode]
            bit = _bit(bit_name)
            if bit is None:
                continue
            index = _FIELD_INDEX[field]
            attrs[index] = (attrs[index] | bit) if value else (attrs[index] & ~bit)
        elif opcode in CHARACTERS:
            slot = getattr(termios, CHARACTERS[opcode][1], None)
            if isinstance(slot, int) and 0 <= value <= 255:
                chars[slot] = bytes([0 if value == _DISABLED else value])
        elif opcode in (ISPEED, OSPEED):
            speed = getattr(termios, f"B{value}", None)
            if isinstance(speed, int):
                attrs[4 if opcode == ISPEED else 5] = speed
    termios.tcsetattr(fd, termios.TCSANOW, attrs)


def _stty_character(value: int) -> str | None:
    if value in (0, _DISABLED):
        return "undef"
    if value < 32:
        return "^" + chr(value + 64)
    if value == 127:
        return "^?"
    if value < 127 and chr(value) != " ":
        return chr(value)
    return None  # not expressible as one stty word


def stty_modes(modes: Mapping[int, int]) -> str:
    """The client's modes as ``stty`` arguments, one setting per line.

    The wrapper first applies them in one ``stty`` call, then line by line if
    that fails (an image's stty may lack a mode). Unknown opcodes are skipped.
    """
    lines = []
    for opcode, value in sorted(modes.items()):
        if opcode in FLAGS:
            name = FLAGS[opcode][0]
            if name in ("cs7", "cs8"):
                # Character sizes are a field, not a bit: stty sets one; "-cs8" means nothing.
                if value:
                    lines.append(name)
            else:
                lines.append(name if value else f"-{name}")
        elif opcode in CHARACTERS:
            name = CHARACTERS[opcode][0]
            character = _stty_character(value)
            if name not in _NOT_ON_LINUX and character is not None:
                lines.append(f"{name} {character}")
        elif opcode in (ISPEED, OSPEED) and value > 0:
            lines.append(f"{'ispeed' if opcode == ISPEED else 'ospeed'} {value}")
    return "\n".join(lines)


def eof_character(modes: Mapping[int, int]) -> bytes:
    """The byte a terminal reads as end of input (``b""`` when the client disabled it).

    With a TTY, stdin is not half-closed to signal EOF (that ends the output
    too); the terminal's EOF character is typed instead.
    """
    eof = modes.get(VEOF, 4)
    return bytes([eof]) if 0 < eof < _DISABLED else b""
