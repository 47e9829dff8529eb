"""The web joiner listener: a page and a WebSocket per web link, on ``sharing.web.listen``.

Addresses (a link's token is in the path, never in a query string):

* ``/s/<link>``: the page (``page.TERMINAL_PAGE``), the same for every link;
* ``/s/<link>/ws``: the terminal stream (:mod:`pairpod.web.viewer`);
* ``/static/<file>``: the page's script and styles, and xterm.js.

A link that is unknown, revoked or ended, or any link from an address that
is locked out, is answered only after the random pause of
:func:`~pairpod.sharing.tokens.rejection_delay`, counts one failure towards
the address's lockout, and is logged like a refused SSH link (the link's
text never: it is the secret). The WebSocket must come from the page's own
origin (``Origin`` checked). There is no access log: it would hold tokens.

A link may name a session on another replica of a cluster: it is found and
joined through the same path as an SSH link (:meth:`SharingService.find`
with the web medium). When the other replicas cannot be asked (their store
is down), the page says so as an SSH joiner is told, after the same pause,
and the address is not counted towards a lockout: it is not the link's fault.

One address holds only so many connections, and a connection must send its
request's head within ``sharing.web.header_timeout`` (:mod:`pairpod.web.connections`).
A WebSocket's opening handshake is its upgrade request, under that deadline;
once open it has none (a viewer stays for hours), but a ping every
:data:`WS_HEARTBEAT` seconds finds a browser that is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ssl
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from aiohttp import WSCloseCode, web

from pairpod.admin.http import start_site
from pairpod.auth.addresses import lockout_key
from pairpod.auth.lockout import Lockout
from pairpod.config import Config, parse_listen
from pairpod.errors import ConfigError
from pairpod.log import fields, get_logger
from pairpod.rates import per_source
from pairpod.sharing.joinable import ClusterUnavailable, Joinable
from pairpod.sharing.service import SharingService
from pairpod.sharing.tokens import INVALID_SESSION_MESSAGE, Medium, rejection_delay
from pairpod.web.addresses import ClientAddresses
from pairpod.web.connections import ConnectionLimit, LimitedSite
from pairpod.web.page import FILES, SECURITY_HEADERS, TERMINAL_PAGE, message_page, missing_assets
from pairpod.web.refusals import RequestLog
from pairpod.web.sink import message
from pairpod.web.viewer import serve_viewer

log = get_logger("web")

ASSETS_MISSING = "this gateway's web terminal files (xterm.js) are missing; its operator can fetch them"
_CONTENT_TYPES = {".js": "text/javascript", ".css": "text/css"}

# What one request may send. A page, a script and a WebSocket upgrade are GETs
# whose request line holds a link of a few dozen characters and which carry no
# body; a browser sends about twenty headers and a reverse proxy adds a few. A
# header line may still be long (the Cookie of another site on the same host), so
# only the count and the request line are tighter than aiohttp's defaults: one
# head then holds at most about MAX_HEADERS * MAX_FIELD bytes while it is read.
MAX_REQUEST_LINE = 2048
MAX_HEADERS = 48
MAX_FIELD = 8190
MAX_BODY = 4096
# The browser's answer to a closing WebSocket (its close frame) is awaited this long.
WS_CLOSE_TIMEOUT = 5.0
# A ping this often; a browser that does not answer within half of it is gone
# (a laptop closed, a network lost) and its socket is closed.
WS_HEARTBEAT = 30.0


class WebJoiners:
    """Serves web links of the gateway's shared sessions (``sharing.web``)."""

    def __init__(
        self,
        config: Config,
        sharing: SharingService,
        lockout: Lockout,
        audit: Callable[..., None],
    ) -> None:
        """``audit(event, **values)`` records a browser's join and leave (the audit log)."""
        settings = config.sharing.web
        assert settings.listen is not None
        self._config = config
        self._settings = settings
        self._listen = settings.listen
        self._sharing = sharing
        self._lockout = lockout
        self._audit = audit
        self._addresses = ClientAddresses(settings.trusted_proxies)
        # A join draws a screen snapshot and tells everyone: one address may start
        # them only as often as it may open SSH connections (ssh.per_source_rate).
        self._join_rates = per_source(config.ssh.per_source_rate, config.ssh.per_source_burst)
        self._runner: web.AppRunner | None = None
        # Each open socket and the task serving it.
        self._sockets: dict[web.WebSocketResponse, asyncio.Task[Any]] = {}
        self._missing: list[str] = []
        self.port = 0
        self.base_url = ""

    # --- listening ---------------------------------------------------------------------

    async def start(self) -> None:
        """Listen; a busy address or unusable TLS files are a ConfigError naming the key."""
        tls = self._tls_context()
        timeout = self._settings.header_timeout
        # One address may hold only so many connections, each until its first head
        # only so long (see web.connections); the middleware lifts that deadline.
        limit = ConnectionLimit(
            self._addresses.trusted, header_timeout=timeout, send_timeout=self._settings.send_timeout
        )
        app = web.Application(
            client_max_size=MAX_BODY,
            middlewares=[limit.head_read],
            handler_args={
                # The wait for the next head of a kept-alive connection.
                "keepalive_timeout": timeout,
                "max_line_size": MAX_REQUEST_LINE,
                "max_headers": MAX_HEADERS,
                "max_field_size": MAX_FIELD,
                # No request here has a body to drain: close instead of reading one.
                "lingering_time": 0,
                # A malformed request is one short line, not an error with a traceback.
                "logger": RequestLog(),
            },
        )
        app.router.add_get("/s/{link}", self._page)
        app.router.add_get("/s/{link}/ws", self._socket)
        app.router.add_get("/static/{name}", self._static)
        app.router.add_get("/favicon.ico", _no_content)  # browsers ask; nothing to log as missing
        app.on_response_prepare.append(_security_headers)
        site = functools.partial(LimitedSite, limit=limit)
        self._runner, self.port = await start_site(app, self._listen, "sharing.web.listen", tls, site)
        host = parse_listen(self._listen)[0]
        self.base_url = self._settings.public_url or _default_base(
            host, self.port, self._config, tls is not None
        )
        self._sharing.web_base = self.base_url
        self._missing = missing_assets()
        if self._missing:
            log.warning(
                "web.assets_missing",
                extra=fields(
                    files=",".join(self._missing),
                    effect="link pages say the web terminal is unavailable",
                    fix="fetch them with scripts/web-assets.sh (npm), then restart",
                ),
            )
        log.info("web.listening", extra=fields(address=f"{host}:{self.port}", url=self.base_url))

    def _tls_context(self) -> ssl.SSLContext | None:
        settings = self._settings
        if settings.tls_cert is None or settings.tls_key is None:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            context.load_cert_chain(settings.tls_cert, settings.tls_key)
        except (OSError, ssl.SSLError) as error:
            raise ConfigError(f"sharing.web.tls_cert: cannot load {settings.tls_cert}: {error}") from None
        return context

    async def stop(self) -> None:
        """Stop listening; open pages are disconnected (going away)."""
        self._sharing.web_base = None
        # All at once and under one bound: a close waits for the browser's answer (unless
        # the socket is being read), which a browser that is gone never sends.
        closing = [
            socket.close(code=WSCloseCode.GOING_AWAY, message=b"the gateway is stopping")
            for socket in list(self._sockets)
        ]
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(WS_CLOSE_TIMEOUT):
                await asyncio.gather(*closing, return_exceptions=True)
        # A viewer may still be held inside (its keys wait for a program that reads no
        # input): it is ended here, not after aiohttp's own wait for handlers (a minute).
        held = list(self._sockets.values())
        for task in held:
            task.cancel()
        if closing:
            log.info("web.viewers_closed", extra=fields(viewers=len(closing), cut=len(held) or None))
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # --- requests ----------------------------------------------------------------------

    def _client(self, request: web.Request) -> str:
        """The client's address (``X-Forwarded-For`` believed from trusted proxies only)."""
        return self._addresses.client(request.remote, request.headers.get("X-Forwarded-For"))

    async def _find(self, request: web.Request, address: str) -> Joinable | str:
        """The live session the link names, here or on another replica; or, after
        a pause, the line to show instead."""
        found = None
        if self._lockout.check(address, "", guessable=False) is None:
            try:
                found = await self._sharing.find(request.match_info["link"], Medium.WEB)
            except ClusterUnavailable as error:
                log.warning(
                    "sharing.join_unavailable",
                    extra=fields(addr=address, method="web", error=error.operator_message),
                )
                await asyncio.sleep(rejection_delay())
                return error.user_message
        if found is None:
            for lock in self._lockout.record_failure(address, "", guessable=False):
                log.warning(
                    "auth.lockout",
                    extra=fields(
                        addr=address,
                        method="web",
                        kind=lock.kind,
                        subject=lock.subject,
                        duration=lock.remaining,
                    ),
                )
            log.info("sharing.join_refused", extra=fields(addr=address, method="web", reason="invalid link"))
            await asyncio.sleep(rejection_delay())
            return INVALID_SESSION_MESSAGE
        return found

    async def _page(self, request: web.Request) -> web.Response:
        found = await self._find(request, self._client(request))
        if isinstance(found, str):
            return _html(message_page(found), 404 if found == INVALID_SESSION_MESSAGE else 503)
        if self._missing:
            return _html(message_page(ASSETS_MISSING), 503)
        return _html(TERMINAL_PAGE, 200)

    def _origin_allowed(self, request: web.Request) -> bool:
        origin = request.headers.get("Origin", "").lower()
        if not origin:
            return False
        allowed = {f"{scheme}://{request.host.lower()}" for scheme in ("http", "https")}
        public = urlsplit(self.base_url)
        allowed.add(f"{public.scheme}://{public.netloc}".lower())
        return origin in allowed

    async def _socket(self, request: web.Request) -> web.StreamResponse:
        address = self._client(request)
        if not self._origin_allowed(request):
            log.warning(
                "web.origin_refused",
                extra=fields(addr=address, origin=request.headers.get("Origin", "")[:200] or None),
            )
            return web.Response(status=403, text="pairpod: this page's origin may not open the terminal\n")
        if self._join_rates is not None and not self._join_rates.allow(lockout_key(address)):
            log.warning("web.join_rate", extra=fields(addr=address, rate=self._join_rates.rate))
            return web.Response(status=429, text="pairpod: too many joins from this address, try later\n")
        found = await self._find(request, address)
        # No per-message deflate: with many viewers, compressing every frame for each
        # of them would cost the gateway more CPU than everything else on this path.
        socket = web.WebSocketResponse(
            max_msg_size=self._settings.max_message,
            heartbeat=WS_HEARTBEAT,
            timeout=WS_CLOSE_TIMEOUT,
            compress=False,
        )
        await socket.prepare(request)
        task = asyncio.current_task()
        assert task is not None  # a handler runs as a task
        self._sockets[socket] = task
        try:
            if isinstance(found, str):
                await socket.send_str(message("end", reason=found))
            else:
                await serve_viewer(
                    socket, found, address=address, audit=self._audit, limit=self._config.ssh.max_pty
                )
        finally:
            self._sockets.pop(socket, None)
            await socket.close()
        return socket

    async def _static(self, request: web.Request) -> web.StreamResponse:
        path = FILES.get(request.match_info["name"])
        if path is None or not path.is_file():
            return web.Response(status=404, text="not found\n")
        return web.FileResponse(path, headers={"Content-Type": _CONTENT_TYPES[path.suffix]})


async def _no_content(request: web.Request) -> web.Response:
    return web.Response(status=204)


def _html(text: str, status: int) -> web.Response:
    return web.Response(text=text, status=status, content_type="text/html")


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    response.headers.update(SECURITY_HEADERS)


def _default_base(host: str, port: int, config: Config, tls: bool) -> str:
    """``http(s)://HOST:PORT`` of the listener (``sharing.public_host`` for a wildcard host)."""
    if host in {"0.0.0.0", "::", ""}:  # noqa: S104 - comparing, not binding
        host = config.sharing.public_host or "localhost"
    if ":" in host:
        host = f"[{host}]"
    return f"{'https' if tls else 'http'}://{host}:{port}"
