"""The producer: Kafka's producer, over shared-memory rings instead of sockets.

``Producer`` only wires its collaborators, each in its own module, as Kafka's client
does: the options (engine.producer_config), the topics' leaders and routes
(engine.producer_metadata), the partitioner (engine.partitioner), the record
accumulator (engine.accumulator), the sender thread that appends and retries
(engine.sender), the identity, sequences and transactions
(engine.transaction_manager). Every send returns one kind of future
(engine.future.RecordFuture).

When a send counts as done (``acks``; the default is Kafka's: "all", idempotent):

- ``"all"``: once the ISR holds the record (the leader's high watermark passed it)
  with at least ``min.insync.replicas`` in-sync replicas. Records gather into
  batches per partition (while earlier ones wait for the ISR, up to ``linger_ms``,
  ``batch_size`` bytes), which the sender appends to the leader's ring and retries
  within ``delivery_timeout_ms`` after a leader change or while the ISR is too small.
  Idempotent (the default with acks="all"): a retry never writes a record twice.
- ``1``: once the leader's ring holds the record; ``send`` appends it at once (the
  ring is shared memory: it survives the producer, and its broker drains it into the
  log even after a crash of the broker; a machine crash before the OS wrote the log
  loses it). The returned future is already decided.
- ``0``: as 1 (a ring append is as cheap as not waiting for it); its offset is known.

With acks 0 and 1, a record whose leader moved (its ring is sealed) is handed to the
sender, which finds the new leader within ``delivery_timeout_ms``; its future is
decided then. A ring that stays full for ``max_block_ms`` makes ``send`` raise
BufferFullError: nothing was written. No record reports success unless it was written.

A Producer may be used from several threads. After ``close()`` every method raises
ClosedError. In a forked child, create a new Producer.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

import engine._send as _send_module
from engine._native import ffi, lib
from engine.accumulator import RECORD_OVERHEAD, Bulk, ProducerBatch, RecordAccumulator
from engine.compression import Codec
from engine.errors import (
    BufferFullError,
    ClosedError,
    ConfigError,
    EngineError,
    InvalidRecordError,
    PartitionOutOfRangeError,
    RecordTooLargeError,
    RecordTypeError,
)
from engine.future import RecordFuture, decided, pending
from engine.kafka_client.settings import wants_kafka
from engine.partitioner import (
    group_by_partition,
    next_sticky,
    partition_for,
    partitions_for_keys,
)
from engine.producer_config import Acks, ProducerConfig
from engine.producer_metadata import SINGLE_RECORD_OVERHEAD, ProducerMetadata, Route
from engine.record import (
    TopicPartition,
    as_bytes,
    encode_headers,
    pack_values,
    record_timestamp,
)
from engine.ring import FULL, OK, REAPED, SEALED, raise_for
from engine.sender import Sender
from engine.transaction_manager import TransactionManager

__all__ = ["BatchResult", "Producer", "RecordFuture"]

log = logging.getLogger("engine.producer")

_NULL = ffi.NULL
_append = lib.engine_ring_append
_append_value = lib.engine_ring_append_value
_time_ns = time.time_ns
#: What a batch adds to its records within max.message.bytes: its 61-byte header.
BATCH_OVERHEAD = 61

_send_module.init(
    int(ffi.cast("uintptr_t", ffi.addressof(lib, "engine_ring_send"))),
    int(ffi.cast("uintptr_t", ffi.addressof(lib, "engine_route_pick"))),
    RecordFuture,
)


class BatchResult:
    """What send_batch did: how many records, where each landed, and their futures.

    ``partitions``: the partition of each record (an int32 array), or one int when all
    went to one. ``futures``: one per batch (the future of its last record); ``get()``
    waits until every record is delivered (acks="all": the ISR holds it) and raises the
    first failure. ``offsets`` (send_batch(..., offsets=True)): every record's offset,
    an int64 array; records the sender appends (acks="all", or after a leader change)
    get theirs once appended: reading ``offsets`` waits up to ``max_block_ms`` for that
    (-1 for a record not appended by then).
    """

    def __init__(
        self,
        topic: str,
        count: int,
        partitions: Any,
        offsets: Any,
        futures: tuple[RecordFuture, ...],
        queued: list[tuple[ProducerBatch, Any]],
        max_block_s: float,
    ) -> None:
        self.topic = topic
        self.count = count
        self.partitions = partitions
        self.futures = futures
        self._offsets = offsets
        self._queued = queued  # (batch, the indexes of its records in the call)
        self._max_block_s = max_block_s

    @property
    def offsets(self) -> Any:
        if self._offsets is not None and self._queued:
            deadline = time.monotonic() + self._max_block_s
            for batch, idx in self._queued:
                with contextlib.suppress(EngineError):
                    batch.wait_appended(max(deadline - time.monotonic(), 0.0))
                if batch.offsets is not None:
                    self._offsets[idx] = batch.offsets
            self._queued = [(b, i) for b, i in self._queued if b.offsets is None]
        return self._offsets

    def get(self, timeout: float | None = None) -> BatchResult:
        """Wait until every record is delivered; raise the first failure."""
        for future in self.futures:
            future.get(timeout)
        return self


class Producer:
    """Sends records to topics (kafka-python's names); see the module docstring.

    ``Producer(bootstrap_servers=..., ...)`` makes, instead, a producer of a Kafka
    cluster (engine.kafka_client.producer.KafkaProducer, a subclass): the same methods,
    options, futures and errors, through confluent-kafka."""

    def __new__(cls, data_dir: str | os.PathLike[str] | None = None, **options: Any) -> Producer:
        if cls is Producer and wants_kafka(options):
            from engine.kafka_client.producer import KafkaProducer

            return object.__new__(KafkaProducer)
        return object.__new__(cls)

    def __init__(self, data_dir: str | os.PathLike[str] | None = None, **options: Any) -> None:
        """Options are kafka-python's (engine.producer_config.ProducerConfig): ``acks``
        ("all" by default), ``enable_idempotence`` (on with acks="all"),
        ``transactional_id`` (see init_transactions), ``transaction_timeout_ms``,
        ``linger_ms``, ``batch_size``, ``buffer_memory``, ``max_block_ms`` (how long a
        send may block: for metadata, ring space, buffer space), ``delivery_timeout_ms``
        (how long a record may take to be delivered, retries included),
        ``retry_backoff_ms``, ``max_in_flight_requests_per_connection``, ``client_id``,
        ``compression_type`` ("none", or "gzip", "snappy", "lz4", "zstd": the batches
        are compressed as a Kafka client's are; every record then goes through the
        sender, also with acks 0 and 1).
        """
        config = ProducerConfig.from_options(**options)
        self.config = config
        self._pid = os.getpid()
        self._closed = False
        self._block_s = config.max_block_ms / 1000
        self._block_ns = config.max_block_ms * 1_000_000
        # acks 0 and 1 without idempotence append in the caller's thread when nothing
        # waits in the accumulator (a record must not overtake one that waits).
        # With compression_type, every record goes through the accumulator: the sender
        # compresses whole batches.
        self._direct = (
            config.acks != Acks.ALL and not config.enable_idempotence
            and config.codec is Codec.NONE
        )  # fmt: skip
        self._metadata = ProducerMetadata(data_dir, config.max_block_ms, config.batch_size)
        try:
            self._identity = TransactionManager(
                self._metadata.cluster,
                config.transactional_id,
                config.transaction_timeout_ms,
                config.enable_idempotence,
            )
        except BaseException:
            self._metadata.close()
            raise
        self._accumulator = RecordAccumulator(
            config.batch_size,
            config.linger_ms,
            config.buffer_memory,
            config.max_in_flight_requests_per_connection,
            config.delivery_timeout_ms,
            waits_for_isr=config.acks == Acks.ALL,
            on_queued=self._pause_fast if self._direct else None,
        )
        self._sender = Sender(config, self._accumulator, self._metadata, self._identity)
        self._sender.start()
        self._fast: Any = None
        if type(self).send is Producer.send and (self._direct or not config.transactional):
            # send() parsed in C, no Python frame per record: the instance attribute
            # shadows the method, which the C object calls for everything the C path does
            # not take (see native/send.c). acks 0 and 1 append there; acks="all" adds the
            # record to its partition's open batch (a transactional producer's sends go
            # through Python: each partition joins the transaction first).
            self._metadata.fast_enabled = True
            if self._direct:
                self._fast = _send_module.Sender(self._metadata.fast, _general_send(self))
            else:
                self._metadata.opens_for = self._accumulator.opens_for
                self._fast = _send_module.Sender(
                    self._metadata.fast, _general_send(self), self._accumulator.lock
                )
            self.__dict__["send"] = self._fast
            os.register_at_fork(after_in_child=_forget_fast(self))

    # -- options as attributes (kafka-python's habit) -------------------------------

    @property
    def acks(self) -> int:
        return int(self.config.acks)

    @property
    def enable_idempotence(self) -> bool:
        return self.config.enable_idempotence

    @property
    def transactional_id(self) -> str | None:
        return self.config.transactional_id

    @property
    def client_id(self) -> str:
        return self.config.client_id

    # -- sending ------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError("producer is closed")
        if os.getpid() != self._pid:
            raise ClosedError("producer was created in another process: create one per process")

    def _pause_fast(self, paused: bool) -> None:
        """Records wait in the accumulator (True) or no longer do: the C path stands
        aside meanwhile. Called by the accumulator under its lock."""
        if self._fast is not None:
            self._fast.paused = paused

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
        if type(value) is not bytes:
            value = as_bytes("value", value)
        if key is not None and type(key) is not bytes:
            key = as_bytes("key", key)
        hbytes, hcount = encode_headers(headers) if headers else (b"", 0)
        route = self._metadata.route(topic)
        if key is None and route.compacted:
            raise _keyless(topic)
        vlen = -1 if value is None else len(value)
        klen = -1 if key is None else len(key)
        if max(vlen, 0) + max(klen, 0) + len(hbytes) > route.max_bytes - SINGLE_RECORD_OVERHEAD:
            raise RecordTooLargeError(
                f"record of {max(vlen, 0) + max(klen, 0) + len(hbytes)} bytes exceeds "
                f"max.message.bytes={route.max_bytes} of topic {topic!r} (with "
                f"{SINGLE_RECORD_OVERHEAD} bytes of batch overhead); nothing was written"
            )
        partition = partition_for(route, key, vlen, partition)
        ts = _time_ns() // 1_000_000 if timestamp_ms is None else record_timestamp(timestamp_ms)
        tp = TopicPartition(topic, partition)
        self._identity.before_send(tp)
        if self._direct and self._accumulator.idle:
            result = self._append_direct(route, partition, key, value, hbytes, hcount, ts)
            if result >= 0:
                return decided(topic, partition, result, ts)
            if result != -SEALED:
                if result == -FULL:
                    raise BufferFullError(
                        f"the partition's ring stayed full for max_block_ms="
                        f"{self.config.max_block_ms}: the broker has not drained it; the "
                        f"record was not written: topic={topic!r} partition={partition}"
                    )
                raise_for(-result, f"send to topic={topic!r} partition={partition}")
            self._metadata.invalidate(topic, route)  # its leader moved: the sender looks
        batch, index = self._accumulator.append(
            tp, key, value, hbytes, hcount, ts, self._block_s, route.max_bytes - BATCH_OVERHEAD
        )
        return pending(batch, index, ts)

    def _append_direct(
        self,
        route: Route,
        partition: int,
        key: bytes | None,
        value: bytes | None,
        hbytes: bytes,
        hcount: int,
        ts: int,
    ) -> int:
        """Append one record in this thread, waiting up to max_block_ms for ring space:
        its offset, or minus a ring code."""
        region = route.regions[partition]
        while True:
            if hcount:
                result = int(_append(
                    region, route.fields, ts,
                    _NULL if key is None else key, -1 if key is None else len(key),
                    _NULL if value is None else value, -1 if value is None else len(value),
                    hbytes, len(hbytes), hcount, self._block_ns,
                ))  # fmt: skip
            else:
                result = int(_append_value(
                    region, route.fields, ts,
                    _NULL if key is None else key, -1 if key is None else len(key),
                    _NULL if value is None else value, -1 if value is None else len(value),
                ))  # fmt: skip
            if result != -REAPED:  # a reaper tore the claim: again
                return result

    def send_batch(
        self,
        topic: str,
        values: Sequence[Any] | np.ndarray[Any, Any],
        keys: Sequence[Any] | np.ndarray[Any, Any] | None = None,
        partition: int | None = None,
        timestamp_ms: int | None = None,
        offsets: bool = False,
    ) -> BatchResult:
        """Send many records: one C call per partition.

        values: a list of bytes-like values, or a numpy array of fixed-size records
        (each row / element is one record's value). keys: None (the sticky partition,
        or ``partition``), or one key per value (a list of bytes, or a fixed-size numpy
        array, whose rows are the keys byte for byte, padding included: an ``S16`` key
        of b"dev-1" is those 5 bytes and 11 NULs), which places each record by murmur2
        like send(). With acks 0 and 1 the records are appended when it returns (but
        those whose leader moved meanwhile, which the sender appends); with acks="all"
        the sender appends them. On an error part way, the records appended so far stay
        appended, and the exception's ``appended`` says how many.
        """
        self._check_open()
        blob, lengths, stride, count = _values_blob("values", values)
        kblob, klengths, kstride = None, None, 0
        if keys is not None:
            kblob, klengths, kstride, kcount = _values_blob("keys", keys)
            if kcount != count:
                raise ConfigError(f"keys and values differ in length: keys={kcount} values={count}")
        ts = _time_ns() // 1_000_000 if timestamp_ms is None else int(timestamp_ms)
        route = self._metadata.route(topic)
        if keys is None and route.compacted and count:
            raise _keyless(topic)
        largest = int(lengths.max()) if lengths is not None and count else stride
        if largest > route.max_bytes:
            raise RecordTooLargeError(
                f"a record of {largest} bytes exceeds max.message.bytes={route.max_bytes} of "
                f"topic {topic!r}; nothing was written"
            )
        out = np.full(count, -1, dtype=np.int64) if offsets else None
        # Records queued for the sender are copied from the caller's arrays (grouping
        # by key copies them anyway); a list's values were packed into a blob of ours.
        borrowed = isinstance(values, np.ndarray) or isinstance(keys, np.ndarray)
        if keys is None or partition is not None:
            if partition is None:
                partition = next_sticky(route)
            elif type(partition) is not int or not 0 <= partition < route.count:
                raise PartitionOutOfRangeError(
                    f"partition out of range: topic={topic!r} partition={partition!r} "
                    f"partitions={route.count}"
                )
            groups = [(partition, None, blob, lengths, kblob, klengths)]
            parts: Any = partition
        elif (
            lengths is None and klengths is None and self._direct and count
            and self._accumulator.idle and not self._identity.transactional
        ):
            return self._send_keyed(route, blob, stride, kblob, kstride, count, ts, out)
        else:
            parts = partitions_for_keys(kblob, klengths, kstride, count, route.count)
            groups = group_by_partition(
                blob, lengths, stride, kblob, klengths, kstride, parts, route.count
            )
        futures: list[RecordFuture] = []
        queued: list[tuple[ProducerBatch, Any]] = []
        done = 0
        for p, idx, vb, vl, kb, kl in groups:
            n = count if idx is None else len(idx)
            tp = TopicPartition(topic, p)
            self._identity.before_send(tp)
            bulk = Bulk(vb, vl, stride, kb, kl, kstride, ts)
            appended = 0
            if self._direct and self._accumulator.idle:
                sub = np.empty(n, dtype=np.int64) if out is not None else None
                code, appended = route.view.rings[p].append_records(
                    route.fields, vb, vl, stride, kb, kl, kstride, timestamp_ms=ts,
                    timeout_ms=self.config.max_block_ms, offsets=sub,
                )  # fmt: skip
                if out is not None and sub is not None:
                    out[slice(None) if idx is None else idx] = sub
                if code == OK:
                    done += n
                    continue
                if code != SEALED:
                    try:
                        raise_for(code, f"send_batch to topic={topic!r} partition={p}")
                    except EngineError as exc:
                        exc.appended = done + appended
                        raise
                self._metadata.invalidate(topic, route)
                bulk = bulk.tail(appended)
            if idx is None and borrowed:  # the caller's own arrays: it may change them
                bulk = bulk.copy()
            size = _bulk_size(bulk, n - appended)
            try:
                batch = self._accumulator.add_batch(tp, bulk, n - appended, size, self._block_s)
            except EngineError as exc:  # the buffer stayed full: what came before goes on
                exc.appended = done + appended
                raise
            futures.append(pending(batch, n - appended - 1, ts))
            rest = np.arange(n)[appended:] if idx is None else idx[appended:]
            queued.append((batch, rest))
            done += n
        return BatchResult(topic, count, parts, out, tuple(futures), queued, self._block_s)

    def _send_keyed(
        self,
        route: Route,
        blob: Any,
        stride: int,
        kblob: Any,
        kstride: int,
        count: int,
        ts: int,
        out: Any,
    ) -> BatchResult:
        """Fixed-size keyed records, acks 0 or 1: partitioned and appended in one C call
        (engine_route_append_keyed), each partition's records encoded straight from the
        caller's arrays. A partition whose leader moved meanwhile is handed to the
        sender."""
        n = route.count
        scratch = np.empty(2 * count + n, dtype=np.int32)
        appended = np.empty(n, dtype=np.int32)
        codes = np.empty(n, dtype=np.int32)
        last = np.empty(n, dtype=np.int64)
        sub_out = out if out is not None else np.empty(count, dtype=np.int64)
        code = lib.engine_route_append_keyed(
            route.c, ts, count, ffi.from_buffer(kblob), kstride, ffi.from_buffer(blob), stride,
            self._block_ns, ffi.from_buffer("int32_t[]", scratch),
            ffi.from_buffer("int64_t[]", sub_out), ffi.from_buffer("int32_t[]", appended),
            ffi.from_buffer("int32_t[]", codes), ffi.from_buffer("int64_t[]", last),
        )  # fmt: skip
        parts = scratch[:count].copy()
        futures: list[RecordFuture] = []
        queued: list[tuple[ProducerBatch, Any]] = []
        if code != OK:
            ends = scratch[2 * count :]
            for p in range(n):
                if codes[p] == OK:
                    continue
                start = int(ends[p - 1]) if p else 0
                rest = scratch[count + start + int(appended[p]) : count + int(ends[p])].copy()
                if codes[p] != SEALED:
                    try:
                        raise_for(int(codes[p]), f"send_batch to topic={route.topic!r}")
                    except EngineError as exc:
                        exc.appended = int(appended.sum())
                        raise
                self._metadata.invalidate(route.topic, route)
                values = blob.reshape(count, stride)[rest].reshape(-1)
                keys = kblob.reshape(count, kstride)[rest].reshape(-1)
                bulk = Bulk(values, None, stride, keys, None, kstride, ts)
                try:
                    batch = self._accumulator.add_batch(
                        TopicPartition(route.topic, p), bulk, len(rest),
                        len(rest) * (stride + kstride + RECORD_OVERHEAD), self._block_s,
                    )  # fmt: skip
                except EngineError as exc:  # the buffer stayed full
                    exc.appended = int(appended.sum()) + sum(len(r) for _, r in queued)
                    raise
                futures.append(pending(batch, len(rest) - 1, ts))
                queued.append((batch, rest))
                if out is not None:
                    out[rest] = -1
        return BatchResult(route.topic, count, parts, out, tuple(futures), queued, self._block_s)

    def flush(self, timeout: float | None = None) -> None:
        """Send everything at once and wait until every record sent before is delivered
        (or failed). Raises when records sent since the last flush failed: an error of
        the first failure's kind, saying how many failed; EngineTimeoutError when they
        are not decided within ``timeout`` seconds."""
        self._check_open()
        self._accumulator.flush(timeout)
        failures = self._accumulator.take_failures()
        if failures:
            records = sum(n for n, _ in failures)
            first = failures[0][1]
            kind = type(first) if isinstance(first, EngineError) else EngineError
            raise kind(
                f"{records} records sent before flush() were not delivered; the first "
                f"failure: {first}"
            ) from first

    def partitions_for(self, topic: str) -> set[int]:
        self._check_open()
        return set(range(self._metadata.partition_count(topic)))

    # -- transactions --------------------------------------------------------------

    def init_transactions(self) -> None:
        """Take the transactional id: fence every older producer that used it, and finish
        the transaction it left (commit one it had decided to commit, abort any other)."""
        self._check_open()
        self._identity.init_transactions()

    def begin_transaction(self) -> None:
        self._check_open()
        self._identity.begin_transaction()

    def send_offsets_to_transaction(self, offsets: Any, group_id: Any) -> None:
        """Commit these consumer offsets (the next offset to read, per partition) with the
        transaction: they count exactly when its records do. ``offsets``: a mapping of
        TopicPartition to offset (kafka-python), or a list of objects with topic,
        partition and offset (confluent-kafka); ``group_id``: the group's id, or an
        object with a ``group_id`` attribute (a consumer's group metadata)."""
        self._check_open()
        self._identity.send_offsets(offsets, group_id)

    def commit_transaction(self, timeout: float | None = None) -> None:
        """Wait until every record of the transaction is delivered (the ISR holds it),
        then commit it: its records become visible to read_committed consumers, and
        its offsets count. TransactionError when a record failed (abort, start again)."""
        self._check_open()
        wait = timeout if timeout is not None else self.config.delivery_timeout_ms / 1000
        self._identity.commit(lambda: self.flush(wait))

    def abort_transaction(self) -> None:
        """Abort: its records are never visible to read_committed consumers, its offsets
        are not committed. After a transaction timeout, this also makes the producer
        usable again (a new epoch)."""
        self._check_open()
        wait = self.config.delivery_timeout_ms / 1000
        self._identity.abort(lambda: self.flush(wait))

    # -- lifecycle ----------------------------------------------------------------

    def close(self, timeout: float | None = None) -> None:
        """Deliver what was sent (waiting up to ``timeout`` seconds, by default up to
        delivery_timeout_ms), then release everything; idempotent. Records still not
        delivered then fail with ClosedError."""
        if self._closed:
            return
        self._closed = True
        self._metadata.fast.clear()  # no more appends through the C path
        if os.getpid() != self._pid:
            return
        wait = timeout if timeout is not None else self.config.delivery_timeout_ms / 1000
        try:
            with contextlib.suppress(EngineError):
                self._accumulator.flush(wait)
        finally:
            for fn, arg in self._accumulator.fail_all(
                ClosedError("the producer was closed before the record was delivered")
            ):
                with contextlib.suppress(Exception):
                    fn(arg)
            self._accumulator.close()
            self._sender.join(timeout=5)
            self._metadata.close()

    def __enter__(self) -> Producer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _forget_fast(producer: Producer) -> Any:
    """In a forked child, the C send path of ``producer`` stands aside (the child gets
    ClosedError from the Python method, as for every other call)."""
    import weakref

    ref = weakref.ref(producer)

    def forget() -> None:
        p = ref()
        if p is not None:
            p._metadata.fast.clear()
            p._metadata.fast_enabled = False

    return forget


def _general_send(producer: Producer) -> Any:
    """Producer.send bound to ``producer`` without a reference cycle through the C
    object (it is the producer's own attribute)."""
    import weakref

    ref = weakref.ref(producer)

    def send(*args: Any, **kwargs: Any) -> RecordFuture:
        p = ref()
        if p is None:
            raise ClosedError("producer is closed")
        return Producer.send(p, *args, **kwargs)

    return send


def _keyless(topic: str) -> InvalidRecordError:
    return InvalidRecordError(
        f"a record without a key cannot go to a compacted topic (cleanup.policy has "
        f"'compact'); nothing was written: topic={topic!r}"
    )


# -- helpers for send_batch ----------------------------------------------------


def _bulk_size(bulk: Bulk, count: int) -> int:
    values = len(memoryview(bulk.values).cast("B")) if count else 0
    keys = len(memoryview(bulk.keys).cast("B")) if bulk.keys is not None and count else 0
    return values + keys + count * RECORD_OVERHEAD


def _values_blob(what: str, values: Any) -> tuple[Any, Any, int, int]:
    """(blob, lengths or None, stride, count) for a list of bytes or a numpy array."""
    if isinstance(values, np.ndarray):
        if values.ndim == 0:
            raise RecordTypeError(f"{what} must be a sequence or an array of records")
        if values.dtype.hasobject:  # pointers to Python objects, not the records' bytes
            raise RecordTypeError(
                f"{what} as a numpy array must hold fixed-size records, not Python objects: "
                f"dtype={values.dtype} (pass a list of bytes, or an array of dtype 'S<n>')"
            )
        arr = np.ascontiguousarray(values)
        count = arr.shape[0]
        stride = arr.itemsize * (int(np.prod(arr.shape[1:])) if arr.ndim > 1 else 1)
        if count and stride == 0:
            raise RecordTypeError(
                f"{what} as a numpy array must hold records of at least one byte: "
                f"shape={arr.shape} dtype={arr.dtype}"
            )
        return arr.reshape(-1).view(np.uint8) if count else b"", None, stride, count
    if isinstance(values, (bytes, bytearray, memoryview, str)):
        raise RecordTypeError(
            f"{what} must be a list of bytes-like values, not one {type(values).__name__}"
        )
    try:
        values = list(values)
    except TypeError:
        raise RecordTypeError(
            f"{what} must be a list of bytes-like values or a numpy array, "
            f"not {type(values).__name__}"
        ) from None
    blob, lengths = pack_values(values, what)
    return blob, lengths, 0, len(values)
