"""A Kubernetes API server for tests, speaking the real wire protocol on loopback.

Pods run as real Docker containers (network none, never pulled), so exec
really executes. Start one in-process with :class:`KubeApiServer`, on a
background thread with :class:`KubeApiServerThread`, or as a subprocess with
``python -m testing.kube_apiserver``; pytest fixtures live in ``.fixture``.
"""

from .fixture import KubeApiServerThread
from .kubeconfig import write_kubeconfig
from .server import KubeApiServer

__all__ = ["KubeApiServer", "KubeApiServerThread", "write_kubeconfig"]
