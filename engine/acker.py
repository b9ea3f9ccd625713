"""acks="all": the futures of records appended to a leader's ring, resolved once the ISR
holds them (the leader's high watermark passes them).

One ``Acker`` thread per acks="all" producer looks at the rings' commit state
(high watermark, sealed, in-sync replica count) and resolves what it can. It tracks
records two ways:

- a **lane** per partition and ring for plain records sent one at a time (the common
  case, and the hot one: a producer sending records one by one). A lane holds only
  offsets: the records it was given are ``[start, sent)``, those below ``resolved``
  are decided, and the rare failures are ranges of offsets with their error. Each
  record's ``LaneFuture`` reads its fate from its lane, so that resolving 10,000
  records is moving one number, not touching 10,000 objects;
- a ``PendingFuture`` per batch or per idempotent record (send_batch, idempotent and
  transactional producers), which carries what a recovery needs to append it again
  after a leader change (engine.idempotence), in a queue per partition.

What fails a record: the leader's ring was sealed before the ISR held it (a leader
change: NotLeaderError, the record may or may not be in the log); the ISR shrank below
``min.insync.replicas`` after the append (NotEnoughReplicasError, Kafka's
NOT_ENOUGH_REPLICAS_AFTER_APPEND); it was not committed within the delivery timeout
(EngineTimeoutError). Callbacks run in the acker thread; a callback added to a future
already decided runs at once in the caller's thread.

Threads: the producer's sending threads add records and wait on futures; the acker
thread alone decides them, under ``Acker.cond``. A lane's ``sent`` and send-time marks
are written by the senders under the lane's own lock.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import threading
import time
from typing import Any

from engine.errors import (
    ClosedError,
    EngineError,
    EngineTimeoutError,
    NotEnoughReplicasError,
    NotLeaderError,
)
from engine.record import RecordMetadata
from engine.ring import Ring

log = logging.getLogger("engine.producer")

_monotonic = time.monotonic
_new_future = tuple.__new__
#: A lane keeps the offset and time of the first record sent in each interval this
#: long: the delivery timeout of a record is judged by its interval (to within it).
MARK_INTERVAL_S = 0.001


class PendingFuture:
    """acks="all": resolved by the producer's acker thread once the ISR holds the record.

    ``get(timeout)`` blocks until then. It fails with NotLeaderError when the leader
    changed first (the record may or may not be in the log; an idempotent producer
    instead finds out and appends to the new leader what it lacks) and with
    EngineTimeoutError after delivery_timeout_ms. Callbacks run in the acker thread.
    """

    __slots__ = (
        "_acker",
        "_callbacks",
        "_done",
        "_error",
        "offset",
        "offsets",
        "partition",
        "resend",
        "sent",
        "sequence",
        "timestamp",
        "topic",
    )

    def __init__(self, acker: Acker, topic: str, partition: int, offset: int, ts: int) -> None:
        self._acker = acker
        self.topic = topic
        self.partition = partition
        self.offset = offset
        self.timestamp = ts
        self.sent = time.monotonic()
        self._done = False
        self._error: BaseException | None = None
        self._callbacks: list[tuple[bool, Any]] = []
        # Idempotent producers: the records' offsets and first sequence, and how to
        # append records[k:] again after a leader change (engine.idempotence).
        self.offsets: Any = None
        self.sequence = -1
        self.resend: Any = None

    @property
    def value(self) -> RecordMetadata:
        return RecordMetadata(self.topic, self.partition, self.offset, self.timestamp)

    def get(self, timeout: float | None = None) -> RecordMetadata:
        if not self._done:
            self._acker.wait_for(self, timeout)
        if self._error is not None:
            raise self._error
        return self.value

    def is_done(self) -> bool:
        return self._done

    def succeeded(self) -> bool:
        return self._done and self._error is None

    def failed(self) -> bool:
        return self._error is not None

    def exception(self) -> BaseException | None:
        return self._error

    def add_callback(self, fn: Any) -> PendingFuture:
        with self._acker.cond:
            if not self._done:
                self._callbacks.append((False, fn))
                return self
        if self._error is None:
            fn(self.value)
        return self

    def add_errback(self, fn: Any) -> PendingFuture:
        with self._acker.cond:
            if not self._done:
                self._callbacks.append((True, fn))
                return self
        if self._error is not None:
            fn(self._error)
        return self

    def _resolve(self, error: BaseException | None) -> list[tuple[Any, Any]]:
        """Mark done (with the acker's lock held); returns the callbacks to run."""
        self._done, self._error = True, error
        return [
            (fn, error if errback else self.value)
            for errback, fn in self._callbacks
            if errback == (error is not None)
        ]


class Lane:
    """The records one producer sent one at a time to one partition through one ring.

    Holds offsets, not futures: ``sent`` is one past the highest offset added,
    ``resolved`` the offset below which every record added is decided (committed,
    unless it lies in one of ``failures``: ``(start, end, error)``); both start at the
    ring's tail when the lane is made, before any record goes through it. ``marks``
    holds ``(offset, time)`` of the first record added in each MARK_INTERVAL_S (the
    first one's window holds ``resolved``), for the delivery timeout: the records
    from one mark to the next were all added within MARK_INTERVAL_S of its time. A
    new route to the topic (a new leader's ring) gets new lanes; the old ones are
    decided by the acker as their ring says (sealed: NotLeaderError for what the ISR
    did not hold). ``failures`` only grows (one range per failure event: a leader
    change, an ISR shrink, a timeout), so that a future asked late still finds its
    error.

    Senders call :meth:`add` (under ``lock``: several threads may send); the acker
    thread alone moves ``resolved`` and writes ``failures`` and ``callbacks``, under
    its condition's lock.
    """

    __slots__ = (
        "acker",
        "callbacks",
        "failures",
        "lock",
        "mark_time",
        "marks",
        "min_insync",
        "partition",
        "resolved",
        "ring",
        "sent",
        "topic",
        "watched",
    )

    def __init__(
        self, acker: Acker, topic: str, partition: int, ring: Ring, min_insync: int
    ) -> None:
        self.acker = acker
        self.topic = topic
        self.partition = partition
        self.ring = ring
        self.min_insync = min_insync
        self.lock = threading.Lock()
        # Every record sent through the ring from now on has an offset at or above its
        # tail (others' records in between are decided along with ours, unseen).
        self.sent = self.resolved = ring.status().tail_offset
        self.failures: list[tuple[int, int, BaseException]] = []
        self.marks: collections.deque[tuple[int, float]] = collections.deque()
        self.mark_time = -MARK_INTERVAL_S
        self.callbacks: list[tuple[LaneFuture, bool, Any]] = []
        self.watched = False

    def add(self, offset: int, ts: int) -> LaneFuture:
        """A record appended at ``offset``: its future."""
        now = _monotonic()
        lock = self.lock
        lock.acquire()  # (not `with`: this is the hot path of acks="all")
        if offset >= self.sent:
            self.sent = offset + 1
        if now - self.mark_time >= MARK_INTERVAL_S:
            self.marks.append((offset, now))
            self.mark_time = now
        lock.release()
        # Read after sent is written: the acker clears it before it reads sent again
        # (Acker._settle), so one of the two sees the other.
        if not self.watched:
            self.acker.watch(self)
        return _new_future(LaneFuture, (self, offset, ts))

    def error_at(self, offset: int) -> BaseException | None:
        for start, end, error in self.failures:
            if start <= offset < end:
                return error
        return None

    def expired_end(self, before: float) -> int:
        """The offset below which every pending record was added before ``before``."""
        marks = self.marks
        end = self.resolved
        for i in range(len(marks)):
            if marks[i][1] + MARK_INTERVAL_S >= before:
                break  # this mark's records may have been added at or after ``before``
            end = marks[i + 1][0] if i + 1 < len(marks) else self.sent
        return end


class LaneFuture(tuple):  # type: ignore[type-arg]
    """acks="all": the future of one record of a :class:`Lane`, in kafka-python's shape.

    Done once the lane's ``resolved`` passes its offset: succeeded unless a failure
    range holds it. ``get(timeout)`` blocks until then, and raises the record's error.
    A tuple (lane, offset, timestamp) underneath: one is made per record sent.
    """

    __slots__ = ()

    @property
    def _lane(self) -> Lane:
        return self[0]  # type: ignore[no-any-return]

    @property
    def offset(self) -> int:
        return int(self[1])

    @property
    def timestamp(self) -> int:
        return int(self[2])

    @property
    def topic(self) -> str:
        return self._lane.topic

    @property
    def partition(self) -> int:
        return self._lane.partition

    @property
    def value(self) -> RecordMetadata:
        lane = self._lane
        return RecordMetadata(lane.topic, lane.partition, self.offset, self.timestamp)

    def get(self, timeout: float | None = None) -> RecordMetadata:
        lane = self._lane
        if self.offset >= lane.resolved:
            lane.acker.wait_for_offset(lane, self.offset, timeout)
        error = lane.error_at(self.offset)
        if error is not None:
            raise error
        return self.value

    def is_done(self) -> bool:
        return self.offset < self._lane.resolved

    def succeeded(self) -> bool:
        return self.is_done() and self._lane.error_at(self.offset) is None

    def failed(self) -> bool:
        return self.is_done() and self._lane.error_at(self.offset) is not None

    def exception(self) -> BaseException | None:
        return self._lane.error_at(self.offset) if self.is_done() else None

    def add_callback(self, fn: Any) -> LaneFuture:
        return self._add(False, fn)

    def add_errback(self, fn: Any) -> LaneFuture:
        return self._add(True, fn)

    def _add(self, errback: bool, fn: Any) -> LaneFuture:
        lane = self._lane
        with lane.acker.cond:
            if self.offset >= lane.resolved:
                lane.callbacks.append((self, errback, fn))
                return self
        call = self._owed(errback, fn)
        if call is not None:
            call[0](call[1])
        return self

    def _owed(self, errback: bool, fn: Any) -> tuple[Any, Any] | None:
        """Decided: the call a callback (fn, metadata) or errback (fn, error) is owed,
        or None (a callback of a failed record, an errback of a committed one)."""
        error = self._lane.error_at(self.offset)
        if errback:
            return None if error is None else (fn, error)
        return (fn, self.value) if error is None else None


class Acker:
    """Resolves acks="all" futures as the partitions' high watermarks pass them.

    One thread per producer; futures of one partition resolve in offset order.
    """

    def __init__(self, delivery_timeout_s: float, recover: Any = None) -> None:
        self.cond = threading.Condition()
        self.delivery_timeout_s = delivery_timeout_s
        # Idempotent producers: recover(tp) moves tp's futures to its new leader.
        self.recover = recover
        self.pending: dict[tuple[str, int], collections.deque[PendingFuture]] = {}
        self.rings: dict[tuple[str, int], Ring] = {}
        self.min_insync: dict[tuple[str, int], int] = {}
        self.lanes: set[Lane] = set()  # those with records not yet decided
        self.closed = False
        self.thread = threading.Thread(target=self._run, name="producer-acker", daemon=True)
        self.thread.start()

    def add(self, future: PendingFuture, ring: Ring, min_insync: int) -> None:
        tp = (future.topic, future.partition)
        with self.cond:
            queue = self.pending.get(tp)
            if queue is None:
                queue = self.pending[tp] = collections.deque()
            self.rings[tp] = ring
            self.min_insync[tp] = min_insync
            queue.append(future)
            if len(queue) == 1:
                self.cond.notify_all()

    def watch(self, lane: Lane) -> None:
        """Decide ``lane``'s records from now on (it has some not yet decided)."""
        with self.cond:
            lane.watched = True
            self.lanes.add(lane)
            self.cond.notify_all()

    def wait_for(self, future: PendingFuture, timeout: float | None) -> None:
        with self.cond:
            if not self.cond.wait_for(lambda: future._done, timeout):
                raise EngineTimeoutError(
                    f"offset {future.offset} of {future.topic}-{future.partition} not yet "
                    f"committed by the ISR after timeout={timeout}"
                )

    def wait_for_offset(self, lane: Lane, offset: int, timeout: float | None) -> None:
        with self.cond:
            if not self.cond.wait_for(lambda: offset < lane.resolved, timeout):
                raise EngineTimeoutError(
                    f"offset {offset} of {lane.topic}-{lane.partition} not yet "
                    f"committed by the ISR after timeout={timeout}"
                )

    def _busy(self) -> bool:
        return bool(self.lanes) or any(self.pending.values())

    def flush(self, timeout: float | None) -> None:
        with self.cond:
            if not self.cond.wait_for(lambda: not self._busy(), timeout):
                raise EngineTimeoutError(f"acks='all' records not committed within {timeout} s")

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify_all()
        self.thread.join(timeout=5)

    def _run(self) -> None:
        while True:
            with self.cond:
                while not self.closed and not self._busy():
                    self.cond.wait()
                if self.closed and not self._busy():
                    return
                heads = [(tp, q[0].offset, self.rings[tp]) for tp, q in self.pending.items() if q]
                lanes = list(self.lanes)
            callbacks: list[tuple[Any, Any]] = []
            progressed = False
            for tp, _first, ring in heads:
                progressed |= self._resolve_queue(tp, ring, callbacks)
            now = _monotonic()
            for lane in lanes:
                progressed |= self._settle(lane, now, callbacks)
            for fn, arg in callbacks:
                try:
                    fn(arg)
                except Exception:
                    log.exception("producer callback failed")
            if not progressed:
                if heads:
                    tp, first, ring = heads[0]
                    timeout = 0.05 if len(heads) == 1 and not lanes else 0.002
                elif lanes:
                    ring, first = lanes[0].ring, lanes[0].resolved
                    timeout = 0.05 if len(lanes) == 1 else 0.002
                else:
                    continue
                with contextlib.suppress(ClosedError):
                    ring.wait_high_watermark(first, timeout)

    @staticmethod
    def _commit_state(ring: Ring, min_insync: int, name: str) -> tuple[int, BaseException | None]:
        """(the high watermark, hw < 0 for no record committed any more; the error that
        fails the records above it, or None)."""
        try:
            hw, sealed, isr_count = ring.commit_state()
        except ClosedError:
            return -1, NotLeaderError(f"{name} moved: the record may be lost")
        if hw < 0:
            hw = 1 << 62
        if sealed:
            return hw, NotLeaderError(
                f"the leader of {name} changed before the record was committed: it may or "
                "may not be in the log"
            )
        if isr_count < min_insync:
            # Kafka's NOT_ENOUGH_REPLICAS_AFTER_APPEND: appended, but the ISR shrank
            # below min.insync.replicas before it was committed.
            return -1, NotEnoughReplicasError(
                f"{name} has {isr_count} in-sync replicas, fewer than "
                f"min.insync.replicas={min_insync}, after the append: the record is not "
                "acknowledged"
            )
        return hw, None

    def _resolve_queue(self, tp: tuple[str, int], ring: Ring, callbacks: list[Any]) -> bool:
        """Decide what it can of tp's queue of PendingFutures; whether anything moved."""
        hw, error = self._commit_state(ring, self.min_insync[tp], f"{tp[0]}-{tp[1]}")
        if isinstance(error, NotLeaderError) and self.recover is not None:
            try:
                self.recover(tp)
                return True  # its futures now wait on the new leader
            except EngineError as exc:
                error = exc
        progressed = False
        now = _monotonic()
        with self.cond:
            queue = self.pending[tp]
            while queue:
                head = queue[0]
                if head.offset < hw:
                    callbacks += queue.popleft()._resolve(None)
                elif error is not None:
                    callbacks += queue.popleft()._resolve(error)
                elif now - head.sent > self.delivery_timeout_s:
                    callbacks += queue.popleft()._resolve(
                        EngineTimeoutError(
                            f"offset {head.offset} of {tp[0]}-{tp[1]} was not committed "
                            f"by the ISR within delivery_timeout_ms"
                        )
                    )
                else:
                    break
                progressed = True
            if progressed:
                self.cond.notify_all()
        return progressed

    def _settle(self, lane: Lane, now: float, callbacks: list[Any]) -> bool:
        """Move ``lane.resolved`` as far as the ring's commit state (and the delivery
        timeout) allow; whether it moved. A lane with nothing left to decide is no
        longer watched."""
        name = f"{lane.topic}-{lane.partition}"
        hw, error = self._commit_state(lane.ring, lane.min_insync, name)
        with self.cond:
            start, sent = lane.resolved, lane.sent
            end = max(start, min(hw, sent))  # committed up to here
            if error is not None:
                if end < sent:
                    lane.failures.append((end, sent, error))
                end = sent
            else:
                expired = min(lane.expired_end(now - self.delivery_timeout_s), sent)
                if expired > end:
                    lane.failures.append((end, expired, EngineTimeoutError(
                        f"offsets {end} to {expired - 1} of {name} were not committed by the "
                        "ISR within delivery_timeout_ms"
                    )))  # fmt: skip
                    end = expired
            progressed = end > start
            if progressed:
                lane.resolved = end
                marks = lane.marks  # drop the windows wholly decided
                while len(marks) > 1 and marks[1][0] <= end:
                    marks.popleft()
                if lane.callbacks:
                    due = [c for c in lane.callbacks if c[0].offset < end]
                    lane.callbacks = [c for c in lane.callbacks if c[0].offset >= end]
                    for future, errback, fn in due:
                        call = future._owed(errback, fn)
                        if call is not None:
                            callbacks.append(call)
                self.cond.notify_all()
            if lane.resolved >= lane.sent:
                # Cleared before sent is read again: a record added meanwhile is seen
                # here, or its sender finds the lane unwatched and watches it again.
                lane.watched = False
                if lane.resolved >= lane.sent:
                    self.lanes.discard(lane)
                    self.cond.notify_all()
                else:
                    lane.watched = True
        return progressed
