"""Plain HTTP GETs against the gateway's own listeners on loopback."""

from __future__ import annotations

import urllib.error
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

#: One Prometheus sample: its name and its labels (sorted pairs).
SampleKey = tuple[str, tuple[tuple[str, str], ...]]


def http_get(url: str) -> tuple[int, str]:
    """Status and body of a GET (an HTTP error status is an answer, not an exception)."""
    try:
        with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - loopback
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def scrape(url: str) -> dict[SampleKey, float]:
    """Every sample of a ``/metrics`` page, parsed with prometheus_client's own parser."""
    status, text = http_get(url)
    assert status == 200
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found
