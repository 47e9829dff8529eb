"""Public keys published by GitHub / GitLab at ``{url}/{login}.keys``.

- Fetched on demand and cached for the source's ``ttl``.
- One fetch per login at a time: concurrent logins for one login share it
  (single-flight), and a login attempt that is cancelled does not cancel the
  fetch the others wait for.
- While the source fails, the last good answer is used (logged) for up to
  ``max_stale`` past its ttl; failures are not retried for ``retry_after``
  seconds, so a dead source does not cost every login a full timeout.
- A page that is not a list of keys is refused: non-200, a content type
  other than ``text/plain`` or ``application/octet-stream`` (what static
  file servers such as nginx or Python's ``http.server`` send for a
  ``.keys`` file), larger than ``max_bytes``, not UTF-8, HTML, or no
  readable key line.
  Unreadable lines in a good page are skipped with a log line.
- Each fetch has the source's ``timeout``; fetches run concurrently and
  never hold up another login.
- With several replicas, ``shared`` (a :class:`SharedKeyCache`, implemented
  by the cluster package) is asked before the source: a page any replica
  fetched within ``ttl`` is used as if fetched here (one fetch per ttl for
  the whole cluster), and an older one is the stale fallback when the source
  fails. A fetch that fails or is cancelled is ``release``d at once, so the
  replicas waiting for it try the source themselves without waiting out its
  timeout. When the shared cache is away, this replica's own cache carries on.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import quote

import aiohttp

from pairpod.auth.keys import AuthorizedKey, parse_authorized_keys
from pairpod.config import KeySourceSettings
from pairpod.log import fields, get_logger

#: Content types a key list may come as: GitHub's and GitLab's, and what
#: static file servers send for a file with an unknown extension.
KEY_CONTENT_TYPES = ("text/plain", "application/octet-stream")

log = get_logger("auth.remote_keys")

# GitHub logins are [A-Za-z0-9-]; GitLab allows "." and "_" as well.
_LOGIN_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,254})")

DEFAULT_MAX_BYTES = 256 * 1024
DEFAULT_MAX_STALE = 24 * 3600.0


class KeySourceError(Exception):
    """The source did not give a usable list of keys; the message says why."""


@dataclass(frozen=True)
class KeyLookup:
    """The keys known for one login, and how fresh they are.

    ``status`` is ``fresh`` (fetched or cached within ttl), ``stale`` (the
    source failed; an older answer is used) or ``unavailable`` (no keys
    known: ``problem`` says why).
    """

    login: str
    entries: tuple[AuthorizedKey, ...]
    status: str
    problem: str | None = None


@dataclass(frozen=True)
class SharedPage:
    """A key page as a replica fetched it: its text and its age in seconds."""

    text: str
    age: float


class SharedKeyCache(Protocol):
    """Key pages shared by the replicas of a cluster (given to :class:`RemoteKeySource`)."""

    async def get(self, source: str, login: str, ttl: float, wait: float) -> SharedPage | None:
        """The page of ``login`` some replica fetched (of any age), or None; never raises.

        When another replica is fetching it right now, waits up to ``wait``
        seconds for its answer rather than fetching it twice.
        """

    def put(self, source: str, login: str, text: str, keep: float) -> None:
        """Give every replica a page fetched just now, kept ``keep`` seconds; never waits."""

    def release(self, source: str, login: str) -> None:
        """This replica's fetch of ``login`` failed: replicas waiting for it stop waiting; never waits."""


@dataclass(frozen=True)
class _Cached:
    entries: tuple[AuthorizedKey, ...]
    fetched_at: float


class RemoteKeySource:
    """One ``{url}/{login}.keys`` source (GitHub, GitLab or compatible)."""

    def __init__(
        self,
        name: str,
        settings: KeySourceSettings,
        session: Callable[[], aiohttp.ClientSession],
        *,
        clock: Callable[[], float] = time.monotonic,
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_stale: float = DEFAULT_MAX_STALE,
        retry_after: float | None = None,
        shared: SharedKeyCache | None = None,
    ) -> None:
        self.name = name
        self._shared = shared
        self.settings = settings
        self._session = session
        self._clock = clock
        self._max_bytes = max_bytes
        self._max_stale = max_stale
        self._retry_after = min(settings.ttl, 30.0) if retry_after is None else retry_after
        self._cache: dict[str, _Cached] = {}
        self._failures: dict[str, tuple[float, str]] = {}
        self._inflight: dict[str, asyncio.Task[KeyLookup]] = {}

    def url_for(self, login: str) -> str:
        """Where the keys of ``login`` are published."""
        return f"{self.settings.url.rstrip('/')}/{quote(login, safe='')}.keys"

    async def lookup(self, login: str) -> KeyLookup:
        """The keys of ``login``; never raises for a source problem."""
        if not _LOGIN_RE.fullmatch(login):
            return KeyLookup(login, (), "unavailable", "not a valid login name")
        now = self._clock()
        cached = self._cache.get(login)
        if cached is not None and now - cached.fetched_at < self.settings.ttl:
            return KeyLookup(login, cached.entries, "fresh")
        failure = self._failures.get(login)
        if failure is not None and now - failure[0] < self._retry_after:
            return self._fallback(login, f"{failure[1]} (not retried yet)", log_it=False)
        task = self._inflight.get(login)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._refresh(login))
            self._inflight[login] = task
            task.add_done_callback(lambda done: self._forget(login, done))
        # shield: a login attempt that AsyncSSH cancels must not cancel the
        # fetch that other attempts for the same login are waiting for.
        return await asyncio.shield(task)

    async def aclose(self) -> None:
        """Cancel fetches in flight."""
        tasks = list(self._inflight.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _forget(self, login: str, task: asyncio.Task[KeyLookup]) -> None:
        if self._inflight.get(login) is task:
            del self._inflight[login]

    async def _refresh(self, login: str) -> KeyLookup:
        page = await self._shared_page(login)
        if page is not None and page.age < self.settings.ttl:
            entries = self._cache[login].entries
            log.info(
                "keys.shared",
                extra=fields(source=self.name, login=login, keys=len(entries), age=round(page.age, 1)),
            )
            return KeyLookup(login, entries, "fresh")
        try:
            text = await self._fetch(login)
            entries = self._parse(login, text)
        except asyncio.CancelledError:
            self._release_shared(login)
            raise
        except Exception as error:  # any failure of the source: fall back, never raise
            self._release_shared(login)
            problem = _describe(error, self.settings.timeout)
            self._failures[login] = (self._clock(), problem)
            return self._fallback(login, problem, log_it=True)
        self._failures.pop(login, None)
        self._cache[login] = _Cached(entries, self._clock())
        if self._shared is not None:
            self._shared.put(self.name, login, text, self.settings.ttl + self._max_stale)
        log.info("keys.fetched", extra=fields(source=self.name, login=login, keys=len(entries)))
        return KeyLookup(login, entries, "fresh")

    def _release_shared(self, login: str) -> None:
        """No page from this fetch: the replicas waiting for it try the source at once."""
        if self._shared is not None:
            self._shared.release(self.name, login)

    async def _shared_page(self, login: str) -> SharedPage | None:
        """Take the cluster's page of ``login`` into this cache when it is newer than ours."""
        if self._shared is None:
            return None
        page = await self._shared.get(self.name, login, self.settings.ttl, self.settings.timeout)
        if page is None:
            return None
        fetched_at = self._clock() - page.age
        cached = self._cache.get(login)
        if cached is not None and cached.fetched_at >= fetched_at:
            return page
        try:
            entries = self._parse(login, page.text)
        except KeySourceError as error:
            log.warning(
                "keys.shared_unreadable", extra=fields(source=self.name, login=login, error=str(error))
            )
            return None
        self._cache[login] = _Cached(entries, fetched_at)
        return page

    def _fallback(self, login: str, problem: str, *, log_it: bool) -> KeyLookup:
        cached = self._cache.get(login)
        now = self._clock()
        if cached is not None and now - cached.fetched_at < self.settings.ttl + self._max_stale:
            if log_it:
                log.warning(
                    "keys.stale",
                    extra=fields(
                        source=self.name,
                        login=login,
                        error=problem,
                        age=round(now - cached.fetched_at, 1),
                    ),
                )
            return KeyLookup(login, cached.entries, "stale", problem)
        if log_it:
            log.warning("keys.unavailable", extra=fields(source=self.name, login=login, error=problem))
        return KeyLookup(login, (), "unavailable", problem)

    async def _fetch(self, login: str) -> str:
        """The page of ``login`` as text ("" when the source has no such login)."""
        url = self.url_for(login)
        async with asyncio.timeout(self.settings.timeout):
            async with self._session().get(
                url, allow_redirects=False, headers={"Accept": "text/plain"}
            ) as response:
                if response.status == 404:
                    log.info("keys.no_such_login", extra=fields(source=self.name, login=login))
                    return ""
                if response.status != 200:
                    raise KeySourceError(f"HTTP status {response.status}")
                if response.content_type not in KEY_CONTENT_TYPES:
                    raise KeySourceError(
                        f"content type {response.content_type!r}, expected " + " or ".join(KEY_CONTENT_TYPES)
                    )
                length = response.content_length
                if length is not None and length > self._max_bytes:
                    raise KeySourceError(f"body of {length} bytes is over {self._max_bytes}")
                body = bytearray()
                async for chunk in response.content.iter_any():
                    body += chunk
                    if len(body) > self._max_bytes:
                        raise KeySourceError(f"body over {self._max_bytes} bytes")
        try:
            return body.decode("utf-8")
        except UnicodeDecodeError:
            raise KeySourceError("body is not UTF-8 text") from None

    def _parse(self, login: str, text: str) -> tuple[AuthorizedKey, ...]:
        if text.lstrip().startswith("<"):
            raise KeySourceError("body is HTML, not a list of keys")
        entries, skipped = parse_authorized_keys(text, f"{self.name}({login})", allow_options=False)
        if skipped and not entries:
            raise KeySourceError(f"no readable key in the body ({len(skipped)} bad lines)")
        return tuple(entries)


def _describe(error: BaseException, timeout: float) -> str:
    if isinstance(error, TimeoutError):
        return f"no answer within {timeout:g}s"
    if isinstance(error, KeySourceError):
        return str(error)
    if isinstance(error, aiohttp.ClientConnectorError):
        return f"cannot connect: {error.os_error.strerror or error.os_error}"
    if isinstance(error, aiohttp.ClientError):
        return f"{type(error).__name__}: {error}"
    return f"unexpected {type(error).__name__}: {error}"
