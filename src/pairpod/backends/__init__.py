"""Backends: where a connection's environment runs.

The interface is :mod:`.base` (Backend -> Environment -> Process); the
backends are :mod:`.local` (a module), :mod:`.docker` and :mod:`.kubernetes`
(packages laid out file for file alike), with what the two container backends
share in :mod:`.container`. :mod:`.output` is the buffered output pipe and its
back-pressure; :mod:`.observed` a Process wrapper that reports traffic;
:mod:`.files` places a login's files. Backends are imported lazily so the
local backend needs no container libraries.
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
from pairpod.backends.files import place_files
from pairpod.backends.observed import ObservedProcess, ProcessObserver
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
    "ObservedProcess",
    "Process",
    "ProcessObserver",
    "ProcessSpec",
    "PtySpec",
    "StatusCallback",
    "Stream",
    "create_backend",
    "place_files",
]
