"""Bounds on what an SSH client names in its channel requests.

A terminal size, a command, an environment value, a subsystem name: each is
a number or a length chosen by the client. Each is checked here before
anything is allocated for it, and a value past its bound is refused with one
clear line (``pairpod: ... too long``), never turned into an internal error.

The limits and why:

* terminal size: ``ssh.max_pty`` (default 1000x1000). A PTY request past it
  is refused; a window change past it is clamped (a window change has no
  answer to refuse with). Pixel sizes past 65535, which no ``TIOCSWINSZ``
  can carry, count as unknown (0).
* exec command: ``security.max_command`` bytes (default 64 KiB, at most
  128 KiB - 1: Linux refuses a longer single argument to ``sh -c``).
* environment value: ``security.max_env_value`` bytes (default 64 KiB), for
  the variables that ``security.env_allow`` lets through; a variable's name:
  256 bytes. How many variables a channel keeps (``security.max_env_vars``)
  is decided as each request arrives (:mod:`pairpod.ssh.channel`).
* terminal type and subsystem name: 256 and 64 bytes (fixed: real ones are
  a few bytes).
"""

from __future__ import annotations

from dataclasses import dataclass

from pairpod.config import PtyLimit, SecuritySettings

#: What a ``struct winsize`` field holds.
_WINSIZE_MAX = 65535
MAX_TERM_TYPE = 256
MAX_SUBSYSTEM = 64
MAX_ENV_NAME = 256


@dataclass(frozen=True)
class TermSize:
    """A terminal size within bounds: columns, rows and pixel sizes."""

    cols: int
    rows: int
    pixel_width: int
    pixel_height: int


def too_long(what: str, size: int, limit: int) -> str:
    """The one line that refuses a value past its limit."""
    return f"{what} too long ({size} bytes, max {limit})"


def _pixels(value: int) -> int:
    return value if 0 <= value <= _WINSIZE_MAX else 0


def pty_refusal(term_type: str, cols: int, rows: int, limit: PtyLimit) -> str | None:
    """Why a PTY request is refused (None: it is within bounds)."""
    if len(term_type.encode("utf-8", "surrogatepass")) > MAX_TERM_TYPE:
        return too_long("terminal type", len(term_type.encode("utf-8", "surrogatepass")), MAX_TERM_TYPE)
    if cols > limit.cols or rows > limit.rows:
        return f"terminal size {cols}x{rows} too large (max {limit.cols}x{limit.rows})"
    return None


def bounded_size(cols: int, rows: int, pixel_width: int, pixel_height: int, limit: PtyLimit) -> TermSize:
    """A window change clamped to the limit (0 means "not given": 80x24)."""
    return TermSize(
        cols=min(cols or 80, limit.cols),
        rows=min(rows or 24, limit.rows),
        pixel_width=_pixels(pixel_width),
        pixel_height=_pixels(pixel_height),
    )


def command_refusal(command: str, security: SecuritySettings) -> str | None:
    """Why an exec command is refused for its length (None: it is not)."""
    size = len(command.encode("utf-8", "surrogatepass"))
    if size > security.max_command:
        return too_long("command", size, security.max_command)
    return None


def subsystem_refusal(name: str) -> str | None:
    """Why a subsystem name is refused for its length (None: it is not)."""
    size = len(name.encode("utf-8", "surrogatepass"))
    return too_long("subsystem name", size, MAX_SUBSYSTEM) if size > MAX_SUBSYSTEM else None


def env_refusal(name: bytes, value: bytes, security: SecuritySettings) -> str | None:
    """Why a client's environment variable is refused for its length (None: it is not)."""
    if len(name) > MAX_ENV_NAME:
        return too_long("environment variable name", len(name), MAX_ENV_NAME)
    if len(value) > security.max_env_value:
        shown = name.decode("utf-8", "replace")
        return too_long(f"environment variable {shown}", len(value), security.max_env_value)
    return None
