"""The engine's Consumer on a Kafka cluster, through confluent-kafka (librdkafka).

``Consumer(*topics, bootstrap_servers=..., ...)`` makes a :class:`KafkaConsumer`. Its
options are the engine's, checked by the same ConsumerConfig, and mean the same; the
cluster's group coordinator runs the group (Kafka's protocol: ``session_timeout_ms`` is
clamped into the cluster's group.min/max.session.timeout.ms, as the engine's
coordinator clamps it, with a warning; ``max_poll_interval_ms`` may not be below it).
``poll_spin_us`` (the rings' spin) and ``poll_values`` (values straight out of the
rings) exist only on the engine's own cluster: UnsupportedOnKafkaError.

As on the engine's cluster: without ``group_id``, ``subscribe`` assigns every
partition of the topics and nothing is committed (librdkafka needs a group id: a
private one is made up, never joined); ``assign`` starts each partition at
``auto_offset_reset``'s end, or, with a ``group_id``, at the group's committed offset.
With a ``group_id``, ``subscribe`` joins the group; rebalances happen inside poll(),
where ``on_assign`` and ``on_revoke`` run with the partitions taken or given up (an
eager strategy, range or roundrobin, revokes everything and assigns everything anew,
as on the engine's cluster). ``poll`` returns engine Records; a record's error (an
offset out of range with auto_offset_reset="none", a corrupt batch) is raised by the
next poll, after the records before it were delivered.

A KafkaConsumer is used by one thread; commit_async's callbacks run on a thread of
their own. After close() every method raises ClosedError.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import confluent_kafka
import numpy as np

from engine import offset_store as store
from engine.consumer import CommitCallback, Consumer, checked_timestamps
from engine.consumer_config import ConsumerConfig
from engine.errors import (
    ClosedError,
    CommitFailedError,
    ConfigError,
    CoordinatorUnavailableError,
    EngineError,
    OffsetOutOfRangeError,
    PartitionOutOfRangeError,
    UnknownTopicError,
)
from engine.kafka_client.errors import engine_error, raise_engine_error
from engine.kafka_client.settings import ClientHealth, Connection, log, refuse
from engine.record import OffsetAndTimestamp, Record, TopicPartition, as_offset

__all__ = ["KafkaConsumer"]

_TP = confluent_kafka.TopicPartition
_RESET = {"earliest": "earliest", "latest": "latest", "none": "error"}
#: Kafka's default group.min.session.timeout.ms and group.max.session.timeout.ms: a
#: session_timeout_ms outside them is checked against the cluster's own.
KAFKA_MIN_SESSION_MS = 6000
KAFKA_MAX_SESSION_MS = 1_800_000
#: How long a call that asks the cluster (offsets, commits, metadata) may take.
REQUEST_TIMEOUT_S = 30.0


def librdkafka_settings(config: ConsumerConfig) -> dict[str, Any]:
    """librdkafka's names for a ConsumerConfig."""
    grouped = config.group_id is not None
    return {
        "group.id": config.group_id if grouped else f"engine-assign-{uuid.uuid4().hex}",
        "client.id": config.client_id,
        "auto.offset.reset": _RESET[config.auto_offset_reset],
        "enable.auto.commit": config.enable_auto_commit and grouped,
        "auto.commit.interval.ms": config.auto_commit_interval_ms,
        "partition.assignment.strategy": config.partition_assignment_strategy,
        "session.timeout.ms": config.session_timeout_ms,
        "heartbeat.interval.ms": config.heartbeat_interval_ms,
        "max.poll.interval.ms": config.max_poll_interval_ms,
        "isolation.level": config.isolation_level,
        "fetch.max.bytes": config.fetch_max_bytes,
        # librdkafka: fetch.max.bytes may not be below message.max.bytes.
        "message.max.bytes": max(min(config.fetch_max_bytes, 1_000_000), 1000),
        "check.crcs": config.check_crcs,
        "enable.partition.eof": False,
        "allow.auto.create.topics": False,
    }


def broker_session_bounds(connection: Connection, health: ClientHealth) -> tuple[int, int] | None:
    """(group.min.session.timeout.ms, group.max.session.timeout.ms) of a broker of the
    cluster (Kafka's DescribeConfigs), or None when the cluster does not say."""
    from confluent_kafka.admin import AdminClient, ConfigResource  # type: ignore[attr-defined]

    admin = AdminClient(connection.librdkafka({}, health))
    try:
        brokers = admin.list_topics(timeout=REQUEST_TIMEOUT_S).brokers
        if not brokers:
            return None
        resource = ConfigResource("BROKER", str(min(brokers)))
        (future,) = admin.describe_configs([resource], request_timeout=REQUEST_TIMEOUT_S).values()
        entries = future.result()
        return (int(entries["group.min.session.timeout.ms"].value),
                int(entries["group.max.session.timeout.ms"].value))  # fmt: skip
    except (confluent_kafka.KafkaException, KeyError, TypeError, ValueError):
        return None


class KafkaConsumer(Consumer):
    """engine.Consumer on a Kafka cluster; see the module docstring."""

    def __init__(
        self, *topics: str, data_dir: str | os.PathLike[str] | None = None, **options: Any
    ) -> None:
        connection = Connection.take(options, data_dir)
        if "poll_spin_us" in options:
            raise refuse(f"poll_spin_us={options['poll_spin_us']!r}", "the rings' poll spin")
        config = ConsumerConfig.from_options(**options)
        self.config = config
        self.connection = connection
        self._health = ClientHealth()
        self.group_id = config.group_id
        self.auto_offset_reset = config.auto_offset_reset
        self.isolation_level = config.isolation_level
        self.max_poll_records = config.max_poll_records
        self.fetch_max_bytes = config.fetch_max_bytes
        self.consumer_timeout_ms = config.consumer_timeout_ms
        self.client_id = config.client_id
        self.enable_auto_commit = config.enable_auto_commit
        self.partition_assignment_strategy = config.partition_assignment_strategy
        self.session_timeout_ms = config.session_timeout_ms
        self.max_poll_interval_ms = config.max_poll_interval_ms
        self.on_assign = config.on_assign
        self.on_revoke = config.on_revoke
        self.check_crcs = config.check_crcs
        self._closed = False
        self._pid = os.getpid()
        self._subscribed: list[str] | None = None  # the group's topics, once subscribed
        self._owned: set[TopicPartition] = set()  # what the group gave this member
        self._paused: set[TopicPartition] = set()
        # Positions set by seek() that librdkafka reports only once a record came.
        self._seeks: dict[TopicPartition, int] = {}
        self._error: EngineError | None = None  # a record's error, for the next poll
        self._committer: concurrent.futures.ThreadPoolExecutor | None = None
        self._admin: Any = None  # for offsets_for_times' timestamps, made on first use
        settings = librdkafka_settings(config)
        if config.group_id is not None and not (
            KAFKA_MIN_SESSION_MS <= config.session_timeout_ms <= KAFKA_MAX_SESSION_MS
        ):
            settings.update(self._session_within_bounds(config))
        try:
            self._client = confluent_kafka.Consumer(connection.librdkafka(settings, self._health))
        except confluent_kafka.KafkaException as exc:
            raise_engine_error(exc, "the consumer's settings were refused")
        if topics:
            try:
                self.subscribe(list(topics))
            except BaseException:
                self.close()  # librdkafka's client and its threads
                raise

    def _session_within_bounds(self, config: ConsumerConfig) -> dict[str, int]:
        """session_timeout_ms clamped into the cluster's group.min.session.timeout.ms and
        group.max.session.timeout.ms, as the engine's coordinator clamps a session's
        timeout (Kafka's brokers refuse one outside instead), with heartbeat_interval_ms
        kept below it; Kafka's defaults where the cluster does not say; {} when it is
        within them."""
        bounds = broker_session_bounds(self.connection, self._health)
        low, high = bounds if bounds is not None else (KAFKA_MIN_SESSION_MS, KAFKA_MAX_SESSION_MS)
        session = min(max(config.session_timeout_ms, low), high)
        if session == config.session_timeout_ms:
            return {}
        log.warning(
            "session_timeout_ms=%d is outside the cluster's [%d, %d] ms: %d used",
            config.session_timeout_ms, low, high, session,
        )  # fmt: skip
        heartbeat = config.heartbeat_interval_ms
        if heartbeat >= session:
            heartbeat = max(session // 3, 1)
        self.session_timeout_ms = session
        return {
            "session.timeout.ms": session,
            "heartbeat.interval.ms": heartbeat,
            "max.poll.interval.ms": max(config.max_poll_interval_ms, session),
        }

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError("consumer is closed")
        if os.getpid() != self._pid:
            raise ClosedError("consumer was created in another process: create one per process")

    def group_metadata(self) -> Any:
        """librdkafka's group metadata of this member (Producer.send_offsets_to_transaction
        takes this consumer for its group_id and sends it: Kafka's zombie fencing)."""
        self._check_open()
        return self._client.consumer_group_metadata()

    # -- assignment --------------------------------------------------------------

    def _partition_count(self, topic: str) -> int:
        if not isinstance(topic, str) or not topic:
            raise ConfigError(f"topic must be a non-empty str: topic={topic!r}")
        try:
            meta = self._client.list_topics(topic, timeout=REQUEST_TIMEOUT_S).topics.get(topic)
        except confluent_kafka.KafkaException as exc:
            raise_engine_error(exc, f"looking up topic={topic!r}", health=self._health)
        if meta is None or (meta.error is not None and not meta.partitions):
            raise UnknownTopicError(f"unknown topic: topic={topic!r}")
        return len(meta.partitions)

    def subscribe(self, topics: Iterable[str]) -> None:
        """Without a group: assign every partition of the topics. With a ``group_id``:
        join the group; partitions arrive through poll() (see ``on_assign``)."""
        self._check_open()
        if isinstance(topics, str):
            raise ConfigError(f"subscribe takes a non-empty list of topics: topics={topics!r}")
        topics = list(topics)
        if not topics:
            raise ConfigError(f"subscribe takes a non-empty list of topics: topics={topics!r}")
        counts = {topic: self._partition_count(topic) for topic in topics}
        if self.group_id is None:
            self.assign([TopicPartition(t, p) for t, n in counts.items() for p in range(n)])
            return
        if self._subscribed is not None:
            raise ConfigError(
                f"already subscribed to {self._subscribed} in group {self.group_id!r}: "
                "create another Consumer for other topics"
            )
        if self._client.assignment():
            raise ConfigError("subscribe() after assign(): a consumer uses one or the other")
        self._subscribed = topics
        self._client.subscribe(
            topics, on_assign=self._assigned, on_revoke=self._revoked, on_lost=self._revoked
        )

    def _assigned(self, client: Any, partitions: list[Any]) -> None:
        taken = {TopicPartition(p.topic, p.partition) for p in partitions} - self._owned
        self._owned |= taken
        if self.on_assign is not None and taken:
            self.on_assign(set(taken))

    def _revoked(self, client: Any, partitions: list[Any]) -> None:
        gone = {TopicPartition(p.topic, p.partition) for p in partitions} & self._owned
        self._owned -= gone
        self._paused -= gone
        for tp in gone:
            self._seeks.pop(tp, None)
        if self.on_revoke is not None and gone:
            self.on_revoke(set(gone))

    def assign(self, partitions: Iterable[TopicPartition]) -> None:
        self._check_open()
        if self._subscribed is not None:
            raise ConfigError(
                f"assign() while subscribed to group {self.group_id!r}: the group assigns "
                "partitions; use a Consumer without subscribe() for manual assignment"
            )
        tps = [TopicPartition(*tp) for tp in partitions]
        counts: dict[str, int] = {}
        for tp in tps:
            if tp.topic not in counts:
                counts[tp.topic] = self._partition_count(tp.topic)
            if not (isinstance(tp.partition, int) and 0 <= tp.partition < counts[tp.topic]):
                raise PartitionOutOfRangeError(
                    f"partition out of range: topic={tp.topic!r} partition={tp.partition!r} "
                    f"partitions={counts[tp.topic]}"
                )
        kept = self._now_at()
        start = confluent_kafka.OFFSET_INVALID  # the committed offset, else the reset
        if self.group_id is None and self.auto_offset_reset == "earliest":
            start = confluent_kafka.OFFSET_BEGINNING
        elif self.group_id is None and self.auto_offset_reset == "latest":
            start = confluent_kafka.OFFSET_END
        self._client.assign([_TP(tp.topic, tp.partition, kept.get(tp, start)) for tp in tps])
        self._paused &= set(tps)
        self._seeks = {tp: off for tp, off in self._seeks.items() if tp in set(tps)}

    def unsubscribe(self) -> None:
        """Give up every partition. A group member first commits (with auto-commit) and
        runs ``on_revoke``, then leaves the group: the others rebalance at once."""
        self._check_open()
        if self._subscribed is not None:
            if self.enable_auto_commit and self._owned:
                with contextlib.suppress(CommitFailedError):
                    self._commit(self._now_at())
            owned, self._owned = self._owned, set()
            if self.on_revoke is not None and owned:
                self.on_revoke(set(owned))
            self._client.unsubscribe()
            self._subscribed = None
        else:
            self._client.unassign()
        self._paused.clear()
        self._seeks.clear()

    def assignment(self) -> set[TopicPartition]:
        """The partitions this consumer fetches now (in a group: those it owns)."""
        self._check_open()
        return {TopicPartition(p.topic, p.partition) for p in self._client.assignment()}

    def _assigned_tp(self, partition: Any) -> TopicPartition:
        tp = TopicPartition(*partition)
        if tp not in self.assignment():
            raise ConfigError(f"partition is not assigned to this consumer: {tp}")
        return tp

    def pause(self, *partitions: TopicPartition) -> None:
        """Stop returning records of these assigned partitions from poll() until
        :meth:`resume`; ConfigError for a partition not assigned."""
        self._check_open()
        tps = [self._assigned_tp(tp) for tp in partitions]
        self._client.pause([_TP(tp.topic, tp.partition) for tp in tps])
        self._paused.update(tps)

    def resume(self, *partitions: TopicPartition) -> None:
        self._check_open()
        tps = [self._assigned_tp(tp) for tp in partitions]
        self._client.resume([_TP(tp.topic, tp.partition) for tp in tps])
        self._paused.difference_update(tps)

    def paused(self) -> set[TopicPartition]:
        return self._paused & self.assignment()

    # -- committed offsets -----------------------------------------------------------

    def _now_at(self) -> dict[TopicPartition, int]:
        """The position of every assigned partition that has one."""
        assigned = self._client.assignment()
        if not assigned:
            return {}
        out = {
            TopicPartition(p.topic, p.partition): p.offset
            for p in self._client.position(assigned)
            if p.offset >= 0
        }
        out.update(self._seeks)
        return out

    def _need_group(self, what: str) -> str:
        if self.group_id is None:
            raise ConfigError(f"{what} needs a group_id: Consumer(..., group_id='name')")
        return self.group_id

    def _todo(self, offsets: Mapping[TopicPartition, int] | None) -> dict[TopicPartition, int]:
        if offsets is None:
            return self._now_at()
        todo = store.validate_offsets(offsets)
        if self._subscribed is not None:
            foreign = sorted(tp for tp in todo if tp not in self._owned)
            if foreign:
                raise CommitFailedError(
                    f"partitions not assigned to this member of group {self.group_id!r}: "
                    f"{foreign}; offsets not committed"
                )
        return todo

    def commit(self, offsets: Mapping[TopicPartition, int] | None = None) -> None:
        """Commit ``offsets`` (tp -> the next offset to read), by default the positions
        of every assigned partition. Synchronous: durable when it returns.
        CommitFailedError when this member was dropped from its group."""
        self._check_open()
        self._need_group("commit()")
        self._commit(self._todo(offsets))

    def _commit(self, todo: dict[TopicPartition, int]) -> None:
        if not todo:
            return
        tps = [_TP(tp.topic, tp.partition, off) for tp, off in todo.items()]
        answer = self._coordinated(
            lambda: self._client.commit(offsets=tps, asynchronous=False),
            f"commit of group {self.group_id!r}",
        )
        for p in answer or ():
            if p.error is not None:
                raise_engine_error(p.error, f"commit of {p.topic}-{p.partition}")

    def _coordinated(self, call: Callable[[], Any], what: str) -> Any:
        """``call()``, a request to the group's coordinator, made again while the
        cluster says its coordinator is moving or loading (as the engine's own client
        reconnects by itself), up to REQUEST_TIMEOUT_S."""
        deadline = time.monotonic() + REQUEST_TIMEOUT_S
        while True:
            try:
                return call()
            except confluent_kafka.KafkaException as exc:
                error = engine_error(exc, what, health=self._health)
                if not isinstance(error, CoordinatorUnavailableError) or (
                    time.monotonic() > deadline
                ):
                    raise error from exc
            time.sleep(0.1)

    def commit_async(
        self,
        offsets: Mapping[TopicPartition, int] | None = None,
        callback: CommitCallback | None = None,
    ) -> None:
        """As commit(), without waiting; ``callback(offsets, error_or_None)`` runs on a
        thread of this consumer once the commit is durable (or failed)."""
        self._check_open()
        self._need_group("commit_async()")
        todo = self._todo(offsets)
        if self._committer is None:
            self._committer = concurrent.futures.ThreadPoolExecutor(
                1, thread_name_prefix="engine-kafka-commit"
            )

        def run() -> None:
            error: Exception | None = None
            try:
                self._commit(todo)
            except EngineError as exc:
                error = exc
            if callback is not None:
                callback(todo, error)

        self._committer.submit(run)

    def committed(self, partition: TopicPartition) -> int | None:
        """The group's committed offset of ``partition`` (None when none was committed)."""
        self._check_open()
        self._need_group("committed()")
        tp = TopicPartition(*partition)
        ask = [_TP(tp.topic, tp.partition)]
        what = f"committed offset of {tp} in group {self.group_id!r}"
        (answer,) = self._coordinated(lambda: self._client.committed(ask, REQUEST_TIMEOUT_S), what)
        if answer.error is not None:
            raise_engine_error(answer.error, f"committed offset of {tp}")
        return int(answer.offset) if answer.offset >= 0 else None

    # -- positions -------------------------------------------------------------------

    def _watermarks(self, tp: Any) -> tuple[int, int]:
        tp = TopicPartition(*tp)
        try:
            low, high = self._client.get_watermark_offsets(
                _TP(tp.topic, tp.partition), REQUEST_TIMEOUT_S, cached=False
            )
        except confluent_kafka.KafkaException as exc:
            raise_engine_error(exc, f"offsets of {tp}")
        return int(low), int(high)

    def beginning_offsets(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        self._check_open()
        return {TopicPartition(*tp): self._watermarks(tp)[0] for tp in partitions}

    def end_offsets(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        self._check_open()
        return {TopicPartition(*tp): self._watermarks(tp)[1] for tp in partitions}

    def seek(self, partition: TopicPartition, offset: int) -> None:
        self._check_open()
        tp = self._assigned_tp(partition)
        offset = as_offset(offset, f"{tp} ")
        self._seeks[tp] = offset
        try:
            self._client.seek(_TP(tp.topic, tp.partition, offset))
        except confluent_kafka.KafkaException as exc:
            if exc.args[0].code() != confluent_kafka.KafkaError._STATE:
                raise_engine_error(exc, f"seek of {tp} to offset={offset}")
            # Not fetched yet (just assigned): assigned again, starting there.
            self._restart_at(tp, offset)

    def _restart_at(self, tp: TopicPartition, offset: int) -> None:
        if self._subscribed is not None:
            self._client.incremental_unassign([_TP(tp.topic, tp.partition)])
            self._client.incremental_assign([_TP(tp.topic, tp.partition, offset)])
        else:
            current = self._now_at()
            current[tp] = offset
            self._client.assign(
                [_TP(p.topic, p.partition, current.get(TopicPartition(p.topic, p.partition),
                                                       confluent_kafka.OFFSET_INVALID))
                 for p in self._client.assignment()]
            )  # fmt: skip

    def seek_to_beginning(self, *partitions: TopicPartition) -> None:
        for tp in partitions or tuple(self.assignment()):
            self.seek(tp, self._watermarks(tp)[0])

    def seek_to_end(self, *partitions: TopicPartition) -> None:
        for tp in partitions or tuple(self.assignment()):
            self.seek(tp, self._watermarks(tp)[1])

    def position(self, partition: TopicPartition) -> int:
        """The next offset poll() delivers from ``partition``: the committed offset or
        auto_offset_reset's end before the first record."""
        self._check_open()
        tp = self._assigned_tp(partition)
        if tp in self._seeks:
            return self._seeks[tp]
        (answer,) = self._client.position([_TP(tp.topic, tp.partition)])
        if answer.offset >= 0:
            return int(answer.offset)
        committed = self.committed(tp) if self.group_id is not None else None
        if committed is not None:
            return committed
        if self.auto_offset_reset == "none":
            raise OffsetOutOfRangeError(f"no valid position for {tp} and auto_offset_reset='none'")
        low, high = self._watermarks(tp)
        return low if self.auto_offset_reset == "earliest" else high

    def offsets_for_times(
        self, timestamps: Mapping[TopicPartition, int]
    ) -> dict[TopicPartition, OffsetAndTimestamp | None]:
        """For each partition, the offset and timestamp of its first record whose
        timestamp is >= the given one (ms), or None when there is none (Kafka's
        ListOffsets). Partitions need not be assigned. Does not move positions."""
        self._check_open()
        wanted = checked_timestamps(timestamps)
        if not wanted:
            return {}
        if self._admin is None:
            from confluent_kafka.admin import AdminClient

            self._admin = AdminClient(self.connection.librdkafka({}))
        from confluent_kafka.admin import OffsetSpec  # type: ignore[attr-defined]

        request = {_TP(tp.topic, tp.partition): OffsetSpec.for_timestamp(ts)
                   for tp, ts in wanted.items()}  # fmt: skip
        out: dict[TopicPartition, OffsetAndTimestamp | None] = {}
        for ktp, future in self._admin.list_offsets(
            request, request_timeout=REQUEST_TIMEOUT_S
        ).items():
            tp = TopicPartition(ktp.topic, ktp.partition)
            try:
                info = future.result()
            except confluent_kafka.KafkaException as exc:
                raise_engine_error(exc, f"offsets_for_times of {tp}")
            found = info.offset >= 0
            out[tp] = OffsetAndTimestamp(info.offset, info.timestamp) if found else None
        return out

    # -- fetching --------------------------------------------------------------------

    def poll(self, timeout: float = 0.0, max_records: int | None = None) -> list[Record]:
        """Records from the assigned partitions, waiting up to ``timeout`` seconds for any."""
        self._check_open()
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        limit = max_records or self.max_poll_records
        try:
            messages = self._client.consume(limit, timeout)
        except confluent_kafka.KafkaException as exc:
            raise_engine_error(exc, "poll")
        out: list[Record] = []
        m: Any
        for m in messages:
            err = m.error()
            if err is not None:
                if self._error is None and err.code() != confluent_kafka.KafkaError._PARTITION_EOF:
                    where = "poll" if m.topic() is None else f"poll of {m.topic()}-{m.partition()}"
                    self._error = engine_error(err, where)
                continue
            if self._seeks:
                self._seeks.pop(TopicPartition(m.topic(), m.partition()), None)
            headers = [(k, v if v is not None else b"") for k, v in m.headers() or ()]
            out.append(Record(m.topic(), m.partition(), m.offset(), m.timestamp()[1],
                              m.key(), m.value(), headers))  # fmt: skip
        if not out and self._error is not None:
            error, self._error = self._error, None
            raise error
        return out

    def poll_values(
        self, value_size: int, timeout: float = 0.0, max_records: int | None = None
    ) -> list[np.ndarray[Any, Any]]:
        raise refuse("poll_values()", "reading values straight out of the rings")

    # -- lifecycle -------------------------------------------------------------------

    def close(self) -> None:
        """Commit (with auto-commit), leave the group (the others rebalance at once), stop."""
        if self._closed:
            return
        self._closed = True
        if os.getpid() != self._pid:
            return
        try:
            if self._committer is not None:
                self._committer.shutdown(wait=True)
            with contextlib.suppress(confluent_kafka.KafkaException):
                self._client.close()  # commits with auto-commit; on_revoke runs here
        finally:
            self._admin = None

    def __enter__(self) -> KafkaConsumer:
        return self
