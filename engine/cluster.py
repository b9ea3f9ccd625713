"""A client's view of the cluster: its coordinator session, topic metadata, mapped rings.

Shared by Producer, Consumer and Admin. One ``ClusterView`` per client object;
it is used by that client's calling thread (and the producer's background
sender, which takes ``lock``). Metadata is cached until an operation finds it
stale (a sealed ring, a ring that is gone), then refreshed.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kazoo.client import KazooClient
from kazoo.protocol.states import EventType, WatchedEvent

from engine import metadata as md
from engine.config import validate_topic_config, validate_topic_name
from engine.datadir import DataDir
from engine.errors import (
    ClosedError,
    EngineTimeoutError,
    RingPermissionError,
    TopicExistsError,
    UnknownTopicError,
)
from engine.ring import Ring

#: While a topic's leaders are not ready, look again this often.
RETRY_S = 0.01


@dataclass
class TopicView:
    """A topic as a client uses it: partition count, config, rings by partition."""

    meta: md.TopicMetadata
    config: dict[str, Any]
    rings: dict[int, Ring] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.meta.name

    @property
    def partition_count(self) -> int:
        return self.meta.partition_count

    @property
    def max_message_bytes(self) -> int:
        return int(self.config["max.message.bytes"])

    def leader(self, partition: int) -> int | None:
        state = self.meta.states.get(partition)
        return state.leader if state else None


class ClusterView:
    """Coordinator session plus cached topics and rings of one client object."""

    def __init__(
        self,
        data_dir: str | os.PathLike[str] | None,
        populate_rings: bool = True,
        lookup_timeout_s: float = 10.0,
        on_topic_change: Callable[[str], None] | None = None,
        zk: KazooClient | None = None,
    ) -> None:
        """``zk``: a coordinator session to share (a broker's), which close() leaves
        open; by default the view connects its own. ``populate_rings=False``: map rings
        without faulting their pages in (a client that reads only their headers: the
        Admin). ``lookup_timeout_s``: how long a topic
        lookup waits, by default, for its leaders and for the coordinator (a producer's
        max_block_ms). ``on_topic_change(topic)``: called (on a kazoo thread) when a topic
        looked up since changed its partitions or its config."""
        self.data_dir = DataDir.resolve(data_dir)
        self._on_topic_change = on_topic_change
        self.lookup_timeout_s = lookup_timeout_s
        self._populate = populate_rings
        self._owns_zk = zk is None
        self._zk: KazooClient | None = md.connect(self.data_dir) if zk is None else zk
        # A view replaced (a new leader) or forgotten (a deleted topic) is dropped, not
        # closed: its rings are unmapped when the last object using them lets go (Ring's
        # finalizer), for example a producer's route built on the old view. Every C call
        # into a ring is made through an object that holds it (the Ring, a route, the
        # caller's list of rings), so a ring in use is never unmapped. Keeping replaced
        # rings until close() kept every deleted topic's shared memory alive as long as
        # the client (the benchmark's Admin: 256 MiB per run).
        self.topics: dict[str, TopicView] = {}
        self.lock = threading.RLock()
        self._pid = os.getpid()

    @property
    def zk(self) -> KazooClient:
        if self._zk is None:
            raise ClosedError("client is closed")
        return self._zk

    def topic(self, name: str, wait_s: float | None = None) -> TopicView:
        """The topic's view, loading it (and waiting for its rings) on first use."""
        view = self.topics.get(name)
        if view is None:
            view = self.refresh(name, wait_s)
        return view

    def refresh(self, name: str, wait_s: float | None = None) -> TopicView:
        """Reload the topic's metadata and remap its rings; waits for leaders and rings,
        and for the coordinator, up to ``wait_s`` (default: lookup_timeout_s) in all."""
        validate_topic_name(name)
        wait_s = self.lookup_timeout_s if wait_s is None else wait_s
        with md.deadline(wait_s, f"looking up topic {name!r}"):
            return self._refresh(name, wait_s)

    def _refresh(self, name: str, wait_s: float) -> TopicView:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                watch = self._topic_changed if self._on_topic_change is not None else None
                meta = md.read_topic(self.zk, name, watch=watch)
            except UnknownTopicError:
                if not self._auto_create(name):
                    raise
                continue
            if self.zk.exists(f"{md.DELETE_TOPICS}/{name}"):
                raise UnknownTopicError(f"topic is being deleted: topic={name!r}")
            rings: dict[int, Ring] = {}
            missing: list[int] = []
            refused: dict[int, RingPermissionError] = {}
            for p in range(meta.partition_count):
                state = meta.states.get(p)
                if state is None:
                    missing.append(p)
                    continue
                ring_name = self.data_dir.ring_name(meta.assignment.topic_id, p, state.leader)
                old = self.topics.get(name)
                if (
                    old is not None
                    and p in old.rings
                    and old.rings[p].name == ring_name
                    and not old.rings[p].sealed
                ):
                    rings[p] = old.rings[p]  # still mapped: keep using it
                    continue
                try:
                    rings[p] = Ring.open(ring_name, populate=self._populate)
                except FileNotFoundError:
                    missing.append(p)
                    continue
                except RingPermissionError as exc:
                    # Never mapped. Its broker replaces such a ring as it starts leading
                    # (when it may): until then it counts as not there yet.
                    refused[p] = exc
                    missing.append(p)
                    continue
                if rings[p].sealed:
                    rings.pop(p).close()
                    missing.append(p)
            if not missing:
                break
            old = self.topics.get(name)
            for ring in rings.values():
                if old is None or all(ring is not r for r in old.rings.values()):
                    ring.close()  # opened in this attempt only: nobody else holds it
            if time.monotonic() + RETRY_S >= deadline:  # no look starts past the deadline
                for p, refusal in refused.items():
                    raise RingPermissionError(f"partition {p} of topic {name!r}: {refusal}")
                raise EngineTimeoutError(
                    f"partitions {missing} of topic {name!r} have no ready leader after "
                    f"{wait_s:.0f} s"
                )
            time.sleep(RETRY_S)
        self.topics.pop(name, None)  # rings it does not share with the new view go with it
        view = TopicView(meta, validate_topic_config(meta.config, existing=True), rings)
        self.topics[name] = view
        return view

    def _topic_changed(self, event: WatchedEvent) -> None:
        """A watch of a topic's node or config node fired (a kazoo thread)."""
        if event.type == EventType.CHANGED and self._on_topic_change is not None:
            self._on_topic_change(event.path.rsplit("/", 1)[1])

    def _auto_create(self, name: str) -> bool:
        """Create the topic if the cluster allows auto-creation; False if it does not."""
        defaults = md.read_cluster_config(self.zk)
        if not defaults.get("auto.create.topics.enable"):
            return False
        with contextlib.suppress(TopicExistsError):  # someone else created it meanwhile
            md.create_topic(self.zk, name, int(defaults["num.partitions"]), 1, None)
        return True

    def forget(self, name: str) -> None:
        """Drop the topic's view (its rings are unmapped once nothing uses them)."""
        self.topics.pop(name, None)

    def exists(self, name: str) -> bool:
        try:
            md.read_topic(self.zk, name)
        except UnknownTopicError:
            return False
        return True

    def __enter__(self) -> ClusterView:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if os.getpid() != self._pid:
            self._zk = None
            return
        for view in self.topics.values():
            for ring in view.rings.values():
                ring.close()
        self.topics.clear()
        if self._zk is not None and self._owns_zk:
            self._zk.stop()
            self._zk.close()
        self._zk = None
