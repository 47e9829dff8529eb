"""The admin HTTP listener: ``/metrics``, ``/healthz`` and ``/readyz``.

Never the public SSH port (the config refuses that). ``/healthz`` answers
while the process serves; ``/readyz`` asks the backend (a Docker engine ping,
the Kubernetes API's ``/version``) and answers 503 with the reason when it
does not answer.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable

from aiohttp import web

from pairpod.admin.metrics import Metrics
from pairpod.config import parse_listen
from pairpod.errors import PairpodError, cannot_listen
from pairpod.log import fields, get_logger

log = get_logger("admin")

# A probe must answer before the kubelet gives up on it (its default timeout is 1s,
# ours in the Deployment a few seconds).
READY_TIMEOUT = 3.0


async def start_site(
    app: web.Application,
    listen: str,
    key: str,
    ssl_context: ssl.SSLContext | None = None,
    site: Callable[..., web.TCPSite] = web.TCPSite,
) -> tuple[web.AppRunner, int]:
    """Serve ``app`` on ``listen`` (``HOST:PORT``), without an access log; the runner and
    the port listened on (the real one for port 0). A busy or invalid address is a
    ConfigError naming the config ``key``. ``site`` makes the listening site (a
    ``TCPSite`` with its connections limited, say)."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    host, port = parse_listen(listen)
    listener = site(runner, host, port, ssl_context=ssl_context, reuse_address=True)
    try:
        await listener.start()
    except OSError as error:
        await runner.cleanup()
        raise cannot_listen(key, listen, error) from None
    return runner, runner.addresses[0][1]


class AdminHTTP:
    """Serves the operator's endpoints on ``listen`` (``HOST:PORT``)."""

    def __init__(self, listen: str, metrics: Metrics, check: Callable[[], Awaitable[None]]) -> None:
        self._listen = listen
        self._metrics = metrics
        self._check = check
        self._runner: web.AppRunner | None = None
        self.port = 0
        # Ready only once the gateway listens for SSH (it starts this listener first).
        self.serving = False
        # Set once the gateway drains at SIGTERM: not ready for new users from then on,
        # so a load balancer that probes stops sending them here while sessions finish.
        self.draining = False

    async def start(self) -> None:
        """Listen; a busy or invalid address is a ConfigError naming ``admin.listen``."""
        app = web.Application()
        app.router.add_get("/metrics", self._serve_metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        self._runner, self.port = await start_site(app, self._listen, "admin.listen")
        log.info("admin.listening", extra=fields(address=f"{parse_listen(self._listen)[0]}:{self.port}"))

    async def stop(self) -> None:
        """Stop listening."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _serve_metrics(self, request: web.Request) -> web.Response:
        return web.Response(
            body=self._metrics.exposition(), headers={"Content-Type": self._metrics.content_type}
        )

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _readyz(self, request: web.Request) -> web.Response:
        if not self.serving:
            return _not_ready("the gateway is starting")
        if self.draining:
            return _not_ready("the gateway is draining (shutting down)")
        try:
            async with asyncio.timeout(READY_TIMEOUT):
                await self._check()
        except TimeoutError:
            return _not_ready(f"the backend did not answer within {READY_TIMEOUT:g}s")
        except PairpodError as error:
            return _not_ready(error.operator_message)
        return web.Response(text="ready\n")


def _not_ready(reason: str) -> web.Response:
    log.info("admin.not_ready", extra=fields(reason=reason))
    return web.Response(status=503, text=f"not ready: {reason}\n")
