"""Watches: who is told about which change.

Five tables, each mapping a path to the set of watchers (connections) on it:

- ``data``: one-shot watches set by getData, or by exists on an existing node; fired by
  NodeDataChanged and NodeDeleted, and by NodeCreated for an exists watch set on a path
  that did not exist yet (ZooKeeper keeps exists watches in the data table too).
- ``child``: one-shot watches set by getChildren; fired by NodeChildrenChanged and by
  NodeDeleted of the node itself.
- ``persistent``: addWatch(PERSISTENT); every event on the path itself, kept after firing.
- ``recursive``: addWatch(PERSISTENT_RECURSIVE); NodeCreated, NodeDeleted and
  NodeDataChanged on the path and everything below it (never NodeChildrenChanged).

A watcher is told at most once per event even when several of its watches match, as in
ZooKeeper. Watches belong to a connection: when it closes they go (clients re-register
them with setWatches after reconnecting).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable

from engine.coordinator.jute import EventType, WatcherType
from engine.coordinator.tree import ancestors

_DATA_EVENTS = (EventType.NODE_CREATED, EventType.NODE_DATA_CHANGED, EventType.NODE_DELETED)


class Watches:
    """The watch tables of one server; owned by its event loop, not thread-safe."""

    def __init__(self) -> None:
        self.data: dict[str, set[Hashable]] = {}
        self.child: dict[str, set[Hashable]] = {}
        self.persistent: dict[str, set[Hashable]] = {}
        self.recursive: dict[str, set[Hashable]] = {}
        self._by_watcher: dict[Hashable, set[tuple[str, str]]] = {}

    def _table(self, kind: str) -> dict[str, set[Hashable]]:
        table: dict[str, set[Hashable]] = getattr(self, kind)
        return table

    def add(self, kind: str, path: str, watcher: Hashable) -> None:
        """Register a watch; ``kind`` is "data", "child", "persistent" or "recursive"."""
        self._table(kind).setdefault(path, set()).add(watcher)
        self._by_watcher.setdefault(watcher, set()).add((kind, path))

    def _discard(self, kind: str, path: str, watcher: Hashable) -> bool:
        table = self._table(kind)
        watchers = table.get(path)
        if watchers is None or watcher not in watchers:
            return False
        watchers.discard(watcher)
        if not watchers:
            del table[path]
        owned = self._by_watcher.get(watcher)
        if owned is not None:
            owned.discard((kind, path))
        return True

    def _pop(self, kind: str, path: str) -> set[Hashable]:
        watchers = self._table(kind).pop(path, None)
        if not watchers:
            return set()
        for watcher in watchers:
            owned = self._by_watcher.get(watcher)
            if owned is not None:
                owned.discard((kind, path))
        return watchers

    def trigger(self, event: EventType, path: str) -> list[Hashable]:
        """The watchers to tell about ``event`` on ``path``; one-shot watches are removed."""
        found: dict[Hashable, None] = {}
        if event == EventType.NODE_CHILDREN_CHANGED:
            found.update(dict.fromkeys(self._pop("child", path)))
        else:
            found.update(dict.fromkeys(self._pop("data", path)))
            if event == EventType.NODE_DELETED:
                found.update(dict.fromkeys(self._pop("child", path)))
        persistent = self.persistent.get(path)
        if persistent:
            found.update(dict.fromkeys(persistent))
        if self.recursive and event in _DATA_EVENTS:
            for ancestor in ancestors(path):
                recursive = self.recursive.get(ancestor)
                if recursive:
                    found.update(dict.fromkeys(recursive))
        return list(found)

    def remove_watcher(self, watcher: Hashable) -> None:
        """Forget every watch of a watcher (its connection closed)."""
        for kind, path in self._by_watcher.pop(watcher, set()):
            table = self._table(kind)
            watchers = table.get(path)
            if watchers is not None:
                watchers.discard(watcher)
                if not watchers:
                    del table[path]

    def remove(self, path: str, watcher: Hashable, watcher_type: int, apply: bool) -> bool:
        """checkWatches/removeWatches: does the watcher have such a watch (and drop it)."""
        kinds: list[str] = []
        if watcher_type in (WatcherType.DATA, WatcherType.ANY):
            kinds += ["data", "persistent", "recursive"]
        if watcher_type in (WatcherType.CHILDREN, WatcherType.ANY):
            kinds += ["child", "persistent"]
        found = False
        for kind in dict.fromkeys(kinds):
            watchers = self._table(kind).get(path)
            if watchers is not None and watcher in watchers:
                found = True
                if apply:
                    self._discard(kind, path, watcher)
        return found

    def paths_of(self, watcher: Hashable) -> Iterable[tuple[str, str]]:
        return sorted(self._by_watcher.get(watcher, set()))

    def count(self) -> int:
        return sum(len(v) for v in self._by_watcher.values())
