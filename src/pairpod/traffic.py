"""Bytes a connection moved, counted where its channels already hold each chunk.

One integer add per chunk (never per byte) on the data path; metrics and the
admin view read the totals when asked.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass(slots=True)
class Traffic:
    """What one SSH connection moved: ``received`` from the client, ``sent`` to it."""

    received: int = 0
    sent: int = 0
    #: When the connection was made (seconds since the epoch).
    started: float = field(default_factory=time.time)
