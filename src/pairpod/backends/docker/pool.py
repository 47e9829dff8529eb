"""The Docker warm pool's entries and the spare processes waiting in them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from pairpod.backends.base import ProcessSpec
from pairpod.backends.container.wrapper import (
    FALLBACK_SHELL,
    WRAPPER,
    exportable,
    sh_quote,
    wrapper_args,
)
from pairpod.config import DockerSettings
from pairpod.log import fields, get_logger

if TYPE_CHECKING:
    from pairpod.backends.docker.process import DockerProcess

log = get_logger("backend.docker")

class PoolEntry:
    """A started warm-pool container and the spare processes waiting in it."""

    def __init__(self, name: str, container_id: str) -> None:
        self.name = name
        self.container_id = container_id
        self.spares: dict[bool, DockerProcess] = {}  # by "has a TTY"

    def abandon(self) -> None:
        """Drop the spares (the container is going)."""
        for spare in self.spares.values():
            spare.abandon()
        self.spares.clear()


def spare_command(tty: bool, token: str) -> list[str]:
    """The argv of a spare process that waits for its instructions on stdin."""
    return [
        FALLBACK_SHELL,
        "-c",
        WRAPPER,
        "pairpod",
        "spare",
        token,
        "tty" if tty else "pipe",
        "1" if tty else "2",
    ]


def spare_instructions(
    settings: DockerSettings, spec: ProcessSpec, env: Mapping[str, str], token: str
) -> bytes:
    """What a spare reads to become ``spec``: its arguments, shell-quoted, then the token.

    A shell can only export valid names; others are left out (logged).
    """
    exports, skipped = exportable(env)
    if skipped:
        log.info("docker.env_skipped", extra=fields(names=",".join(skipped)))
    words = wrapper_args(settings.shell, spec, exports, cd_home=settings.workdir is None)
    return (" ".join(sh_quote(w) for w in words) + "\n" + token + "\n").encode()
