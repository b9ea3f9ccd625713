"""The engine's Admin on a Kafka cluster, through confluent-kafka's AdminClient.

``Admin(bootstrap_servers=..., ...)`` makes a :class:`KafkaAdmin`: the same methods,
results (TopicDescription, PartitionDescription, describe_cluster's dict) and errors.
Each call returns once the cluster carried it out, as on the engine's cluster, and
waits up to ``timeout`` seconds. What a Kafka client cannot see, it reports as
unknown: a partition's ``leader_epoch`` is -1, and ``log_end_offset`` is the high
watermark (a follower's log end is the brokers' business). A topic config's
``ring.bytes`` and ``Admin.data_dir`` exist only on the engine's own cluster, and
alter_partition_reassignments is not offered by confluent-kafka:
UnsupportedOnKafkaError. describe_cluster has no ``coordinator`` or ``registrations``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import Future
from typing import Any

import confluent_kafka
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewPartitions,
    NewTopic,
    OffsetSpec,
)

from engine.admin import Admin, PartitionDescription, TopicDescription, records_to_delete_by_topic
from engine.config import TOPIC_DEFAULTS, validate_topic_name
from engine.errors import (
    ConfigError,
    EngineTimeoutError,
    KafkaClusterError,
    NotLeaderError,
    PartitionOutOfRangeError,
    UnknownGroupError,
    UnknownTopicError,
    UnsupportedOnKafkaError,
)
from engine.kafka_client.errors import raise_engine_error
from engine.kafka_client.settings import ClientHealth, Connection, refuse
from engine.offset_store import validate_group_id
from engine.record import TopicPartition

__all__ = ["KafkaAdmin"]

_TP = confluent_kafka.TopicPartition
#: OffsetSpec's constructors are untyped.
SPEC: Any = OffsetSpec
#: Topic configs that only the engine's rings have.
ENGINE_ONLY_CONFIGS = ("ring.bytes",)


def _result(future: Future[Any], what: str) -> Any:
    try:
        return future.result()
    except confluent_kafka.KafkaException as exc:
        raise_engine_error(exc, what)


def kafka_topic_config(config: Mapping[str, Any] | None) -> dict[str, str]:
    """A topic config as Kafka takes it: strings (booleans as true/false); the
    engine-only keys refused."""
    out: dict[str, str] = {}
    for key, value in (config or {}).items():
        if key in ENGINE_ONLY_CONFIGS:
            raise refuse(f"{key}={value!r}", "a partition's shared-memory ring")
        out[key] = str(value).lower() if isinstance(value, bool) else str(value)
    return out


def engine_topic_config(entries: Mapping[str, Any]) -> dict[str, Any]:
    """describe_configs' entries as the engine reports a config: every key the cluster
    names, as an int or a float where the engine's default for it is one."""
    out: dict[str, Any] = {}
    for key, entry in entries.items():
        value = entry.value
        default = TOPIC_DEFAULTS.get(key)
        if value is not None and isinstance(default, (int, float)):
            try:
                value = type(default)(value) if isinstance(default, float) else int(value)
            except ValueError:
                if value.lower() in ("true", "false"):
                    value = int(value.lower() == "true")
        out[key] = value
    return out


class KafkaAdmin(Admin):
    """engine.Admin on a Kafka cluster; see the module docstring."""

    def __init__(self, data_dir: str | os.PathLike[str] | None = None, **options: Any) -> None:
        connection = Connection.take(options, data_dir)
        if options:
            raise ConfigError(f"unknown admin option: {sorted(options)[0]!r}")
        self.connection = connection
        self._health = ClientHealth()
        self._client: Any = None
        try:
            self._client = AdminClient(connection.librdkafka({}, self._health))
        except confluent_kafka.KafkaException as exc:
            raise_engine_error(exc, "the admin client's settings were refused")

    @property
    def data_dir(self) -> str:
        raise refuse("Admin.data_dir", "a data dir")

    # -- topics ----------------------------------------------------------------------

    def _metadata(self, name: str, timeout: float) -> Any:
        """The cluster's metadata of topic ``name``; UnknownTopicError without it."""
        try:
            meta = self._client.list_topics(name, timeout=timeout).topics.get(name)
        except confluent_kafka.KafkaException as exc:
            raise_engine_error(exc, f"looking up topic={name!r}", health=self._health)
        if meta is None or (meta.error is not None and not meta.partitions):
            raise UnknownTopicError(f"unknown topic: topic={name!r}")
        return meta

    def _described_when_ready(self, name: str, count: int, timeout: float) -> TopicDescription:
        """The topic's description once each of its ``count`` partitions has a leader
        that answers for it (a new leader learns of its partition a moment after the
        metadata names it)."""
        deadline = time.monotonic() + timeout
        while True:
            left = max(deadline - time.monotonic(), 0.1)
            try:
                desc = self.describe_topic(name, left)
                if len(desc.partitions) >= count and all(
                    p.leader is not None for p in desc.partitions
                ):
                    return desc
                problem = f"partitions {[(p.partition, p.leader) for p in desc.partitions]}"
            except (UnknownTopicError, NotLeaderError) as exc:
                problem = str(exc)
            except KafkaClusterError as exc:
                if not exc.retriable:
                    raise
                problem = str(exc)
            if time.monotonic() > deadline:
                raise EngineTimeoutError(
                    f"topic {name!r} has not {count} partitions with ready leaders after "
                    f"{timeout:.0f} s: {problem}"
                )
            time.sleep(0.05)

    def create_topic(
        self,
        name: str,
        partitions: int = 1,
        replication: int = 1,
        config: dict[str, Any] | None = None,
        timeout: float = 30.0,
    ) -> TopicDescription:
        """Create a topic and wait until every partition has a leader."""
        validate_topic_name(name)
        topic = NewTopic(name, partitions, replication, config=kafka_topic_config(config))
        futures = self._client.create_topics(
            [topic], operation_timeout=timeout, request_timeout=timeout
        )
        _result(futures[name], f"creating topic {name!r}")
        return self._described_when_ready(name, partitions, timeout)

    def delete_topic(self, name: str, timeout: float = 30.0) -> None:
        """Delete a topic and its data; returns once the cluster deleted it."""
        validate_topic_name(name)
        futures = self._client.delete_topics(
            [name], operation_timeout=timeout, request_timeout=timeout
        )
        _result(futures[name], f"deleting topic {name!r}")

    def incremental_alter_configs(
        self,
        topic: str,
        configs: Mapping[str, Any] | None = None,
        delete: Iterable[str] = (),
        timeout: float = 30.0,
    ) -> dict[str, Any]:
        """Set ``configs`` and delete the keys in ``delete`` of a topic's config (Kafka's
        IncrementalAlterConfigs); returns the topic's whole config."""
        validate_topic_name(topic)
        entries = [
            ConfigEntry(key, value, incremental_operation=AlterConfigOpType.SET)
            for key, value in kafka_topic_config(configs).items()
        ]
        for key in delete:
            kafka_topic_config({key: ""})  # refuses the engine-only keys
            entries.append(ConfigEntry(key, None, incremental_operation=AlterConfigOpType.DELETE))
        resource = ConfigResource("TOPIC", topic, incremental_configs=entries)
        futures = self._client.incremental_alter_configs([resource], request_timeout=timeout)
        for future in futures.values():
            _result(future, f"altering the config of topic {topic!r}")
        return self._config(topic, timeout)

    def _config(self, topic: str, timeout: float) -> dict[str, Any]:
        futures = self._client.describe_configs(
            [ConfigResource("TOPIC", topic)], request_timeout=timeout
        )
        (future,) = futures.values()
        return engine_topic_config(_result(future, f"describing the config of topic {topic!r}"))

    def create_partitions(
        self, topic_partitions: Mapping[str, int], timeout: float = 30.0
    ) -> dict[str, TopicDescription]:
        """Grow each topic to the partition count given for it, waiting until every new
        partition has a leader."""
        totals = {name: int(getattr(count, "total_count", count))
                  for name, count in topic_partitions.items()}  # fmt: skip
        futures = self._client.create_partitions(
            [NewPartitions(name, total) for name, total in totals.items()],
            operation_timeout=timeout,
            request_timeout=timeout,
        )
        for name, future in futures.items():
            _result(future, f"adding partitions to topic {name!r}")
        return {
            name: self._described_when_ready(name, total, timeout) for name, total in totals.items()
        }

    def delete_records(
        self, records_to_delete: Mapping[TopicPartition, int], timeout: float = 30.0
    ) -> dict[TopicPartition, int]:
        """Delete each partition's records before the offset given for it (-1: its high
        watermark); returns each partition's new log start offset."""
        wanted = records_to_delete_by_topic(records_to_delete)
        tps = [_TP(t, p, off) for t, parts in wanted.items() for p, off in parts.items()]
        futures = self._client.delete_records(
            tps, operation_timeout=timeout, request_timeout=timeout
        )
        out: dict[TopicPartition, int] = {}
        for ktp, future in futures.items():
            tp = TopicPartition(ktp.topic, ktp.partition)
            out[tp] = int(_result(future, f"deleting records of {tp}").low_watermark)
        return out

    def perform_leader_election(
        self,
        election_type: str = "preferred",
        topic_partitions: Iterable[TopicPartition] | None = None,
        timeout: float = 30.0,
    ) -> dict[TopicPartition, int | None]:
        """Move each partition's leadership to its preferred replica (Kafka's
        ElectLeaders); every partition without ``topic_partitions``. Returns each
        partition's leader (None: none) afterwards."""
        if election_type != "preferred":
            raise ConfigError(
                f"only preferred leader elections are supported: election_type={election_type!r}"
            )
        if topic_partitions is None:
            chosen = [TopicPartition(t, p) for t in self.list_topics()
                      for p in self._metadata(t, timeout).partitions]  # fmt: skip
        else:
            chosen = [TopicPartition(*tp) for tp in topic_partitions]
        future = self._client.elect_leaders(
            confluent_kafka.ElectionType.PREFERRED,
            [_TP(tp.topic, tp.partition) for tp in chosen],
            operation_timeout=timeout,
            request_timeout=timeout,
        )
        for ktp, error in (_result(future, "a preferred-leader election") or {}).items():
            if error is not None and error.code() != confluent_kafka.KafkaError.ELECTION_NOT_NEEDED:
                raise_engine_error(error, f"electing the leader of {ktp.topic}-{ktp.partition}")
        out: dict[TopicPartition, int | None] = {}
        for tp in chosen:
            parts = self._metadata(tp.topic, timeout).partitions
            if tp.partition not in parts:
                raise PartitionOutOfRangeError(
                    f"partition out of range: topic={tp.topic!r} partition={tp.partition!r} "
                    f"partitions={len(parts)}"
                )
            leader = parts[tp.partition].leader
            out[tp] = leader if leader >= 0 else None
        return out

    def alter_partition_reassignments(
        self, reassignments: Mapping[TopicPartition, Sequence[int]], timeout: float = 60.0
    ) -> dict[TopicPartition, tuple[int, ...]]:
        raise UnsupportedOnKafkaError(
            "alter_partition_reassignments() is not offered by confluent-kafka: on a Kafka "
            "cluster, move replicas with Kafka's kafka-reassign-partitions.sh"
        )

    def list_topics(self) -> list[str]:
        """The cluster's topics, without Kafka's internal ones (__consumer_offsets, ...)."""
        try:
            topics = self._client.list_topics(timeout=30).topics
        except confluent_kafka.KafkaException as exc:
            raise_engine_error(exc, "listing topics", health=self._health)
        return sorted(t for t in topics if not t.startswith("__"))

    def describe_topic(self, name: str, timeout: float = 30.0) -> TopicDescription:
        """The topic's partitions (leader, replicas, ISR, log start offset and high
        watermark; leader_epoch -1, log_end_offset the high watermark) and its config."""
        validate_topic_name(name)
        meta = self._metadata(name, timeout)
        specs = {}
        for p in meta.partitions:
            specs[_TP(name, p, -2)] = SPEC.earliest()
        ends = {_TP(name, p, -1): SPEC.latest() for p in meta.partitions}
        starts = self._offsets(specs, timeout)
        highs = self._offsets(ends, timeout)
        parts = []
        for p, pm in sorted(meta.partitions.items()):
            hw = highs.get(p, -1)
            parts.append(
                PartitionDescription(
                    partition=p,
                    leader=pm.leader if pm.leader >= 0 else None,
                    leader_epoch=-1,
                    replicas=tuple(pm.replicas),
                    isr=tuple(pm.isrs),
                    log_start_offset=starts.get(p, -1),
                    log_end_offset=hw,
                    high_watermark=hw,
                )
            )
        return TopicDescription(name, self._topic_id(name, timeout), parts,
                                self._config(name, timeout))  # fmt: skip

    def _offsets(self, specs: dict[Any, Any], timeout: float) -> dict[int, int]:
        if not specs:
            return {}
        futures = self._client.list_offsets(specs, request_timeout=timeout)
        return {ktp.partition: int(_result(f, f"offsets of {ktp.topic}-{ktp.partition}").offset)
                for ktp, f in futures.items()}  # fmt: skip

    def _topic_id(self, name: str, timeout: float) -> str:
        futures = self._client.describe_topics(
            confluent_kafka.TopicCollection([name]), request_timeout=timeout
        )
        described = _result(futures[name], f"describing topic {name!r}")
        return str(described.topic_id)

    def describe_cluster(self) -> dict[str, Any]:
        """kafka-python's keys: ``cluster_id``, ``controller_id`` (None while there is
        none) and ``brokers`` (``node_id``, ``host``, ``port``, ``rack``: None), with
        ``controller`` = controller_id."""
        try:
            meta = self._client.list_topics(timeout=30)
        except confluent_kafka.KafkaException as exc:
            raise_engine_error(exc, "describing the cluster", health=self._health)
        controller = meta.controller_id if meta.controller_id >= 0 else None
        return {
            "cluster_id": meta.cluster_id,
            "controller_id": controller,
            "brokers": [
                {"node_id": b.id, "host": b.host, "port": b.port, "rack": None}
                for _, b in sorted(meta.brokers.items())
            ],
            "controller": controller,
        }

    # -- groups ----------------------------------------------------------------------

    def delete_consumer_groups(self, group_ids: Iterable[str]) -> list[str]:
        """Delete each group and its committed offsets. GroupNotEmptyError while a group
        has members, UnknownGroupError for one that does not exist; the groups before
        it are deleted already. Returns the groups deleted."""
        done = []
        for group in group_ids:
            validate_group_id(group)
            futures = self._client.delete_consumer_groups([group], request_timeout=30)
            _result(futures[group], f"deleting consumer group {group!r}")
            done.append(group)
        return done

    def _group_members(self, group: str) -> list[str] | None:
        futures = self._client.describe_consumer_groups([group], request_timeout=30)
        try:
            described = _result(futures[group], f"describing consumer group {group!r}")
        except UnknownGroupError:
            return None
        if described.state == confluent_kafka.ConsumerGroupState.DEAD:
            return None
        return sorted(m.member_id for m in described.members)

    def _committed_offsets(
        self, group: str, partitions: Iterable[TopicPartition]
    ) -> dict[TopicPartition, int | None]:
        request = confluent_kafka.ConsumerGroupTopicPartitions(
            group, [_TP(tp.topic, tp.partition) for tp in partitions]
        )
        futures = self._client.list_consumer_group_offsets([request], request_timeout=30)
        answer = _result(futures[group], f"committed offsets of group {group!r}")
        return {
            TopicPartition(p.topic, p.partition): (p.offset if p.offset >= 0 else None)
            for p in answer.topic_partitions
        }

    def _write_offsets(self, group: str, offsets: Mapping[TopicPartition, int]) -> None:
        request = confluent_kafka.ConsumerGroupTopicPartitions(
            group, [_TP(tp.topic, tp.partition, off) for tp, off in offsets.items()]
        )
        futures = self._client.alter_consumer_group_offsets([request], request_timeout=30)
        _result(futures[group], f"setting the committed offsets of group {group!r}")

    def close(self) -> None:
        self._client = None

    def __enter__(self) -> KafkaAdmin:
        return self
