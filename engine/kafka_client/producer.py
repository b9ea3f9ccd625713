"""The engine's Producer on a Kafka cluster, through confluent-kafka (librdkafka).

``Producer(bootstrap_servers=..., ...)`` makes a :class:`KafkaProducer`. Its options
are the engine's, checked by the same ProducerConfig, and mean the same: ``acks``
(0, 1, "all"; "all" and idempotent by default), ``enable_idempotence``,
``transactional_id`` and ``transaction_timeout_ms``, ``linger_ms``, ``batch_size``,
``buffer_memory``, ``max_block_ms`` (how long send() waits for metadata and buffer
space: BufferFullError after it), ``delivery_timeout_ms``, ``retry_backoff_ms``,
``max_in_flight_requests_per_connection``, ``client_id``.

send() picks the partition as the engine does (engine.partitioner: murmur2 of the key,
as Kafka's Java client; keyless records stick to one partition for ``batch_size``
bytes), so that the future knows it at once and keyed records land where any Kafka
client puts them. A topic's partition count is looked up on first use and again
after METADATA_MAX_AGE_S. Topics are never created by a send (UnknownTopicError).

One poller thread serves librdkafka's delivery reports: futures are decided and their
callbacks run there (as on the engine's sender thread). A KafkaProducer may be used
from several threads; after close() every method raises ClosedError.
"""

from __future__ import annotations

import contextlib
import os
import random
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import confluent_kafka
import numpy as np

from engine.errors import (
    BufferFullError,
    ClosedError,
    ConfigError,
    EngineError,
    EngineTimeoutError,
    InvalidTxnStateError,
    PartitionOutOfRangeError,
    RecordTypeError,
    UnknownTopicError,
)
from engine.future import RecordFuture, pending
from engine.kafka_client.delivery import DeliveryTracker
from engine.kafka_client.errors import raise_engine_error
from engine.kafka_client.settings import ClientHealth, Connection
from engine.offset_store import validate_group_id, validate_offsets
from engine.partitioner import key_partition
from engine.producer import BatchResult, Producer
from engine.producer_config import ProducerConfig
from engine.record import TopicPartition, as_bytes, encode_headers, record_timestamp

__all__ = ["KafkaProducer"]

#: How long a topic's partition count is trusted before it is looked up again.
METADATA_MAX_AGE_S = 30.0
#: How often the poller thread looks for delivery reports when none came (seconds).
POLL_S = 0.1


def librdkafka_settings(config: ProducerConfig) -> dict[str, Any]:
    """librdkafka's names for a ProducerConfig."""
    delivery = config.delivery_timeout_ms
    settings: dict[str, Any] = {
        "acks": int(config.acks),
        "enable.idempotence": config.enable_idempotence,
        "linger.ms": config.linger_ms,
        "batch.size": config.batch_size,
        "queue.buffering.max.kbytes": max(config.buffer_memory // 1024, 1),
        "retry.backoff.ms": max(config.retry_backoff_ms, 1),
        "max.in.flight.requests.per.connection": config.max_in_flight_requests_per_connection,
        "client.id": config.client_id,
        # The engine never creates a topic on a send (UnknownTopicError); neither here.
        "allow.auto.create.topics": False,
    }
    if config.transactional_id is not None:
        settings["transactional.id"] = config.transactional_id
        settings["transaction.timeout.ms"] = config.transaction_timeout_ms
        # librdkafka: a record may not outlive its transaction.
        delivery = min(delivery, config.transaction_timeout_ms)
    settings["delivery.timeout.ms"] = delivery
    return settings


class KafkaProducer(Producer):
    """engine.Producer on a Kafka cluster; see the module docstring."""

    def __init__(self, data_dir: str | os.PathLike[str] | None = None, **options: Any) -> None:
        connection = Connection.take(options, data_dir)
        config = ProducerConfig.from_options(**options)
        self.config = config
        self.connection = connection
        self._health = ClientHealth()
        self._pid = os.getpid()
        self._closed = False
        self._block_s = config.max_block_ms / 1000
        self._lock = threading.Lock()
        self._counts: dict[str, tuple[int, float]] = {}  # topic -> (partitions, looked up)
        self._sticky: dict[str, list[int]] = {}  # topic -> [partition, bytes sent there]
        self._group_metadata: dict[str, Any] = {}  # group id -> librdkafka's metadata
        self._tracker = DeliveryTracker()
        try:
            self._client = confluent_kafka.Producer(
                connection.librdkafka(librdkafka_settings(config), self._health)
            )
        except confluent_kafka.KafkaException as exc:
            raise_engine_error(exc, "the producer's settings were refused")
        self._stop = threading.Event()
        self._poller = threading.Thread(
            target=self._serve, name="engine-kafka-producer", daemon=True
        )
        self._poller.start()

    def _serve(self) -> None:
        """The poller thread: delivery reports, until close()."""
        while not self._stop.is_set():
            self._client.poll(POLL_S)

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError("producer is closed")
        if os.getpid() != self._pid:
            raise ClosedError("producer was created in another process: create one per process")

    # -- where records go ------------------------------------------------------------

    def _partition_count(self, topic: str) -> int:
        known = self._counts.get(topic)
        if known is not None and time.monotonic() - known[1] < METADATA_MAX_AGE_S:
            return known[0]
        count = self._look_up(topic)
        self._counts[topic] = (count, time.monotonic())
        return count

    def _look_up(self, topic: str) -> int:
        """The topic's partition count, waiting up to max_block_ms while it has no
        leaders yet; UnknownTopicError when the cluster does not know it."""
        if not isinstance(topic, str) or not topic:
            raise ConfigError(f"topic must be a non-empty str: topic={topic!r}")
        deadline = time.monotonic() + self._block_s
        while True:
            left = max(deadline - time.monotonic(), 0.001)
            try:
                meta = self._client.list_topics(topic, timeout=left).topics.get(topic)
            except confluent_kafka.KafkaException as exc:
                raise_engine_error(exc, f"looking up topic={topic!r}", health=self._health)
            if meta is not None and meta.error is None and meta.partitions:
                return len(meta.partitions)
            if (
                meta is not None
                and meta.error is not None
                and meta.error.code()
                in (
                    confluent_kafka.KafkaError.UNKNOWN_TOPIC_OR_PART,
                    confluent_kafka.KafkaError._UNKNOWN_TOPIC,
                )
            ):
                raise UnknownTopicError(f"unknown topic: topic={topic!r}")
            if time.monotonic() >= deadline:
                raise EngineTimeoutError(
                    f"topic={topic!r} has no leaders after max_block_ms="
                    f"{self.config.max_block_ms}: {meta.error if meta is not None else 'none'}"
                )
            time.sleep(0.05)

    def _partition_for(self, topic: str, key: bytes | None, size: int, partition: Any) -> int:
        count = self._partition_count(topic)
        if partition is not None:
            if type(partition) is not int or not 0 <= partition < count:
                count = self._look_up(topic)  # partitions may have been added
                self._counts[topic] = (count, time.monotonic())
                if type(partition) is not int or not 0 <= partition < count:
                    raise PartitionOutOfRangeError(
                        f"partition out of range: topic={topic!r} partition={partition!r} "
                        f"partitions={count}"
                    )
            return int(partition)
        if key is not None:
            return key_partition(key, count)
        with self._lock:  # Kafka's sticky partitioner, as engine.partitioner
            sticky = self._sticky.get(topic)
            if sticky is None or sticky[0] >= count:
                sticky = self._sticky[topic] = [random.randrange(count), 0]
            chosen = sticky[0]
            sticky[1] += size
            if sticky[1] >= self.config.batch_size:
                if count > 1:
                    sticky[0] = (chosen + 1 + random.randrange(count - 1)) % count
                sticky[1] = 0
            return chosen

    # -- sending ---------------------------------------------------------------------

    def send(
        self,
        topic: str,
        value: Any = None,
        key: Any = None,
        headers: Iterable[tuple[str, Any]] | None = None,
        partition: int | None = None,
        timestamp_ms: int | None = None,
    ) -> RecordFuture:
        """Send one record; returns the future of its RecordMetadata (see acks)."""
        self._check_open()
        value = as_bytes("value", value)
        key = as_bytes("key", key)
        header_list = None
        if headers:
            header_list = list(headers)
            encode_headers(header_list)  # RecordTypeError for a bad header
        ts = time.time_ns() // 1_000_000 if timestamp_ms is None else record_timestamp(timestamp_ms)
        p = self._partition_for(topic, key, len(value or b""), partition)
        delivery = self._tracker.add(TopicPartition(topic, p))
        self._produce(topic, value, key, p, ts, header_list, delivery.report, delivery)
        return pending(delivery, 0, ts)  # type: ignore[arg-type]  # a ProducerBatch's shape

    def _produce(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None,
        partition: int,
        ts: int,
        headers: list[tuple[str, Any]] | None,
        report: Any,
        delivery: Any,
    ) -> None:
        """Hand one record to librdkafka, waiting up to max_block_ms for buffer space."""
        deadline = time.monotonic() + self._block_s
        while True:
            try:
                self._client.produce(
                    topic, value, key, partition=partition, timestamp=ts, headers=headers,
                    on_delivery=report,
                )  # fmt: skip
                return
            except BufferError:
                if time.monotonic() >= deadline:
                    self._tracker.retract()
                    raise BufferFullError(
                        f"the producer's buffer stayed full for max_block_ms="
                        f"{self.config.max_block_ms}; the record was not written: "
                        f"topic={topic!r} partition={partition}"
                    ) from None
                time.sleep(0.001)
            except confluent_kafka.KafkaException as exc:
                self._tracker.retract()
                raise_engine_error(exc, f"send to topic={topic!r} partition={partition}",
                                   self.config.transactional)  # fmt: skip

    def send_batch(
        self,
        topic: str,
        values: Sequence[Any] | np.ndarray[Any, Any],
        keys: Sequence[Any] | np.ndarray[Any, Any] | None = None,
        partition: int | None = None,
        timestamp_ms: int | None = None,
        offsets: bool = False,
    ) -> BatchResult:
        """Send many records, one send() each (librdkafka batches them). ``offsets``:
        the array of every record's offset, waited for (up to max_block_ms) here."""
        self._check_open()
        rows = _rows("values", values)
        key_rows = None if keys is None else _rows("keys", keys)
        if key_rows is not None and len(key_rows) != len(rows):
            raise ConfigError(
                f"keys and values differ in length: keys={len(key_rows)} values={len(rows)}"
            )
        futures: list[RecordFuture] = []
        for i, value in enumerate(rows):
            try:
                futures.append(self.send(
                    topic, value, None if key_rows is None else key_rows[i],
                    partition=partition, timestamp_ms=timestamp_ms,
                ))  # fmt: skip
            except EngineError as exc:
                exc.appended = i
                raise
        parts = np.array([f.partition for f in futures], dtype=np.int32)
        out = None
        if offsets:
            out = np.full(len(futures), -1, dtype=np.int64)
            deadline = time.monotonic() + self._block_s
            for i, future in enumerate(futures):
                with contextlib.suppress(EngineError):
                    future.get(max(deadline - time.monotonic(), 0.0))
                out[i] = future.offset
        first = int(parts[0]) if len(parts) and (parts == parts[0]).all() else parts
        return BatchResult(topic, len(rows), first, out, tuple(futures), [], self._block_s)

    def flush(self, timeout: float | None = None) -> None:
        """Send everything at once and wait until every record sent before is delivered
        (or failed). Raises when records sent since the last flush failed: an error of
        the first failure's kind, saying how many failed; EngineTimeoutError when they
        are not decided within ``timeout`` seconds."""
        self._check_open()
        self._flush(timeout)
        failures = self._tracker.take_failures()
        if failures:
            records = sum(n for n, _ in failures)
            first = failures[0][1]
            kind = type(first) if isinstance(first, EngineError) else EngineError
            raise kind(
                f"{records} records sent before flush() were not delivered; the first "
                f"failure: {first}"
            ) from first

    def _flush(self, timeout: float | None) -> None:
        started = time.monotonic()
        self._client.flush(-1 if timeout is None else timeout)
        left = None if timeout is None else max(timeout - (time.monotonic() - started), 0.0)
        missing = self._tracker.wait_idle(left)
        if missing:
            raise EngineTimeoutError(
                f"{missing} records were not delivered within timeout={timeout}"
            )

    def partitions_for(self, topic: str) -> set[int]:
        self._check_open()
        count = self._look_up(topic)
        self._counts[topic] = (count, time.monotonic())
        return set(range(count))

    # -- transactions ----------------------------------------------------------------

    def _transactional(self, call: str) -> None:
        self._check_open()
        if not self.config.transactional:
            raise InvalidTxnStateError(
                f"{call}() needs a producer created with transactional_id=..."
            )

    def init_transactions(self) -> None:
        """Take the transactional id: fence every older producer that used it, and finish
        the transaction it left (the cluster's transaction coordinator does)."""
        self._transactional("init_transactions")
        try:
            self._client.init_transactions(self._block_s)
        except confluent_kafka.KafkaException as exc:
            raise_engine_error(exc, "init_transactions", transactional=True)

    def begin_transaction(self) -> None:
        self._transactional("begin_transaction")
        try:
            self._client.begin_transaction()
        except confluent_kafka.KafkaException as exc:
            raise_engine_error(exc, "begin_transaction", transactional=True)

    def send_offsets_to_transaction(self, offsets: Any, group_id: Any) -> None:
        """Commit these consumer offsets (the next offset to read, per partition) with the
        transaction. ``offsets``: a mapping of TopicPartition to offset, or a list of
        objects with topic, partition and offset; ``group_id``: the group's id, or a
        Consumer of that group (its group metadata fences a zombie member too)."""
        self._transactional("send_offsets_to_transaction")
        group = getattr(group_id, "group_id", group_id)
        if not isinstance(group, str) or not group:
            raise ConfigError(f"group_id must be a consumer group id: group_id={group_id!r}")
        if not isinstance(offsets, Mapping):
            offsets = {TopicPartition(o.topic, o.partition): o.offset for o in offsets}
        checked = validate_offsets(offsets)
        metadata_of = getattr(group_id, "group_metadata", None)
        metadata = metadata_of() if callable(metadata_of) else self._metadata_of(group)
        tps = [confluent_kafka.TopicPartition(tp.topic, tp.partition, off)
               for tp, off in checked.items()]  # fmt: skip
        try:
            self._client.send_offsets_to_transaction(tps, metadata, self._block_s)
        except confluent_kafka.KafkaException as exc:
            raise_engine_error(exc, f"send_offsets_to_transaction of group {group!r}", True)

    def _metadata_of(self, group: str) -> Any:
        """librdkafka's group metadata of a group id alone (no member, no generation:
        what Kafka's sendOffsetsToTransaction(offsets, groupId) sends), made once by a
        consumer that never connects to the group."""
        metadata = self._group_metadata.get(group)
        if metadata is None:
            validate_group_id(group)
            consumer = confluent_kafka.Consumer(self.connection.librdkafka({"group.id": group}))
            try:
                metadata = self._group_metadata[group] = consumer.consumer_group_metadata()
            finally:
                consumer.close()
        return metadata

    def commit_transaction(self, timeout: float | None = None) -> None:
        """Deliver every record of the transaction, then commit it: its records become
        visible to read_committed consumers, and its offsets count. TransactionError
        (TransactionAbortedError when it must be aborted) when it could not."""
        self._transactional("commit_transaction")
        wait = timeout if timeout is not None else self.config.delivery_timeout_ms / 1000
        try:
            self._client.commit_transaction(wait)
        except confluent_kafka.KafkaException as exc:
            raise_engine_error(exc, "commit_transaction", transactional=True)
        self._tracker.take_failures()  # decided with the transaction

    def abort_transaction(self) -> None:
        """Abort: its records are never visible to read_committed consumers, its offsets
        are not committed."""
        self._transactional("abort_transaction")
        try:
            self._client.abort_transaction(self.config.delivery_timeout_ms / 1000)
        except confluent_kafka.KafkaException as exc:
            raise_engine_error(exc, "abort_transaction", transactional=True)
        self._tracker.take_failures()

    # -- lifecycle -------------------------------------------------------------------

    def close(self, timeout: float | None = None) -> None:
        """Deliver what was sent (waiting up to ``timeout`` seconds, by default up to
        delivery_timeout_ms), then release everything; idempotent. Records still not
        delivered then fail with ClosedError."""
        if self._closed:
            return
        self._closed = True
        if os.getpid() != self._pid:
            return
        wait = timeout if timeout is not None else self.config.delivery_timeout_ms / 1000
        try:
            with contextlib.suppress(EngineError):
                self._flush(wait)
        finally:
            self._client.purge()  # what is left is reported failed (ClosedError)
            self._client.flush(5)
            self._stop.set()
            self._poller.join(timeout=5)
            self._client.close()

    def __enter__(self) -> KafkaProducer:
        return self


def _rows(what: str, values: Any) -> list[Any]:
    """send_batch's values or keys, one bytes-like per record."""
    if isinstance(values, np.ndarray):
        if values.ndim == 0 or values.dtype.hasobject:
            raise RecordTypeError(
                f"{what} as a numpy array must hold fixed-size records: dtype={values.dtype}"
            )
        arr = np.ascontiguousarray(values)
        return [arr[i].tobytes() for i in range(arr.shape[0])]
    if isinstance(values, (bytes, bytearray, memoryview, str)):
        raise RecordTypeError(
            f"{what} must be a list of bytes-like values, not one {type(values).__name__}"
        )
    return list(values)
