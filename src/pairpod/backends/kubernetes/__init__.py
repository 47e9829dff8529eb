"""The Kubernetes backend: a pod per connection (or per channel), through the Kubernetes API.

Laid out like :mod:`pairpod.backends.docker`, file for file; see
:mod:`.backend` for how it behaves.
"""

from __future__ import annotations

from pairpod.backends.kubernetes.backend import KubernetesBackend
from pairpod.backends.kubernetes.environment import (
    KubernetesConnectionEnvironment,
    KubernetesEnvironment,
    KubernetesSessionEnvironment,
)
from pairpod.backends.kubernetes.pod import PodHandle
from pairpod.backends.kubernetes.process import KubernetesProcess

__all__ = [
    "KubernetesBackend",
    "KubernetesConnectionEnvironment",
    "KubernetesEnvironment",
    "KubernetesProcess",
    "KubernetesSessionEnvironment",
    "PodHandle",
]
