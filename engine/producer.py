"""The producer: appends records straight into the partition leaders' rings.

Acknowledgement modes (``acks``):

- ``1``: ``send`` appends into the leader's ring and returns a future that is
  already resolved with the record's offset: the leader's log holds it. The ring
  is shared memory, so it survives the death of the producer (and of the broker,
  which drains it into segment files after a restart); a machine crash before
  the broker wrote and the OS flushed it loses it.
- ``"all"``: as 1, and the ISR holds it. With replication 1 the ISR is the
  leader alone; topics with more replicas arrive with the replication issue.
- ``0``: ``send`` waits for nothing. A record of bytes (no headers, no
  timestamp) goes into the leader's ring at once when the ring has room and
  nothing is buffered before it (appending is cheaper than buffering); its
  future carries its offset. Any other record is buffered in this process and
  a background thread appends buffered records in batches every ``linger_ms``;
  its future carries offset -1. Nothing waits for the ring to drain or for
  replicas. What a crash of the producer process loses: every record buffered
  and not yet appended (at most ``linger_ms`` worth, or ``buffer_memory``
  bytes). ``flush()`` and ``close()`` append everything buffered.

A Producer may be used from several threads: sends are serialized by a lock.
After ``close()`` every method raises ClosedError. In a forked child, create a
new Producer.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MethodType
from typing import Any

import numpy as np

import engine._send as _send_module
from engine import transaction as txn
from engine._native import ffi, lib
from engine.acker import Acker, Lane, LaneFuture, PendingFuture
from engine.cluster import ClusterView, TopicView
from engine.errors import (
    BufferFullError,
    ClosedError,
    ConfigError,
    EngineError,
    EngineTimeoutError,
    InvalidTxnStateError,
    NotLeaderError,
    PartitionOutOfRangeError,
    ProducerFencedError,
    RecordTooLargeError,
    RecordTypeError,
    TransactionAbortedError,
    TransactionError,
)
from engine.idempotence import present_prefix
from engine.log import LogReader
from engine.offset_store import validate_offsets
from engine.record import RecordMetadata, TopicPartition, as_bytes, encode_headers, pack_values
from engine.ring import OK, PRODUCER_FENCED, REAPED, SEALED, producer_fields, raise_for
from engine.txn_filter import TRANSACTIONAL

log = logging.getLogger("engine.producer")

# Bytes a one-record batch adds to key + value + headers (61-byte batch header,
# record varints), so that the batch stays within max.message.bytes.
RECORD_OVERHEAD = 96
_NULL = ffi.NULL
_append = lib.engine_ring_append
_append_value = lib.engine_ring_append_value
_murmur2 = lib.engine_murmur2
_time_ns = time.time_ns

_ACKS = {0: 0, 1: 1, -1: -1, "all": -1, "0": 0, "1": 1, "-1": -1}
# Transaction states of a transactional producer (None: init_transactions() not called).
_READY, _IN_TXN, _ABORTABLE, _FENCED = "ready", "in_transaction", "abortable", "fenced"


class RecordFuture(tuple):  # type: ignore[type-arg]
    """The outcome of one send, in kafka-python's shape (get, add_callback, ...).

    Always resolved when send returns: with acks 1 and "all", with the record's
    offset (a record that cannot be appended makes send raise instead); with
    acks=0, with offset -1 (nothing confirms the record). A plain tuple
    (topic, partition, offset, timestamp) underneath, because the hot path
    creates one per record.
    """

    __slots__ = ()

    @property
    def topic(self) -> str:
        return str(self[0])

    @property
    def partition(self) -> int:
        return int(self[1])

    @property
    def offset(self) -> int:
        return int(self[2])

    @property
    def timestamp(self) -> int:
        return int(self[3])

    @property
    def value(self) -> RecordMetadata:
        return RecordMetadata(*self)

    def get(self, timeout: float | None = None) -> RecordMetadata:
        return RecordMetadata(*self)

    def is_done(self) -> bool:
        return True

    def succeeded(self) -> bool:
        return True

    def failed(self) -> bool:
        return False

    def exception(self) -> BaseException | None:
        return None

    def add_callback(self, fn: Any) -> RecordFuture:
        fn(RecordMetadata(*self))
        return self

    def add_errback(self, fn: Any) -> RecordFuture:
        return self


_future = tuple.__new__
_send_module.init(int(ffi.cast("uintptr_t", ffi.addressof(lib, "engine_ring_send"))), RecordFuture)
_fast_send = _send_module.send


class _Route:
    """The fast path's view of a topic: ring regions by partition, limits, and the C route
    (engine_route_t) that engine._send appends through, sticky partition state included."""

    __slots__ = (
        "address", "c", "c_regions", "count", "fields", "lanes", "max_bytes", "regions", "view",
    )  # fmt: skip

    def __init__(
        self, view: TopicView, fields: Any, batch_size: int, acker: Acker | None = None
    ) -> None:
        self.view = view
        # acks="all": what the acker decides of the records sent one by one, per partition.
        self.lanes: list[Lane] = [
            Lane(acker, view.name, p, view.rings[p], int(fields.min_insync))
            for p in range(view.partition_count)
        ] if acker is not None else []  # fmt: skip
        self.fields = fields
        self.count = view.partition_count
        self.max_bytes = view.max_message_bytes
        self.regions = [view.rings[p]._ptr() for p in range(self.count)]
        self.c_regions = ffi.new("void *[]", self.regions)
        self.c = c = ffi.new("engine_route_t *")
        c.fields = fields
        c.regions = self.c_regions
        c.partition_count = self.count
        c.sticky_partition = random.randrange(self.count)
        c.batch_bytes = batch_size
        c.max_record_bytes = self.max_bytes - RECORD_OVERHEAD
        c.random_state = random.getrandbits(64) | 1
        self.address = int(ffi.cast("uintptr_t", c))


@dataclass(frozen=True)
class BatchResult:
    """What send_batch did: how many records, and where each landed (with offsets=True).

    With acks="all" the records are appended when send_batch returns and committed
    once the ISR holds them: ``get()`` (or ``Producer.flush()``) waits for that.
    """

    topic: str
    count: int
    partitions: Any  # numpy int32 array, one per record (or an int for one partition)
    offsets: Any  # numpy int64 array, one per record, or None
    futures: tuple[Any, ...] = ()  # acks="all": one per partition written

    def get(self, timeout: float | None = None) -> BatchResult:
        """Wait until the ISR holds every record of the batch (acks="all"); raise if not."""
        for future in self.futures:
            future.get(timeout)
        return self


class Producer:
    """Appends records to topics; see the module docstring for acks semantics."""

    def __init__(
        self,
        data_dir: str | os.PathLike[str] | None = None,
        *,
        acks: int | str | None = None,
        max_block_ms: int = 60_000,
        delivery_timeout_ms: int = 120_000,
        linger_ms: int = 5,
        batch_size: int = 16384,
        buffer_memory: int = 32 << 20,
        client_id: str | None = None,
        enable_idempotence: bool = False,
        transactional_id: str | None = None,
        transaction_timeout_ms: int = 60_000,
        **unknown: Any,
    ) -> None:
        """Options are kafka-python's. ``acks`` defaults to 1, or to "all" for an
        idempotent or transactional producer (which need it).

        ``enable_idempotence``: the producer takes a producer id and numbers its
        records per partition; after a leader change it appends to the new leader
        only the records that leader lacks (engine.idempotence): no duplicates
        from retries. ``transactional_id``: implies idempotence; see
        init_transactions(). ``transaction_timeout_ms``: a transaction left open
        longer is aborted by the controller.
        """
        if unknown:
            raise ConfigError(f"unknown producer option: {sorted(unknown)[0]!r}")
        if not isinstance(enable_idempotence, bool):
            raise ConfigError(
                f"enable_idempotence must be a bool: enable_idempotence={enable_idempotence!r}"
            )
        if transactional_id is not None:
            txn.validate_transactional_id(transactional_id)
        idempotent = enable_idempotence or transactional_id is not None
        if acks is None:
            acks = "all" if idempotent else 1
        if acks not in _ACKS:
            raise ConfigError(f"acks must be 0, 1 or 'all': acks={acks!r}")
        if idempotent and _ACKS[acks] != -1:
            raise ConfigError(
                "an idempotent or transactional producer needs acks='all' (Kafka's rule: "
                f"a retry must know what the ISR holds): acks={acks!r}"
            )
        for name, value in (
            ("max_block_ms", max_block_ms),
            ("linger_ms", linger_ms),
            ("batch_size", batch_size),
            ("buffer_memory", buffer_memory),
            ("delivery_timeout_ms", delivery_timeout_ms),
            ("transaction_timeout_ms", transaction_timeout_ms),
        ):
            if not isinstance(value, int) or value < 0:
                raise ConfigError(f"{name} must be a non-negative int: {name}={value!r}")
        self.acks = _ACKS[acks]
        self.max_block_ms = max_block_ms
        self.delivery_timeout_ms = delivery_timeout_ms
        self.linger_ms = linger_ms
        self.batch_size = batch_size
        self.buffer_memory = buffer_memory
        self.client_id = client_id or f"producer-{os.getpid()}"
        self._cluster = ClusterView(data_dir, lookup_timeout_s=max_block_ms / 1000)
        self._fields = producer_fields(timeout_ms=max_block_ms)
        self._block_ns = max_block_ms * 1_000_000
        self._routes: dict[str, _Route] = {}
        # Not idempotent: (the address of its engine_route_t, the route) of each topic
        # engine._send may append to
        self._fast: dict[str, tuple[int, _Route]] = {}
        self._lock = threading.RLock()
        self._closed = False
        self._pid = os.getpid()
        # acks=0: the accumulator and its sender thread.
        self._buffer: dict[
            tuple[str, int], list[tuple[bytes | None, bytes | None, bytes, int, int]]
        ] = {}
        self._buffered_bytes = 0
        self._draining = False
        self._buffer_cond = threading.Condition(self._lock)
        self._sender_error: BaseException | None = None
        self._sender: threading.Thread | None = None
        self._acker = (
            Acker(delivery_timeout_ms / 1000, self._recover if idempotent else None)
            if self.acks == -1
            else None
        )
        # Idempotence and transactions.
        self.enable_idempotence = idempotent
        self.transactional_id = transactional_id
        self._producer_id, self._epoch = -1, -1
        self._seq_fields: dict[TopicPartition, Any] = {}  # per partition: the next sequence
        self._txn: txn.Transactions | None = None
        self._txn_state: str | None = None  # None until init_transactions()
        self._txn_partitions: set[TopicPartition] = set()
        self._txn_offsets: dict[str, dict[TopicPartition, int]] = {}
        self._txn_futures: list[PendingFuture] = []
        if transactional_id is not None:
            self._txn = txn.Transactions(self._cluster, transactional_id, transaction_timeout_ms)
        elif idempotent:
            self._set_identity(txn.allocate_producer_id(self._cluster.zk), 0)
        if self.acks == 0:
            self._sender = threading.Thread(
                target=self._sender_loop, name="producer-sender", daemon=True
            )
            self._sender.start()
        if type(self).send is Producer.send and not idempotent:
            # send() parsed and appended in C, no Python frame per record: the instance
            # attribute shadows the method, which the C object calls for everything the
            # C path does not take (see native/send.c).
            self.__dict__["send"] = _send_module.Sender(
                self._fast,
                MethodType(Producer.send, self),
                None if self._acker is None else self._acked,
            )

    # -- sending -----------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError("producer is closed")
        if os.getpid() != self._pid:
            raise ClosedError("producer was created in another process: create one per process")

    def _route(self, topic: str) -> _Route:
        with self._lock:
            view = self._cluster.topic(topic)
            fields = self._fields
            if self.acks == -1:  # the leader refuses the append below min.insync.replicas
                fields = producer_fields(
                    timeout_ms=self.max_block_ms,
                    min_insync=int(view.config["min.insync.replicas"]),
                )
            route = _Route(
                view, fields, self.batch_size, None if self.enable_idempotence else self._acker
            )
            self._routes[topic] = route
            if not self.enable_idempotence and not self._closed:
                self._fast[topic] = (route.address, route)
            return route

    def _forget_route(self, topic: str) -> None:
        self._routes.pop(topic, None)
        self._fast.pop(topic, None)

    def _next_sticky(self, route: _Route) -> int:
        """Keyless records stick to one partition for batch_size bytes, then move on."""
        c = route.c
        if route.count > 1:
            c.sticky_partition = (c.sticky_partition + 1 + random.randrange(route.count - 1)) % (
                route.count
            )
        c.sticky_bytes = 0
        return int(c.sticky_partition)

    def send(
        self,
        topic: str,
        value: Any = None,
        key: Any = None,
        headers: Iterable[tuple[str, Any]] | None = None,
        partition: int | None = None,
        timestamp_ms: int | None = None,
    ) -> RecordFuture:
        """Send one record; returns a future of its RecordMetadata (see acks)."""
        if headers is None and timestamp_ms is None and not self._buffer and not self._draining:
            fast = self._fast.get(topic)
            if fast is None and not self._closed:
                if topic not in self._routes:  # the first send to the topic: map it
                    self._route(topic)
                fast = self._fast.get(topic)
            if fast is not None:  # key and value bytes: one C call (engine._send)
                future = _fast_send(fast[0], topic, key, value, partition)
                if future.__class__ is RecordFuture:
                    if self._acker is None:
                        return future
                    return self._acked(fast[1], future)  # type: ignore[return-value]
                # Not bytes, or the ring said no (full, too large, sealed, no such
                # partition): the general path below says why or waits, as before.
        if self._closed:
            raise ClosedError("producer is closed")
        if type(value) is not bytes:
            value = as_bytes("value", value)
        if key is not None and type(key) is not bytes:
            key = as_bytes("key", key)
        if headers:
            hbytes, hcount = encode_headers(headers)
        else:
            hbytes, hcount = b"", 0
        route = self._routes.get(topic) or self._route(topic)
        vlen = -1 if value is None else len(value)
        klen = -1 if key is None else len(key)
        if vlen + klen + len(hbytes) > route.max_bytes - RECORD_OVERHEAD:
            raise RecordTooLargeError(
                f"record of {max(vlen, 0) + max(klen, 0) + len(hbytes)} bytes exceeds "
                f"max.message.bytes={route.max_bytes} of topic {topic!r} (with "
                f"{RECORD_OVERHEAD} bytes of batch overhead); nothing was written"
            )
        if partition is None:
            if key is None:
                partition = int(route.c.sticky_partition)
                route.c.sticky_bytes += vlen
                if route.c.sticky_bytes >= self.batch_size:
                    self._next_sticky(route)
            else:
                partition = (_murmur2(key, klen) & 0x7FFFFFFF) % route.count
        elif type(partition) is not int or not 0 <= partition < route.count:
            raise PartitionOutOfRangeError(
                f"partition out of range: topic={topic!r} partition={partition!r} "
                f"partitions={route.count}"
            )
        ts = _time_ns() // 1_000_000 if timestamp_ms is None else int(timestamp_ms)
        if self.enable_idempotence:
            return self._send_idempotent(  # type: ignore[return-value]
                TopicPartition(topic, partition), key, value, hbytes, hcount, ts
            )
        if self.acks == 0:
            with self._lock:
                self._buffer_record(topic, partition, key, value, hbytes, hcount, ts)
            return _future(RecordFuture, (topic, partition, -1, ts))
        if hcount:
            result = _append(
                route.regions[partition], route.fields, ts,
                _NULL if key is None else key, klen, _NULL if value is None else value, vlen,
                hbytes, len(hbytes), hcount, self._block_ns,
            )  # fmt: skip
        else:
            result = _append_value(
                route.regions[partition], route.fields, ts,
                _NULL if key is None else key, klen, _NULL if value is None else value, vlen,
            )  # fmt: skip
        if result < 0:
            with self._lock:
                result = self._append_slow(
                    topic, partition, -result, key, value, hbytes, hcount, ts
                )
                route = self._routes.get(topic) or self._route(topic)  # it may have moved
        if self._acker is not None:
            return self._await_isr(route, partition, result, ts)  # type: ignore[return-value]
        return _future(RecordFuture, (topic, partition, result, ts))

    def _acked(self, route: _Route, future: RecordFuture) -> LaneFuture:
        """acks="all": the future of a record the C path appended through ``route``
        (the route it sent through, even if another thread has dropped it since)."""
        _, partition, offset, ts = future
        lane: Lane = route.lanes[partition]
        return lane.add(offset, ts)

    def _await_isr(self, route: _Route, partition: int, offset: int, ts: int) -> LaneFuture:
        """acks="all", not idempotent: the future of a record appended through
        ``route``, decided by the acker along with its lane."""
        return route.lanes[partition].add(offset, ts)

    def _append(
        self,
        view: TopicView,
        partition: int,
        key: bytes | None,
        value: bytes | None,
        hbytes: bytes,
        hcount: int,
        ts: int,
    ) -> int:
        """Append one record (the acks=0 sender's path); retries like send's slow path."""
        return self._append_slow(view.name, partition, None, key, value, hbytes, hcount, ts)

    def _append_slow(
        self,
        topic: str,
        partition: int,
        code: int | None,
        key: bytes | None,
        value: bytes | None,
        hbytes: bytes,
        hcount: int,
        ts: int,
    ) -> int:
        """Append, retrying after a reaped claim or a leader change within delivery_timeout_ms.

        ``code`` is what a first attempt returned (None: no attempt yet).
        """
        deadline = time.monotonic() + self.delivery_timeout_ms / 1000
        while True:
            if code == SEALED:
                if time.monotonic() > deadline:
                    raise EngineTimeoutError(
                        f"no leader accepted the record within delivery_timeout_ms="
                        f"{self.delivery_timeout_ms}: topic={topic!r} partition={partition}"
                    )
                try:
                    self._cluster.refresh(topic, wait_s=max(0.0, deadline - time.monotonic()))
                    self._forget_route(topic)
                except EngineTimeoutError:
                    continue
            elif code is not None and code != REAPED:
                raise_for(code, f"send to topic={topic!r} partition={partition}")
            route = self._routes.get(topic) or self._route(topic)
            result = self._append_record(
                route.regions[partition], route.fields, ts, key, value, hbytes, hcount
            )
            if result >= 0:
                return int(result)
            code = -int(result)

    def _append_record(
        self,
        region: Any,
        fields: Any,
        ts: int,
        key: bytes | None,
        value: bytes | None,
        hbytes: bytes,
        hcount: int,
    ) -> int:
        """One record into one ring, waiting up to max_block_ms for space: its offset,
        or minus a ring code."""
        return int(
            lib.engine_ring_append(
                region, fields, ts,
                _NULL if key is None else key, -1 if key is None else len(key),
                _NULL if value is None else value, -1 if value is None else len(value),
                hbytes, len(hbytes), hcount, self._block_ns,
            )
        )  # fmt: skip

    def send_batch(
        self,
        topic: str,
        values: Sequence[Any] | np.ndarray[Any, Any],
        keys: Sequence[Any] | np.ndarray[Any, Any] | None = None,
        partition: int | None = None,
        timestamp_ms: int | None = None,
        offsets: bool = False,
    ) -> BatchResult:
        """Append many records with one C call per partition.

        values: a list of bytes-like values, or a numpy array of fixed-size records
        (each row / element is one record's value). keys: None (sticky partition),
        or one key per value (a list of bytes, or a fixed-size numpy array, whose
        rows are the keys byte for byte, padding included: an ``S16`` key of
        b"dev-1" is those 5 bytes and 11 NULs), which places each record by
        murmur2 like send(). With ``offsets=True`` the result
        carries every record's offset. On an error part way, the records appended
        so far stay appended, and the exception's ``appended`` says how many.
        """
        self._check_open()
        blob, lengths, stride, count = _values_blob("values", values)
        kblob, klengths, kstride = None, None, 0
        if keys is not None:
            kblob, klengths, kstride, kcount = _values_blob("keys", keys)
            if kcount != count:
                raise ConfigError(f"keys and values differ in length: keys={kcount} values={count}")
        ts = int(time.time() * 1000) if timestamp_ms is None else int(timestamp_ms)
        with self._lock:
            view = self._cluster.topic(topic)
            largest = int(lengths.max()) if lengths is not None and count else stride
            if largest > view.max_message_bytes:
                raise RecordTooLargeError(
                    f"a record of {largest} bytes exceeds max.message.bytes="
                    f"{view.max_message_bytes} of topic {topic!r}; nothing was written"
                )
            out = np.empty(count, dtype=np.int64) if offsets else None
            if keys is None or partition is not None:
                if partition is None:
                    route = self._routes.get(topic) or self._route(topic)
                    partition = self._next_sticky(route)
                elif not 0 <= partition < view.partition_count:
                    raise PartitionOutOfRangeError(
                        f"partition out of range: topic={topic!r} partition={partition} "
                        f"partitions={view.partition_count}"
                    )
                future = self._append_batch(
                    view, partition, blob, lengths, stride, kblob, klengths, kstride, ts, out
                )
                return BatchResult(topic, count, partition, out, (future,) if future else ())
            if lengths is None and klengths is None and not self.enable_idempotence and count:
                return self._send_keyed(view, blob, stride, kblob, kstride, count, ts, out)
            parts = _partitions_for_keys(kblob, klengths, kstride, count, view.partition_count)
            futures: list[PendingFuture] = []
            done = 0
            for p, idx, vb, vl, kb, kl in _by_partition(
                blob, lengths, stride, kblob, klengths, kstride, parts, view.partition_count
            ):
                sub = np.empty(len(idx), dtype=np.int64) if offsets else None
                try:
                    future = self._append_batch(view, p, vb, vl, stride, kb, kl, kstride, ts, sub)
                except EngineError as exc:
                    exc.appended = done + getattr(exc, "appended", 0)  # type: ignore[attr-defined]
                    raise
                if future is not None:
                    futures.append(future)
                done += len(idx)
                if out is not None and sub is not None:
                    out[idx] = sub
            return BatchResult(topic, count, parts, out, tuple(futures))

    def _send_keyed(
        self,
        view: TopicView,
        blob: Any,
        stride: int,
        kblob: Any,
        kstride: int,
        count: int,
        ts: int,
        out: Any,
    ) -> BatchResult:
        """Fixed-size keyed records: partitioned and appended in one C call
        (engine_route_append_keyed), each partition's records encoded straight
        from the caller's arrays. A partition whose leader moved meanwhile is
        sent again through _append_batch, which looks the leader up."""
        route = self._routes.get(view.name) or self._route(view.name)
        n = route.count
        if out is None and self.acks == -1:
            out = np.empty(count, dtype=np.int64)
        scratch = np.empty(2 * count + n, dtype=np.int32)
        appended = np.empty(n, dtype=np.int32)
        codes = np.empty(n, dtype=np.int32)
        last = np.empty(n, dtype=np.int64)
        code = lib.engine_route_append_keyed(
            route.c, ts, count, ffi.from_buffer(kblob), kstride, ffi.from_buffer(blob), stride,
            self.max_block_ms * 1_000_000, ffi.from_buffer("int32_t[]", scratch),
            _NULL if out is None else ffi.from_buffer("int64_t[]", out),
            ffi.from_buffer("int32_t[]", appended), ffi.from_buffer("int32_t[]", codes),
            ffi.from_buffer("int64_t[]", last),
        )  # fmt: skip
        parts = scratch[:count]
        futures: list[PendingFuture] = []
        if code != OK:
            ends = scratch[2 * count :]
            for p in range(n):
                if codes[p] == OK:
                    continue
                start = int(ends[p - 1]) if p else 0
                rest = scratch[count + start + int(appended[p]) : count + int(ends[p])]
                if codes[p] != SEALED:
                    try:
                        raise_for(int(codes[p]), f"send_batch to topic {view.name!r}")
                    except EngineError as exc:
                        exc.appended = int(appended.sum())  # type: ignore[attr-defined]
                        raise
                sub = np.empty(len(rest), dtype=np.int64) if out is not None else None
                values = blob.reshape(count, stride)[rest].reshape(-1)
                keys = kblob.reshape(count, kstride)[rest].reshape(-1)
                try:
                    future = self._append_batch(
                        view, p, values, None, stride, keys, None, kstride, ts, sub
                    )
                except EngineError as exc:
                    done = int(appended.sum()) + getattr(exc, "appended", 0)
                    exc.appended = done  # type: ignore[attr-defined]
                    raise
                if out is not None and sub is not None:
                    out[rest] = sub
                if future is not None:
                    futures.append(future)
                last[p] = -1  # _append_batch made this partition's future
        if self._acker is not None:
            for p in range(n):
                if last[p] >= 0:
                    future = PendingFuture(self._acker, view.name, p, int(last[p]), ts)
                    self._acker.add(future, view.rings[p], route.fields.min_insync)
                    futures.append(future)
        return BatchResult(view.name, count, parts, out, tuple(futures))

    def _append_batch(
        self,
        view: TopicView,
        partition: int,
        blob: Any,
        lengths: Any,
        stride: int,
        kblob: Any,
        klengths: Any,
        kstride: int,
        ts: int,
        out: Any,
    ) -> PendingFuture | None:
        """Append to one partition; with acks="all" returns the future of its last record."""
        if self.enable_idempotence:
            return self._append_batch_idempotent(
                TopicPartition(view.name, partition), blob, lengths, stride, kblob, klengths,
                kstride, ts, out,
            )  # fmt: skip
        deadline = time.monotonic() + self.delivery_timeout_ms / 1000
        route = self._routes.get(view.name) or self._route(view.name)
        if self.acks == -1 and out is None:
            out = np.empty(len(lengths) if lengths is not None else len(blob) // stride, np.int64)
        while True:
            try:
                view.rings[partition].append_batch(
                    route.fields,
                    blob,
                    value_lengths=lengths,
                    value_stride=stride,
                    keys=kblob,
                    key_lengths=klengths,
                    key_stride=kstride,
                    timestamp_ms=ts,
                    timeout_ms=self.max_block_ms,
                    offsets=out,
                )
                if self._acker is not None and len(out):
                    future = PendingFuture(self._acker, view.name, partition, int(out.max()), ts)
                    self._acker.add(future, view.rings[partition], route.fields.min_insync)
                    return future
                return None
            except NotLeaderError as exc:
                # Sealed before anything of this call was appended? Then retry whole.
                if getattr(exc, "appended", 0) or time.monotonic() > deadline:
                    raise
                view = self._cluster.refresh(view.name)
                self._forget_route(view.name)

    # -- idempotence ----------------------------------------------------------

    def _set_identity(self, producer_id: int, epoch: int) -> None:
        """A new producer id or epoch: sequences start again at 0 (Kafka's rule)."""
        self._producer_id, self._epoch = producer_id, epoch
        for fields in self._seq_fields.values():
            fields.producer_id, fields.producer_epoch, fields.base_sequence = producer_id, epoch, 0

    def _fields_for(self, tp: TopicPartition) -> Any:
        """The partition's producer fields; base_sequence is its next record's sequence."""
        fields = self._seq_fields.get(tp)
        if fields is None:
            route = self._routes.get(tp.topic) or self._route(tp.topic)
            fields = self._seq_fields[tp] = producer_fields(
                producer_id=self._producer_id,
                producer_epoch=self._epoch,
                base_sequence=0,
                attributes=TRANSACTIONAL if self._txn is not None else 0,
                timeout_ms=self.max_block_ms,
                min_insync=route.fields.min_insync,
            )
        return fields

    def _with_sequence(self, fields: Any, sequence: int) -> Any:
        copy = ffi.new("engine_producer_fields_t *", fields[0])
        copy.base_sequence = sequence & 0x7FFFFFFF
        return copy

    def _before_send(self, tp: TopicPartition) -> None:
        """Transactions: only inside one, and the partition joins it before its first record."""
        if self._txn is None:
            return
        self._raise_if_fenced()
        if self._txn_state != _IN_TXN:
            raise InvalidTxnStateError(
                f"send() of a transactional producer needs begin_transaction() first: "
                f"transactional_id={self.transactional_id!r} state={self._txn_state!r}"
            )
        if tp not in self._txn_partitions:
            self._txn_call(self._txn.add_partitions, [tp])
            self._txn_partitions.add(tp)

    def _send_idempotent(
        self,
        tp: TopicPartition,
        key: bytes | None,
        value: bytes | None,
        hbytes: bytes,
        hcount: int,
        ts: int,
    ) -> PendingFuture:
        with self._lock:
            self._check_open()
            self._before_send(tp)
            fields = self._fields_for(tp)
            sequence = fields.base_sequence
            assert self._acker is not None

            def append(fields: Any) -> int:
                route = self._routes.get(tp.topic) or self._route(tp.topic)
                region = route.regions[tp.partition]
                return self._append_record(region, fields, ts, key, value, hbytes, hcount)

            offset = self._retrying(tp, lambda: append(fields))
            fields.base_sequence = (sequence + 1) & 0x7FFFFFFF
            future = PendingFuture(self._acker, tp.topic, tp.partition, offset, ts)
            future.offsets, future.sequence = [offset], sequence

            def resend(k: int) -> list[int]:
                return [self._retrying(tp, lambda: append(self._with_sequence(fields, sequence)),
                                       recover=False)] if k == 0 else []  # fmt: skip

            future.resend = resend
            self._track(future)
            return future

    def _append_batch_idempotent(
        self,
        tp: TopicPartition,
        blob: Any,
        lengths: Any,
        stride: int,
        kblob: Any,
        klengths: Any,
        kstride: int,
        ts: int,
        out: Any,
    ) -> PendingFuture | None:
        self._before_send(tp)
        fields = self._fields_for(tp)
        sequence = fields.base_sequence
        count = len(lengths) if lengths is not None else len(blob) // stride
        if count == 0:
            return None
        offsets = out if out is not None else np.empty(count, dtype=np.int64)
        offsets[:] = -1
        assert self._acker is not None

        def append(k: int, fields: Any) -> None:
            """Append records[k:] (their offsets into offsets[k:])."""
            vstart = k * stride if lengths is None else int(lengths[:k].sum())
            kstart = 0 if kblob is None else (
                k * kstride if klengths is None else int(klengths[:k].sum())
            )  # fmt: skip
            ring = self._cluster.topic(tp.topic).rings[tp.partition]
            ring.append_batch(
                fields,
                memoryview(blob)[vstart:] if k else blob,
                value_lengths=None if lengths is None else lengths[k:],
                value_stride=stride,
                keys=None if kblob is None else (memoryview(kblob)[kstart:] if k else kblob),
                key_lengths=None if klengths is None else klengths[k:],
                key_stride=kstride,
                timestamp_ms=ts,
                timeout_ms=self.max_block_ms,
                offsets=offsets[k:],
            )

        future = PendingFuture(self._acker, tp.topic, tp.partition, -1, ts)
        future.offsets, future.sequence = offsets, sequence
        future.resend = lambda k: append(k, self._with_sequence(fields, sequence + k))
        try:
            append(0, fields)
        except NotLeaderError:
            # Part of it (or nothing) reached the old leader: the recovery finds out
            # what the new leader holds and appends the rest.
            self._refresh_and_recover(tp.topic, also=[future])
        except ProducerFencedError:
            self._fenced()
        fields.base_sequence = (sequence + count) & 0x7FFFFFFF
        future.offset = int(offsets.max())
        self._track(future)
        return future

    def _track(self, future: PendingFuture) -> None:
        assert self._acker is not None
        ring = self._cluster.topic(future.topic).rings[future.partition]
        self._acker.add(future, ring, int(self._fields_for(
            TopicPartition(future.topic, future.partition)).min_insync))  # fmt: skip
        if self._txn is not None:
            self._txn_futures.append(future)

    def _retrying(self, tp: TopicPartition, attempt: Any, recover: bool = True) -> int:
        """Run an append until it lands: after a leader change, recover this producer's
        earlier records first (so the new leader receives them in order)."""
        deadline = time.monotonic() + self.delivery_timeout_ms / 1000
        while True:
            result = attempt()
            if result >= 0:
                return int(result)
            code = -result
            if code == REAPED:
                continue
            if code == PRODUCER_FENCED:
                self._fenced()
            if code != SEALED:
                raise_for(code, f"send to topic={tp.topic!r} partition={tp.partition}")
            if not recover or time.monotonic() > deadline:
                raise NotLeaderError(
                    f"no leader accepted the record within delivery_timeout_ms: "
                    f"topic={tp.topic!r} partition={tp.partition}"
                )
            self._refresh_and_recover(tp.topic)

    def _refresh_and_recover(self, topic: str, also: Sequence[PendingFuture] = ()) -> None:
        """The topic's leaders changed: reload it, then move every pending record of ours
        to its partition's new leader (``also``: a send caught half way)."""
        with self._lock:
            self._cluster.refresh(topic, wait_s=self.delivery_timeout_ms / 1000)
            self._forget_route(topic)
            assert self._acker is not None
            with self._acker.cond:
                tps = [tp for tp, q in self._acker.pending.items() if q and tp[0] == topic]
            for tp in {*tps, *((f.topic, f.partition) for f in also)}:
                self._recover(tp, [f for f in also if (f.topic, f.partition) == tp])

    def _recover(self, tp: tuple[str, int], also: Sequence[PendingFuture] = ()) -> None:
        """Move tp's pending records to its current leader: keep those it holds, append
        the rest again with their sequences (engine.idempotence). Idempotent."""
        assert self._acker is not None
        deadline = time.monotonic() + self.delivery_timeout_ms / 1000
        with self._lock:
            while True:
                view = self._cluster.topic(tp[0])
                ring = view.rings[tp[1]]
                if ring.sealed:
                    view = self._cluster.refresh(tp[0], wait_s=self.delivery_timeout_ms / 1000)
                    self._forget_route(tp[0])
                    ring = view.rings[tp[1]]
                with self._acker.cond:
                    queue = [*self._acker.pending.get(tp, ()), *also]
                    if self._acker.rings.get(tp) is ring and not also:
                        return  # already moved
                leader = view.leader(tp[1])
                assert leader is not None
                reader = LogReader(self._cluster.data_dir.partition_dir(leader, tp[0], tp[1]))
                try:
                    missing = False
                    for future in queue:
                        k = 0 if missing else present_prefix(
                            ring, reader, [o for o in future.offsets if o >= 0],
                            self._producer_id, self._epoch, future.sequence,
                        )  # fmt: skip
                        if k < len(future.offsets):
                            missing = True
                            new = future.resend(k)
                            if new is not None:  # one record: its new offset
                                future.offsets[k:] = new
                            future.offset = int(max(future.offsets))
                    with self._acker.cond:
                        self._acker.rings[tp] = ring
                        self._acker.cond.notify_all()
                    return
                except NotLeaderError:
                    if time.monotonic() > deadline:
                        raise
                finally:
                    reader.close()

    def _fenced(self) -> None:
        """The ring refused our epoch: say whether a newer instance or the timeout did it."""
        if self._txn is None:
            raise ProducerFencedError(f"producer_id={self._producer_id} was fenced")
        self._txn_call(self._txn.check_current)
        raise ProducerFencedError(f"transactional_id={self.transactional_id!r} was fenced")

    # -- transactions -----------------------------------------------------------

    def _txn_call(self, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except ProducerFencedError:
            self._txn_state = _FENCED
            raise
        except TransactionAbortedError:
            self._txn_state = _ABORTABLE
            raise

    def _raise_if_fenced(self) -> None:
        if self._txn_state == _FENCED:
            raise ProducerFencedError(
                f"transactional_id={self.transactional_id!r} was fenced by a newer "
                "producer: close this one"
            )

    def _require_txn(self, call: str, *states: str | None) -> txn.Transactions:
        self._check_open()
        if self._txn is None:
            raise InvalidTxnStateError(
                f"{call}() needs a producer created with transactional_id=..."
            )
        self._raise_if_fenced()
        if self._txn_state not in states:
            hint = " (call init_transactions() first)" if self._txn_state is None else ""
            raise InvalidTxnStateError(
                f"{call}() is not allowed in transaction state {self._txn_state!r}{hint}: "
                f"transactional_id={self.transactional_id!r}"
            )
        return self._txn

    def init_transactions(self) -> None:
        """Take the transactional id: fence every older producer that used it, and finish
        the transaction it left (commit one it had decided to commit, abort any other)."""
        with self._lock:
            t = self._require_txn("init_transactions", None)
            state = t.init()
            self._set_identity(state.producer_id, state.epoch)
            self._txn_state = _READY

    def begin_transaction(self) -> None:
        with self._lock:
            self._require_txn("begin_transaction", _READY)
            self._txn_partitions.clear()
            self._txn_offsets.clear()
            self._txn_futures.clear()
            self._txn_state = _IN_TXN

    def send_offsets_to_transaction(self, offsets: Any, group_id: Any) -> None:
        """Commit these consumer offsets (the next offset to read, per partition) with the
        transaction: they count exactly when its records do. ``offsets``: a mapping of
        TopicPartition to offset (kafka-python), or a list of objects with topic,
        partition and offset (confluent-kafka); ``group_id``: the group's id, or an
        object with a ``group_id`` attribute (a consumer's group metadata)."""
        group = getattr(group_id, "group_id", group_id)
        if not isinstance(group, str) or not group:
            raise ConfigError(f"group_id must be a consumer group id: group_id={group_id!r}")
        if not isinstance(offsets, Mapping):
            offsets = {TopicPartition(o.topic, o.partition): o.offset for o in offsets}
        checked = validate_offsets(offsets)
        with self._lock:
            self._require_txn("send_offsets_to_transaction", _IN_TXN)
            self._txn_offsets.setdefault(group, {}).update(checked)

    def commit_transaction(self, timeout: float | None = None) -> None:
        """Wait until the ISR holds every record of the transaction, then commit it:
        its records become visible to read_committed consumers, and its offsets count."""
        with self._lock:
            t = self._require_txn("commit_transaction", _IN_TXN)
        assert self._acker is not None
        try:
            self._acker.flush(timeout if timeout is not None else self.delivery_timeout_ms / 1000)
        except EngineTimeoutError:
            self._txn_state = _ABORTABLE
            raise
        failed = [f for f in self._txn_futures if f.failed()]
        if failed:
            self._txn_state = _ABORTABLE
            raise TransactionError(
                f"{len(failed)} sends of the transaction failed: abort_transaction() "
                f"and start again (transactional_id={self.transactional_id!r})"
            ) from failed[0].exception()
        with self._lock:
            if len(self._txn_offsets) > 1:
                raise InvalidTxnStateError(
                    "one transaction commits the offsets of one consumer group: "
                    f"groups={sorted(self._txn_offsets)}"
                )
            group, offsets = next(iter(self._txn_offsets.items()), (None, {}))
            self._txn_call(t.commit, group, offsets)
            self._txn_state = _READY
            self._txn_futures.clear()

    def abort_transaction(self) -> None:
        """Abort: its records are never visible to read_committed consumers, its offsets
        are not committed. After a transaction timeout, this also makes the producer
        usable again (a new epoch)."""
        with self._lock:
            t = self._require_txn("abort_transaction", _IN_TXN, _ABORTABLE)
        assert self._acker is not None
        with contextlib.suppress(EngineError):  # failed sends do not matter any more
            self._acker.flush(self.delivery_timeout_ms / 1000)
        with self._lock:
            try:
                t.abort()
            except TransactionAbortedError:
                state = t.init()  # aborted by the timeout: take a new epoch and go on
                self._set_identity(state.producer_id, state.epoch)
            except ProducerFencedError:
                self._txn_state = _FENCED
                raise
            self._txn_state = _READY
            self._txn_futures.clear()

    # -- acks=0: the accumulator --------------------------------------------

    def _buffer_record(
        self,
        topic: str,
        partition: int,
        key: bytes | None,
        value: bytes | None,
        hbytes: bytes,
        hcount: int,
        ts: int,
    ) -> None:
        if self._sender_error is not None:
            raise self._sender_error
        size = (len(value) if value else 0) + (len(key) if key else 0) + 64
        deadline = time.monotonic() + self.max_block_ms / 1000
        while self._buffered_bytes + size > self.buffer_memory:
            self._buffer_cond.notify_all()
            if not self._buffer_cond.wait(max(0.0, deadline - time.monotonic())):
                raise BufferFullError(
                    f"producer buffer stayed full ({self.buffer_memory} bytes) for "
                    f"max_block_ms={self.max_block_ms}"
                )
        self._buffer.setdefault((topic, partition), []).append((key, value, hbytes, hcount, ts))
        self._pause_fast(True)  # later sends must not overtake the buffered records
        self._buffered_bytes += size
        if self._buffered_bytes >= self.batch_size:
            self._buffer_cond.notify_all()

    def _pause_fast(self, paused: bool) -> None:
        """Send every record through the Python path while ``paused`` (acks=0's buffer
        holds records, or is being appended)."""
        sender = self.__dict__.get("send")
        if sender is not None:
            sender.paused = paused

    def _drain_buffer(self) -> None:
        """Append everything buffered (called with the lock held)."""
        self._draining = True  # before the swap: send() must not overtake these records
        self._pause_fast(True)
        try:
            self._drain_buffered()
        finally:
            self._draining = False
            self._pause_fast(bool(self._buffer))

    def _drain_buffered(self) -> None:
        buffer, self._buffer = self._buffer, {}
        self._buffered_bytes = 0
        for (topic, partition), records in buffer.items():
            view = self._cluster.topic(topic)
            plain = [r for r in records if not r[3] and r[1] is not None]
            if len(plain) == len(records) and all(r[0] is None for r in records):
                blob, lengths = pack_values([r[1] for r in records])
                self._append_batch(
                    view, partition, blob, lengths, 0, None, None, 0, records[0][4], None
                )
                continue
            for key, value, hbytes, hcount, ts in records:
                self._append(view, partition, key, value, hbytes, hcount, ts)
        self._buffer_cond.notify_all()

    def _sender_loop(self) -> None:
        with self._lock:
            while not self._closed:
                self._buffer_cond.wait(self.linger_ms / 1000 if self._buffer else None)
                if not self._buffer:
                    continue
                try:
                    self._drain_buffer()
                except BaseException as exc:
                    log.exception("acks=0 sender failed")
                    self._sender_error = exc
                    self._buffer_cond.notify_all()

    def flush(self, timeout: float | None = None) -> None:
        """Append everything buffered (acks=0); wait until the ISR holds every record
        sent (acks="all"); a no-op for acks=1."""
        self._check_open()
        if self._acker is not None:
            self._acker.flush(timeout)
        with self._lock:
            if self._sender_error is not None:
                error, self._sender_error = self._sender_error, None
                raise error
            if self._buffer:
                self._drain_buffer()

    # -- lifecycle ----------------------------------------------------------

    def partitions_for(self, topic: str) -> set[int]:
        self._check_open()
        with self._lock:
            return set(range(self._cluster.topic(topic).partition_count))

    def close(self, timeout: float | None = None) -> None:
        """Flush (acks=0) and release everything; idempotent."""
        if self._closed:
            return
        self._fast.clear()  # no more appends through the C path
        if os.getpid() != self._pid:
            self._closed = True
            return
        try:
            with self._lock:
                if self._buffer:
                    self._drain_buffer()
        finally:
            with self._lock:
                self._closed = True
                self._buffer_cond.notify_all()
            if self._sender is not None:
                self._sender.join(timeout=5)
            if self._acker is not None:
                with contextlib.suppress(EngineError):
                    self._acker.flush(self.delivery_timeout_ms / 1000)
                self._acker.close()
            self._cluster.close()

    def __enter__(self) -> Producer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- helpers for send_batch ----------------------------------------------------


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


def _partitions_for_keys(kblob: Any, klengths: Any, kstride: int, count: int, n: int) -> Any:
    """Kafka's partition of every key, computed in one C call."""
    out = np.empty(count, dtype=np.int32)
    if count:
        lib.engine_partition_many(
            ffi.from_buffer(kblob),
            ffi.NULL if klengths is None else ffi.from_buffer("int32_t[]", klengths),
            kstride,
            count,
            n,
            ffi.from_buffer("int32_t[]", out),
        )
    return out


def _by_partition(
    blob: Any,
    lengths: Any,
    stride: int,
    kblob: Any,
    klengths: Any,
    kstride: int,
    parts: Any,
    partitions: int,
) -> list[tuple[int, Any, Any, Any, Any, Any]]:
    """Records grouped by partition: (partition, indexes, values, lengths, keys, key lengths).

    Fixed-size records are grouped in one C pass (a counting sort); others in numpy.
    """
    count = len(parts)
    groups: list[tuple[int, Any, Any, Any, Any, Any]] = []
    if lengths is None and klengths is None:
        values = np.empty(count * stride, dtype=np.uint8)
        keys = np.empty(count * kstride, dtype=np.uint8) if kblob is not None else None
        counts = np.empty(partitions, dtype=np.int32)
        index = np.empty(count, dtype=np.int32)
        lib.engine_scatter_by_partition(
            ffi.from_buffer(blob), stride,
            ffi.NULL if kblob is None else ffi.from_buffer(kblob), kstride,
            ffi.from_buffer("int32_t[]", parts), count, partitions,
            ffi.from_buffer(values), ffi.NULL if keys is None else ffi.from_buffer(keys),
            ffi.from_buffer("int32_t[]", counts), ffi.from_buffer("int32_t[]", index),
        )  # fmt: skip
        start = 0
        for p in range(partitions):
            n = int(counts[p])
            if n:
                groups.append((
                    p, index[start : start + n], values[start * stride : (start + n) * stride],
                    None,
                    None if keys is None else keys[start * kstride : (start + n) * kstride],
                    None,
                ))  # fmt: skip
            start += n
        return groups
    order = np.argsort(parts, kind="stable")
    bounds = np.searchsorted(parts[order], np.arange(partitions + 1))
    for p in range(partitions):
        idx = order[bounds[p] : bounds[p + 1]]
        if len(idx):
            vb, vl = _select(blob, lengths, stride, idx)
            kb, kl = _select(kblob, klengths, kstride, idx)
            groups.append((p, idx, vb, vl, kb, kl))
    return groups


def _select(blob: Any, lengths: Any, stride: int, idx: Any) -> tuple[Any, Any]:
    """The values at idx, packed back to back with their lengths."""
    if blob is None:
        return None, None
    if lengths is None:
        rows = np.frombuffer(memoryview(blob).cast("B"), dtype=np.uint8).reshape(-1, stride)
        return rows[idx].reshape(-1), None
    starts = np.concatenate(([0], np.cumsum(lengths[:-1], dtype=np.int64)))
    data = bytes(blob)
    parts = [data[int(starts[i]) : int(starts[i]) + int(lengths[i])] for i in idx]
    return b"".join(parts), lengths[idx].astype(np.int32)
