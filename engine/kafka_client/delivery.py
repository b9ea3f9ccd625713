"""The fate of each record a Kafka-cluster producer sent, behind engine.future.RecordFuture.

librdkafka reports every record's delivery once, on the producer's poller thread
(engine.kafka_client.producer). A :class:`Delivery` is one record's report, in the
shape RecordFuture reads a ProducerBatch (``done``, ``error``, ``failed``,
``offset_of``, ``wait``, ``add_callback``); the :class:`DeliveryTracker` holds the one
lock and condition of a producer's deliveries, counts the records not yet reported
(flush waits for none) and the failures since the last flush.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from engine.errors import EngineTimeoutError
from engine.kafka_client.errors import engine_error
from engine.record import TopicPartition


class DeliveryTracker:
    """The deliveries of one producer: the lock, the count of those not yet reported,
    the failures not yet raised by flush(). Any thread may call it."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.outstanding = 0
        self._failures: list[tuple[int, BaseException]] = []

    def add(self, tp: TopicPartition) -> Delivery:
        with self.cond:
            self.outstanding += 1
        return Delivery(self, tp)

    def retract(self) -> None:
        """A record whose produce() call failed: it was never handed over."""
        with self.cond:
            self.outstanding -= 1
            self.cond.notify_all()

    def wait_idle(self, timeout: float | None) -> int:
        """Wait until every record is reported; how many are not, after ``timeout`` s."""
        with self.cond:
            self.cond.wait_for(lambda: self.outstanding <= 0, timeout)
            return self.outstanding

    def take_failures(self) -> list[tuple[int, BaseException]]:
        with self.cond:
            failures, self._failures = self._failures, []
            return failures


class Delivery:
    """One record's delivery; see the module docstring."""

    __slots__ = ("_callbacks", "_tracker", "done", "error", "offset", "tp")

    def __init__(self, tracker: DeliveryTracker, tp: TopicPartition) -> None:
        self._tracker = tracker
        self.tp = tp
        self.offset = -1
        self.error: BaseException | None = None
        self.done = False
        self._callbacks: list[tuple[bool, Callable[[Any], object]]] = []

    @property
    def failed(self) -> bool:
        return self.error is not None

    def offset_of(self, index: int) -> int:
        return self.offset

    def report(self, err: Any, msg: Any) -> None:
        """librdkafka's delivery report (on_delivery)."""
        if err is not None:
            what = f"record to topic={self.tp.topic!r} partition={self.tp.partition} not delivered"
            self.decide(-1, engine_error(err, what))
        else:
            offset = msg.offset()
            self.decide(offset if offset is not None and offset >= 0 else -1, None)

    def decide(self, offset: int, error: BaseException | None) -> None:
        tracker = self._tracker
        with tracker.cond:
            if self.done:
                return
            self.offset, self.error, self.done = offset, error, True
            tracker.outstanding -= 1
            if error is not None:
                tracker._failures.append((1, error))
            callbacks, self._callbacks = self._callbacks, []
            tracker.cond.notify_all()
        for errback, fn in callbacks:
            if errback == (error is not None):
                fn(error)

    def wait(self, timeout: float | None) -> None:
        """Until the record is reported; EngineTimeoutError after ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._tracker.cond:
            while not self.done:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise EngineTimeoutError(
                        f"a record of {self.tp.topic}-{self.tp.partition} was not yet "
                        f"delivered after timeout={timeout}"
                    )
                self._tracker.cond.wait(left)

    def add_callback(self, index: int, errback: bool, fn: Callable[[Any], object]) -> bool:
        """Run ``fn`` when the record is decided (False: it is already; call it now)."""
        with self._tracker.cond:
            if self.done:
                return False
            self._callbacks.append((errback, fn))
            return True
