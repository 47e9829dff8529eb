"""Where recordings go on disk: per-day folders (0700) and files (0600)."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def day_folder(root: Path, when: float) -> Path:
    """``root/YYYY-MM-DD`` (UTC) for the time ``when``."""
    return root / time.strftime("%Y-%m-%d", time.gmtime(when))


def cast_name(when: float, user: str, conn_id: str, seq: int) -> str:
    """``HHMMSS-user-connid-N.cast``: sorts by time, says whose and which connection."""
    user_part = _UNSAFE.sub("_", user)[:64] or "_"
    return f"{time.strftime('%H%M%S', time.gmtime(when))}-{user_part}-{conn_id}-{seq}.cast"


def make_private_dir(path: Path) -> None:
    """Create ``path`` (and parents) readable by the gateway's user only."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)


def open_private(path: Path, *, append: bool = False) -> int:
    """Open ``path`` for writing with mode 0600 (a new file, unless ``append``)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC
    flags |= os.O_APPEND if append else os.O_EXCL
    return os.open(path, flags, 0o600)


def write_all(fd: int, data: bytes) -> None:
    """Write all of ``data`` (raises OSError, e.g. ENOSPC when the disk is full)."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]
