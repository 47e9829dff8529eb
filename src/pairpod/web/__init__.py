"""Web joiners: a shared terminal watched (or, when allowed, typed into) from a browser.

* :mod:`pairpod.web.server`: the listener (``sharing.web``): pages, WebSockets, files.
* :mod:`pairpod.web.viewer`: one browser as a participant of a shared Terminal.
* :mod:`pairpod.web.sink`: its Sink, with the same back-pressure as an SSH viewer's channel.
* :mod:`pairpod.web.page`: the page, its files (xterm.js) and security headers.
* :mod:`pairpod.web.addresses`: the client's address, ``X-Forwarded-For`` from trusted proxies.

Nothing here speaks SSH; the gateway (:mod:`pairpod.ssh.gateway`) starts it.
"""

from __future__ import annotations

from pairpod.web.server import WebJoiners

__all__ = ["WebJoiners"]
