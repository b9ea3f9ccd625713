"""The acks="all" acker's lanes (engine.acker): records sent one at a time are decided by
moving one offset per partition, and each future reads its fate from its lane.

The acker reads a real leader ring (engine.ring, in /dev/shm): records are appended to
it, and the test plays the broker's part on the same ring (its high watermark, sealing
and in-sync replica count), so that every outcome (committed, a leader change, too few
in-sync replicas, the delivery timeout) is pinned exactly, with threads sending at once,
and the acker sleeps and wakes on the ring's futex as it does against a broker.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from engine._native import ffi
from engine_harness import wait_for

from engine.acker import Acker, Lane
from engine.errors import EngineTimeoutError, NotEnoughReplicasError, NotLeaderError
from engine.ring import Ring, producer_fields, unlink


class Leader:
    """A leader's ring and the broker's hand on it: appends go into the ring; the test
    sets what the ISR holds (the high watermark), seals it, and sets the ISR size."""

    def __init__(self, base_offset: int = 0) -> None:
        self.name = f"/engine-test-acker-{uuid.uuid4().hex[:12]}"
        self.ring = Ring.create(self.name, 1 << 18, base_offset=base_offset)
        self.ring.set_high_watermark(base_offset)  # replicated: nothing committed yet
        self.ring.set_isr_count(3)
        self.fields = producer_fields()
        self.lock = threading.Lock()  # one thread at a time on a Ring object

    @property
    def tail(self) -> int:
        with self.lock:
            return self.ring.status().tail_offset

    def append(self) -> int:
        with self.lock:
            return self.ring.append(self.fields, b"r", timestamp_ms=7)

    def set(
        self, hw: int | None = None, sealed: bool = False, isr_count: int | None = None
    ) -> None:
        with self.lock:
            if isr_count is not None:
                self.ring.set_isr_count(isr_count)
            if hw is not None:
                self.ring.set_high_watermark(hw)
            if sealed:
                self.ring.set_leader(self.ring.status().leader_epoch, sealed=True)

    def hw_waiters(self) -> int:
        """Threads asleep on the ring's high-watermark futex (header offset 900, ring.h)."""
        with self.lock:
            return int.from_bytes(ffi.buffer(self.ring._ptr(), 904)[900:904], "little")

    def drain(self) -> None:
        """What the broker's drain does for the ring's space: all published is drained."""
        with self.lock:
            cursor = self.ring.drain_cursor()
            self.ring.advance(cursor)
            self.ring.drain_to(cursor)

    def close(self) -> None:
        self.ring.close()
        unlink(self.name)


@pytest.fixture
def leader(request: pytest.FixtureRequest) -> Iterator[Leader]:
    ring = Leader(base_offset=getattr(request, "param", 0))
    yield ring
    ring.close()


@pytest.fixture
def acker() -> Iterator[Acker]:
    a = Acker(delivery_timeout_s=60.0)
    yield a
    a.close()


def send(lane: Lane, leader: Leader, n: int) -> list[Any]:
    """Append n records to the leader's ring and add them to the lane."""
    return [lane.add(leader.append(), ts=7) for _ in range(n)]


@pytest.mark.parametrize("leader", [100], indirect=True)  # the ring starts at offset 100
def test_records_are_committed_as_the_high_watermark_passes_them(
    acker: Acker, leader: Leader
) -> None:
    ring = leader
    lane = Lane(acker, "t", 2, ring.ring, min_insync=2)
    futures = send(lane, ring, 10)
    seen: list[int] = []
    futures[9].add_callback(lambda md: seen.append(md.offset))
    wait_for(lambda: ring.hw_waiters() == 1, what="the acker asleep on the ring's hw futex")
    ring.set(hw=105)
    meta = futures[4].get(timeout=10)
    assert (meta.topic, meta.partition, meta.offset, meta.timestamp) == ("t", 2, 104, 7)
    assert futures[5].is_done() is False and seen == []
    with pytest.raises(EngineTimeoutError, match="offset 105 of t-2 not yet committed"):
        futures[5].get(timeout=0.05)
    ring.set(hw=110)
    acker.flush(timeout=10)
    assert all(f.succeeded() and f.exception() is None for f in futures)
    wait_for(lambda: seen == [109], what="the callback, run by the acker thread")
    late: list[int] = []
    futures[0].add_callback(lambda md: late.append(md.offset))  # done: runs at once, here
    futures[0].add_errback(lambda error: late.append(-1))
    assert late == [100]
    assert acker.lanes == set()  # nothing left to decide: no longer watched


def test_a_leader_change_fails_only_what_the_isr_did_not_hold(
    acker: Acker, leader: Leader
) -> None:
    ring = leader
    lane = Lane(acker, "t", 0, ring.ring, min_insync=2)
    futures = send(lane, ring, 6)
    errors: list[BaseException] = []
    futures[5].add_errback(errors.append)
    ring.set(hw=4, sealed=True)
    acker.flush(timeout=10)
    assert [f.succeeded() for f in futures] == [True] * 4 + [False] * 2
    with pytest.raises(NotLeaderError, match="may or may not be in the log"):
        futures[4].get(timeout=1)
    assert isinstance(futures[5].exception(), NotLeaderError)
    wait_for(lambda: len(errors) == 1 and isinstance(errors[0], NotLeaderError),
             what="the errback")  # fmt: skip


def test_too_few_in_sync_replicas_after_the_append_fails_what_is_pending(
    acker: Acker, leader: Leader
) -> None:
    ring = leader
    lane = Lane(acker, "t", 0, ring.ring, min_insync=2)
    first = send(lane, ring, 3)
    ring.set(hw=3)
    acker.flush(timeout=10)
    ring.set(isr_count=1)
    second = send(lane, ring, 2)
    with pytest.raises(NotEnoughReplicasError, match=r"fewer than min\.insync\.replicas=2"):
        second[1].get(timeout=10)
    assert all(f.succeeded() for f in first) and not any(f.succeeded() for f in second)


def test_records_not_committed_within_the_delivery_timeout_fail(leader: Leader) -> None:
    acker = Acker(delivery_timeout_s=0.2)
    try:
        ring = leader
        lane = Lane(acker, "t", 0, ring.ring, min_insync=2)
        old = send(lane, ring, 3)
        ring.set(hw=1)
        with pytest.raises(EngineTimeoutError, match="not committed by the ISR within"):
            old[2].get(timeout=10)
        assert old[0].succeeded() and old[1].failed() and old[2].failed()
        fresh = send(lane, ring, 2)  # a new record gets the whole timeout again
        assert not fresh[0].is_done()
        ring.set(hw=5)
        assert fresh[1].get(timeout=10).offset == 4
    finally:
        acker.close()


def test_threads_sending_at_once_each_get_every_future_decided(
    acker: Acker, leader: Leader
) -> None:
    """Four threads append to the ring and add to one lane in any order (as the
    producer's threads do): no record is left pending, and flush waits for the last one."""
    ring = leader
    lane = Lane(acker, "t", 0, ring.ring, min_insync=1)
    futures: list[Any] = []

    def sender() -> None:
        own = Ring.open(ring.name)  # a thread's own mapping, as a producer thread has
        fields = producer_fields()
        try:
            for _ in range(5_000):
                offset = own.append(fields, b"r", timestamp_ms=0)
                futures.append(lane.add(offset, ts=0))  # added in any order
        finally:
            own.close()

    threads = [threading.Thread(target=sender) for _ in range(4)]
    for t in threads:
        t.start()
    committer_stop = threading.Event()

    def committer() -> None:  # the broker draining and the ISR catching up meanwhile
        while not committer_stop.is_set():
            ring.drain()
            ring.set(hw=ring.tail)
            committer_stop.wait(0.001)

    c = threading.Thread(target=committer)
    c.start()
    try:
        for t in threads:
            t.join()
        acker.flush(timeout=30)
    finally:
        committer_stop.set()
        c.join()
    assert len(futures) == 20_000
    assert sorted(f.offset for f in futures) == list(range(20_000))
    assert all(f.succeeded() for f in futures)
    assert lane.resolved == lane.sent == 20_000 and acker.lanes == set()
