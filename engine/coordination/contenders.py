"""The contenders for one lock, lease or election: sequential znodes under one parent.

Each contender creates a node ``<uuid hex><marker><seq>`` under the parent (ephemeral
for a Lock or an Election, a TTL node for a LeaseLock) with its identifier as data.
The coordinator numbers them in creation order, so the contender with the lowest
sequence came first: it holds the lock, or leads. The others each watch the node just
before their own (a Lock, an Election: no herd when one goes) or the first one (a
lease). The parent is a container: made on demand, deleted by the coordinator after
its last contender left; a create that finds it gone makes it again.

Connection losses: a request answered by a lost connection is made again once the
client is connected again (within the calling thread's metadata.deadline, else
REQUEST_TIMEOUT_S); a create that may have taken effect is first looked for by its
uuid. A session that expired takes its ephemeral nodes with it: :meth:`predecessor`
then raises ContenderGone and the caller joins again, at the back.

Used by the calling thread of the recipe that owns it (a Lock's acquire, an Election's
campaign thread); it holds no state but its client, parent and marker.
"""

from __future__ import annotations

import contextlib
import re
import threading
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

from kazoo.client import KazooClient
from kazoo.exceptions import ConnectionLoss, NodeExistsError, NoNodeError, SessionExpiredError

from engine import metadata as md
from engine.coordination.requests import create_container, create_ttl

T = TypeVar("T")

_SEQUENCE = re.compile(r"(-?\d{10})$")

#: What a request may meet while the coordinator is away; made again once connected.
_LOST = (ConnectionLoss, SessionExpiredError)


class ContenderGone(Exception):  # an internal signal: never leaves the package
    """The contender's node is no longer there (its session expired, its TTL ran out)."""


def sequence_of(node: str) -> int:
    match = _SEQUENCE.search(node)
    return int(match.group(1)) if match else 0


class Contenders:
    """The sequential contender nodes of one parent that carry ``marker``."""

    def __init__(self, zk: KazooClient, parent: str, marker: str) -> None:
        self.zk = zk
        self.parent = parent
        self.marker = marker

    # -- joining and leaving -------------------------------------------------------

    def join(self, data: bytes, ttl_ms: int | None = None) -> str:
        """Create this contender's node, ephemeral (or a TTL node of ``ttl_ms``), and
        return its name. The parent is made first when it is missing."""
        prefix = uuid.uuid4().hex + self.marker
        path = f"{self.parent}/{prefix}"
        tried = False
        while True:
            if tried:
                found = self.retried(self._find, prefix)
                if found is not None:
                    return found
            tried = True
            try:
                if ttl_ms is None:
                    created = self.zk.create(path, data, ephemeral=True, sequence=True)
                else:
                    created = create_ttl(self.zk, path, data, ttl_ms, sequence=True)
                return str(created).rsplit("/", 1)[1]
            except NoNodeError:
                tried = False
                self._make_parent()
            except _LOST:
                if not md.wait_connected(self.zk):
                    raise

    def leave(self, node: str) -> bool:
        """Delete the contender's node; False when the first try found it gone. A node
        missing at a try after a lost connection counts as deleted by the try before
        (the caller knows whether it could have gone otherwise: a Lock by its session
        id, a lease by its deadline)."""
        first = True
        while True:
            try:
                self.zk.delete(f"{self.parent}/{node}")
                return True
            except NoNodeError:
                return not first
            except _LOST:
                first = False
                if not md.wait_connected(self.zk):
                    raise

    def _make_parent(self) -> None:
        try:
            self.retried(create_container, self.zk, self.parent)
        except NodeExistsError:
            pass
        except NoNodeError:  # the recipe's directory is missing (an older daemon)
            self.retried(self.zk.ensure_path, self.parent.rsplit("/", 1)[0])

    # -- looking ---------------------------------------------------------------------

    def ordered(self) -> list[str]:
        """The contenders' node names, the first (lowest sequence) first."""
        try:
            children = self.retried(self.zk.get_children, self.parent)
        except NoNodeError:
            return []
        mine = [c for c in children if self.marker in c and _SEQUENCE.search(c)]
        return sorted(mine, key=sequence_of)

    def predecessor(self, node: str) -> str | None:
        """The contender just before ``node``; None when ``node`` is the first.
        ContenderGone when ``node`` is not there."""
        nodes = self.ordered()
        if node not in nodes:
            raise ContenderGone(node)
        index = nodes.index(node)
        return nodes[index - 1] if index else None

    def data(self, node: str) -> bytes | None:
        """A contender's data; None when it is gone."""
        try:
            value, _ = self.retried(self.zk.get, f"{self.parent}/{node}")
        except NoNodeError:
            return None
        return bytes(value or b"")

    def identifiers(self) -> list[str]:
        """Each contender's identifier (its data), the first first."""
        out = []
        for node in self.ordered():
            value = self.data(node)
            if value is not None:
                out.append(value.decode("utf-8", "replace"))
        return out

    def first(self) -> tuple[str, str] | None:
        """The first contender's node and identifier; None when there is none."""
        for node in self.ordered():
            value = self.data(node)
            if value is not None:
                return node, value.decode("utf-8", "replace")
        return None

    def watch(self, node: str, wake: threading.Event) -> bool:
        """Set ``wake`` when ``node`` changes or goes; False (and ``wake`` untouched)
        when it is gone already."""

        def changed(_event: Any) -> None:
            wake.set()

        return self.retried(self.zk.exists, f"{self.parent}/{node}", changed) is not None

    def _find(self, prefix: str) -> str | None:
        with contextlib.suppress(NoNodeError):
            for child in self.zk.get_children(self.parent):
                if child.startswith(prefix):
                    return str(child)
        return None

    def retried(self, call: Callable[..., T], *args: Any) -> T:
        """``call(*args)``, made again after a lost connection once connected again."""
        while True:
            try:
                return call(*args)
            except _LOST:
                if not md.wait_connected(self.zk):
                    raise
