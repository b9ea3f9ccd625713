"""The record accumulator's rules, in process: what the sender may take, and when."""

from __future__ import annotations

import numpy as np
import pytest

from engine.accumulator import Bulk, RecordAccumulator
from engine.errors import BufferFullError
from engine.record import TopicPartition

TP = TopicPartition("t", 0)


def accumulator(max_in_flight: int, batch_size: int = 10_000) -> RecordAccumulator:
    return RecordAccumulator(
        batch_size=batch_size, linger_ms=5, buffer_memory=1 << 20, max_in_flight=max_in_flight,
        delivery_timeout_ms=120_000, waits_for_isr=True,
    )  # fmt: skip


def bulk(size: int) -> Bulk:
    return Bulk(np.zeros(size, dtype=np.uint8), None, size, None, None, 0, 0)


def take(acc: RecordAccumulator) -> list[int]:
    """What the sender takes now, appended and in flight: their requests."""
    with acc.cond:
        batches, _ = acc.sendable(1e18)
    for batch in batches:
        acc.in_flight(batch)
    return [b.request for b in batches]


def test_batches_smaller_than_batch_size_go_together_as_one_request() -> None:
    """send_batch's bulk batches, queued behind a partition's flights, are taken up to
    batch_size bytes per request, max_in_flight requests at a time (not one each)."""
    acc = accumulator(max_in_flight=2)
    made = [acc.add_batch(TP, bulk(3000), 1, 3000, 1.0) for _ in range(10)]
    assert take(acc) == [1, 1, 1, 2, 2, 2]  # 3 x 3000 bytes fit in 10,000; 2 requests
    assert take(acc) == []  # both requests in flight
    for batch in made[:3]:  # the first request is decided
        acc.complete(batch, None)
    assert take(acc) == [3, 3, 3]
    for batch in made[3:9]:
        acc.complete(batch, None)
    assert take(acc) == [4]


def test_a_batch_of_batch_size_or_more_is_a_request_of_its_own() -> None:
    acc = accumulator(max_in_flight=5)
    for size in (12_000, 4000, 7000, 2000, 10_000):
        acc.add_batch(TP, bulk(size), 1, size, 1.0)
    assert take(acc) == [1, 2, 3, 3, 4]


def test_a_full_buffer_blocks_a_bulk_batch_then_raises() -> None:
    acc = RecordAccumulator(
        batch_size=10_000, linger_ms=5, buffer_memory=5000, max_in_flight=5,
        delivery_timeout_ms=120_000, waits_for_isr=True,
    )  # fmt: skip
    acc.add_batch(TP, bulk(4000), 1, 4000, 1.0)
    with pytest.raises(BufferFullError, match="buffer_memory=5000 waiting=4000 bytes"):
        acc.add_batch(TP, bulk(2000), 1, 2000, 0.05)
    acc.add_batch(TP, bulk(1000), 1, 1000, 0.05)  # what fits is taken
