"""What a backend is handed for a login, made up for tests that drive a backend directly."""

from __future__ import annotations

import secrets

from pairpod.backends.base import Identity
from pairpod.config import Config


def new_instance_id() -> str:
    """A fresh instance id, so tests never see each other's containers or pods."""
    return f"t{secrets.token_hex(5)}"


def identity(
    config: Config, user: str = "alice", conn: str | None = None, env: dict[str, str] | None = None
) -> Identity:
    """An authenticated identity for ``config``."""
    return Identity(
        username=user,
        conn_id=conn or secrets.token_hex(6),
        remote_addr="127.0.0.1:40000",
        config=config,
        env=env or {},
    )
