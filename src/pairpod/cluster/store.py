"""The replica's one Redis client: bounded commands, health state, pub/sub, recovery.

Every replica of a cluster holds one :class:`ClusterStore` for the whole
process (one connection pool of at most ``MAX_CONNECTIONS`` for commands,
one more connection for pub/sub). Its rules:

- **Never wait on a dead Redis.** Each operation has ``cluster.redis_timeout``;
  redis-py's own retries are off (a retry loop is an unbounded wait). The
  first failure marks the store ``down`` and from then on :meth:`run`
  refuses at once (:class:`StoreUnavailable`) without touching the network,
  so a login never waits on Redis while it is down: callers fall back to
  their local state.
- **One health state, logged on change.** ``connecting`` → ``up`` ⇄ ``down``
  → ``closed``. A monitor pings while down (every ``RETRY_INTERVAL``) and
  while up (every ``cluster.heartbeat``, so a Redis lost while idle is
  noticed too). ``cluster.redis_down`` / ``cluster.redis_up`` are logged once
  per change.
- **Recovery hooks.** After every (re)connection the pub/sub subscriptions
  are renewed and each :meth:`on_up` hook runs, so a user of the store can
  push what it kept locally while Redis was away and reload what it missed.

Keys and channels are all under :data:`PREFIX` (see :meth:`key`).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import hashlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisError

from pairpod.config import ClusterSettings, url_without_password
from pairpod.log import fields, get_logger
from pairpod.tasks import TaskGroup

log = get_logger("cluster.store")

T = TypeVar("T")

#: Every key and channel of pairpod starts with this (one Redis may serve other things).
PREFIX = "pairpod:"
#: How often a store that is down tries Redis again.
RETRY_INTERVAL = 1.0
#: Commands in flight at once; more wait for a connection (within the timeout).
MAX_CONNECTIONS = 16

Handler = Callable[[bytes], None]
Hook = Callable[[], Awaitable[None]]


class StoreState(enum.Enum):
    """Where the store's connection to Redis stands."""

    CONNECTING = "connecting"  # started, no answer yet: operations are refused
    UP = "up"
    DOWN = "down"
    CLOSED = "closed"


class StoreUnavailable(Exception):
    """Redis cannot be used now (down, slow, or the store is closed): use local state."""


class LuaScript:
    """A Lua script run by its SHA-1 (``EVALSHA``): one round trip, the text never resent.

    Made by :meth:`ClusterStore.script`, which loads it into Redis at every
    (re)connection; a Redis that lost it meanwhile (restarted between two
    health checks) answers NOSCRIPT, and it is loaded again there and then.
    """

    def __init__(self, text: str) -> None:
        self.text = text
        # How Redis names a script (an identifier, not a protection).
        self.sha = hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest()

    async def __call__(self, redis: aioredis.Redis, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        """Run it with ``keys`` and ``args``."""
        try:
            return await redis.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            await redis.script_load(self.text)
            return await redis.evalsha(self.sha, len(keys), *keys, *args)


class ClusterStore:
    """The Redis client of one replica (see the module docstring).

    Create it with the cluster settings, :meth:`start` it, then :meth:`run`
    operations; :meth:`aclose` at shutdown.
    """

    def __init__(self, settings: ClusterSettings, *, client: aioredis.Redis | None = None) -> None:
        if settings.redis is None and client is None:
            raise ValueError("a cluster store needs cluster.redis")
        self.settings = settings
        self.timeout = settings.redis_timeout
        self.redis: aioredis.Redis = client or aioredis.Redis.from_url(
            settings.redis or "",
            socket_timeout=self.timeout,
            socket_connect_timeout=self.timeout,
            retry=Retry(NoBackoff(), 0),
            max_connections=MAX_CONNECTIONS,
        )
        self.state = StoreState.CONNECTING
        self._handlers: dict[str, Handler] = {}
        self._hooks: list[Hook] = []
        self._scripts: list[LuaScript] = []
        self._tasks = TaskGroup()
        self._pubsub_task: asyncio.Task[None] | None = None

    # -- public surface ---------------------------------------------------------

    @property
    def up(self) -> bool:
        """Whether operations are tried now (False: callers use their local state)."""
        return self.state is StoreState.UP

    def key(self, *parts: str) -> str:
        """A namespaced key or channel name: ``pairpod:<part>:<part>...``."""
        return PREFIX + ":".join(parts)

    def script(self, text: str) -> LuaScript:
        """A Lua script for :meth:`run`, loaded into Redis whenever the store connects."""
        script = LuaScript(text)
        self._scripts.append(script)
        return script

    def subscribe(self, channel: str, handler: Handler) -> None:
        """Call ``handler(data)`` for each message published on ``channel``.

        Call before :meth:`start`. Messages published while Redis is down are
        lost to the handler: use :meth:`on_up` to reload what they would have said.
        """
        self._handlers[channel] = handler

    def on_up(self, hook: Hook) -> None:
        """Run ``hook`` after every connection to Redis (the first and each recovery).

        Hooks run as tasks of the store, after the subscriptions are in place;
        one that fails is logged and does not stop the others.
        """
        self._hooks.append(hook)

    async def run(self, operation: Callable[[aioredis.Redis], Awaitable[T]]) -> T:
        """Run ``operation(redis)`` within the timeout.

        Raises :class:`StoreUnavailable` at once while the store is not up, and
        when the operation fails or times out (which marks the store down).
        """
        if self.state is not StoreState.UP:
            raise StoreUnavailable(f"redis is {self.state.value}")
        try:
            async with asyncio.timeout(self.timeout):
                return await operation(self.redis)
        except (RedisError, OSError, TimeoutError) as error:
            self._went_down(error)
            raise StoreUnavailable(_describe(error, self.timeout)) from None

    def spawn(self, coro: Awaitable[Any]) -> asyncio.Task[None]:
        """Run background store work (a write nobody waits for); ended by :meth:`aclose`."""

        async def wrapped() -> None:
            with contextlib.suppress(StoreUnavailable):
                await coro

        return self._tasks.spawn(wrapped())

    async def start(self) -> None:
        """Start the monitor (returns at once: a Redis down at start is not an error)."""
        self._tasks.spawn(self._monitor())

    async def aclose(self) -> None:
        """Stop the monitor, pub/sub and background writes; close the connections."""
        self._set_state(StoreState.CLOSED)
        await self._stop_pubsub()
        await self._tasks.cancel_all()
        with contextlib.suppress(RedisError, OSError):
            await self.redis.aclose()

    # -- health -------------------------------------------------------------------

    async def _monitor(self) -> None:
        while self.state is not StoreState.CLOSED:
            try:
                async with asyncio.timeout(self.timeout):
                    await self.redis.ping()
            except (RedisError, OSError, TimeoutError) as error:
                self._went_down(error)
            else:
                if self.state is not StoreState.UP:
                    await self._came_up()
            await asyncio.sleep(self.settings.heartbeat if self.up else RETRY_INTERVAL)

    async def _came_up(self) -> None:
        await self._stop_pubsub()
        if self._handlers:
            # Subscribed before the store counts as up and the hooks reload:
            # nothing published from then on is missed.
            ready = asyncio.get_running_loop().create_future()
            task = self._pubsub_task = asyncio.ensure_future(self._listen(ready))
            # Not wait_for: on Python 3.11 it swallows a cancellation (aclose) that
            # comes as ``ready`` completes, and the monitor would outlive the store.
            await asyncio.wait([ready], timeout=self.timeout)
            if task.done() or not ready.done():
                await self._stop_pubsub()
                return  # the monitor tries again
        if self._scripts:
            # Loaded now, so no login pays for it later.
            try:
                async with asyncio.timeout(self.timeout), self.redis.pipeline(transaction=False) as pipe:
                    for script in self._scripts:
                        pipe.script_load(script.text)
                    await pipe.execute()
            except (RedisError, OSError, TimeoutError) as error:
                self._went_down(error)
                await self._stop_pubsub()
                return
        self._set_state(StoreState.UP)
        log.info("cluster.redis_up", extra=fields(url=_safe_url(self.settings.redis)))
        for hook in self._hooks:
            self._tasks.spawn(self._run_hook(hook))

    def _went_down(self, error: BaseException) -> None:
        if self.state in (StoreState.DOWN, StoreState.CLOSED):
            return
        was = self.state
        self._set_state(StoreState.DOWN)
        if self._pubsub_task is not None:
            self._pubsub_task.cancel()
        message = "cluster.redis_unreachable" if was is StoreState.CONNECTING else "cluster.redis_down"
        log.warning(
            message,
            extra=fields(
                url=_safe_url(self.settings.redis),
                error=_describe(error, self.timeout),
                fallback="this replica works alone (lockout, key cache) until redis is back",
            ),
        )

    def _set_state(self, state: StoreState) -> None:
        if self.state is StoreState.CLOSED:
            return  # final: a recovery that ends after aclose() must not revive the store
        self.state = state

    async def _run_hook(self, hook: Hook) -> None:
        try:
            await hook()
        except StoreUnavailable:
            pass  # down again already: the next recovery runs it again
        except Exception:
            log.exception("cluster.hook_failed")

    # -- pub/sub ------------------------------------------------------------------

    async def _listen(self, ready: asyncio.Future[None]) -> None:
        pubsub = self.redis.pubsub()
        unconfirmed = set(self._handlers)
        try:
            async with asyncio.timeout(self.timeout):
                await pubsub.subscribe(*self._handlers)
            while True:
                # Blocks without the socket timeout: an idle channel is not an error.
                message = await pubsub.get_message(timeout=None)
                if message is None:
                    continue
                if message.get("type") == "subscribe":
                    # Ready only once Redis confirmed: a publish after that reaches us.
                    unconfirmed.discard(_text(message["channel"]))
                    if not unconfirmed and not ready.done():
                        ready.set_result(None)
                    continue
                if message.get("type") != "message":
                    continue
                channel = message["channel"]
                handler = self._handlers.get(_text(channel))
                if handler is not None:
                    try:
                        handler(message["data"])
                    except Exception:
                        log.exception("cluster.message_failed", extra=fields(channel=channel))
        except asyncio.CancelledError:
            raise
        except (RedisError, OSError, TimeoutError) as error:
            self._went_down(error)
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()

    async def _stop_pubsub(self) -> None:
        task, self._pubsub_task = self._pubsub_task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _describe(error: BaseException, timeout: float) -> str:
    if isinstance(error, TimeoutError):
        return f"no answer within {timeout:g}s"
    return f"{type(error).__name__}: {error}"


def _safe_url(url: str | None) -> str:
    """The Redis URL without its password (URLs may carry ``redis://:secret@host``)."""
    return url_without_password(url) if url else ""
