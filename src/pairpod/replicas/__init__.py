"""Several gateway replicas: joins and ``+ctl`` from any replica.

* :mod:`pairpod.replicas.wire`: the replica-to-replica protocol (handshake, sealed frames), no I/O.
* :mod:`pairpod.replicas.link`: one authenticated connection between two replicas.
* :mod:`pairpod.replicas.directory`: which replica holds which link, in Redis.
* :mod:`pairpod.replicas.serving`: the owner's replica, serving relayed joiners.
* :mod:`pairpod.replicas.joining`: the joiner's replica, relaying them.
* :mod:`pairpod.replicas.cluster`: all of it, as the sharing service sees the other replicas.
"""

from __future__ import annotations

from pairpod.replicas.cluster import Replicas

__all__ = ["Replicas"]
