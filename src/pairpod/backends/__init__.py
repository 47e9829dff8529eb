"""Backends: where a connection's environment runs.

Backends are imported lazily so the local backend needs no container libraries.
"""

from __future__ import annotations

import importlib

from pairpod.backends.base import (
    SSH_SIGNALS,
    Backend,
    Environment,
    ExitStatus,
    Identity,
    Process,
    ProcessSpec,
    PtySpec,
    StatusCallback,
    Stream,
)
from pairpod.config import Config

_MODULES = {
    "local": ("pairpod.backends.local", "LocalBackend"),
    "docker": ("pairpod.backends.docker", "DockerBackend"),
    "kubernetes": ("pairpod.backends.kubernetes", "KubernetesBackend"),
}


def create_backend(config: Config, instance_id: str) -> Backend:
    """Instantiate the backend the config names."""
    module_name, class_name = _MODULES[config.backend]
    module = importlib.import_module(module_name)
    backend_class: type[Backend] = getattr(module, class_name)
    return backend_class(config, instance_id)


__all__ = [
    "SSH_SIGNALS",
    "Backend",
    "Environment",
    "ExitStatus",
    "Identity",
    "Process",
    "ProcessSpec",
    "PtySpec",
    "StatusCallback",
    "Stream",
    "create_backend",
]
