"""The sender: the producer's thread that appends batches and decides them.

One thread per producer. It takes the batches the accumulator lets go
(engine.accumulator), appends each to its partition leader's ring, and decides it:
with acks 0 or 1 once it is appended, with acks="all" once the leader's high
watermark passes it (the ISR holds it) while the ISR has at least
``min.insync.replicas`` members. It is the producer's one retry loop: every error
of an append or of a batch in flight is judged here (:meth:`Sender._judge`):

- **retriable**, the batch goes back to the head of its partition's queue and is
  appended again after ``retry_backoff_ms``, until ``delivery_timeout_ms`` since it
  was made; then it fails with the last of those errors:
    - the leader's ring is sealed (NotLeaderError: the leader moved; the topic's
      leaders are looked up again),
    - fewer in-sync replicas than ``min.insync.replicas`` (NotEnoughReplicasError; a
      batch already appended keeps waiting for the ISR to grow back instead),
    - the ring stayed full (BufferFullError), no leader known yet or the coordinator
      not answering (EngineTimeoutError);
- **fatal**: the topic is gone (UnknownTopicError), a record is too large, the
  producer is fenced (ProducerFencedError: every batch fails, the producer must
  close), anything else the ring refuses.

After a leader change a batch in flight may or may not be in the new leader's log.
An idempotent producer looks (engine.idempotence.present_prefix: by producer id,
epoch and sequence at the offsets the batch took) and appends again only what is
missing, with the same sequences: no duplicate, no loss. A producer without
idempotence appends the whole batch again, as Kafka's does: it may be duplicated.

Crash: what the sender has not appended dies with the producer process (at most
``buffer_memory`` bytes); what it appended is in shared memory and is drained by the
broker even if the producer dies.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from engine._send import BatchBuilder
from engine.accumulator import BatchState, ProducerBatch, RecordAccumulator
from engine.compression import Codec, batch_of_records
from engine.errors import (
    BufferFullError,
    ClosedError,
    EngineError,
    EngineTimeoutError,
    NotEnoughReplicasError,
    NotLeaderError,
    ProducerFencedError,
    UnknownTopicError,
)
from engine.idempotence import present_prefix
from engine.log import LogReader
from engine.producer_config import Acks, ProducerConfig
from engine.producer_metadata import ProducerMetadata, Route
from engine.record import TopicPartition
from engine.record_batch import BATCH_HEADER_LENGTH
from engine.ring import (
    FULL,
    NOT_ENOUGH_REPLICAS,
    OK,
    PRODUCER_FENCED,
    REAPED,
    SEALED,
    Ring,
    raise_for,
)
from engine.transaction_manager import TransactionManager

log = logging.getLogger("engine.producer")

_monotonic = time.monotonic
#: How long one append may wait for ring space before the sender turns to the other
#: partitions (the batch is tried again at once).
APPEND_WAIT_MS = 50
#: How long the sender waits for a new leader in one go (then it tries again after
#: retry_backoff_ms, until the batches' delivery timeout).
LOOKUP_WAIT_S = 0.5
#: While several partitions have batches in flight, the sender waits on one leader's
#: high watermark at a time, for at most this long.
FLIGHT_POLL_S = 0.002
IDLE_FLIGHT_WAIT_S = 0.05

Callback = tuple[Callable[[Any], object], Any]


class Sender(threading.Thread):
    """Appends and decides a producer's batches (see the module docstring)."""

    def __init__(
        self,
        config: ProducerConfig,
        accumulator: RecordAccumulator,
        metadata: ProducerMetadata,
        identity: TransactionManager,
    ) -> None:
        super().__init__(name="producer-sender", daemon=True)
        self.config = config
        self.codec = config.codec
        self.accumulator = accumulator
        self.metadata = metadata
        self.identity = identity
        self.acks_all = config.acks == Acks.ALL
        self.backoff_s = config.retry_backoff_ms / 1000
        #: Partitions whose in-flight batches wait for a new leader: when to look again.
        self._recover_at: dict[TopicPartition, float] = {}
        self.failure: BaseException | None = None  # the sender itself broke (a bug)

    # -- the loop -------------------------------------------------------------------

    def run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # a bug: fail what waits rather than hang it
            self.failure = exc
            log.exception("the producer's sender failed")
            self.accumulator.close(broken=exc)
            self._run_callbacks(self.accumulator.fail_all(
                EngineError(f"the producer's sender failed: {exc!r}")
            ))  # fmt: skip

    def _loop(self) -> None:
        acc = self.accumulator
        while True:
            with acc.cond:
                now = _monotonic()
                batches, wake = acc.sendable(now)
                flights = acc.flights_held()
                if not batches and not flights:
                    if acc.closed and acc.empty:
                        return
                    wake = min(wake, acc.next_expiry())
                    acc.sender_waiting = True
                    acc.cond.wait(None if wake == float("inf") else max(wake - now, 0.0))
                    acc.sender_waiting = False
                    batches, wake = acc.sendable(_monotonic())
                    flights = acc.flights_held()
            calls = acc.expire(_monotonic())
            # A partition's batches go in order: after one that was not appended (sent
            # again later) or whose partition must first recover, the later ones wait.
            held: list[ProducerBatch] = []
            stopped: set[TopicPartition] = set()
            for batch in batches:
                if batch.tp in stopped:
                    held.append(batch)
                    continue
                calls += self._send(batch)
                appended = batch.done or batch.state is BatchState.IN_FLIGHT
                if not appended or acc.is_recovering(batch.tp):
                    stopped.add(batch.tp)
            if held:
                acc.requeue(held)
            progressed, flight_calls = self._settle()
            calls += flight_calls
            self._run_callbacks(calls)
            if flights and not batches and not progressed:
                self._wait_for_flights(wake)

    def _run_callbacks(self, calls: list[Callback]) -> None:
        for fn, arg in calls:
            try:
                fn(arg)
            except Exception:
                log.exception("a producer callback failed")

    def _wait_for_flights(self, wake: float) -> None:
        """Wait until the first in-flight batch's leader commits more (or a while)."""
        flights = self.accumulator.flights()
        if not flights:
            return
        _, batches = flights[0]
        head = batches[0]
        ring = head.ring
        if ring is None:
            return
        timeout = FLIGHT_POLL_S if len(flights) > 1 else IDLE_FLIGHT_WAIT_S
        timeout = min(timeout, max(wake - _monotonic(), 0.0))
        self.accumulator.sender_ring = ring
        try:
            ring.wait_high_watermark(head.last_offset, timeout)
        except ClosedError:
            pass
        finally:
            self.accumulator.sender_ring = None

    # -- appending ------------------------------------------------------------------

    def _send(self, batch: ProducerBatch) -> list[Callback]:
        """Append ``batch`` (from its ``appended``-th record on) to its leader's ring."""
        tp = batch.tp
        try:
            route = self.metadata.current(tp.topic, LOOKUP_WAIT_S)
        except UnknownTopicError as exc:
            self.metadata.forget(tp.topic)
            return self._fail(batch, exc)
        except EngineTimeoutError as exc:
            return self._retry(batch, exc)
        if tp.partition >= route.count:
            return self._fail(batch, UnknownTopicError(
                f"partition {tp.partition} of topic {tp.topic!r} no longer exists"
            ))  # fmt: skip
        ring = route.view.rings[tp.partition]
        if self.identity.idempotent and batch.sequence < 0:
            batch.sequence = self.identity.take_sequences(tp, batch.count)
        if batch.offsets is None:
            batch.offsets = np.full(batch.count, -1, dtype=np.int64)
        k = batch.appended
        fields = self.identity.fields(
            (batch.sequence + k) & 0x7FFFFFFF if batch.sequence >= 0 else -1,
            route.min_insync if self.acks_all else 0,
            APPEND_WAIT_MS,
        )
        if self.codec is Codec.NONE:
            code, n = _append(ring, batch, k, fields)
        else:
            code, n = _append_compressed(ring, batch, k, fields, self.codec, route.max_bytes)
        batch.attempts += 1
        if n:
            batch.appended = k + n
            batch.ring = ring
        if code == OK:
            if self.acks_all:
                self.accumulator.in_flight(batch)
                return []
            return self.accumulator.complete(batch, None)
        return self._judge(batch, code, route)

    def _judge(self, batch: ProducerBatch, code: int, route: Route) -> list[Callback]:
        """The one place an append's error is judged: retry the batch or fail it."""
        tp = batch.tp
        name = f"topic={tp.topic!r} partition={tp.partition}"
        if code == SEALED:
            if batch.appended and self.acks_all:
                # Part of it is in the old leader: the flight recovery finds out how much
                # the new one holds, before anything else of the partition is sent.
                batch.last_error = NotLeaderError(f"the leader moved during the append: {name}")
                self.accumulator.in_flight(batch)
                self.accumulator.recovering(tp)
                self._recover_at[tp] = 0.0
                return []
            if self.acks_all and any(f for t, f in self.accumulator.flights() if t == tp):
                # Earlier batches wait on the old leader: they are placed first.
                self.accumulator.recovering(tp)
            self.metadata.invalidate(tp.topic, route)
            return self._retry(batch, NotLeaderError(
                f"the leader's ring was sealed (the leader moved): {name}"
            ), backoff=batch.attempts > 1)  # fmt: skip
        if code == NOT_ENOUGH_REPLICAS:
            return self._retry(batch, NotEnoughReplicasError(
                f"fewer in-sync replicas than min.insync.replicas={route.min_insync}; "
                f"nothing was written: {name}"
            ))  # fmt: skip
        if code == FULL:
            return self._retry(batch, BufferFullError(
                f"the partition's ring stayed full: the broker has not drained it: {name}"
            ), backoff=False)  # fmt: skip
        if code == REAPED:
            return self._retry(batch, None, backoff=False)
        if code == PRODUCER_FENCED:
            try:
                self.identity.check_fenced()
            except EngineError as exc:
                error: BaseException = exc
            calls = self._fail(batch, error)
            if isinstance(error, ProducerFencedError):  # nothing of this producer lands again
                calls += self.accumulator.fail_all(error)
            return calls
        try:
            raise_for(code, f"append to {name}")
        except EngineError as exc:
            return self._fail(batch, exc)
        raise AssertionError("unreachable")

    def _retry(
        self, batch: ProducerBatch, error: BaseException | None, backoff: bool = True
    ) -> list[Callback]:
        if error is not None:
            batch.last_error = error
        self.accumulator.requeue([batch], self.backoff_s if backoff else 0.0)
        return []

    def _fail(self, batch: ProducerBatch, error: BaseException) -> list[Callback]:
        self.identity.batch_failed(error)
        return self.accumulator.complete(batch, error)

    # -- batches in flight (acks="all") ----------------------------------------------

    def _settle(self) -> tuple[bool, list[Callback]]:
        """Decide what the leaders' commit state allows of the batches in flight; a
        partition whose leader moved is recovered. Whether anything was decided."""
        calls: list[Callback] = []
        progressed = False
        now = _monotonic()
        for tp, batches in self.accumulator.flights():
            ring = batches[0].ring
            assert ring is not None
            try:
                hw, sealed, isr_count = ring.commit_state()
            except ClosedError:
                hw, sealed, isr_count = -1, True, 0
            if hw < 0 and not sealed:
                hw = 1 << 62  # no replication: the log end is the high watermark
            min_insync = self._min_insync(tp)
            done = 0
            for batch in batches:
                if batch.ring is not ring or batch.last_offset >= hw or isr_count < min_insync:
                    break
                calls += self.accumulator.complete(batch, None)
                done += 1
            progressed |= done > 0
            left = batches[done:]
            if not left:
                continue
            if sealed:
                self.accumulator.recovering(tp)  # nothing of it is sent meanwhile
                if self._recover_at.get(tp, 0.0) <= now:
                    progressed |= self._recover(tp, left, calls)
            elif isr_count < min_insync:
                for batch in left:
                    batch.last_error = NotEnoughReplicasError(
                        f"{tp.topic}-{tp.partition} has {isr_count} in-sync replicas, fewer "
                        f"than min.insync.replicas={min_insync}, after the append: waiting "
                        "for the ISR to grow back"
                    )
        return progressed, calls

    def _min_insync(self, tp: TopicPartition) -> int:
        try:
            return self.metadata.route(tp.topic, LOOKUP_WAIT_S).min_insync
        except EngineError:
            return 1

    def _recover(
        self, tp: TopicPartition, batches: list[ProducerBatch], calls: list[Callback]
    ) -> bool:
        """The leader of ``tp`` moved while ``batches`` were in flight: keep (in flight on
        the new leader) what it holds, send the rest again. Whether it got anywhere."""
        old = batches[0].ring
        try:
            route = self.metadata.current(tp.topic, LOOKUP_WAIT_S)
            if route.view.rings[tp.partition] is old or route.view.rings[tp.partition].sealed:
                route = self.metadata.refresh(tp.topic, route, LOOKUP_WAIT_S)
        except UnknownTopicError as exc:
            self.metadata.forget(tp.topic)
            for batch in batches:
                calls += self._fail(batch, exc)
            self.accumulator.recovered(tp, None)
            return True
        except EngineError as exc:
            for batch in batches:
                batch.last_error = NotLeaderError(
                    f"the leader of {tp.topic}-{tp.partition} moved and no new one is known "
                    f"yet: {exc}"
                )
            self._recover_at[tp] = _monotonic() + self.backoff_s
            return False
        self._recover_at.pop(tp, None)
        ring = route.view.rings[tp.partition]
        held = self._held_by(tp, route, ring, batches) if self.identity.idempotent else []
        for batch, k in zip(batches, held + [0] * (len(batches) - len(held)), strict=True):
            batch.last_error = NotLeaderError(
                f"the leader of {tp.topic}-{tp.partition} moved before the ISR held the record"
            )
            if k == batch.count:
                batch.ring = ring  # all of it is in the new leader: wait for its ISR
            else:
                batch.appended = k
        keep = 0
        while keep < len(batches) and held[keep : keep + 1] == [batches[keep].count]:
            keep += 1
        self.accumulator.recovered(tp, batches[keep] if keep < len(batches) else None)
        return True

    def _held_by(
        self, tp: TopicPartition, route: Route, ring: Ring, batches: list[ProducerBatch]
    ) -> list[int]:
        """For each batch in turn, how many of its records the leader of ``route`` holds,
        up to the first that it lacks (the new leader's log is a prefix of the old one's:
        after a missing record nothing later is there)."""
        leader = route.view.leader(tp.partition)
        if leader is None:
            return []
        try:
            reader = LogReader(self.metadata.cluster.data_dir.partition_dir(leader, *tp))
        except (OSError, EngineError):
            return []
        held: list[int] = []
        try:
            for batch in batches:
                offsets = [int(o) for o in batch.offsets[: batch.appended]]
                k = present_prefix(
                    ring, reader, offsets, self.identity.producer_id, self.identity.epoch,
                    batch.sequence,
                )  # fmt: skip
                held.append(k)
                if k < batch.count:
                    break
        except EngineError:
            pass
        finally:
            reader.close()
        return held


def _append(ring: Ring, batch: ProducerBatch, k: int, fields: Any) -> tuple[int, int]:
    """Append the records of ``batch`` from the k-th on; (ring code, how many landed).
    Their offsets go to ``batch.offsets[k:]``."""
    bulk = batch.bulk
    if bulk is not None:
        part = bulk.tail(k)
        return ring.append_records(
            fields, part.values, part.value_lengths, part.value_stride, part.keys,
            part.key_lengths, part.key_stride, timestamp_ms=part.timestamp_ms,
            timeout_ms=APPEND_WAIT_MS, offsets=batch.offsets[k:],
        )  # fmt: skip
    assert batch.builder is not None
    builder = batch.builder if k == 0 else batch.builder.tail(k)
    base = ring.append_encoded(fields, builder, APPEND_WAIT_MS)  # one frame: all or none
    if base < 0:
        return -base, 0
    batch.offsets[k:] = np.arange(base, base + builder.count, dtype=np.int64)
    return OK, builder.count


def _append_compressed(
    ring: Ring, batch: ProducerBatch, k: int, fields: Any, codec: Codec, max_bytes: int
) -> tuple[int, int]:
    """_append with ``compression_type``: the records of ``batch`` from the k-th on as
    whole batches compressed with ``codec`` (engine.compression.batch_of_records), each
    appended as a Kafka client's batch is (the ring writes its base offset and leader
    epoch; the fencing table judges its producer fields). A bulk batch becomes batches
    of up to ``max_bytes`` of plain records (one that does not shrink is written plain,
    so each fits). (ring code, how many landed); offsets to ``batch.offsets[k:]``."""
    sequence = int(fields.base_sequence)
    landed = 0
    for builder in _builders(batch, k, max_bytes - BATCH_HEADER_LENGTH):
        data = batch_of_records(
            memoryview(builder)[: builder.size], builder.count, builder.base_timestamp,
            builder.max_timestamp, codec, producer_id=int(fields.producer_id),
            producer_epoch=int(fields.producer_epoch),
            base_sequence=-1 if sequence < 0 else (sequence + landed) & 0x7FFFFFFF,
            attributes=int(fields.attributes),
        )  # fmt: skip
        base = ring.append_client(fields, data, APPEND_WAIT_MS)
        if base < 0:
            return -base, landed
        start = k + landed
        batch.offsets[start : start + builder.count] = np.arange(
            base, base + builder.count, dtype=np.int64
        )
        landed += builder.count
    return OK, landed


def _builders(batch: ProducerBatch, k: int, limit: int) -> Iterator[BatchBuilder]:
    """The records of ``batch`` from the k-th on, encoded: its builder's, or a bulk
    batch's in builders of up to ``limit`` bytes."""
    if batch.bulk is None:
        assert batch.builder is not None
        yield batch.builder if k == 0 else batch.builder.tail(k)
        return
    bulk = batch.bulk.tail(k)
    values, keys = memoryview(bulk.values).cast("B"), bulk.keys
    keys = None if keys is None else memoryview(keys).cast("B")
    value_at = key_at = 0
    builder = BatchBuilder(limit)
    value_lengths, key_lengths = bulk.value_lengths, bulk.key_lengths
    for i in range(batch.count - k):
        value_length = bulk.value_stride if value_lengths is None else int(value_lengths[i])
        value = None if value_length < 0 else bytes(values[value_at : value_at + value_length])
        value_at += max(value_length, 0)
        key = None
        if keys is not None:
            key_length = bulk.key_stride if key_lengths is None else int(key_lengths[i])
            key = None if key_length < 0 else bytes(keys[key_at : key_at + key_length])
            key_at += max(key_length, 0)
        if builder.add(key, value, None, 0, bulk.timestamp_ms) < 0:
            yield builder
            builder = BatchBuilder(limit)
            builder.add(key, value, None, 0, bulk.timestamp_ms)
    if builder.count:
        yield builder


__all__ = ["Sender"]
