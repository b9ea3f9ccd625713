"""The record accumulator: records waiting to be appended, in batches per partition.

Kafka's producer gathers the records of each partition into batches (``batch_size``
bytes) that its sender thread writes; a batch waits up to ``linger_ms`` for more
records. Here the sender appends a batch to the partition leader's ring, and with
acks="all" keeps it *in flight* until the ISR holds it. Per partition::

    send() --> [ queued: OPEN (takes records) ... CLOSED (full, bulk, a retry) ]
                  | the sender appends the head batch when it may (below)
                  v
               [ in flight (acks="all"): appended, waiting for the ISR ]
                  | the high watermark passes it (or it fails)
                  v
               SUCCEEDED / FAILED: its futures are done, its bytes are free

A partition's head batch may be appended once its partition is not backing off
after an error, has fewer than ``max_in_flight_requests_per_connection`` *requests*
in flight, and the batch is closed, or has waited ``linger_ms``, or its partition has
nothing in flight, or a flush asked for everything. A request is what the sender
takes of a partition in one go: its head batch, and the closed batches behind it
while together they hold at most ``batch_size`` bytes. (Kafka's sender puts at most
``batch.size`` bytes of a partition in one request, and its batches are that large
under load. send_batch's bulk batches are the caller's size, often far smaller;
counted one request each, they would cap a partition's records in flight by the
caller's batch size instead of by ``batch_size``.) So a partition with nothing in
flight sends a record at once (low latency), and records that come while earlier
ones wait for the ISR gather into one batch (throughput): the batches grow with the
load, as TCP's Nagle rule makes segments grow.

Batches of one partition are appended, retried and decided in order. A batch sent
again keeps its place (it goes back to the head of its queue) and, for an
idempotent producer, its sequence numbers.

Threads: any number of sending threads call :meth:`RecordAccumulator.append` and
:meth:`RecordAccumulator.add_batch`; the producer's one sender thread
(engine.sender) takes batches, appends them and decides them. Everything here is
guarded by ``cond`` (its lock); futures wait on it too.
"""

from __future__ import annotations

import collections
import contextlib
import enum
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from engine._send import BatchBuilder
from engine.errors import BufferFullError, ClosedError, EngineError, EngineTimeoutError
from engine.record import TopicPartition
from engine.ring import Ring

log = logging.getLogger("engine.producer")

_monotonic = time.monotonic
#: Bytes a record costs beside its key, value and headers (Kafka's estimate of a
#: record's overhead in a batch; used for batch_size and buffer_memory).
RECORD_OVERHEAD = 24


class BatchState(enum.Enum):
    """Where a batch is in its life (see the module docstring)."""

    OPEN = "open"
    """Queued; still takes records."""
    CLOSED = "closed"
    """Queued; takes no more records (full, a bulk batch of send_batch, a retry)."""
    IN_FLIGHT = "in flight"
    """Appended to a leader's ring; waits until the ISR holds it (acks="all")."""
    SUCCEEDED = "succeeded"
    """Done: every record is where its future says."""
    FAILED = "failed"
    """Done: its futures raise ``error``. Records appended before the failure may be
    in the log (the error says what is known)."""


_DONE = (BatchState.SUCCEEDED, BatchState.FAILED)


@dataclass(eq=False)
class Bulk:
    """The records of a bulk batch (send_batch), as the ring's batch append takes them:
    values back to back with their lengths (or a fixed stride), keys likewise."""

    values: Any
    value_lengths: Any
    value_stride: int
    keys: Any
    key_lengths: Any
    key_stride: int
    timestamp_ms: int

    def copy(self) -> Bulk:
        """The same records in memory of its own: a caller may change its arrays once
        send_batch returned (as Kafka's send copies a record into its batch)."""
        return Bulk(
            _own(self.values), self.value_lengths, self.value_stride,
            None if self.keys is None else _own(self.keys), self.key_lengths,
            self.key_stride, self.timestamp_ms,
        )  # fmt: skip

    def tail(self, k: int) -> Bulk:
        """The records from the k-th on."""
        if k == 0:
            return self
        vstart = k * self.value_stride if self.value_lengths is None else _packed(
            self.value_lengths, k
        )
        kstart = 0
        if self.keys is not None:
            kstart = k * self.key_stride if self.key_lengths is None else _packed(
                self.key_lengths, k
            )
        return Bulk(
            memoryview(self.values)[vstart:],
            None if self.value_lengths is None else self.value_lengths[k:],
            self.value_stride,
            None if self.keys is None else memoryview(self.keys)[kstart:],
            None if self.key_lengths is None else self.key_lengths[k:],
            self.key_stride,
            self.timestamp_ms,
        )


def _own(blob: Any) -> Any:
    return np.frombuffer(memoryview(blob).cast("B"), dtype=np.uint8).copy()


def _packed(lengths: Any, k: int) -> int:
    """Bytes the first k of packed values take (-1 lengths are nulls: none)."""
    head = np.asarray(lengths[:k], dtype=np.int64)
    return int(head[head > 0].sum())


class ProducerBatch:
    """The records of one partition that are appended together, and their fate.

    Records sent one by one are encoded as they come into a BatchBuilder (C,
    native/send.c: Kafka's record format in the producer's memory; the C send path
    adds to it directly); a bulk batch (``bulk``) keeps the caller's arrays.
    ``offsets`` receives each record's offset when it is appended; ``appended`` counts
    the records appended to the current leader (a batch cut by a leader change part
    way is sent again from there). ``sequence`` is its first record's sequence number
    (idempotent producers; -1 until first appended). ``accounted``: the bytes it counts
    for in buffer_memory once closed. Guarded by the accumulator's lock.
    """

    __slots__ = (
        "_count",
        "_size",
        "accounted",
        "appended",
        "attempts",
        "builder",
        "bulk",
        "callbacks",
        "cond",
        "created",
        "error",
        "last_error",
        "offsets",
        "request",
        "ring",
        "sequence",
        "serial",
        "state",
        "tp",
    )  # fmt: skip

    def __init__(
        self,
        tp: TopicPartition,
        created: float,
        cond: threading.Condition,
        serial: int = 0,
        bulk: Bulk | None = None,
        count: int = 0,
        size: int = 0,
        limit: int = 1,
    ) -> None:
        self.tp = tp
        self.created = created
        self.cond = cond
        self.serial = serial  # the order batches were made in: a partition's go in this order
        self.bulk = bulk
        self.builder: BatchBuilder | None = None if bulk is not None else BatchBuilder(limit)
        self._count = count
        self._size = size
        self.state = BatchState.OPEN if bulk is None else BatchState.CLOSED
        self.offsets: Any = None
        self.appended = 0
        self.sequence = -1
        self.ring: Ring | None = None
        self.error: BaseException | None = None
        #: The last retriable error (NotLeader, NotEnoughReplicas, a full ring): what the
        #: batch fails with if it runs out of time while retrying.
        self.last_error: BaseException | None = None
        self.attempts = 0
        self.accounted = 0
        self.request = -1  # the partition's request it was last taken in (sendable)
        self.callbacks: list[tuple[int, bool, Callable[[Any], object]]] = []

    @property
    def count(self) -> int:
        return self._count if self.builder is None else self.builder.count

    @property
    def size(self) -> int:
        """Bytes of its records (as encoded, or as the caller's arrays hold them)."""
        return self._size if self.builder is None else self.builder.size

    @property
    def done(self) -> bool:
        return self.state in _DONE

    @property
    def failed(self) -> bool:
        return self.state is BatchState.FAILED

    @property
    def last_offset(self) -> int:
        return int(self.offsets[: self.appended].max()) if self.appended else -1

    def add(
        self, key: bytes | None, value: bytes | None, hbytes: bytes, hcount: int, ts: int
    ) -> int:
        """Add one record: its index in the batch, or -1 when it does not fit."""
        assert self.builder is not None
        return self.builder.add(key, value, hbytes if hcount else None, hcount, ts)

    def offset_of(self, index: int) -> int:
        """The offset of record ``index`` (-1 before it is appended)."""
        return -1 if self.offsets is None else int(self.offsets[index])

    def wait(self, timeout: float | None) -> None:
        """Until the batch is done; EngineTimeoutError after ``timeout`` seconds."""
        with self.cond:
            if not self.cond.wait_for(lambda: self.done, timeout):
                raise EngineTimeoutError(
                    f"a record of {self.tp.topic}-{self.tp.partition} was not yet delivered "
                    f"after timeout={timeout} (state: {self.state.value})"
                )

    def wait_appended(self, timeout: float | None) -> None:
        """Until the batch was appended (or is done): a bulk batch's offsets are known."""
        with self.cond:
            if not self.cond.wait_for(
                lambda: self.state is BatchState.IN_FLIGHT or self.done, timeout
            ):
                raise EngineTimeoutError(
                    f"a batch of {self.tp.topic}-{self.tp.partition} was not appended "
                    f"within timeout={timeout}"
                )

    def add_callback(self, index: int, errback: bool, fn: Callable[[Any], object]) -> bool:
        """Run ``fn`` when the batch is done (False: it is done already; call it now)."""
        with self.cond:
            if self.done:
                return False
            self.callbacks.append((index, errback, fn))
            return True

    def __repr__(self) -> str:
        return (
            f"ProducerBatch({self.tp.topic}-{self.tp.partition}, records={self.count}, "
            f"state={self.state.value}, appended={self.appended}, attempts={self.attempts})"
        )


class _Partition:
    """One partition's batches: queued (the head goes first) and in flight, each in the
    order they were made (``serial``), whatever was sent again."""

    __slots__ = ("in_flight", "muted_until", "open", "queued", "recovering", "requests")

    def __init__(self) -> None:
        self.queued: collections.deque[ProducerBatch] = collections.deque()
        self.open: ProducerBatch | None = None  # the queue's last batch, while it takes records
        self.in_flight: collections.deque[ProducerBatch] = collections.deque()
        self.muted_until = 0.0  # backing off after a retriable error until then
        #: Its leader moved with batches in flight: nothing is sent until the sender
        #: has found out what the new leader holds and queued the rest again.
        self.recovering = False
        self.requests = 0  # requests taken so far: the next one's number

    def requests_in_flight(self) -> int:
        """How many requests its in-flight batches came in (they are in request order;
        one failed out of the middle still counts: an upper bound)."""
        flights = self.in_flight
        return flights[-1].request - flights[0].request + 1 if flights else 0

    def put_back(self, batches: Iterable[ProducerBatch]) -> None:
        """Queue ``batches`` again where their serials say, closed."""
        for batch in batches:
            batch.state = BatchState.CLOSED
        self.queued = collections.deque(
            sorted([*self.queued, *batches], key=lambda b: b.serial)
        )


class RecordAccumulator:
    """Every partition's queued and in-flight batches, and the memory they take."""

    def __init__(
        self,
        batch_size: int,
        linger_ms: int,
        buffer_memory: int,
        max_in_flight: int,
        delivery_timeout_ms: int,
        waits_for_isr: bool,
        on_queued: Callable[[bool], None] | None = None,
    ) -> None:
        """``waits_for_isr``: batches stay in flight until the ISR holds them (acks="all";
        else they are done once appended). ``on_queued(bool)``: told, under the lock,
        when records start (True) or stop (False) waiting here: a producer's direct path
        must not overtake them."""
        self.waits_for_isr = waits_for_isr
        #: Guards everything here; the C send path tries it (never waits) before it adds
        #: a record to an open batch.
        self.lock = threading.Lock()
        self.cond = threading.Condition(self.lock)
        self.batch_size = batch_size
        self.linger_s = linger_ms / 1000
        self.buffer_memory = buffer_memory
        self.max_in_flight = max_in_flight
        self.delivery_timeout_s = delivery_timeout_ms / 1000
        self._on_queued = on_queued
        self._partitions: dict[TopicPartition, _Partition] = {}
        self._bytes = 0  # of every batch not yet done
        self._batches = 0  # not yet done
        #: Every batch not yet done: queued, in flight, or in the sender's hands.
        self._live: set[ProducerBatch] = set()
        self._serial = 0  # the next batch's: the order batches were made in
        #: topic -> per partition (builder, batch) of its open batch, or None: what the C
        #: send path adds records through (opens_for).
        self._opens: dict[str, list[Any]] = {}
        self._flushing = 0  # flushes in progress: every batch may go at once
        self._closed = False
        self._broken: BaseException | None = None
        #: (records, error) of the batches that failed since the last take_failures().
        self._failures: list[tuple[int, BaseException]] = []
        #: Set by the sender before it waits on ``cond``: an append that makes a batch
        #: sendable then notifies it.
        self.sender_waiting = False
        #: The ring whose high watermark the sender waits on (batches in flight): an
        #: append that makes a batch sendable then wakes it there.
        self.sender_ring: Ring | None = None

    # -- the sending threads --------------------------------------------------

    def append(
        self,
        tp: TopicPartition,
        key: bytes | None,
        value: bytes | None,
        hbytes: bytes,
        hcount: int,
        ts: int,
        max_block_s: float,
        max_batch_bytes: int,
    ) -> tuple[ProducerBatch, int]:
        """Add one record to ``tp``'s open batch (a new one when it is full): its batch
        and index. A new batch holds up to batch_size bytes of records, and never more
        than ``max_batch_bytes`` (what the topic's max.message.bytes leaves for records:
        a batch is appended as one). Waits up to ``max_block_s`` while the buffer is
        full, then raises BufferFullError; ClosedError after close()."""
        size = RECORD_OVERHEAD + len(hbytes)
        size += (len(key) if key else 0) + (len(value) if value else 0)
        with self.cond:
            if self._bytes + size > self.buffer_memory:
                self._wait_for_room(size, max_block_s)
            if self._closed:
                self._raise_closed()
            part = self._partitions.get(tp)
            if part is None:
                part = self._partitions[tp] = _Partition()
            batch = part.open
            index = -1 if batch is None else batch.add(key, value, hbytes, hcount, ts)
            if batch is None or index < 0:
                if batch is not None:
                    self._close(batch, part)
                batch = self._open(tp, part, min(self.batch_size, max_batch_bytes))
                index = batch.add(key, value, hbytes, hcount, ts)
            if (self.sender_waiting or self.sender_ring is not None) and (
                not part.in_flight or batch.size >= self.batch_size or len(part.queued) > 1
            ):
                self._wake_sender()
            return batch, index

    def opens_for(self, topic: str, partitions: int) -> list[Any]:
        """The list the C send path adds records through (native/send.c): entry p is
        (builder, batch) of partition p's open batch, or None. Kept here, under the lock."""
        with self.cond:
            opens = self._opens.get(topic)
            if opens is None:
                opens = self._opens[topic] = []
            if len(opens) < partitions:
                opens.extend([None] * (partitions - len(opens)))
                for p in range(partitions):
                    part = self._partitions.get(TopicPartition(topic, p))
                    if part is not None and part.open is not None:
                        opens[p] = (part.open.builder, part.open)
            return opens

    def _open(self, tp: TopicPartition, part: _Partition, limit: int) -> ProducerBatch:
        """A new open batch (of up to ``limit`` bytes of records, or one record) at the
        tail of ``tp``'s queue. Lock held."""
        batch = ProducerBatch(tp, _monotonic(), self.cond, serial=self._serial,
                              limit=max(limit, 1))  # fmt: skip
        self._serial += 1
        part.queued.append(batch)
        part.open = batch
        opens = self._opens.get(tp.topic)
        if opens is not None and tp.partition < len(opens):
            opens[tp.partition] = (batch.builder, batch)
        self._live.add(batch)
        self._batches += 1
        if self._batches == 1 and self._on_queued is not None:
            self._on_queued(True)
        return batch

    def _close(self, batch: ProducerBatch, part: _Partition | None = None) -> None:
        """``batch`` takes no more records; it counts in buffer_memory from now on.
        Lock held."""
        if batch.state is not BatchState.OPEN:
            return
        batch.state = BatchState.CLOSED
        if batch.builder is not None:
            batch.builder.seal()
        part = part or self._partitions.get(batch.tp)
        if part is not None and part.open is batch:
            part.open = None
            opens = self._opens.get(batch.tp.topic)
            if opens is not None and batch.tp.partition < len(opens):
                opens[batch.tp.partition] = None
        batch.accounted = batch.size
        self._bytes += batch.accounted

    def _wake_sender(self) -> None:
        """A batch may go now: wake the sender wherever it waits. Lock held."""
        if self.sender_waiting:
            self.sender_waiting = False
            self.cond.notify_all()
        ring = self.sender_ring
        if ring is not None:
            self.sender_ring = None
            with contextlib.suppress(ClosedError):
                ring.wake()

    def add_batch(
        self, tp: TopicPartition, bulk: Bulk, count: int, size: int, max_block_s: float
    ) -> ProducerBatch:
        """Queue a bulk batch (closed: it takes no more records) behind ``tp``'s others.
        Its records' memory is the producer's (``bulk`` holds no array of the caller's):
        it waits up to ``max_block_s`` while the buffer is full, as append() does (a
        batch larger than buffer_memory goes when nothing else waits)."""
        with self.cond:
            if self._bytes + size > self.buffer_memory:
                self._wait_for_room(size, max_block_s)
            if self._closed:
                self._raise_closed()
            part = self._partitions.get(tp)
            if part is None:
                part = self._partitions[tp] = _Partition()
            if part.open is not None:
                self._close(part.open, part)
            batch = ProducerBatch(
                tp, _monotonic(), self.cond, serial=self._serial, bulk=bulk, count=count,
                size=size,
            )  # fmt: skip
            self._serial += 1
            part.queued.append(batch)
            self._live.add(batch)
            batch.accounted = size
            self._bytes += size
            self._batches += 1
            if self._batches == 1 and self._on_queued is not None:
                self._on_queued(True)
            self._wake_sender()
            return batch

    def _raise_closed(self) -> None:
        if self._broken is not None:
            raise EngineError(f"the producer's sender failed: {self._broken!r}; close it")
        raise ClosedError("producer is closed")

    def _wait_for_room(self, size: int, max_block_s: float) -> None:
        deadline = _monotonic() + max_block_s
        while self._bytes + size > self.buffer_memory and self._bytes:
            if self._closed:
                self._raise_closed()
            self._flushing += 1  # the sender appends what it can at once, lingering none
            self.cond.notify_all()
            try:
                left = deadline - _monotonic()
                timed_out = left <= 0 or not self.cond.wait(left)
                if timed_out and self._bytes + size > self.buffer_memory and self._bytes:
                    raise BufferFullError(
                        f"the producer's buffer stayed full for max_block_ms: "
                        f"buffer_memory={self.buffer_memory} waiting={self._bytes} bytes"
                    )
            finally:
                self._flushing -= 1

    @property
    def idle(self) -> bool:
        """Nothing queued and nothing in flight (read without the lock: a hint)."""
        return self._batches == 0

    def flush(self, timeout: float | None) -> None:
        """Let every batch go at once and wait until all batches made before are done;
        EngineTimeoutError after ``timeout`` seconds."""
        with self.cond:
            waiting = list(self._live)
            self._flushing += 1
            self.sender_waiting = False
            self.cond.notify_all()
            try:
                if not self.cond.wait_for(lambda: all(b.done for b in waiting), timeout):
                    left = sum(not b.done for b in waiting)
                    raise EngineTimeoutError(
                        f"{left} batches were not delivered within the flush's timeout={timeout}"
                    )
            finally:
                self._flushing -= 1

    def take_failures(self) -> list[tuple[int, BaseException]]:
        """(records, error) of every batch that failed since the last call."""
        with self.cond:
            failures, self._failures = self._failures, []
            return failures

    def close(self, broken: BaseException | None = None) -> None:
        """No more appends; the sender ends once every batch is done. ``broken``: the
        sender itself failed (a bug): appends raise EngineError saying so."""
        with self.cond:
            self._closed = True
            self._broken = broken
            self.cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed

    # -- the sender ---------------------------------------------------------------

    def sendable(self, now: float) -> tuple[list[ProducerBatch], float]:
        """Take the head batches that may be appended now (see the module docstring):
        they leave their queues, in queue order, closed. Also returns when the next
        batch held back (by linger_ms or a backoff) may go (inf: none waits).
        Called with the lock held."""
        out: list[ProducerBatch] = []
        wake = float("inf")
        flushing = self._flushing > 0 or self._closed
        for part in self._partitions.values():
            queued = part.queued
            if not queued:
                continue
            if part.recovering:
                if part.in_flight:
                    continue
                part.recovering = False  # what waited on the old leader is decided
            if part.muted_until > now:
                wake = min(wake, part.muted_until)
                continue
            room = self.max_in_flight - part.requests_in_flight()
            taken = 0
            packed = -1  # bytes of the request this call is filling (-1: none yet)
            while queued:
                head = queued[0]
                joins = packed >= 0 and head.state is not BatchState.OPEN
                joins = joins and packed + head.size <= self.batch_size
                if not joins and room <= 0:
                    break
                busy = self.waits_for_isr and (bool(part.in_flight) or taken > 0)
                if head.state is BatchState.OPEN and busy and not flushing:
                    # Earlier records wait for the ISR: gather more, up to linger_ms.
                    due = head.created + self.linger_s
                    if head.size < self.batch_size and due > now:
                        wake = min(wake, due)
                        break
                queued.popleft()
                self._close(head, part)
                if not joins:
                    part.requests += 1
                    room -= 1
                    packed = 0
                head.request = part.requests
                packed += head.size
                out.append(head)
                taken += 1
        return out, wake

    def requeue(self, batches: Iterable[ProducerBatch], backoff_s: float = 0.0) -> None:
        """Put batches that could not be appended (or were not tried: a batch before them
        could not) back in their queues, in the order they were made; their partitions
        back off for ``backoff_s``. (A batch decided meanwhile, failed by close() or a
        fencing, stays decided.)"""
        with self.cond:
            until = _monotonic() + backoff_s
            for tp, group in _by_tp(b for b in batches if not b.done).items():
                part = self._partitions[tp]
                part.put_back(group)
                part.muted_until = max(part.muted_until, until)

    def recovering(self, tp: TopicPartition) -> None:
        """``tp``'s leader moved with batches in flight: send nothing of it meanwhile."""
        with self.cond:
            self._partitions[tp].recovering = True

    def recovered(self, tp: TopicPartition, first: ProducerBatch | None) -> None:
        """The recovery of ``tp`` is done: ``first`` (None: none) and every in-flight batch
        after it go back to the queue, in order, to be appended again from where each
        one stands; the rest stay in flight on the new leader."""
        with self.cond:
            part = self._partitions[tp]
            if first is not None:
                flights = list(part.in_flight)
                at = flights.index(first)
                part.in_flight = collections.deque(flights[:at])
                part.put_back(flights[at:])
            part.recovering = False
            self.cond.notify_all()

    def is_recovering(self, tp: TopicPartition) -> bool:
        part = self._partitions.get(tp)
        return part is not None and part.recovering

    def in_flight(self, batch: ProducerBatch) -> None:
        """``batch`` is appended and waits for the ISR (unless it was decided meanwhile)."""
        with self.cond:
            if batch.done:
                return
            batch.state = BatchState.IN_FLIGHT
            self._partitions[batch.tp].in_flight.append(batch)
            self.cond.notify_all()

    def flights_held(self) -> bool:
        """Whether any batch is in flight. Lock held."""
        return any(p.in_flight for p in self._partitions.values())

    def flights(self) -> list[tuple[TopicPartition, list[ProducerBatch]]]:
        """Each partition with batches in flight, and those batches in order."""
        with self.cond:
            return [(tp, list(p.in_flight)) for tp, p in self._partitions.items() if p.in_flight]

    def complete(
        self, batch: ProducerBatch, error: BaseException | None
    ) -> list[tuple[Callable[[Any], object], Any]]:
        """Decide ``batch`` (error None: it succeeded); returns the callbacks its futures
        owe, to be run without the lock."""
        with self.cond:
            return self._complete(batch, error)

    def _complete(
        self, batch: ProducerBatch, error: BaseException | None
    ) -> list[tuple[Callable[[Any], object], Any]]:
        if batch.done:
            return []
        self._close(batch)
        part = self._partitions.get(batch.tp)
        if part is not None and batch.state is BatchState.IN_FLIGHT:
            with contextlib.suppress(ValueError):
                part.in_flight.remove(batch)
        elif part is not None and batch in part.queued:
            part.queued.remove(batch)
        batch.state = BatchState.FAILED if error is not None else BatchState.SUCCEEDED
        batch.error = error
        self._live.discard(batch)
        self._bytes -= batch.accounted
        self._batches -= 1
        if error is not None:
            self._failures.append((batch.count, error))
        if self._batches == 0 and self._on_queued is not None:
            self._on_queued(False)
        self.cond.notify_all()
        calls: list[tuple[Callable[[Any], object], Any]] = []
        for index, errback, fn in batch.callbacks:
            if errback and error is not None:
                calls.append((fn, error))
            elif not errback and error is None:
                calls.append((fn, (batch, index)))
        batch.callbacks = []
        return calls

    def expire(self, now: float) -> list[tuple[Callable[[Any], object], Any]]:
        """Fail every batch older than delivery_timeout_ms (with its last retriable
        error, or EngineTimeoutError); returns the callbacks owed."""
        calls: list[tuple[Callable[[Any], object], Any]] = []
        limit = now - self.delivery_timeout_s
        with self.cond:
            if self._oldest() >= limit:  # the common case: nothing to look through
                return calls
            for part in self._partitions.values():
                for batch in [*part.in_flight, *part.queued]:
                    if batch.created < limit:
                        calls += self._complete(batch, _expired(batch, self.delivery_timeout_s))
        return calls

    def _oldest(self) -> float:
        """When the oldest batch not yet done was made (inf: none). A partition's
        batches are in the order they were made, so its first in flight and its first
        queued are its oldest. Lock held."""
        return min(
            (q[0].created for p in self._partitions.values() for q in (p.in_flight, p.queued)
             if q),
            default=float("inf"),
        )  # fmt: skip

    def fail_all(
        self, error: BaseException, tps: Iterable[TopicPartition] | None = None
    ) -> list[tuple[Callable[[Any], object], Any]]:
        """Fail every batch (of ``tps``) not yet done with ``error``."""
        calls: list[tuple[Callable[[Any], object], Any]] = []
        with self.cond:
            for batch in list(self._live):
                if tps is None or batch.tp in tps:
                    calls += self._complete(batch, error)
        return calls

    def next_expiry(self) -> float:
        """When the oldest batch not yet done runs out of time (inf: none). Lock held."""
        return self._oldest() + self.delivery_timeout_s

    @property
    def empty(self) -> bool:
        """No batch waits or is in flight. Lock held."""
        return self._batches == 0


def _by_tp(batches: Iterable[ProducerBatch]) -> dict[TopicPartition, list[ProducerBatch]]:
    out: dict[TopicPartition, list[ProducerBatch]] = {}
    for batch in batches:
        out.setdefault(batch.tp, []).append(batch)
    return out


def _expired(batch: ProducerBatch, delivery_timeout_s: float) -> EngineError:
    """The error of a batch that ran out of delivery_timeout_ms: EngineTimeoutError (as
    Kafka's TimeoutException), naming the last retriable error, which is its cause."""
    what = (
        f"{batch.count} records of {batch.tp.topic}-{batch.tp.partition} were not delivered "
        f"within delivery_timeout_ms={int(delivery_timeout_s * 1000)}"
    )
    last = batch.last_error
    error = EngineTimeoutError(what if last is None else f"{what}; the last attempt: {last}")
    error.__cause__ = last
    return error
