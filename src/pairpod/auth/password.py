"""Password hashes: argon2id for new hashes; argon2 and bcrypt hashes are verified.

Hashing is deliberately slow, so the async wrappers run it in a worker
thread (argon2-cffi and bcrypt release the GIL): a login being checked does
not stall every other connection of the gateway.
"""

from __future__ import annotations

import asyncio
import secrets
from functools import lru_cache

import argon2
import bcrypt

_HASHER = argon2.PasswordHasher()  # argon2id with the library's RFC 9106 profile

# bcrypt only ever looks at the first 72 bytes; the bcrypt library refuses
# longer input, so cut it the way the tools that made the hash did.
_BCRYPT_MAX = 72


def hash_password(password: str) -> str:
    """An argon2id hash of ``password`` (what ``pairpod hash-password`` prints)."""
    return _HASHER.hash(password)


def hash_kind(stored: str) -> str | None:
    """``"argon2"``, ``"bcrypt"`` or None when ``stored`` is no hash pairpod can verify."""
    if stored.startswith(("$argon2id$", "$argon2i$", "$argon2d$")):
        return "argon2"
    if stored.startswith(("$2a$", "$2b$", "$2y$")) and len(stored) == 60:
        return "bcrypt"
    return None


def verify_password(stored: str, password: str) -> bool:
    """Whether ``password`` matches ``stored``; False for any unreadable hash.

    Both libraries compare digests in constant time.
    """
    kind = hash_kind(stored)
    try:
        if kind == "argon2":
            return _HASHER.verify(stored, password)
        if kind == "bcrypt":
            return bcrypt.checkpw(password.encode()[:_BCRYPT_MAX], stored.encode())
    except (argon2.exceptions.VerificationError, argon2.exceptions.InvalidHashError, ValueError):
        return False
    return False


@lru_cache(maxsize=1)
def _dummy_hash() -> str:
    return hash_password(secrets.token_urlsafe(24))


def warm_up() -> None:
    """Compute the dummy hash ahead of the first login that needs it."""
    _dummy_hash()


def dummy_verify(password: str) -> bool:
    """Spend the time a real check would, for a user with no hash; always False.

    Without it an unknown username would be answered faster than a known
    one, telling an attacker which names exist.
    """
    verify_password(_dummy_hash(), password)
    return False


async def verify_password_async(stored: str, password: str) -> bool:
    """:func:`verify_password` in a worker thread."""
    return await asyncio.to_thread(verify_password, stored, password)


async def dummy_verify_async(password: str) -> bool:
    """:func:`dummy_verify` in a worker thread."""
    return await asyncio.to_thread(dummy_verify, password)
