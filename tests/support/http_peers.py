"""Real HTTP peers on 127.0.0.1 for the auth tests: a key source, an auth webhook, a config webhook.

Each peer is an aiohttp server on a free loopback port with good answers and
broken modes. "Slow" handlers wait on the peer's ``release`` event (set by
the test, or at stop), never on a timer, so a test decides when a slow
answer comes. Every request is recorded, and ``wait_requests(n)`` lets a
test wait until the peer has seen ``n`` of them.
"""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from aiohttp import web

HUGE = 2 * 1024 * 1024  # over every cap pairpod uses


class Peer:
    """An aiohttp server on 127.0.0.1 with a free port."""

    def __init__(self) -> None:
        self.app = web.Application()
        self.release = asyncio.Event()
        self.requests: list[tuple[str, Any]] = []
        self._arrived = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.port = 0

    @property
    def url(self) -> str:
        """Base URL of the peer."""
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> Peer:
        """Listen on a free loopback port."""
        self._loop = asyncio.get_running_loop()
        self._runner = web.AppRunner(self.app, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server  # the only way aiohttp tells the port it bound
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        """Release slow handlers and stop listening (the port then refuses connections)."""
        self.release.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def hold_from_thread(self) -> None:
        """Make slow handlers wait again until the next release (``served_in_thread``)."""
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self.release.clear)

    def release_from_thread(self) -> None:
        """Let slow handlers answer, from a thread other than the peer's (``served_in_thread``)."""
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self.release.set)

    async def note(self, path: str, body: Any) -> None:
        """Record a request and wake ``wait_requests``."""
        self.requests.append((path, body))
        async with self._arrived:
            self._arrived.notify_all()

    async def wait_requests(self, count: int) -> None:
        """Wait until ``count`` requests have arrived."""
        async with self._arrived:
            await self._arrived.wait_for(lambda: len(self.requests) >= count)


async def _huge(request: web.Request, content_type: str, with_length: bool) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": content_type})
    if with_length:
        response.content_length = HUGE
    await response.prepare(request)
    chunk = b"x" * 65536
    try:
        for _ in range(HUGE // len(chunk)):
            await response.write(chunk)
    except (ConnectionResetError, RuntimeError):
        pass  # the client stopped reading, as it should
    return response


class KeySourcePeer(Peer):
    """Serves ``/<login>.keys`` like GitHub and GitLab do.

    ``keys[login]`` is the text served for a good login; ``modes[login]``
    picks a broken behaviour: ``html``, ``huge``, ``huge_length``,
    ``garbage``, ``mixed`` (garbage lines around the good keys), ``json``
    (wrong content type), ``slow`` (waits for ``release``), ``500``, ``404``,
    ``slow_500`` (waits for ``release``, then 500).
    """

    def __init__(self) -> None:
        super().__init__()
        self.keys: dict[str, str] = {}
        self.modes: dict[str, str] = {}
        self.counts: Counter[str] = Counter()
        self.app.router.add_get("/{name}", self._serve)

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if not name.endswith(".keys"):
            raise web.HTTPNotFound()
        login = name[: -len(".keys")]
        self.counts[login] += 1
        await self.note(request.path, None)
        mode = self.modes.get(login, "good")
        if mode in ("slow", "slow_500"):
            await self.release.wait()
            mode = "good" if mode == "slow" else "500"
        text = self.keys.get(login)
        if mode == "404" or (mode == "good" and text is None):
            return web.Response(status=404, text="Not Found")
        if mode == "500":
            return web.Response(status=500, text="internal error")
        if mode == "html":
            return web.Response(
                text="<!DOCTYPE html><html><body>Sign in</body></html>", content_type="text/html"
            )
        if mode == "html_as_text":
            return web.Response(text="<html><body>Sign in</body></html>\n")
        if mode == "json":
            return web.json_response({"keys": text})
        if mode == "garbage":
            return web.Response(text="this is not\na list of keys\n\x7f\x01 at all\n")
        if mode == "huge":
            return await _huge(request, "text/plain", with_length=False)
        if mode == "huge_length":
            return await _huge(request, "text/plain", with_length=True)
        if mode == "mixed":
            text = f"garbage line\n{text}\nssh-ed25519 not-base64!!\n"
        return web.Response(text=text or "")


def _answer(mode: str, good: Any) -> web.StreamResponse | None:
    """The broken-mode answers shared by both webhooks (None: answer normally)."""
    if mode == "500":
        return web.Response(status=500, text="internal error")
    if mode == "404":
        return web.Response(status=404, text="not found")
    if mode == "malformed":
        return web.Response(text='{"success": true,', content_type="application/json")
    if mode == "not_object":
        return web.json_response([good])
    if mode == "html":
        return web.Response(text="<html>oops</html>", content_type="text/html")
    return None


class _Webhook(Peer):
    def __init__(self) -> None:
        super().__init__()
        self.mode = "good"
        self.modes: dict[str, str] = {}  # per username, over ``mode``
        self.failures_left = 0  # for "flaky": 500 this many times, then good

    async def _broken(self, request: web.Request, body: Any, good: Any) -> web.StreamResponse | None:
        mode = self.modes.get(body.get("username"), self.mode) if isinstance(body, dict) else self.mode
        if mode == "slow":
            await self.release.wait()
            return None
        if mode == "flaky":
            if self.failures_left > 0:
                self.failures_left -= 1
                return web.Response(status=500, text="try again")
            return None
        if mode in ("huge", "huge_length"):
            return await _huge(request, "application/json", with_length=mode == "huge_length")
        if mode == "wrong_types":
            return web.json_response(self.wrong_types)
        if mode == "raw":
            return web.Response(body=self.raw_body, content_type="application/json")
        return _answer(mode, good)

    wrong_types: Any = {"success": "true"}
    raw_body = b""


class AuthWebhookPeer(_Webhook):
    """A ContainerSSH auth server: ``POST /password`` and ``POST /pubkey``.

    ``passwords[user]`` and ``pubkeys[user]`` (``type base64`` lines) say
    who gets in; ``extra[user]`` is merged into a successful answer
    (``authenticatedUsername``, ``metadata``, ``environment``). ``mode`` /
    ``modes[user]`` pick a broken behaviour: ``slow``, ``500``, ``404``,
    ``flaky`` (``failures_left`` 500s first), ``malformed``, ``not_object``,
    ``html``, ``wrong_types`` (answers ``wrong_types``), ``raw`` (answers
    ``raw_body`` as is), ``huge``,
    ``huge_length``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.passwords: dict[str, str] = {}
        self.pubkeys: dict[str, set[str]] = {}
        self.extra: dict[str, dict[str, Any]] = {}
        self.app.router.add_post("/password", self._password)
        self.app.router.add_post("/pubkey", self._pubkey)

    async def _password(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        await self.note(request.path, body)
        user = body.get("username")
        given = base64.b64decode(body.get("passwordBase64", "")).decode()
        ok = user in self.passwords and self.passwords[user] == given
        return await self._reply(request, body, ok)

    async def _pubkey(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        await self.note(request.path, body)
        ok = body.get("publicKey") in self.pubkeys.get(body.get("username"), set())
        return await self._reply(request, body, ok)

    async def _reply(self, request: web.Request, body: Any, ok: bool) -> web.StreamResponse:
        good: dict[str, Any] = {"success": ok}
        if ok:
            good.update(self.extra.get(body.get("username"), {}))
        broken = await self._broken(request, body, good)
        return broken if broken is not None else web.json_response(good)


class ConfigWebhookPeer(_Webhook):
    """A ContainerSSH config server: ``POST /config``.

    ``answers[user]`` is the whole answer body for that username (default
    ``{"config": {}}``); ``mode`` / ``modes[user]`` as for the auth webhook.
    """

    def __init__(self) -> None:
        super().__init__()
        self.answers: dict[str, Any] = {}
        self.app.router.add_post("/config", self._config)

    @property
    def config_url(self) -> str:
        """The URL to configure as ``auth.config_webhook.url``."""
        return f"{self.url}/config"

    async def _config(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        await self.note(request.path, body)
        good = self.answers.get(body.get("username"), {"config": {}})
        broken = await self._broken(request, body, good)
        if broken is not None:
            return broken
        if isinstance(good, str | bytes):
            return web.Response(body=good, content_type="application/json")
        return web.Response(text=json.dumps(good), content_type="application/json")


@contextmanager
def refusing_port() -> Iterator[str]:
    """A loopback URL where nothing listens: connections are refused.

    The port stays bound (without listening) for the duration, so no other
    server can take it meanwhile.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        sock.close()


@contextmanager
def served_in_thread(peer: Peer) -> Iterator[Peer]:
    """Serve ``peer`` from an event loop of its own, for tests that block (OpenSSH, tmux)."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        asyncio.run_coroutine_threadsafe(peer.start(), loop).result(10)
        yield peer
        asyncio.run_coroutine_threadsafe(peer.stop(), loop).result(10)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
