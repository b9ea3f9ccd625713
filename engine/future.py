"""The one future of a sent record, in kafka-python's shape.

``Producer.send`` returns a :class:`RecordFuture` on every path. It is a tuple, so
that the hot path (native/send.c) makes one cheaply::

    (topic, partition, offset, timestamp, None)     decided when made: the record was
                                                    appended (acks 0 or 1), at offset
    (topic, partition, index, timestamp, batch)     pending: record ``index`` of a
                                                    ProducerBatch (engine.accumulator),
                                                    decided with its batch

``get(timeout)`` waits until it is decided and returns the RecordMetadata or raises
the record's error; callbacks run once it is decided (in the producer's sender
thread, or at once in the caller's thread when it already is).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from engine.record import RecordMetadata

if TYPE_CHECKING:
    from engine.accumulator import ProducerBatch


class RecordFuture(tuple):  # type: ignore[type-arg]
    """The outcome of one send: see the module docstring."""

    __slots__ = ()

    @property
    def topic(self) -> str:
        return str(self[0])

    @property
    def partition(self) -> int:
        return int(self[1])

    @property
    def offset(self) -> int:
        """The record's offset (-1 while it is not appended, or after it failed)."""
        batch: ProducerBatch | None = self[4]
        return int(self[2]) if batch is None else batch.offset_of(self[2])

    @property
    def timestamp(self) -> int:
        return int(self[3])

    @property
    def value(self) -> RecordMetadata:
        return RecordMetadata(self[0], self[1], self.offset, self[3])

    def get(self, timeout: float | None = None) -> RecordMetadata:
        """The record's metadata once it is delivered; its error if it failed;
        EngineTimeoutError if it is not decided within ``timeout`` seconds."""
        batch: ProducerBatch | None = self[4]
        if batch is not None:
            if not batch.done:
                batch.wait(timeout)
            if batch.error is not None:
                raise batch.error.with_traceback(None)
        return self.value

    def is_done(self) -> bool:
        batch: ProducerBatch | None = self[4]
        return batch is None or batch.done

    def succeeded(self) -> bool:
        batch: ProducerBatch | None = self[4]
        return batch is None or (batch.done and batch.error is None)

    def failed(self) -> bool:
        batch: ProducerBatch | None = self[4]
        return batch is not None and batch.error is not None

    def exception(self) -> BaseException | None:
        batch: ProducerBatch | None = self[4]
        return None if batch is None else batch.error

    def add_callback(self, fn: Any) -> RecordFuture:
        """``fn(RecordMetadata)`` once the record is delivered (never if it fails)."""
        batch: ProducerBatch | None = self[4]
        waiting = batch is not None and batch.add_callback(self[2], False, lambda _: fn(self.value))
        if not waiting and self.succeeded():
            fn(self.value)
        return self

    def add_errback(self, fn: Any) -> RecordFuture:
        """``fn(error)`` if the record fails (never if it is delivered)."""
        batch: ProducerBatch | None = self[4]
        if batch is not None and not batch.add_callback(self[2], True, fn) and batch.failed:
            fn(batch.error)
        return self


def pending(batch: ProducerBatch, index: int, timestamp: int) -> RecordFuture:
    """The future of record ``index`` of ``batch``."""
    tp = batch.tp
    return tuple.__new__(RecordFuture, (tp.topic, tp.partition, index, timestamp, batch))


def decided(topic: str, partition: int, offset: int, timestamp: int) -> RecordFuture:
    """The future of a record already appended at ``offset``."""
    return tuple.__new__(RecordFuture, (topic, partition, offset, timestamp, None))
