"""GitHub/GitLab-style key sources, against a real key server on loopback."""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
from collections.abc import AsyncIterator, Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import aiohttp
import asyncssh
import pytest

from pairpod.auth.remote_keys import RemoteKeySource, SharedPage
from pairpod.config import KeySourceSettings
from tests.support.http_peers import KeySourcePeer, refusing_port


class Clock:
    def __init__(self) -> None:
        self.now = 5000.0

    def __call__(self) -> float:
        return self.now


def _pub(key: asyncssh.SSHKey, comment: str = "") -> str:
    return " ".join([*key.export_public_key().decode().split()[:2], comment]).strip()


@pytest.fixture(scope="module")
def keys() -> list[asyncssh.SSHKey]:
    return [asyncssh.generate_private_key("ssh-ed25519") for _ in range(2)]


@pytest.fixture
async def peer(keys: list[asyncssh.SSHKey]) -> AsyncIterator[KeySourcePeer]:
    server = KeySourcePeer()
    server.keys["alice"] = f"{_pub(keys[0])}\n{_pub(keys[1], 'second')}\n"
    server.keys["bob"] = _pub(keys[1]) + "\n"
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def source(
    url: str, http: aiohttp.ClientSession, clock: Clock | None = None, **options: float
) -> RemoteKeySource:
    settings = KeySourceSettings(url=url, ttl=600, timeout=options.pop("timeout", 5))
    return RemoteKeySource(
        "github",
        settings,
        lambda: http,
        clock=clock or Clock(),
        **options,  # type: ignore[arg-type]
    )


def messages(caplog: pytest.LogCaptureFixture, name: str) -> list[dict[str, object]]:
    return [getattr(r, "pairpod_fields", {}) for r in caplog.records if r.getMessage() == name]


async def test_fetches_keys_and_caches_them_for_ttl(
    peer: KeySourcePeer, http: aiohttp.ClientSession, keys: list[asyncssh.SSHKey]
) -> None:
    clock = Clock()
    src = source(peer.url, http, clock)
    lookup = await src.lookup("alice")
    assert lookup.status == "fresh"
    assert [e.blob for e in lookup.entries] == [k.public_data for k in keys]
    assert [e.origin for e in lookup.entries] == ["github(alice):1", "github(alice):2"]
    clock.now += 599
    await src.lookup("alice")
    assert peer.counts["alice"] == 1
    clock.now += 2
    await src.lookup("alice")
    assert peer.counts["alice"] == 2


async def test_concurrent_lookups_share_one_fetch(peer: KeySourcePeer, http: aiohttp.ClientSession) -> None:
    peer.modes["alice"] = "slow"
    src = source(peer.url, http)
    tasks = [asyncio.create_task(src.lookup("alice")) for _ in range(20)]
    await peer.wait_requests(1)
    peer.release.set()
    results = await asyncio.gather(*tasks)
    assert peer.counts["alice"] == 1
    assert all(r.status == "fresh" and len(r.entries) == 2 for r in results)


async def test_a_cancelled_waiter_does_not_cancel_the_shared_fetch(
    peer: KeySourcePeer, http: aiohttp.ClientSession
) -> None:
    peer.modes["alice"] = "slow"
    src = source(peer.url, http)
    first = asyncio.create_task(src.lookup("alice"))
    second = asyncio.create_task(src.lookup("alice"))
    await peer.wait_requests(1)
    first.cancel()  # e.g. AsyncSSH dropped one login attempt
    peer.release.set()
    assert (await second).status == "fresh"
    assert first.cancelled()
    assert peer.counts["alice"] == 1


async def test_a_slow_login_does_not_hold_up_another(
    peer: KeySourcePeer, http: aiohttp.ClientSession
) -> None:
    peer.modes["alice"] = "slow"
    src = source(peer.url, http)
    slow = asyncio.create_task(src.lookup("alice"))
    await peer.wait_requests(1)
    # alice's answer is held back until bob's lookup has completed.
    bob = await src.lookup("bob")
    assert bob.status == "fresh" and len(bob.entries) == 1
    assert not slow.done()
    peer.release.set()
    assert (await slow).status == "fresh"


async def test_timeout_makes_the_source_unavailable(
    peer: KeySourcePeer, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    peer.modes["alice"] = "slow"  # never released before the timeout
    src = source(peer.url, http, timeout=0.2)
    with caplog.at_level(logging.WARNING, "pairpod"):
        lookup = await src.lookup("alice")
    assert lookup.status == "unavailable" and lookup.entries == ()
    assert lookup.problem == "no answer within 0.2s"
    assert messages(caplog, "keys.unavailable")[0]["error"] == "no answer within 0.2s"


@pytest.mark.parametrize(
    ("mode", "problem"),
    [
        ("html", "content type 'text/html'"),
        ("html_as_text", "HTML"),
        ("json", "content type 'application/json'"),
        ("garbage", "no readable key"),
        ("huge", "over 262144 bytes"),
        ("huge_length", "2097152 bytes is over"),
        ("500", "HTTP status 500"),
    ],
)
async def test_pages_that_are_not_keys_are_refused(
    peer: KeySourcePeer,
    http: aiohttp.ClientSession,
    mode: str,
    problem: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    peer.modes["alice"] = mode
    with caplog.at_level(logging.WARNING, "pairpod"):
        lookup = await source(peer.url, http).lookup("alice")
    assert lookup.status == "unavailable" and lookup.entries == ()
    assert problem in (lookup.problem or "")
    assert problem in str(messages(caplog, "keys.unavailable")[0]["error"])


async def test_bad_lines_in_a_good_page_are_skipped_with_a_log_line(
    peer: KeySourcePeer, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    peer.modes["alice"] = "mixed"
    with caplog.at_level(logging.WARNING, "pairpod"):
        lookup = await source(peer.url, http).lookup("alice")
    assert lookup.status == "fresh" and len(lookup.entries) == 2
    skipped = messages(caplog, "keys.line_skipped")
    assert [s["line"] for s in skipped] == [1, 5]  # line 4 is blank
    assert all(s["origin"] == "github(alice)" for s in skipped)


async def test_unknown_login_has_no_keys(peer: KeySourcePeer, http: aiohttp.ClientSession) -> None:
    lookup = await source(peer.url, http).lookup("nobody")
    assert lookup.status == "fresh" and lookup.entries == ()


async def test_options_in_remote_lines_are_not_honoured(
    peer: KeySourcePeer, http: aiohttp.ClientSession, keys: list[asyncssh.SSHKey]
) -> None:
    peer.keys["mallory"] = f'environment="LD_PRELOAD=/x" {_pub(keys[0])}\n{_pub(keys[1])}\n'
    lookup = await source(peer.url, http).lookup("mallory")
    assert [e.blob for e in lookup.entries] == [keys[1].public_data]


async def test_invalid_login_names_are_not_fetched(peer: KeySourcePeer, http: aiohttp.ClientSession) -> None:
    src = source(peer.url, http)
    for login in ("../etc/passwd", "", "a/b", "-x", "a b"):
        lookup = await src.lookup(login)
        assert lookup.status == "unavailable"
    assert peer.requests == []


async def test_source_down_is_unavailable(http: aiohttp.ClientSession) -> None:
    with refusing_port() as url:
        lookup = await source(url, http).lookup("alice")
    assert lookup.status == "unavailable"
    assert (lookup.problem or "").startswith("cannot connect")


async def test_stale_cache_is_used_and_logged_while_the_source_is_down(
    keys: list[asyncssh.SSHKey], http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    peer = KeySourcePeer()
    peer.keys["alice"] = _pub(keys[0]) + "\n"
    await peer.start()
    clock = Clock()
    src = source(peer.url, http, clock, retry_after=30, max_stale=3600)
    assert (await src.lookup("alice")).status == "fresh"
    await peer.stop()  # the source goes down
    clock.now += 601
    with caplog.at_level(logging.WARNING, "pairpod"):
        lookup = await src.lookup("alice")
    assert lookup.status == "stale"
    assert [e.blob for e in lookup.entries] == [keys[0].public_data]
    stale = messages(caplog, "keys.stale")
    assert stale and str(stale[0]["error"]).startswith("cannot connect") and stale[0]["age"] == 601
    # Within retry_after the dead source is not asked again (and not logged again).
    caplog.clear()
    clock.now += 10
    with caplog.at_level(logging.WARNING, "pairpod"):
        assert (await src.lookup("alice")).status == "stale"
    assert messages(caplog, "keys.stale") == []
    # Past ttl + max_stale the old answer is no longer trusted.
    clock.now += 3600
    assert (await src.lookup("alice")).status == "unavailable"


async def test_a_failing_source_is_not_retried_before_retry_after(
    peer: KeySourcePeer, http: aiohttp.ClientSession
) -> None:
    clock = Clock()
    peer.modes["alice"] = "500"
    src = source(peer.url, http, clock, retry_after=30)
    for _ in range(3):
        assert (await src.lookup("alice")).status == "unavailable"
    assert peer.counts["alice"] == 1
    peer.modes["alice"] = "good"
    clock.now += 31
    assert (await src.lookup("alice")).status == "fresh"
    assert peer.counts["alice"] == 2


@pytest.fixture
def static_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """Python's own ``http.server`` serving a folder on loopback, as people publish key files."""
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", tmp_path
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


async def test_a_static_file_server_key_list_is_accepted_and_html_still_refused(
    static_server: tuple[str, Path], http: aiohttp.ClientSession, keys: list[asyncssh.SSHKey]
) -> None:
    url, folder = static_server
    (folder / "alice.keys").write_text(f"{_pub(keys[0])}\n")
    (folder / "mallory.keys").write_text("<!DOCTYPE html><html><body>Sign in</body></html>\n")
    (folder / "blob.keys").write_bytes(b"\x00\x01\x02 not keys\n")
    async with http.get(f"{url}/alice.keys") as response:
        assert response.content_type == "application/octet-stream"  # what the server says
    src = source(url, http)
    alice = await src.lookup("alice")
    assert alice.status == "fresh" and [e.blob for e in alice.entries] == [keys[0].public_data]
    mallory = await src.lookup("mallory")
    assert mallory.status == "unavailable" and "HTML" in (mallory.problem or "")
    blob = await src.lookup("blob")
    assert blob.status == "unavailable" and "no readable key" in (blob.problem or "")


class SharedPages:
    """Pages other replicas fetched, in memory on the test's clock: a ``SharedKeyCache``."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.pages: dict[tuple[str, str], tuple[str, float]] = {}
        self.stored: list[tuple[str, str, str]] = []

    def fetched(self, login: str, text: str, ago: float) -> None:
        """Another replica fetched ``login``'s page ``ago`` seconds ago."""
        self.pages[("github", login)] = (text, self.clock() - ago)

    async def get(self, source: str, login: str, ttl: float, wait: float) -> SharedPage | None:
        page = self.pages.get((source, login))
        return SharedPage(page[0], self.clock() - page[1]) if page else None

    def put(self, source: str, login: str, text: str, keep: float) -> None:
        self.stored.append((source, login, text))
        self.pages[(source, login)] = (text, self.clock())

    def release(self, source: str, login: str) -> None:
        pass  # no replica waits on these pages


async def test_pages_other_replicas_fetched_are_used_fresh_then_as_the_stale_fallback(
    peer: KeySourcePeer, http: aiohttp.ClientSession, keys: list[asyncssh.SSHKey]
) -> None:
    clock = Clock()
    shared = SharedPages(clock)
    src = RemoteKeySource(
        "github", KeySourceSettings(url=peer.url, ttl=600), lambda: http, clock=clock, shared=shared
    )
    # Another replica's page within the ttl: used as is, the source not asked.
    shared.fetched("carol", _pub(keys[0]) + "\n", ago=590)
    lookup = await src.lookup("carol")
    assert (lookup.status, [e.blob for e in lookup.entries]) == ("fresh", [keys[0].public_data])
    assert peer.counts["carol"] == 0
    # Its ttl runs out 10 s later here too: now the source is asked, and its page shared.
    clock.now += 11
    peer.keys["carol"] = _pub(keys[1]) + "\n"
    lookup = await src.lookup("carol")
    assert [e.blob for e in lookup.entries] == [keys[1].public_data] and peer.counts["carol"] == 1
    assert shared.stored == [("github", "carol", _pub(keys[1]) + "\n")]
    # A source failing: a page another replica fetched an hour ago is the fallback.
    shared.fetched("dave", _pub(keys[0]) + "\n", ago=3600)
    peer.modes["dave"] = "500"
    lookup = await src.lookup("dave")
    assert (lookup.status, [e.blob for e in lookup.entries]) == ("stale", [keys[0].public_data])
