"""Names and labels of what the container backends create: containers, pods, hostnames."""

from __future__ import annotations

import re

from pairpod.errors import BackendError

# --- labels ---------------------------------------------------------------------------

# Docker labels and Kubernetes label keys alike (both accept these names).
LABEL_MANAGED = "pairpod.managed"
LABEL_INSTANCE = "pairpod.instance"
LABEL_CONNECTION = "pairpod.connection"
LABEL_USER = "pairpod.user"
LABEL_MODE = "pairpod.mode"
LABEL_POOL = "pairpod.pool"


# --- names ------------------------------------------------------------------------------


def name_part(text: str, limit: int = 40) -> str:
    """``text`` reduced to characters valid in container and pod names."""
    cleaned = re.sub(r"[^a-zA-Z0-9_.-]+", "-", text).strip("-.")
    return cleaned[:limit] or "x"


def hostname_for(template: str, username: str, setting: str = "hostname") -> str:
    """A hostname: the template filled in, made a valid host label.

    ``setting`` names the config key in the error for a bad template.
    """
    try:
        text = template.format(username=username)
    except (KeyError, IndexError, ValueError) as error:
        raise BackendError(f"{setting}: bad template {template!r}: {error}") from None
    label = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")[:63].strip("-")
    return label or "pairpod"
