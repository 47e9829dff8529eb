"""Key pages (GitHub/GitLab ``.keys``) shared by every replica (auth's ``SharedKeyCache``).

A page fetched by one replica is stored in Redis with the time it was
fetched (Redis's clock), so the other replicas use it until the source's
``ttl`` runs out: one fetch per ttl for the whole cluster. It is kept longer
(``keep``: the stale allowance) as the fallback for a failing source.

One round trip per look-up, and only when a replica's own cache has nothing
fresh: a script reads the page and, when it is missing or old, claims the
fetch (``SET NX`` with an expiry). A replica that finds the fetch claimed by
another waits (up to the source's timeout) for the page to be published
rather than asking the source a second time. A fetch that fails (or is
cancelled) gives its claim up at once (``release``), which wakes the
waiters: they try the source themselves rather than wait out its timeout.
Redis down: ``get`` answers None at once and each replica fetches for itself.

Keys: ``pairpod:keys:<source>:<login>`` (hash: ``at``, ``text``),
``pairpod:keys:<source>:<login>:claim``; channel ``pairpod:keys``.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets

import redis.asyncio as aioredis

from pairpod.auth.remote_keys import SharedPage
from pairpod.cluster.store import ClusterStore, StoreUnavailable
from pairpod.log import fields, get_logger

log = get_logger("cluster.keycache")

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# KEYS: page, claim. ARGV: ttl ms, claim ms (0: only read), claim token.
# Returns {at or false, text or false, now, claimed}.
_GET_OR_CLAIM = (
    _NOW
    + """
local page = redis.call('HMGET', KEYS[1], 'at', 'text')
local at = tonumber(page[1])
if at and page[2] and now - at < tonumber(ARGV[1]) then
  return {page[1], page[2], now, 0}
end
local claimed = 0
if tonumber(ARGV[2]) > 0 and redis.call('SET', KEYS[2], ARGV[3], 'NX', 'PX', ARGV[2]) then claimed = 1 end
return {page[1], page[2], now, claimed}
"""
)

# KEYS: page, claim. ARGV: text, keep ms, channel, message.
_PUT = (
    _NOW
    + """
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'at', now, 'text', ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('DEL', KEYS[2])
redis.call('PUBLISH', ARGV[3], ARGV[4])
return 1
"""
)

# KEYS: claim. ARGV: claim token, channel, message.
# Only the claim this replica holds: one that expired may have been taken by another since.
_RELEASE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('PUBLISH', ARGV[2], ARGV[3])
return 1
"""


class RedisKeyCache:
    """Auth's ``SharedKeyCache`` kept in Redis through ``store`` (see the module docstring)."""

    def __init__(self, store: ClusterStore) -> None:
        self._store = store
        self._channel = store.key("keys")
        self._get_or_claim = store.script(_GET_OR_CLAIM)
        self._put = store.script(_PUT)
        self._release = store.script(_RELEASE)
        self._waiting: dict[str, asyncio.Event] = {}
        # The fetches this replica claimed, by page: the token that proves the claim ours.
        self._claims: dict[str, str] = {}
        store.subscribe(self._channel, self._published)

    async def get(self, source: str, login: str, ttl: float, wait: float) -> SharedPage | None:
        """The page of ``login`` (any age), or None; waits for another replica's fetch."""
        name = self._name(source, login)
        if not self._store.up:
            return None
        # Listening before the read: a page published right after it is not missed.
        event = self._waiting.setdefault(name, asyncio.Event())
        try:
            token = secrets.token_hex(16)
            try:
                page, claimed = await self._store.run(
                    lambda redis: self._read(
                        redis, name, ttl, claim_for=wait + self._store.timeout, token=token
                    )
                )
            except StoreUnavailable:
                return None
            if claimed:
                self._claims[name] = token
            if claimed or (page is not None and page.age < ttl):
                return page
            # Another replica is fetching this page now: wait for its answer, not the source.
            log.debug("keys.shared_wait", extra=fields(key=name, wait=wait))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await event.wait()
            if not event.is_set():
                return page
            with contextlib.suppress(StoreUnavailable):
                page, _ = await self._store.run(lambda redis: self._read(redis, name, ttl, claim_for=0))
            return page
        finally:
            if self._waiting.get(name) is event:
                del self._waiting[name]

    def put(self, source: str, login: str, text: str, keep: float) -> None:
        """Store a page fetched just now for every replica (in the background)."""
        name = self._name(source, login)
        self._claims.pop(name, None)  # the page replaces the claim
        if not self._store.up:
            return
        self._store.spawn(
            self._store.run(
                lambda redis: self._put(
                    redis, [name, name + ":claim"], [text, int(keep * 1000), self._channel, name]
                )
            )
        )

    def release(self, source: str, login: str) -> None:
        """Give up this replica's claimed fetch (it failed): waiters try at once (in the background).

        Without a claim of ours, or with Redis down, nothing to do (a claim
        left in Redis expires by itself).
        """
        name = self._name(source, login)
        token = self._claims.pop(name, None)
        if token is None or not self._store.up:
            return
        self._store.spawn(
            self._store.run(
                lambda redis: self._release(redis, [name + ":claim"], [token, self._channel, name])
            )
        )

    async def _read(
        self, redis: aioredis.Redis, name: str, ttl: float, *, claim_for: float, token: str = ""
    ) -> tuple[SharedPage | None, bool]:
        at, text, now, claimed = await self._get_or_claim(
            redis, [name, name + ":claim"], [int(ttl * 1000), int(claim_for * 1000), token]
        )
        page = None
        if at is not None and text is not None:
            try:
                page = SharedPage(text.decode("utf-8"), max(int(now) - int(at), 0) / 1000)
            except (UnicodeDecodeError, ValueError):
                log.warning("cluster.keycache_bad_entry", extra=fields(key=name))
        return page, bool(claimed)

    def _published(self, data: bytes) -> None:
        event = self._waiting.get(data.decode("utf-8", "replace"))
        if event is not None:
            event.set()

    def _name(self, source: str, login: str) -> str:
        return self._store.key("keys", source, login)
