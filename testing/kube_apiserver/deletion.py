"""Graceful deletion: pods that take their grace period, namespaces that empty first.

This is the pod registry's ``CheckGracefulDelete`` and the namespace
controller: a running pod is marked with a deletionTimestamp (a MODIFIED
event), its containers get their grace period, then it is removed (DELETED);
a namespace turns Terminating, loses its contents, waits for its pods, and
only then goes.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from typing import Any

from .pods import PodRunner
from .resources import Registry
from .store import Store, now_rfc3339

Obj = dict[str, Any]
log = logging.getLogger(__name__)


class Deleter:
    """Deletes pods and namespaces the way the real control plane does."""

    def __init__(self, store: Store, registry: Registry, runner: PodRunner) -> None:
        self._store = store
        self._registry = registry
        self._runner = runner
        pods = registry.by_path("", "v1", "pods")
        namespaces = registry.by_path("", "v1", "namespaces")
        assert pods is not None and namespaces is not None
        self._pods = pods
        self._namespaces = namespaces
        self._tasks: set[asyncio.Future[Any]] = set()
        # The running namespace-controller task of each namespace being deleted,
        # and the task finishing each pod being deleted (by uid).
        self._finalizers: dict[str, asyncio.Future[Any]] = {}
        self._pod_tasks: dict[str, asyncio.Future[Any]] = {}
        self._pod_namespaces: dict[str, str] = {}

    def _spawn(self, coro: Any) -> asyncio.Future[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(_log_failure)
        return task

    async def close(self) -> None:
        """Cancel deletions still in progress (the runner removes what is left)."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def delete_pod(self, pod: Obj, grace: int | None) -> tuple[Obj, asyncio.Future[Any]]:
        """Delete a pod; returns what DELETE answers and the task that finishes the job."""
        meta = pod["metadata"]
        namespace, name, uid = meta["namespace"], meta["name"], meta["uid"]
        if grace is None:
            grace = int(pod["spec"].get("terminationGracePeriodSeconds", 30))
        grace = max(grace, 0)
        phase = (pod.get("status") or {}).get("phase")
        # Unscheduled or finished pods go at once, as upstream's CheckGracefulDelete says.
        if not pod["spec"].get("nodeName") or phase in ("Succeeded", "Failed"):
            grace = 0
        pending = self._pod_tasks.get(uid)
        if meta.get("deletionTimestamp") and grace != 0 and pending is not None:
            # Already going: a second DELETE changes nothing but can wait for it.
            return pod, pending
        if grace == 0:
            deleted = self._store.delete(self._pods, namespace, name)
            return deleted, self._track(uid, namespace, self._runner.terminate(uid, 0))

        def mark(obj: Obj) -> None:
            when = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=grace)
            obj["metadata"]["deletionTimestamp"] = when.strftime("%Y-%m-%dT%H:%M:%SZ")
            obj["metadata"]["deletionGracePeriodSeconds"] = grace

        marked = self._store.mutate(self._pods, namespace, name, mark) or pod

        async def finish() -> None:
            await self._runner.terminate(uid, grace)
            current = self._store.peek(self._pods, namespace, name)
            if current is not None and current["metadata"]["uid"] == uid:
                self._store.delete(self._pods, namespace, name)

        return marked, self._track(uid, namespace, finish())

    def _track(self, uid: str, namespace: str, coro: Any) -> asyncio.Future[Any]:
        previous = self._pod_tasks.get(uid)

        async def with_previous() -> None:
            # A forced delete during a graceful one acts at once, and is done
            # only when the graceful one is done too.
            await coro
            if previous is not None:
                await asyncio.gather(previous, return_exceptions=True)

        task = self._spawn(with_previous())
        self._pod_tasks[uid] = task
        self._pod_namespaces[uid] = namespace

        def forget(done: asyncio.Future[Any]) -> None:
            if self._pod_tasks.get(uid) is done:
                del self._pod_tasks[uid]
                del self._pod_namespaces[uid]

        task.add_done_callback(forget)
        return task

    def begin_namespace_deletion(self, name: str) -> Obj:
        """Mark a namespace Terminating and start emptying it; returns the marked namespace."""
        current = self._store.get(self._namespaces, None, name)
        if current["metadata"].get("deletionTimestamp"):
            return current

        def mark(obj: Obj) -> None:
            obj["metadata"]["deletionTimestamp"] = now_rfc3339()
            obj["status"] = {"phase": "Terminating"}

        marked = self._store.mutate(self._namespaces, None, name, mark) or current
        finalizer = self._spawn(self._finalize_namespace(name))
        self._finalizers[name] = finalizer
        finalizer.add_done_callback(lambda _: self._finalizers.pop(name, None))
        return marked

    async def wait_namespace_gone(self, name: str) -> None:
        """Return once a namespace being deleted, and its pods' containers, are gone."""
        finalizer = self._finalizers.get(name)
        if finalizer is not None:
            await asyncio.shield(finalizer)

    async def _finalize_namespace(self, name: str) -> None:
        """The namespace controller: delete the contents, wait for the pods, drop the namespace."""
        cleanups: list[asyncio.Future[Any]] = []
        for rtype in self._registry.types:
            if not rtype.namespaced:
                continue
            for obj in self._store.list(rtype, name):
                if rtype is self._pods:
                    cleanups.append(self.delete_pod(obj, None)[1])
                else:
                    self._store.delete(rtype, name, obj["metadata"]["name"])
        # Pods deleted before the namespace may still be stopping: wait for them too.
        cleanups += [task for uid, task in self._pod_tasks.items() if self._pod_namespaces.get(uid) == name]
        await asyncio.gather(*cleanups, return_exceptions=True)
        # Anything written while the pods went (events) goes too.
        for rtype in self._registry.types:
            if rtype.namespaced and rtype is not self._pods:
                for obj in self._store.list(rtype, name):
                    self._store.delete(rtype, name, obj["metadata"]["name"])
        if self._store.peek(self._namespaces, None, name) is not None:
            self._store.delete(self._namespaces, None, name)


def _log_failure(task: asyncio.Future[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("deletion task failed", exc_info=task.exception())
