"""The pages the web listener serves, their files, and the headers every answer carries.

The page of a web link is the same for every link (the token is only in
its address): no secret is written into it and it runs no inline script,
so the Content-Security-Policy allows scripts from this origin only. xterm.js
injects ``<style>`` elements for its own layout, hence ``'unsafe-inline'``
for styles (styles cannot run code).

xterm.js and its fit addon are fetched by the install step
(``scripts/web-assets.sh``) into ``static/vendor/``, never committed; when
they are missing the gateway still runs and a link's page says so.
"""

from __future__ import annotations

import html
from pathlib import Path

STATIC = Path(__file__).parent / "static"
VENDOR = STATIC / "vendor"

#: The files the page loads, by the name in their address.
FILES: dict[str, Path] = {
    "pairpod.js": STATIC / "pairpod.js",
    "pairpod.css": STATIC / "pairpod.css",
    "xterm.js": VENDOR / "xterm.js",
    "xterm.css": VENDOR / "xterm.css",
    "addon-fit.js": VENDOR / "addon-fit.js",
}

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "connect-src 'self'; img-src 'self' data:; font-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)

#: On every answer: the policy above; nothing framed, sniffed, or told where it came from
#: (the address of a page holds its link: no Referer may carry it anywhere).
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def missing_assets() -> list[str]:
    """The files of the page that are not there (the vendor ones when never fetched)."""
    return sorted(name for name, path in FILES.items() if not path.is_file())


TERMINAL_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<title>pairpod: shared terminal</title>
<link rel="stylesheet" href="../static/xterm.css">
<link rel="stylesheet" href="../static/pairpod.css">
<script src="../static/xterm.js" defer></script>
<script src="../static/addon-fit.js" defer></script>
<script src="../static/pairpod.js" defer></script>
</head>
<body>
<div id="status" role="status">connecting</div>
<div id="terminal"></div>
</body>
</html>
"""


def message_page(text: str) -> str:
    """A page that only says ``text`` (an invalid link, missing files)."""
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="referrer" content="no-referrer">
<title>pairpod</title>
<link rel="stylesheet" href="../static/pairpod.css">
</head>
<body>
<p id="message">pairpod: {html.escape(text)}</p>
</body>
</html>
"""
