"""Lockout counted on every replica: failures and locks in Redis (auth's ``SharedLocks``).

- **A failure** is queued and written by one background writer (a Lua
  script per failure, a batch per round trip), never on the path of a login.
  The script keeps the subject's failures in a sorted set over the sliding
  ``window``; reaching ``failures`` sets a lock key for ``duration`` and
  publishes it.
- **A lock** tripped on any replica reaches every replica by pub/sub and is
  kept in memory here, so checking a login costs no round trip at all.
- **Time** is Redis's (``TIME`` inside the scripts); a replica only says how
  long ago a failure happened, so replicas' clocks need not agree.
- **Redis down**: failures wait in a bounded backlog (the local lockout of
  each replica keeps counting meanwhile); when Redis is back they are written
  with their real age and the locks in force are loaded again, so nothing
  counted during the outage is lost.

Keys: ``pairpod:lockout:fail:<kind>:<digest>`` (sorted set),
``pairpod:lockout:lock:<kind>:<digest>`` (JSON ``{kind, digest, subject, ms}``);
channel ``pairpod:lockout``. A subject is known by its digest (a username is
whatever a client sent, of any length); its first ``SHOWN`` characters are
kept for the log.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError

from pairpod.cluster.store import ClusterStore, StoreUnavailable
from pairpod.config import LockoutSettings
from pairpod.log import fields, get_logger

log = get_logger("cluster.lockout")

#: Failures waiting for Redis at most (the oldest are dropped past this).
MAX_BACKLOG = 10_000
#: Failures written per round trip.
BATCH = 256
#: Keys read per SCAN page when the locks are loaded again.
SCAN_COUNT = 500
#: Characters of a subject kept for the log (the digest names it).
SHOWN = 64

# KEYS: failures set, lock key. ARGV: age ms, window ms, failures, duration ms,
# unique member, channel, kind, digest, subject as shown. Returns the ms of the lock it set, or 0.
_FAILED = """
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[2])
local at = now - tonumber(ARGV[1])
if at <= now - window then return 0 end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
redis.call('ZADD', KEYS[1], at, ARGV[5])
redis.call('PEXPIRE', KEYS[1], window)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[3]) then return 0 end
redis.call('DEL', KEYS[1])
local left = at + tonumber(ARGV[4]) - now
if left <= 0 then return 0 end
local entry = cjson.encode({kind = ARGV[7], digest = ARGV[8], subject = ARGV[9], ms = left})
redis.call('SET', KEYS[2], entry, 'PX', left)
redis.call('PUBLISH', ARGV[6], entry)
return left
"""


@dataclass(frozen=True)
class _Failure:
    kind: str
    digest: str
    shown: str  # the subject's start, for the log
    at: float  # this replica's monotonic clock


@dataclass(frozen=True)
class _Lock:
    kind: str
    digest: str
    shown: str
    ms: int


class RedisLocks:
    """Auth's ``SharedLocks`` kept in Redis through ``store`` (see the module docstring)."""

    def __init__(
        self,
        store: ClusterStore,
        settings: LockoutSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_entries: int = 100_000,
    ) -> None:
        self._store = store
        self._settings = settings
        self._clock = clock
        self._max_entries = max_entries
        self._channel = store.key("lockout")
        self._locks: dict[tuple[str, str], float] = {}  # (kind, digest) -> until, on our clock
        self._backlog: deque[_Failure] = deque()
        self._dropped = 0
        self._writer: Any = None
        self._script = store.script(_FAILED)
        store.subscribe(self._channel, self._announced)
        store.on_up(self._resync)

    # -- SharedLocks ---------------------------------------------------------------

    def locked_for(self, kind: str, subject: str) -> float:
        """Seconds left of a lock tripped on any replica (0: none known)."""
        if not self._locks:
            return 0.0
        key = (kind, _digest(subject))
        until = self._locks.get(key)
        if until is None:
            return 0.0
        left = until - self._clock()
        if left <= 0:
            del self._locks[key]
            return 0.0
        return left

    def failed(self, kind: str, subject: str) -> None:
        """Queue one failure for Redis (written in the background)."""
        self._backlog.append(_Failure(kind, _digest(subject), subject[:SHOWN], self._clock()))
        if len(self._backlog) > MAX_BACKLOG:
            self._backlog.popleft()
            self._dropped += 1
            if self._dropped == 1:
                log.warning(
                    "cluster.lockout_backlog_full",
                    extra=fields(limit=MAX_BACKLOG, reason="redis away; oldest failures dropped"),
                )
        if self._store.up and (self._writer is None or self._writer.done()):
            self._writer = self._store.spawn(self._flush())

    # -- Redis side ------------------------------------------------------------------

    async def _flush(self) -> None:
        """Write the backlog, a batch per round trip, while Redis answers."""
        while self._backlog and self._store.up:
            batch = [self._backlog.popleft() for _ in range(min(BATCH, len(self._backlog)))]
            try:
                results = await self._store.run(partial(self._send, batch=batch))
            except StoreUnavailable:
                # Kept for the next recovery (a failure counted twice only errs towards locking).
                self._backlog.extendleft(reversed(batch))
                return
            for failure, left in zip(batch, results, strict=True):
                if left:
                    self._learn(_Lock(failure.kind, failure.digest, failure.shown, int(left)))
        if self._dropped:
            log.warning("cluster.lockout_backlog_dropped", extra=fields(failures=self._dropped))
            self._dropped = 0

    async def _send(self, redis: aioredis.Redis, *, batch: list[_Failure]) -> list[Any]:
        """One round trip for the batch: EVALSHA each, loading the script only when Redis lacks it.

        (redis-py's script objects would ask ``SCRIPT EXISTS`` before every pipeline.)
        """
        for first_try in (True, False):
            async with redis.pipeline(transaction=False) as pipe:
                for failure in batch:
                    pipe.evalsha(self._script.sha, *self._call(failure))
                try:
                    return list(await pipe.execute())
                except NoScriptError:
                    if not first_try:
                        raise
            # A Redis restarted empty: no failure of the batch was counted.
            await redis.script_load(self._script.text)
        raise AssertionError("unreachable")

    def _call(self, failure: _Failure) -> list[Any]:
        """The script's key count, keys and arguments for one failure."""
        return [
            2,
            self._store.key("lockout", "fail", failure.kind, failure.digest),
            self._store.key("lockout", "lock", failure.kind, failure.digest),
            int((self._clock() - failure.at) * 1000),
            int(self._settings.window * 1000),
            self._settings.failures,
            int(self._settings.duration * 1000),
            secrets.token_hex(8),
            self._channel,
            failure.kind,
            failure.digest,
            failure.shown,
        ]

    async def _resync(self) -> None:
        """After (re)connecting: write what was counted meanwhile, then load the locks in force."""
        await self._flush()
        loaded = await self._store.run(self._load)
        if loaded:
            log.info("cluster.lockout_loaded", extra=fields(locks=loaded))

    async def _load(self, redis: aioredis.Redis) -> int:
        loaded = 0
        cursor = 0
        pattern = self._store.key("lockout", "lock", "*")
        while True:
            cursor, names = await redis.scan(cursor, match=pattern, count=SCAN_COUNT)
            if names:
                async with redis.pipeline(transaction=False) as pipe:
                    for name in names:
                        pipe.get(name)
                        pipe.pttl(name)
                    answers = await pipe.execute()
                for value, left in zip(answers[::2], answers[1::2], strict=True):
                    lock = _entry(value)
                    if lock is not None and left > 0:
                        self._remember(lock, left)
                        loaded += 1
            if cursor == 0 or loaded >= self._max_entries:
                return loaded

    def _announced(self, data: bytes) -> None:
        """A lock tripped on some replica (this one included)."""
        lock = _entry(data)
        if lock is None:
            log.warning("cluster.lockout_bad_message", extra=fields(size=len(data)))
            return
        self._learn(lock)

    def _learn(self, lock: _Lock) -> None:
        known = self._locks.get((lock.kind, lock.digest))
        self._remember(lock, lock.ms)
        if known is None or known <= self._clock():
            log.info(
                "cluster.lockout",
                extra=fields(kind=lock.kind, subject=lock.shown, duration=round(lock.ms / 1000)),
            )

    def _remember(self, lock: _Lock, left_ms: int) -> None:
        key = (lock.kind, lock.digest)
        self._locks.pop(key, None)
        self._locks[key] = self._clock() + left_ms / 1000
        if len(self._locks) > self._max_entries:
            now = self._clock()
            for stale in [k for k, until in self._locks.items() if until <= now]:
                del self._locks[stale]
            while len(self._locks) > self._max_entries:
                del self._locks[next(iter(self._locks))]  # the one learnt longest ago


def _digest(subject: str) -> str:
    return hashlib.sha256(subject.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def _entry(data: bytes | str | None) -> _Lock | None:
    """A lock's JSON read, or None if it is not one."""
    if data is None:
        return None
    try:
        value = json.loads(data)
        return _Lock(str(value["kind"]), str(value["digest"]), str(value["subject"]), int(value["ms"]))
    except (ValueError, KeyError, TypeError):
        return None
