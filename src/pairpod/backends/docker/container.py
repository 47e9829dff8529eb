"""What a Docker container of pairpod's is: its create body's parts, names and limits."""

from __future__ import annotations

import re

from pairpod.backends.container import names
from pairpod.config import DockerSettings
from pairpod.errors import (
    BackendError,
    StartTimeout,
)
from pairpod.log import get_logger

log = get_logger("backend.docker")

# --- constants -----------------------------------------------------------------------

# The Engine holds back a typed byte that starts its detach sequence until the
# next one arrives (and the default, Ctrl-P Ctrl-Q, would delay every Ctrl-P).
# So the sequence starts with Ctrl-\, the byte least used alone in practice, and
# is long enough never to be typed by accident.
DETACH_KEYS = "ctrl-\\,ctrl-@,ctrl-^,ctrl-_,ctrl-\\,ctrl-@,ctrl-^,ctrl-_"


def memory_bytes(size: str) -> int:
    """``512m`` -> bytes (1024-based, like docker)."""
    match = re.fullmatch(r"(\d+)([bkmg]?)", size.lower())
    if match is None:
        raise BackendError(f"docker.limits.memory: bad size {size!r}")
    scale = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[match.group(2)]
    return int(match.group(1)) * scale


def hostname_for(template: str, username: str) -> str:
    """The container hostname: the template filled in, made a valid host label."""
    return names.hostname_for(template, username, "docker.hostname")


def volume_name_for(template: str, username: str) -> str:
    """A per-user named volume, e.g. ``pairpod-home-alice``."""
    try:
        text = template.format(username=username)
    except (KeyError, IndexError, ValueError) as error:
        raise BackendError(f"docker.home_volume: bad template {template!r}: {error}") from None
    name = re.sub(r"[^a-zA-Z0-9_.-]+", "-", text).strip("-.")
    if not name:
        raise BackendError(f"docker.home_volume: {template!r} gives an empty name")
    return name


def home_mount_target(settings: DockerSettings) -> str:
    """Where the home volume goes: the workdir if set, else the user's usual home."""
    if settings.workdir:
        return settings.workdir
    user = (settings.user or "root").split(":", 1)[0]
    return "/root" if user in ("root", "0") else f"/home/{user}"


class Steps:
    """Which step of preparing an environment is under way (for timeout messages)."""

    def __init__(self, first: str) -> None:
        self.now = first

    def timeout_error(self, settings: DockerSettings) -> StartTimeout:
        """The error for a start that ran out of time during the current step."""
        return StartTimeout(
            f"{self.now} ({settings.image}) took longer than docker.timeouts.start "
            f"({settings.timeouts.start}s)"
        )
