"""Static public keys: the global authorized_keys file and per-user keys."""

from __future__ import annotations

from pathlib import Path

import asyncssh

from pairpod.config import AuthSettings
from pairpod.log import fields, get_logger

log = get_logger("auth.keys")


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as error:
        # A missing or unreadable file denies those keys, never the whole gateway.
        log.warning("auth.keys_unreadable", extra=fields(path=str(path), error=error.strerror))
        return ""


def parse_authorized_keys(text: str, source: str) -> list[str]:
    """The valid lines of an authorized_keys text; invalid ones are logged and skipped."""
    valid = []
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        try:
            asyncssh.import_authorized_keys(stripped)
        except (ValueError, asyncssh.KeyImportError) as error:
            log.warning("auth.key_invalid", extra=fields(source=source, line=number, error=str(error)))
            continue
        valid.append(stripped)
    return valid


def load_authorized_keys(settings: AuthSettings, username: str) -> asyncssh.SSHAuthorizedKeys | None:
    """Every key that may log in as ``username``, or None when there is none."""
    lines: list[str] = []
    if settings.authorized_keys is not None:
        lines += parse_authorized_keys(_read(settings.authorized_keys), str(settings.authorized_keys))
    user = settings.users.get(username)
    if user is not None:
        lines += parse_authorized_keys("\n".join(user.keys), f"auth.users.{username}.keys")
        if user.authorized_keys is not None:
            lines += parse_authorized_keys(_read(user.authorized_keys), str(user.authorized_keys))
    if not lines:
        return None
    return asyncssh.import_authorized_keys("\n".join(lines))
