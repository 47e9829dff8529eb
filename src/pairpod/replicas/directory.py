"""Where shared sessions live: the cluster's link directory in Redis.

Keys (every one with the TTL ``cluster.ttl``, renewed every
``cluster.heartbeat`` while its replica lives):

* ``pairpod:link:<hash>`` -> the owning replica's ``cluster.advertise``.
  ``<hash>`` is an HMAC of the join username under a key derived from
  ``cluster.secret``: the store never holds a token, and whoever reads it
  cannot tell which link a key stands for.
* ``pairpod:owner:<identity>``: a sorted set of the replicas holding that
  owner's shared sessions, each scored with the time its entry expires (for
  ``+ctl`` from any replica).

Publishing is one idempotent step, :meth:`LinkDirectory.sync`: it writes
what this replica holds now and deletes what it no longer holds. It runs on
every change and every heartbeat, so a Redis restart (its keys lost) is
repaired within one heartbeat, and a replica that stops renewing (killed)
has its entries expire within the TTL.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import time
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from pairpod.log import fields, get_logger
from pairpod.sharing.joinable import ClusterUnavailable
from pairpod.sharing.service import SharingService

log = get_logger("cluster")

_PREFIX = "pairpod:"


class LinkDirectory:
    """This replica's entries in the cluster's link directory, and lookups of others'."""

    def __init__(
        self, redis: Redis, key: bytes, advertise: str, service: SharingService, heartbeat: float, ttl: float
    ) -> None:
        self._redis = redis
        self._key = hmac.new(key, b"link directory", hashlib.sha256).digest()
        self.advertise = advertise
        self._service = service
        self._heartbeat = heartbeat
        self._ttl = ttl
        self._published_links: set[str] = set()
        self._published_owners: set[str] = set()
        self._changed = asyncio.Event()
        self._healthy = True

    def link_key(self, username: str) -> str:
        """The store key of a join link (a keyed hash, never the token)."""
        digest = hmac.new(self._key, username.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()
        return f"{_PREFIX}link:{digest}"

    @staticmethod
    def owner_key(owner: str) -> str:
        """The store key of an owner's replicas."""
        return f"{_PREFIX}owner:{owner}"

    def changed(self) -> None:
        """Links or sessions here changed: publish soon."""
        self._changed.set()

    async def run(self) -> None:
        """Publish on every change and every heartbeat, until cancelled."""
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._heartbeat):
                    await self._changed.wait()
            self._changed.clear()
            await self.sync()

    async def sync(self) -> bool:
        """Make the store hold exactly this replica's links and owners (True: done)."""
        links: set[str] = set()
        owners: set[str] = set()
        for session in self._service.registry:
            owners.add(session.owner)
            links.update(self.link_key(link.username) for link in session.active_links())
        expires = time.time() + self._ttl
        ttl_ms = int(self._ttl * 1000)
        pipe = self._redis.pipeline(transaction=False)
        for key in links:
            pipe.set(key, self.advertise, px=ttl_ms)
        gone = self._published_links - links
        if gone:
            pipe.delete(*gone)
        for owner in owners:
            pipe.zadd(self.owner_key(owner), {self.advertise: expires})
            pipe.zremrangebyscore(self.owner_key(owner), "-inf", time.time())
            pipe.pexpire(self.owner_key(owner), ttl_ms)
        for owner in self._published_owners - owners:
            pipe.zrem(self.owner_key(owner), self.advertise)
        try:
            await pipe.execute()
        except (RedisError, OSError) as error:
            if self._healthy:
                self._healthy = False
                log.warning(
                    "cluster.store_unavailable", extra=fields(error=str(error) or type(error).__name__)
                )
            return False
        if not self._healthy:
            self._healthy = True
            log.info("cluster.store_back", extra=fields(links=len(links)))
        self._published_links, self._published_owners = links, owners
        return True

    async def withdraw(self) -> None:
        """Remove this replica's entries (it is stopping)."""
        pipe = self._redis.pipeline(transaction=False)
        if self._published_links:
            pipe.delete(*self._published_links)
        for owner in self._published_owners:
            pipe.zrem(self.owner_key(owner), self.advertise)
        with contextlib.suppress(RedisError, OSError):
            await pipe.execute()
        self._published_links, self._published_owners = set(), set()

    async def where(self, username: str) -> str | None:
        """The replica holding a link (None: no such link in the cluster)."""
        value = await self._ask(self._redis.get(self.link_key(username)))
        return value.decode() if isinstance(value, bytes) else value

    async def owner_replicas(self, owner: str) -> list[str]:
        """The other replicas holding shared sessions of ``owner`` (live entries only)."""
        found = await self._ask(self._redis.zrangebyscore(self.owner_key(owner), time.time(), "+inf"))
        names = [item.decode() if isinstance(item, bytes) else str(item) for item in found]
        return sorted(name for name in names if name != self.advertise)

    async def _ask(self, call: Any) -> Any:
        try:
            return await call
        except (RedisError, OSError) as error:
            raise ClusterUnavailable(f"cluster store: {error or type(error).__name__}") from None
