"""Where shared sessions live: the cluster's link directory in Redis.

Keys (every one with the TTL ``cluster.ttl``, renewed every
``cluster.heartbeat`` while its replica lives):

* ``pairpod:link:<hash>`` -> the owning replica's ``cluster.advertise``.
  ``<hash>`` is an HMAC of the link (an SSH join username, or a web link's
  text) under a key derived from ``cluster.secret`` and the link's medium:
  the store never holds a token, whoever reads it cannot tell which link a
  key stands for, and a web link's text is never found as an SSH login (nor
  the other way round).
* ``pairpod:owner:<identity>``: a sorted set of the replicas holding that
  owner's shared sessions, each scored with the time its entry expires (for
  ``+ctl`` from any replica).

Publishing is one idempotent step, :meth:`LinkDirectory.sync`: it writes
what this replica holds now and deletes what it no longer holds. It runs on
every change, every heartbeat and whenever the store comes back, so a Redis
restart (its keys lost) is repaired at once, and a replica that stops
renewing (killed) has its entries expire within the TTL. All of it goes
through the replica's one store client (:mod:`pairpod.cluster.store`),
which bounds every command and refuses at once while Redis is down.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import time
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis

from pairpod.cluster import ClusterStore, StoreUnavailable
from pairpod.sharing.joinable import ClusterUnavailable
from pairpod.sharing.service import SharingService
from pairpod.sharing.tokens import Medium

#: What each medium's link key is derived with (the SSH one as before web links were published).
_MEDIUM_CONTEXT = {Medium.SSH: b"link directory", Medium.WEB: b"link directory: web links"}


class LinkDirectory:
    """This replica's entries in the cluster's link directory, and lookups of others'."""

    def __init__(
        self,
        store: ClusterStore,
        key: bytes,
        advertise: str,
        service: SharingService,
        heartbeat: float,
        ttl: float,
    ) -> None:
        self._store = store
        self._keys = {
            medium: hmac.new(key, context, hashlib.sha256).digest()
            for medium, context in _MEDIUM_CONTEXT.items()
        }
        self.advertise = advertise
        self._service = service
        self._heartbeat = heartbeat
        self._ttl = ttl
        self._published_links: set[str] = set()
        self._published_owners: set[str] = set()
        self._changed = asyncio.Event()
        store.on_up(self._store_back)

    def link_key(self, username: str, medium: Medium = Medium.SSH) -> str:
        """The store key of a link (a keyed hash, never the token; each medium its own key)."""
        text = username.encode("utf-8", "surrogatepass")
        digest = hmac.new(self._keys[medium], text, hashlib.sha256).hexdigest()
        return self._store.key("link", digest)

    def owner_key(self, owner: str) -> str:
        """The store key of an owner's replicas."""
        return self._store.key("owner", owner)

    def changed(self) -> None:
        """Links or sessions here changed: publish soon."""
        self._changed.set()

    async def _store_back(self) -> None:
        await self.sync()

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
            links.update(self.link_key(link.username, link.medium) for link in session.active_links())
        gone_links = self._published_links - links
        gone_owners = self._published_owners - owners

        async def publish(redis: aioredis.Redis) -> None:
            now = time.time()
            ttl_ms = int(self._ttl * 1000)
            pipe = redis.pipeline(transaction=False)
            for key in links:
                pipe.set(key, self.advertise, px=ttl_ms)
            if gone_links:
                pipe.delete(*gone_links)
            for owner in owners:
                pipe.zadd(self.owner_key(owner), {self.advertise: now + self._ttl})
                pipe.zremrangebyscore(self.owner_key(owner), "-inf", now)
                pipe.pexpire(self.owner_key(owner), ttl_ms)
            for owner in gone_owners:
                pipe.zrem(self.owner_key(owner), self.advertise)
            await pipe.execute()

        try:
            await self._store.run(publish)
        except StoreUnavailable:
            return False  # the store logs its outages; its return (or the next heartbeat) retries
        self._published_links, self._published_owners = links, owners
        return True

    async def withdraw(self) -> None:
        """Remove this replica's entries (it is stopping)."""
        links, owners = self._published_links, self._published_owners

        async def withdraw(redis: aioredis.Redis) -> None:
            pipe = redis.pipeline(transaction=False)
            if links:
                pipe.delete(*links)
            for owner in owners:
                pipe.zrem(self.owner_key(owner), self.advertise)
            await pipe.execute()

        with contextlib.suppress(StoreUnavailable):  # they expire within the TTL anyway
            await self._store.run(withdraw)
        self._published_links, self._published_owners = set(), set()

    async def where(self, username: str, medium: Medium = Medium.SSH) -> str | None:
        """The replica holding a link (None: no such link in the cluster)."""
        key = self.link_key(username, medium)
        value = await self._ask(lambda redis: redis.get(key))
        return value.decode() if isinstance(value, bytes) else value

    async def owner_replicas(self, owner: str) -> list[str]:
        """The other replicas holding shared sessions of ``owner`` (live entries only)."""
        key = self.owner_key(owner)
        found = await self._ask(lambda redis: redis.zrangebyscore(key, time.time(), "+inf"))
        names = [item.decode() if isinstance(item, bytes) else str(item) for item in found]
        return sorted(name for name in names if name != self.advertise)

    async def _ask(self, call: Callable[[aioredis.Redis], Awaitable[Any]]) -> Any:
        try:
            return await self._store.run(call)
        except StoreUnavailable as error:
            raise ClusterUnavailable(f"cluster store: {error}") from None
