"""Admin: create, delete, list and describe topics (kafka-python's KafkaAdminClient habits).

Topic requests are znode writes in the coordinator's tree (see engine.metadata);
the controller turns them into partition state and the leaders create their
rings. ``create_topic`` and ``delete_topic`` return once the change took effect; a
topic whose creation fails half-way is deleted again.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from typing import Any

from kazoo.exceptions import NodeExistsError, NoNodeError

from engine import metadata as md
from engine.cluster import ClusterView
from engine.config import validate_topic_config, validate_topic_name
from engine.errors import (
    EngineError,
    EngineTimeoutError,
    UnknownTopicError,
)
from engine.log import LogReader
from engine.ring import Ring, seal_ring

#: How long a failed create_topic waits for the controller to delete what it wrote.
ABANDON_WAIT_S = 10.0


@dataclass(frozen=True)
class PartitionDescription:
    """One partition as describe_topic reports it."""

    partition: int
    leader: int | None
    leader_epoch: int
    replicas: tuple[int, ...]
    isr: tuple[int, ...]
    log_start_offset: int
    log_end_offset: int
    high_watermark: int


@dataclass(frozen=True)
class TopicDescription:
    name: str
    topic_id: str
    partitions: list[PartitionDescription]
    config: dict[str, Any]


class Admin:
    """Topic administration against the daemon of ``data_dir``."""

    def __init__(self, data_dir: str | os.PathLike[str] | None = None) -> None:
        self._cluster = ClusterView(data_dir, populate_rings=False)  # headers only

    @property
    def data_dir(self) -> str:
        return str(self._cluster.data_dir.root)

    def create_topic(
        self,
        name: str,
        partitions: int = 1,
        replication: int = 1,
        config: dict[str, Any] | None = None,
        timeout: float = 30.0,
    ) -> TopicDescription:
        """Create a topic and wait until every partition's leader is ready.

        The topic is made whole or not at all: a config, a partition count or a budget
        that would be refused raises before anything is written, and when a partition
        has no ready leader within ``timeout`` (a broker cannot start its replica), the
        topic is deleted again before the error is raised. ``timeout`` bounds the
        coordinator's requests too: a coordinator that does not answer fails the call
        within it (CoordinatorTimeoutError, an EngineTimeoutError, or
        CoordinatorUnavailableError)."""
        started = time.monotonic()
        with md.deadline(timeout, f"creating topic {name!r}"):
            assignment = md.create_topic(self._cluster.zk, name, partitions, replication, config)
        self._cluster.forget(name)
        left = max(timeout - (time.monotonic() - started), 0.0)
        try:
            self._cluster.refresh(name, wait_s=left)  # waits for leaders and rings
        except EngineError as exc:
            undone = (
                "it was deleted again"
                if self._abandon(name, assignment.topic_id)
                else "its deletion is left to the controller"
            )
            raise type(exc)(f"topic {name!r} was not created ({undone}): {exc}") from None
        return self.describe_topic(name)

    def _abandon(self, name: str, topic_id: str) -> bool:
        """Delete the topic a failed create_topic made (if it is still that one), through
        the controller as delete_topic does; False when the controller did not finish
        within ABANDON_WAIT_S (the request stays: list_topics no longer shows it)."""
        zk = self._cluster.zk
        try:
            data, _ = zk.get(md.topic_path(name))
        except NoNodeError:
            return True
        if md.TopicAssignment.from_json(name, md.decode(data)).topic_id != topic_id:
            return True
        self._request_deletion(name)
        return self._wait_deleted(name, ABANDON_WAIT_S)

    def delete_topic(self, name: str, timeout: float = 30.0) -> None:
        """Delete a topic and its data; returns once its znodes are gone."""
        validate_topic_name(name)
        zk = self._cluster.zk
        try:
            data, _ = zk.get(md.topic_path(name))
        except NoNodeError:
            raise UnknownTopicError(f"unknown topic: topic={name!r}") from None
        assignment = md.TopicAssignment.from_json(name, md.decode(data))
        self._request_deletion(name)
        if not self._wait_deleted(name, timeout):
            raise EngineTimeoutError(f"topic {name!r} was not deleted within {timeout:.0f} s")
        # The controller sealed the rings before it removed the topic; a ring made since
        # (a leader that started just then) is sealed here, so that once this returns no
        # producer can append to the topic.
        for partition, replicas in assignment.replicas.items():
            for broker in replicas:
                seal_ring(self._cluster.data_dir.ring_name(assignment.topic_id, partition, broker))

    def _request_deletion(self, name: str) -> None:
        zk = self._cluster.zk
        zk.ensure_path(md.DELETE_TOPICS)
        with contextlib.suppress(NodeExistsError):
            zk.create(f"{md.DELETE_TOPICS}/{name}", b"")
        self._cluster.forget(name)

    def _wait_deleted(self, name: str, timeout: float) -> bool:
        """Whether the controller removed the topic's nodes and its request in time."""
        zk = self._cluster.zk
        deadline = time.monotonic() + timeout
        while zk.exists(md.topic_path(name)) or zk.exists(f"{md.DELETE_TOPICS}/{name}"):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    def list_topics(self) -> list[str]:
        return md.list_topics(self._cluster.zk)

    def describe_topic(self, name: str) -> TopicDescription:
        """The topic's partitions: leader (None while a partition has none), epoch,
        replicas, ISR, and the leader's log start and end offsets and high watermark (-1
        where no leader's ring says). Works while partitions are offline."""
        validate_topic_name(name)
        zk = self._cluster.zk
        meta = md.read_topic(zk, name)
        if name in md.topics_being_deleted(zk):
            raise UnknownTopicError(f"topic is being deleted: topic={name!r}")
        parts = []
        for p in range(meta.partition_count):
            state = meta.states.get(p)
            leader = state.leader if state is not None and state.leader >= 0 else None
            start = end = hw = -1
            if leader is not None:
                ring_name = self._cluster.data_dir.ring_name(meta.assignment.topic_id, p, leader)
                try:
                    with Ring.open(ring_name, populate=False) as ring:  # its header only
                        status = ring.status()
                    end, hw, start = status.tail_offset, status.readable_end, status.base_offset
                except (FileNotFoundError, EngineError):
                    pass
                directory = self._cluster.data_dir.partition_dir(leader, name, p)
                try:
                    with LogReader(directory) as reader:
                        start = reader.log_start_offset
                except (OSError, EngineError):
                    pass
            parts.append(
                PartitionDescription(
                    partition=p,
                    leader=leader,
                    leader_epoch=state.leader_epoch if state else -1,
                    replicas=meta.assignment.replicas[p],
                    isr=state.isr if state else (),
                    log_start_offset=start,
                    log_end_offset=end,
                    high_watermark=hw,
                )
            )
        config = validate_topic_config(meta.config, existing=True)
        return TopicDescription(name, meta.assignment.topic_id, parts, dict(config))

    def describe_cluster(self) -> dict[str, Any]:
        zk = self._cluster.zk
        return {
            "coordinator": self._cluster.data_dir.coordinator_hosts(),
            "controller": md.controller_id(zk),
            "brokers": md.live_brokers(zk),
        }

    def close(self) -> None:
        self._cluster.close()

    def __enter__(self) -> Admin:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
