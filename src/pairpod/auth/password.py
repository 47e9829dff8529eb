"""Password hashes: argon2id for new hashes; argon2 and bcrypt hashes are verified.

Hashing is deliberately slow, so the async wrappers run it in a worker
thread (argon2-cffi and bcrypt release the GIL): a login being checked does
not stall every other connection of the gateway. The gateway's checks go
through one :class:`PasswordChecks` pool: a few threads and a bounded wait,
so a flood of passwords costs the flood (refused at once past the bound),
not every other login's CPU.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
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


class ChecksBusy(Exception):
    """Every worker and every waiting place is taken: the attempt is refused at once."""


class PasswordChecks:
    """Password verifications on ``workers`` threads with at most ``queue`` waiting."""

    def __init__(self, workers: int, queue: int) -> None:
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="pairpod-password")
        self._places = workers + queue
        self._taken = 0

    async def _run(self, check: Callable[[str, str], bool], stored: str, password: str) -> bool:
        if self._taken >= self._places:
            raise ChecksBusy(f"{self._taken} password checks in progress")
        self._taken += 1
        try:
            # A cancelled wait cancels the job too, unless a thread already runs it.
            return await asyncio.get_running_loop().run_in_executor(self._executor, check, stored, password)
        finally:
            self._taken -= 1

    async def verify(self, stored: str, password: str) -> bool:
        """:func:`verify_password` on the pool; raises ChecksBusy when it is full."""
        return await self._run(verify_password, stored, password)

    async def dummy(self, password: str) -> bool:
        """:func:`dummy_verify` on the pool (always False); raises ChecksBusy when full."""
        return await self._run(lambda _stored, given: dummy_verify(given), "", password)

    def close(self) -> None:
        """Stop the threads once the checks running now are done (queued ones are dropped)."""
        self._executor.shutdown(wait=False, cancel_futures=True)
