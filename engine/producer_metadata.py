"""What a producer knows of the topics it sends to: their leaders' rings, as routes.

A :class:`Route` is a producer's view of one topic: the leaders' rings by partition,
the topic's limits, and the C route (engine_route_t, native/ring.h) through which
the hot path appends and the partitioner keeps its sticky partition. Routes are
looked up on first use and again when an append finds a leader's ring sealed (the
leader moved, or the topic went). Lookups wait for leaders and for the coordinator
up to a bound (``max_block_ms`` unless the caller gives another).

Threads: the producer's sending threads and its sender thread; one lock guards the
routes. A Route, once made, is not changed (a new leader means a new Route); a
thread may go on using the one it holds.
"""

from __future__ import annotations

import os
import random
import threading
from collections.abc import Callable
from typing import Any

from engine._native import ffi
from engine.cluster import ClusterView, TopicView
from engine.config import is_compacted
from engine.ring import producer_fields

#: Bytes a one-record batch adds to key + value + headers (61-byte batch header,
#: record varints), so that the batch stays within max.message.bytes.
SINGLE_RECORD_OVERHEAD = 96


class Route:
    """A producer's view of one topic (see the module docstring)."""

    __slots__ = (
        "address", "c", "c_regions", "compacted", "count", "fields", "max_bytes", "min_insync",
        "regions", "view",
    )  # fmt: skip

    def __init__(self, view: TopicView, fields: Any, batch_size: int) -> None:
        self.view = view
        self.fields = fields  # the direct path's: no producer id, no min.insync.replicas
        self.count = view.partition_count
        self.max_bytes = view.max_message_bytes
        self.min_insync = int(view.config["min.insync.replicas"])
        #: cleanup.policy has "compact": every record needs a key (Kafka refuses others).
        self.compacted = is_compacted(view.config)
        self.regions = [view.rings[p]._ptr() for p in range(self.count)]
        self.c_regions = ffi.new("void *[]", self.regions)
        self.c = c = ffi.new("engine_route_t *")
        c.fields = fields
        c.regions = self.c_regions
        c.partition_count = self.count
        c.sticky_partition = random.randrange(self.count)
        c.batch_bytes = batch_size
        c.max_record_bytes = self.max_bytes - SINGLE_RECORD_OVERHEAD
        c.random_state = random.getrandbits(64) | 1
        self.address = int(ffi.cast("uintptr_t", c))

    @property
    def topic(self) -> str:
        return self.view.name


class ProducerMetadata:
    """The routes of one producer, and the coordinator session they come from."""

    def __init__(
        self, data_dir: str | os.PathLike[str] | None, max_block_ms: int, batch_size: int
    ) -> None:
        # A topic whose partitions or config changed is looked up afresh at its next
        # send: new partitions take records, an altered min.insync.replicas applies.
        self.cluster = ClusterView(
            data_dir, lookup_timeout_s=max_block_ms / 1000, on_topic_change=self.forget
        )
        self.batch_size = batch_size
        self.fields = producer_fields(timeout_ms=max_block_ms)
        self.lock = threading.RLock()
        self._routes: dict[str, Route] = {}
        self._stale: set[str] = set()  # topics whose route a sealed ring proved stale
        #: topic -> (the address of its engine_route_t, the Route): what the C send path
        #: (engine._send) may append through; kept by the producer for acks 0 and 1.
        self.fast: dict[str, tuple[Any, ...]] = {}
        self.fast_enabled = False
        #: A producer that batches in C: (topic, partitions) -> the accumulator's list of
        #: open batches by partition, the third item of its ``fast`` entries.
        self.opens_for: Callable[[str, int], list[Any]] | None = None

    def route(self, topic: str, wait_s: float | None = None) -> Route:
        """The topic's route, as last known (looked up on first use, waiting up to
        ``wait_s``, default max_block_ms, for its leaders): what send() partitions by. It
        may be stale (a leader moved); the sender appends through :meth:`current`.
        UnknownTopicError, EngineTimeoutError."""
        route = self._routes.get(topic)
        if route is None:
            with self.lock:
                route = self._routes.get(topic)
                if route is None:
                    route = self._make(self.cluster.topic(topic, wait_s))
        return route

    def current(self, topic: str, wait_s: float | None = None) -> Route:
        """The topic's route with its leaders as they are now: looked up again when the
        last one was found stale."""
        route = self._routes.get(topic)
        if route is None or topic in self._stale:
            with self.lock:
                route = self._routes.get(topic)
                if route is None or topic in self._stale:
                    route = self._make(self.cluster.refresh(topic, wait_s))
                    self._stale.discard(topic)
        return route

    def refresh(self, topic: str, stale: Route | None = None, wait_s: float | None = None) -> Route:
        """A new route for ``topic`` (its leaders moved); when ``stale`` is given and the
        current route is already another, that one (another thread refreshed it)."""
        with self.lock:
            current = self._routes.get(topic)
            if stale is not None and current is not None and current is not stale:
                return current
            self.invalidate(topic)
            return self.current(topic, wait_s)

    def _make(self, view: TopicView) -> Route:
        route = Route(view, self.fields, self.batch_size)
        self._routes[view.name] = route
        # A compacted topic's sends take the general path, which refuses keyless records
        # (the C path does not look at the topic's config).
        if self.fast_enabled and not route.compacted:
            if self.opens_for is None:
                self.fast[view.name] = (route.address, route)
            else:
                opens = self.opens_for(view.name, route.count)
                self.fast[view.name] = (route.address, route, opens)
        return route

    def invalidate(self, topic: str, route: Route | None = None) -> None:
        """``topic``'s leaders moved (or it went): the next :meth:`current` looks it up
        again; meanwhile :meth:`route` still gives the stale route (partitioning needs
        only its partition count). With ``route``: only if that is still the one."""
        with self.lock:
            if route is not None and self._routes.get(topic) is not route:
                return
            self._stale.add(topic)
            self.fast.pop(topic, None)
            self.cluster.forget(topic)

    def forget(self, topic: str) -> None:
        """Drop ``topic`` (deleted): the next use looks it up from scratch."""
        with self.lock:
            self._routes.pop(topic, None)
            self._stale.discard(topic)
            self.fast.pop(topic, None)
            self.cluster.forget(topic)

    def partition_count(self, topic: str) -> int:
        return self.route(topic).count

    def close(self) -> None:
        with self.lock:
            self.fast.clear()
            self._routes.clear()
            self.cluster.close()
