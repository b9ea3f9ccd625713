"""Admin: topics, their configs, partitions and records, groups, leaders, the cluster
(kafka-python's KafkaAdminClient names and habits).

Topic requests are znode writes in the coordinator's tree (see engine.metadata);
the controller turns them into partition state and the leaders create their
rings. ``create_topic`` and ``delete_topic`` return once the change took effect; a
topic whose creation fails half-way is deleted again. The day-to-day operations
(``incremental_alter_configs``, ``create_partitions``, ``delete_records``,
``perform_leader_election``, ``delete_consumer_groups``) likewise write what they
ask for and return once the brokers or the controller carried it out.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kazoo.exceptions import NodeExistsError, NoNodeError

from engine import metadata as md
from engine import offset_store as store
from engine.cluster import ClusterView
from engine.config import validate_topic_config, validate_topic_name
from engine.errors import (
    ConfigError,
    EngineError,
    EngineTimeoutError,
    OffsetOutOfRangeError,
    PartitionOutOfRangeError,
    UnknownTopicError,
)
from engine.kafka_client.settings import wants_kafka
from engine.log import LogReader
from engine.record import TopicPartition
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

    def __new__(cls, data_dir: str | os.PathLike[str] | None = None, **options: Any) -> Admin:
        if cls is Admin and wants_kafka(options):
            from engine.kafka_client.admin import KafkaAdmin

            return object.__new__(KafkaAdmin)
        return object.__new__(cls)

    def __init__(self, data_dir: str | os.PathLike[str] | None = None) -> None:
        """``Admin(bootstrap_servers=..., ...)`` administers a Kafka cluster instead
        (engine.kafka_client.admin.KafkaAdmin): the same methods, results and errors."""
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

    def incremental_alter_configs(
        self,
        topic: str,
        configs: Mapping[str, Any] | None = None,
        delete: Iterable[str] = (),
        timeout: float = 30.0,
    ) -> dict[str, Any]:
        """Set ``configs`` and delete the keys in ``delete`` (back to their defaults) of a
        topic's config, leaving its other keys: Kafka's IncrementalAlterConfigs. The new
        config is validated whole, as create_topic validates; ring.bytes and
        max.message.bytes cannot change (engine.config.FIXED_AT_CREATION). Every other
        key applies to the running brokers at once: the next retention check, segment
        roll, flush, ISR check or failover obeys it, and producers look the topic up
        again (min.insync.replicas). Returns the topic's whole config."""
        with md.deadline(timeout, f"altering the config of topic {topic!r}"):
            return dict(md.alter_topic_config(self._cluster.zk, topic, configs, delete))

    def create_partitions(
        self, topic_partitions: Mapping[str, int], timeout: float = 30.0
    ) -> dict[str, TopicDescription]:
        """Grow each topic to the partition count given for it (kafka-python's
        ``create_partitions``, with the new total count; ``NewPartitions`` objects with a
        ``total_count`` are taken too), waiting until every new partition's leader is
        ready. The new partitions get replicas, leaders and rings as a new topic's do,
        within the shared-memory budget (ConfigError before anything is written).

        Producers look the topic up afresh and send to the new partitions too: a key's
        partition is its hash modulo the partition count, so records with a key may go
        to another partition than before (as in Kafka). Consumer groups subscribed to the
        topic rebalance over the new partitions within about a second."""
        started = time.monotonic()
        out: dict[str, TopicDescription] = {}
        for name, count in topic_partitions.items():
            total = getattr(count, "total_count", count)
            with md.deadline(timeout, f"adding partitions to topic {name!r}"):
                md.create_partitions(self._cluster.zk, name, total)
            self._cluster.forget(name)
            left = max(timeout - (time.monotonic() - started), 0.0)
            self._cluster.refresh(name, wait_s=left)  # waits for the new leaders and rings
            out[name] = self.describe_topic(name)
        return out

    def delete_records(
        self, records_to_delete: Mapping[TopicPartition, int], timeout: float = 30.0
    ) -> dict[TopicPartition, int]:
        """Delete each partition's records before the offset given for it (-1: its high
        watermark), as Kafka's DeleteRecords does: the log start offset of every replica
        moves up to it, durably, and the segments that hold only offsets below it are
        removed. Reads below it then find the offset out of range (a consumer resets by
        its auto_offset_reset). Returns once every in-sync replica has moved, with each
        partition's new log start offset (Kafka's low watermark).

        OffsetOutOfRangeError for an offset past the high watermark (records not yet
        acknowledged cannot be deleted); the records of earlier partitions in the mapping
        are deleted already."""
        started = time.monotonic()
        wanted = records_to_delete_by_topic(records_to_delete)
        out: dict[TopicPartition, int] = {}
        zk = self._cluster.zk
        for topic, offsets in wanted.items():
            desc = self.describe_topic(topic)
            for partition, offset in list(offsets.items()):
                if not (isinstance(partition, int) and 0 <= partition < len(desc.partitions)):
                    raise PartitionOutOfRangeError(
                        f"partition out of range: topic={topic!r} partition={partition!r} "
                        f"partitions={len(desc.partitions)}"
                    )
                hw = desc.partitions[partition].high_watermark
                if offset == -1:
                    offsets[partition] = offset = max(hw, 0)
                if offset > hw:
                    raise OffsetOutOfRangeError(
                        f"cannot delete records past the high watermark: topic={topic!r} "
                        f"partition={partition} offset={offset} high_watermark={hw}"
                    )
            with md.deadline(timeout, f"deleting records of topic {topic!r}"):
                md.raise_log_starts(zk, topic, offsets)
            for partition, offset in offsets.items():
                left = timeout - (time.monotonic() - started)
                out[TopicPartition(topic, partition)] = self._wait_log_start(
                    topic, partition, offset, left
                )
        return out

    def _wait_log_start(self, topic: str, partition: int, offset: int, timeout: float) -> int:
        """Wait until every in-sync replica's log starts at ``offset`` or later; the
        leader's log start offset."""
        deadline = time.monotonic() + timeout
        while True:
            desc = self.describe_topic(topic).partitions[partition]
            starts = {}
            for broker in desc.isr:
                directory = self._cluster.data_dir.partition_dir(broker, topic, partition)
                try:
                    with LogReader(directory) as reader:
                        starts[broker] = reader.log_start_offset
                except (OSError, EngineError):
                    starts[broker] = -1
            if starts and min(starts.values()) >= offset and desc.leader in starts:
                return starts[desc.leader]
            if time.monotonic() > deadline:
                raise EngineTimeoutError(
                    f"records of {topic}-{partition} before offset {offset} were not deleted "
                    f"on every in-sync replica within {timeout:.0f} s: log starts {starts}"
                )
            time.sleep(0.02)

    def perform_leader_election(
        self,
        election_type: str = "preferred",
        topic_partitions: Iterable[TopicPartition] | None = None,
        timeout: float = 30.0,
    ) -> dict[TopicPartition, int | None]:
        """Move each partition's leadership to its preferred replica (the first of its
        assignment) where that replica is live, in the ISR and not the leader already
        (kafka-python's name; only ``election_type="preferred"``). Every partition of
        every topic without ``topic_partitions``. The controller carries it out: the old
        leader's producers look the new one up and go on, the old leader follows.
        Returns, once the new leaders are ready, each partition's leader (None: none)."""
        if election_type != "preferred":
            raise ConfigError(
                f"only preferred leader elections are supported: election_type={election_type!r}"
            )
        zk = self._cluster.zk
        deadline = time.monotonic() + timeout
        if topic_partitions is None:
            chosen = [
                TopicPartition(t, p)
                for t in self.list_topics()
                for p in range(len(self.describe_topic(t).partitions))
            ]
        else:
            chosen = [TopicPartition(*tp) for tp in topic_partitions]
            for topic in {tp.topic for tp in chosen}:
                count = len(self.describe_topic(topic).partitions)
                for tp in chosen:
                    if tp.topic == topic and not 0 <= tp.partition < count:
                        raise PartitionOutOfRangeError(
                            f"partition out of range: topic={topic!r} "
                            f"partition={tp.partition!r} partitions={count}"
                        )
        request = md.encode(
            {"version": 1, "partitions": [{"topic": t, "partition": p} for t, p in chosen]}
        )
        with md.deadline(timeout, "a preferred-leader election"):
            zk.ensure_path("/admin")
            while True:
                try:
                    zk.create(md.PREFERRED_ELECTION, request)
                    break
                except NodeExistsError:  # another election is under way: after it
                    self._wait_gone(md.PREFERRED_ELECTION, deadline)
            self._wait_gone(md.PREFERRED_ELECTION, deadline)
        out: dict[TopicPartition, int | None] = {}
        for topic in sorted({tp.topic for tp in chosen}):
            self._cluster.forget(topic)
            view = self._cluster.refresh(topic, wait_s=max(deadline - time.monotonic(), 0.0))
            for tp in chosen:
                if tp.topic == topic:
                    out[tp] = view.leader(tp.partition)
        return out

    def _wait_gone(self, path: str, deadline: float) -> None:
        while self._cluster.zk.exists(path):
            if time.monotonic() > deadline:
                raise EngineTimeoutError(
                    f"the controller did not carry out the request in time: path={path}"
                )
            time.sleep(0.01)

    def alter_partition_reassignments(
        self, reassignments: Mapping[TopicPartition, Sequence[int]], timeout: float = 60.0
    ) -> dict[TopicPartition, tuple[int, ...]]:
        """Move each partition's replicas to the brokers given (the first one its
        preferred leader) while it is written and read, as Kafka's reassignment does: the
        new replicas are added and copy the log, and once all of them are in the ISR the
        old ones are dropped (their data with them) and leadership moves to a new one if
        the leader was among the old. The partition's leader starts again with the new
        followers at the beginning, and again at the end if it moves: producers and
        consumers look it up again and go on (acks="all" loses nothing). The added rings
        must fit in the shared-memory budget (ConfigError, nothing written). Returns,
        once every move is complete and the leaders are ready, each partition's replicas.
        A new replica copies the leader's log from the leader's log start
        (FollowerReplica._prepare_log)."""
        deadline = time.monotonic() + timeout
        by_topic: dict[str, dict[int, tuple[int, ...]]] = {}
        for tp, brokers in reassignments.items():
            topic, partition = TopicPartition(*tp)
            by_topic.setdefault(topic, {})[partition] = tuple(brokers)
        zk = self._cluster.zk
        for topic, targets in by_topic.items():
            with md.deadline(timeout, f"reassigning partitions of topic {topic!r}"):
                md.reassign_partitions(zk, topic, targets)
        out: dict[TopicPartition, tuple[int, ...]] = {}
        for topic, targets in by_topic.items():
            while True:
                meta = md.read_topic(zk, topic)
                moving = set(meta.assignment.adding) | set(meta.assignment.removing)
                if not moving & set(targets):
                    break
                if time.monotonic() > deadline:
                    states = {p: meta.states.get(p) for p in sorted(moving & set(targets))}
                    raise EngineTimeoutError(
                        f"the reassignment of topic {topic!r} did not complete within "
                        f"{timeout:.0f} s (it goes on): partitions {sorted(states)} have ISR "
                        f"{[list(s.isr) if s else [] for s in states.values()]}"
                    )
                time.sleep(0.05)
            self._cluster.forget(topic)
            self._cluster.refresh(topic, wait_s=max(deadline - time.monotonic(), 0.0))
            for partition in targets:
                out[TopicPartition(topic, partition)] = meta.assignment.replicas[partition]
        return out

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
        """kafka-python's keys: ``cluster_id``, ``controller_id`` (None while there is
        none) and ``brokers``, one dict per live broker (``node_id``, ``host`` and
        ``port`` of its Kafka listener, from its registration's endpoints; ``rack``:
        None). Also ``coordinator`` (its address), ``controller`` (= controller_id) and
        ``registrations`` (each broker's registration by id: pid, log dir)."""
        zk = self._cluster.zk
        live = md.live_brokers(zk)
        controller = md.controller_id(zk)
        return {
            "cluster_id": md.cluster_id(zk),
            "controller_id": controller,
            "brokers": [
                {"node_id": broker, **_kafka_address(info), "rack": None}
                for broker, info in sorted(live.items())
            ],
            "coordinator": self._cluster.data_dir.coordinator_hosts(),
            "controller": controller,
            "registrations": live,
        }

    def delete_consumer_groups(self, group_ids: Iterable[str]) -> list[str]:
        """Delete each group and its committed offsets (kafka-python's name). Refused
        with GroupNotEmptyError while a group has live members (Kafka's NON_EMPTY_GROUP),
        UnknownGroupError for a group that does not exist; the groups before it in
        ``group_ids`` are deleted already. Returns the groups deleted."""
        from engine.group import delete_group

        done = []
        for group in group_ids:
            delete_group(self, group)
            done.append(group)
        return done

    # -- what engine.group's reset_offsets reads and writes ---------------------------

    def _group_members(self, group: str) -> list[str] | None:
        """The member ids of a consumer group's live members; None: no such group."""
        from engine.group import read_members

        zk = self._cluster.zk
        if not zk.exists(store.group_path(group)):
            return None
        return sorted(read_members(zk, group))

    def _committed_offsets(
        self, group: str, partitions: Iterable[TopicPartition]
    ) -> dict[TopicPartition, int | None]:
        return {tp: store.read_committed(self._cluster.zk, group, tp) for tp in partitions}

    def _write_offsets(self, group: str, offsets: Mapping[TopicPartition, int]) -> None:
        store.write_offsets(self._cluster.zk, group, offsets)

    def close(self) -> None:
        self._cluster.close()

    def __enter__(self) -> Admin:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def records_to_delete_by_topic(
    records_to_delete: Mapping[TopicPartition, int],
) -> dict[str, dict[int, int]]:
    """delete_records' argument checked (each offset an int >= -1), by topic."""
    wanted: dict[str, dict[int, int]] = {}
    for tp, offset in records_to_delete.items():
        topic, partition = TopicPartition(*tp)
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < -1:
            raise ConfigError(f"offset must be an int >= -1: {topic}-{partition} "
                              f"offset={offset!r}")  # fmt: skip
        wanted.setdefault(topic, {})[partition] = offset
    return wanted


def _kafka_address(registration: dict[str, Any]) -> dict[str, Any]:
    """``host`` and ``port`` of a broker's Kafka listener: its registration's first
    endpoint (``SASL_PLAINTEXT://127.0.0.1:9092``; Kafka's host and port fields name a
    PLAINTEXT listener only), else those fields (127.0.0.1 and -1 without a listener)."""
    for endpoint in registration.get("endpoints") or ():
        _, _, address = str(endpoint).partition("://")
        host, _, port = address.rpartition(":")
        if host and port.isdigit():
            return {"host": host, "port": int(port)}
    return {"host": registration.get("host") or "127.0.0.1",
            "port": registration.get("port", -1)}  # fmt: skip
