"""The Kubernetes warm pool: running pods handed to logins.

A pool pod is started ahead of logins (by the container backends' loop,
:mod:`pairpod.backends.container.backend`); a login in ``mode: connection``
takes one that still runs, and the pod is labelled with its connection and
user.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from pairpod.backends.base import Identity
from pairpod.backends.container.names import LABEL_POOL
from pairpod.backends.kubernetes.environment import KubernetesConnectionEnvironment
from pairpod.backends.kubernetes.pod import ANNOTATION_USER, PodHandle
from pairpod.errors import BackendUnavailable, PairpodError
from pairpod.log import fields, get_logger

if TYPE_CHECKING:
    from pairpod.backends.kubernetes.backend import KubernetesBackend

log = get_logger("backend.kubernetes")

# A handed-out pool pod is replaced after the login's first process starts, or
# after this long at the latest.
REFILL_DELAY = 2.0


async def take(backend: KubernetesBackend, identity: Identity) -> KubernetesConnectionEnvironment | None:
    """A running pool pod for this login, if the pool has one that still runs."""
    settings = identity.config.kubernetes
    if settings != backend.config.kubernetes or settings.mode != "connection":
        return None
    while backend._pool:
        handle = backend._pool.popleft()
        # Refill once the login is served: a pod start beside the login's
        # first exec would slow both (and the exec is what the user waits for).
        asyncio.get_running_loop().call_later(REFILL_DELAY, backend._pool_wakeup.set)
        try:
            progress = await backend.describe_pod(handle)
        except BackendUnavailable:
            backend._pool.appendleft(handle)
            raise
        except PairpodError:
            progress = None
        if progress is not None and progress.ready:
            env = KubernetesConnectionEnvironment(backend, identity, settings, handle)
            env.from_pool = True
            env.background(claim(backend, handle, identity))
            log.info(
                "kubernetes.pool_handout",
                extra=fields(conn=identity.conn_id, user=identity.username, pod=handle.key),
            )
            return env
        log.warning("kubernetes.pool_pod_gone", extra=fields(pod=handle.key))
        backend._spawn(backend.remove_pod(handle, settings.timeouts.stop))
    return None


async def claim(backend: KubernetesBackend, handle: PodHandle, identity: Identity) -> None:
    """Label a handed-out pool pod with its connection and user, for operators and the reaper."""
    labels = backend.labels(identity, "connection")
    labels[LABEL_POOL] = "true"
    try:
        await backend.api.patch_pod_labels(
            handle.namespace, handle.name, labels, annotations={ANNOTATION_USER: identity.username}
        )
    except PairpodError as error:
        log.warning(
            "kubernetes.pool_label_failed", extra=fields(pod=handle.key, error=error.operator_message)
        )
