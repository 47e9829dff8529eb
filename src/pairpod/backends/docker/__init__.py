"""The Docker backend: a container per connection (or per channel), on a Docker engine.

Laid out like :mod:`pairpod.backends.kubernetes`, file for file; see
:mod:`.backend` for how it behaves.
"""

from __future__ import annotations

from pairpod.backends.docker.backend import DockerBackend
from pairpod.backends.docker.environment import (
    DockerConnectionEnvironment,
    DockerEnvironment,
    DockerSessionEnvironment,
)
from pairpod.backends.docker.process import DockerProcess

__all__ = [
    "DockerBackend",
    "DockerConnectionEnvironment",
    "DockerEnvironment",
    "DockerProcess",
    "DockerSessionEnvironment",
]
