"""Plain HTTP GETs against the gateway's own listeners on loopback."""

from __future__ import annotations

import urllib.error
import urllib.request


def http_get(url: str) -> tuple[int, str]:
    """Status and body of a GET (an HTTP error status is an answer, not an exception)."""
    try:
        with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - loopback
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()
