"""Objects, resourceVersions and the event history that watches replay.

The store plays etcd's part: one revision counter for every object of every
type (so resourceVersions are comparable across types, as clients assume),
an event history bounded in length that can also be compacted on purpose so
tests can provoke "410 Gone", and live watchers fed in commit order.

Everything here runs on the server's event loop and never awaits, so each
method is atomic with respect to every other: a watch that starts from a
resourceVersion sees exactly the events after it, with no gap and no overlap.
"""

from __future__ import annotations

import asyncio
import copy
import datetime as dt
import secrets
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from .resources import ResourceType
from .selectors import FieldSelector, LabelSelector, field_getter
from .status import ApiError, already_exists, conflict, gone, not_found

Obj = dict[str, Any]

# The alphabet upstream uses for generateName suffixes (no vowels, no 0/1/3).
_SUFFIX_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"


def now_rfc3339() -> str:
    """The current time as the API server writes timestamps (seconds, UTC, ``Z``)."""
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def key_of(rtype: ResourceType, namespace: str | None, name: str) -> tuple[str, str]:
    """The storage key of an object: (namespace or "" for cluster scope, name)."""
    return ((namespace or "") if rtype.namespaced else "", name)


@dataclass(frozen=True)
class Event:
    """A committed change: what it was, the object after it and (for watches) before it."""

    revision: int
    type: str  # ADDED, MODIFIED, DELETED
    rtype: ResourceType
    obj: Obj
    old: Obj | None


@dataclass(eq=False)  # identity semantics: watchers live in a set
class Watcher:
    """A live watch: which objects it sees and a queue of events ready to send.

    Queue items are ``{"type": ..., "object": ...}`` dicts in commit order, or
    ``None`` when the watch must end (server shutdown).
    """

    rtype: ResourceType
    namespace: str | None
    labels: LabelSelector
    fields: FieldSelector
    allow_bookmarks: bool
    queue: asyncio.Queue[Obj | None] = field(default_factory=asyncio.Queue)

    def _matches(self, obj: Obj) -> bool:
        meta = obj.get("metadata", {})
        if self.namespace is not None and meta.get("namespace") != self.namespace:
            return False
        _, fields_of = field_getter(self.rtype.plural)
        return self.labels.matches(meta.get("labels")) and self.fields.matches(fields_of(obj))

    def translate(self, event: Event) -> Obj | None:
        """The event this watcher must send for a change, or None.

        An object that starts or stops matching the selectors is ADDED or
        DELETED from this watcher's point of view, as the real watch cache does.
        """
        if event.rtype != self.rtype:
            return None
        now = self._matches(event.obj)
        before = event.old is not None and self._matches(event.old)
        if event.type == "ADDED":
            kind = "ADDED" if now else None
        elif event.type == "DELETED":
            kind = "DELETED" if before or now else None
        elif now and before:
            kind = "MODIFIED"
        elif now:
            kind = "ADDED"
        elif before:
            kind = "DELETED"
        else:
            kind = None
        if kind is None:
            return None
        return {"type": kind, "object": copy.deepcopy(event.obj)}


class Store:
    """All objects of all types, one revision counter, and the watchers."""

    def __init__(self, *, history_size: int = 5000) -> None:
        self.revision = 1
        self._objects: dict[ResourceType, dict[tuple[str, str], Obj]] = {}
        self._history: deque[Event] = deque()
        self._history_size = history_size
        # Revisions at or below this one are no longer in the history.
        self.compacted = 0
        self._watchers: set[Watcher] = set()
        # Set (and replaced) whenever a watcher comes or goes, for tests to wait on.
        self._watchers_changed: asyncio.Event | None = None

    # --- reads ------------------------------------------------------------

    def _table(self, rtype: ResourceType) -> dict[tuple[str, str], Obj]:
        return self._objects.setdefault(rtype, {})

    def get(self, rtype: ResourceType, namespace: str | None, name: str) -> Obj:
        """A copy of one object; 404 when absent."""
        obj = self._table(rtype).get(key_of(rtype, namespace, name))
        if obj is None:
            raise not_found(rtype.plural, name, rtype.group)
        return copy.deepcopy(obj)

    def peek(self, rtype: ResourceType, namespace: str | None, name: str) -> Obj | None:
        """The stored object itself (not a copy), or None; for read-only checks."""
        return self._table(rtype).get(key_of(rtype, namespace, name))

    def peek_namespace(self, name: str) -> Obj | None:
        """The stored Namespace called ``name`` (not a copy), or None."""
        for rtype, table in self._objects.items():
            if rtype.kind == "Namespace" and rtype.group == "":
                return table.get(("", name))
        return None

    def list(
        self,
        rtype: ResourceType,
        namespace: str | None,
        labels: LabelSelector | None = None,
        fields: FieldSelector | None = None,
    ) -> list[Obj]:
        """Copies of the matching objects, ordered by (namespace, name) as etcd keys are."""
        labels = labels or LabelSelector()
        fields = fields or FieldSelector()
        _, fields_of = field_getter(rtype.plural)
        out: list[Obj] = []
        for (ns, _name), obj in sorted(self._table(rtype).items()):
            if rtype.namespaced and namespace is not None and ns != namespace:
                continue
            if not labels.matches(obj["metadata"].get("labels")):
                continue
            if not fields.matches(fields_of(obj)):
                continue
            out.append(copy.deepcopy(obj))
        return out

    def iter_all(self, rtype: ResourceType) -> Iterator[Obj]:
        """The stored objects of a type (not copies)."""
        yield from list(self._table(rtype).values())

    # --- writes -------------------------------------------------------------

    def _commit(self, rtype: ResourceType, kind: str, obj: Obj, old: Obj | None) -> None:
        event = Event(self.revision, kind, rtype, copy.deepcopy(obj), old)
        self._history.append(event)
        while len(self._history) > self._history_size:
            dropped = self._history.popleft()
            self.compacted = dropped.revision
        for watcher in list(self._watchers):
            message = watcher.translate(event)
            if message is not None:
                watcher.queue.put_nowait(message)

    def _next_revision(self) -> str:
        self.revision += 1
        return str(self.revision)

    def generate_name(self, rtype: ResourceType, namespace: str | None, prefix: str) -> str:
        """A free name for ``metadata.generateName``: the prefix and 5 random characters."""
        table = self._table(rtype)
        while True:
            suffix = "".join(secrets.choice(_SUFFIX_ALPHABET) for _ in range(5))
            candidate = f"{prefix}{suffix}"
            if key_of(rtype, namespace, candidate) not in table:
                return candidate

    def create(self, rtype: ResourceType, obj: Obj, *, dry_run: bool = False) -> Obj:
        """Store a new object (already defaulted and validated); 409 if the name is taken.

        Assigns uid, creationTimestamp, resourceVersion and generation the way
        the API server does. A dry run returns the same object without storing
        it or using up a revision.
        """
        meta = obj.setdefault("metadata", {})
        namespace = meta.get("namespace") if rtype.namespaced else None
        key = key_of(rtype, namespace, meta["name"])
        if key in self._table(rtype):
            raise already_exists(rtype.plural, meta["name"], rtype.group)
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = now_rfc3339()
        meta.setdefault("generation", 1)
        for transient in ("resourceVersion", "deletionTimestamp", "deletionGracePeriodSeconds", "selfLink"):
            meta.pop(transient, None)
        if dry_run:
            return copy.deepcopy(obj)
        meta["resourceVersion"] = self._next_revision()
        self._table(rtype)[key] = copy.deepcopy(obj)
        self._commit(rtype, "ADDED", obj, None)
        return copy.deepcopy(obj)

    def replace(
        self,
        rtype: ResourceType,
        obj: Obj,
        *,
        check_version: bool = True,
        dry_run: bool = False,
        system: bool = False,
    ) -> Obj:
        """Replace an object as PUT does.

        With ``check_version`` a resourceVersion in ``obj`` that is not the
        stored one is a 409 Conflict (optimistic concurrency). An update that
        changes nothing keeps the resourceVersion and emits no event, as upstream.
        ``system`` writes (the server's own) may set the deletion fields.
        """
        meta = obj.setdefault("metadata", {})
        namespace = meta.get("namespace") if rtype.namespaced else None
        key = key_of(rtype, namespace, meta["name"])
        current = self._table(rtype).get(key)
        if current is None:
            raise not_found(rtype.plural, meta["name"], rtype.group)
        wanted = meta.get("resourceVersion")
        if check_version and wanted and wanted != current["metadata"]["resourceVersion"]:
            raise conflict(rtype.plural, meta["name"], rtype.group)
        # Fields the client cannot change.
        kept_fields = ["uid", "creationTimestamp"]
        if not system:
            kept_fields += ["deletionTimestamp", "deletionGracePeriodSeconds"]
        for kept in kept_fields:
            if kept in current["metadata"]:
                meta[kept] = current["metadata"][kept]
            else:
                meta.pop(kept, None)
        generation = current["metadata"].get("generation", 1)
        if obj.get("spec") != current.get("spec"):
            generation += 1
        meta["generation"] = generation
        meta["resourceVersion"] = current["metadata"]["resourceVersion"]
        if obj == current or dry_run:
            return copy.deepcopy(obj)
        meta["resourceVersion"] = self._next_revision()
        self._table(rtype)[key] = copy.deepcopy(obj)
        self._commit(rtype, "MODIFIED", obj, current)
        return copy.deepcopy(obj)

    def mutate(
        self,
        rtype: ResourceType,
        namespace: str | None,
        name: str,
        change: Callable[[Obj], None],
    ) -> Obj | None:
        """Apply ``change`` to a copy of an object and store it; None if it is gone.

        For the server's own writers (pod status), which never conflict.
        """
        current = self._table(rtype).get(key_of(rtype, namespace, name))
        if current is None:
            return None
        updated = copy.deepcopy(current)
        change(updated)
        return self.replace(rtype, updated, check_version=False, system=True)

    def delete(self, rtype: ResourceType, namespace: str | None, name: str, *, dry_run: bool = False) -> Obj:
        """Remove an object; the DELETED event carries a fresh resourceVersion."""
        key = key_of(rtype, namespace, name)
        current = self._table(rtype).get(key)
        if current is None:
            raise not_found(rtype.plural, name, rtype.group)
        if dry_run:
            return copy.deepcopy(current)
        del self._table(rtype)[key]
        final = copy.deepcopy(current)
        final["metadata"]["resourceVersion"] = self._next_revision()
        self._commit(rtype, "DELETED", final, current)
        return copy.deepcopy(final)

    def compact(self) -> int:
        """Forget the whole history, as etcd compaction does; returns the revision compacted."""
        self._history.clear()
        self.compacted = self.revision
        return self.compacted

    # --- watches --------------------------------------------------------------

    def watch(
        self,
        rtype: ResourceType,
        namespace: str | None,
        labels: LabelSelector,
        fields: FieldSelector,
        *,
        resource_version: str | None,
        allow_bookmarks: bool = False,
        send_initial_events: bool | None = None,
    ) -> Watcher:
        """Register a watcher and queue the events it must see first.

        ``resource_version`` unset or "0": synthetic ADDED events for every
        matching object, then live changes. A number: the history after it,
        then live changes; an ERROR 410 when it is older than the history.
        ``send_initial_events`` asks for the initial ADDED events plus a
        BOOKMARK marked ``k8s.io/initial-events-end`` (the watch-list protocol).
        """
        watcher = Watcher(rtype, namespace, labels, fields, allow_bookmarks)
        start_fresh = resource_version in (None, "", "0") or send_initial_events
        if start_fresh:
            for obj in self.list(rtype, namespace, labels, fields):
                watcher.queue.put_nowait({"type": "ADDED", "object": obj})
            if send_initial_events and allow_bookmarks:
                watcher.queue.put_nowait(self._bookmark(rtype, {"k8s.io/initial-events-end": "true"}))
        else:
            try:
                since = int(resource_version or "0")
            except ValueError:
                raise ApiError(400, "BadRequest", f'invalid resource version: "{resource_version}"') from None
            if since < self.compacted:
                watcher.queue.put_nowait(
                    {
                        "type": "ERROR",
                        "object": gone(f"too old resource version: {since} ({self.compacted + 1})").body(),
                    }
                )
                watcher.queue.put_nowait(None)
                return watcher
            if since > self.revision:
                timeout = ApiError(
                    504,
                    "Timeout",
                    f"Too large resource version: {since}, current: {self.revision}",
                    {
                        "causes": [
                            {"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}
                        ],
                        "retryAfterSeconds": 1,
                    },
                )
                watcher.queue.put_nowait({"type": "ERROR", "object": timeout.body()})
                watcher.queue.put_nowait(None)
                return watcher
            for event in self._history:
                if event.revision > since:
                    message = watcher.translate(event)
                    if message is not None:
                        watcher.queue.put_nowait(message)
        self._watchers.add(watcher)
        self._signal_watchers_changed()
        return watcher

    def unwatch(self, watcher: Watcher) -> None:
        """Stop feeding a watcher (its stream ended)."""
        if watcher in self._watchers:
            self._watchers.discard(watcher)
            self._signal_watchers_changed()

    def watcher_count(self, namespace: str | None = None) -> int:
        """How many watches are live (of one namespace, if given)."""
        if namespace is None:
            return len(self._watchers)
        return sum(1 for w in self._watchers if w.namespace == namespace)

    def _signal_watchers_changed(self) -> None:
        if self._watchers_changed is not None:
            self._watchers_changed.set()
            self._watchers_changed = None

    async def wait_watcher_count(self, count: int, namespace: str | None = None) -> None:
        """Return once exactly ``count`` watches are live (of one namespace, if given)."""
        while self.watcher_count(namespace) != count:
            if self._watchers_changed is None:
                self._watchers_changed = asyncio.Event()
            await self._watchers_changed.wait()

    def _bookmark(self, rtype: ResourceType, annotations: dict[str, str] | None = None) -> Obj:
        meta: Obj = {"resourceVersion": str(self.revision), "creationTimestamp": None}
        if annotations:
            meta["annotations"] = annotations
        return {
            "type": "BOOKMARK",
            "object": {"kind": rtype.kind, "apiVersion": rtype.api_version, "metadata": meta},
        }

    def send_bookmarks(self) -> None:
        """Queue a BOOKMARK at the current revision to every watcher that allows them.

        Going through the queue keeps a bookmark behind every event it covers.
        """
        for watcher in list(self._watchers):
            if watcher.allow_bookmarks:
                watcher.queue.put_nowait(self._bookmark(watcher.rtype))

    def close_watchers(self) -> None:
        """End every watch (server shutdown)."""
        for watcher in list(self._watchers):
            watcher.queue.put_nowait(None)
        self._watchers.clear()
