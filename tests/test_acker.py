"""The acks="all" acker's lanes (engine.acker): records sent one at a time are decided by
moving one offset per partition, and each future reads its fate from its lane.

A fake ring stands in for a leader's: its high watermark, sealing and in-sync replica
count are set by the test, so that every outcome (committed, a leader change, too few
in-sync replicas, the delivery timeout) is pinned exactly, with threads sending at once.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from engine_harness import wait_for

from engine.acker import Acker, Lane
from engine.errors import EngineTimeoutError, NotEnoughReplicasError, NotLeaderError


@dataclass
class _Status:
    tail_offset: int


class FakeRing:
    """What the acker reads of a leader's ring: ``commit_state`` and the hw wait."""

    def __init__(self, tail: int = 0) -> None:
        self.tail = tail
        self.hw = 0
        self.sealed = False
        self.isr_count = 3
        self.changed = threading.Condition()

    def status(self) -> _Status:
        return _Status(self.tail)

    def commit_state(self) -> tuple[int, bool, int]:
        return self.hw, self.sealed, self.isr_count

    def wait_high_watermark(self, offset: int, timeout_s: float) -> int:
        with self.changed:
            self.changed.wait_for(lambda: self.hw > offset or self.sealed, timeout_s)
        return 0

    def set(self, **state: Any) -> None:
        with self.changed:
            for name, value in state.items():
                setattr(self, name, value)
            self.changed.notify_all()


@pytest.fixture
def acker() -> Iterator[Acker]:
    a = Acker(delivery_timeout_s=60.0)
    yield a
    a.close()


def send(lane: Lane, ring: FakeRing, n: int) -> list[Any]:
    """Append n records to the fake ring and add them to the lane."""
    futures = []
    for _ in range(n):
        futures.append(lane.add(ring.tail, ts=7))
        ring.tail += 1
    return futures


def test_records_are_committed_as_the_high_watermark_passes_them(acker: Acker) -> None:
    ring = FakeRing(tail=100)
    lane = Lane(acker, "t", 2, ring, min_insync=2)  # type: ignore[arg-type]
    futures = send(lane, ring, 10)
    seen: list[int] = []
    futures[9].add_callback(lambda md: seen.append(md.offset))
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


def test_a_leader_change_fails_only_what_the_isr_did_not_hold(acker: Acker) -> None:
    ring = FakeRing()
    lane = Lane(acker, "t", 0, ring, min_insync=2)  # type: ignore[arg-type]
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


def test_too_few_in_sync_replicas_after_the_append_fails_what_is_pending(acker: Acker) -> None:
    ring = FakeRing()
    lane = Lane(acker, "t", 0, ring, min_insync=2)  # type: ignore[arg-type]
    first = send(lane, ring, 3)
    ring.set(hw=3)
    acker.flush(timeout=10)
    ring.set(isr_count=1)
    second = send(lane, ring, 2)
    with pytest.raises(NotEnoughReplicasError, match=r"fewer than min\.insync\.replicas=2"):
        second[1].get(timeout=10)
    assert all(f.succeeded() for f in first) and not any(f.succeeded() for f in second)


def test_records_not_committed_within_the_delivery_timeout_fail() -> None:
    acker = Acker(delivery_timeout_s=0.2)
    try:
        ring = FakeRing()
        lane = Lane(acker, "t", 0, ring, min_insync=2)  # type: ignore[arg-type]
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


def test_threads_sending_at_once_each_get_every_future_decided(acker: Acker) -> None:
    """Four threads add to one lane in any order (as the producer's threads do): no
    record is left pending, and flush waits for the last one."""
    ring = FakeRing()
    lane = Lane(acker, "t", 0, ring, min_insync=1)  # type: ignore[arg-type]
    lock = threading.Lock()  # the ring's append: offsets in order of appending
    futures: list[Any] = []

    def sender() -> None:
        for _ in range(5_000):
            with lock:
                offset = ring.tail
                ring.tail += 1
            futures.append(lane.add(offset, ts=0))  # added in any order

    threads = [threading.Thread(target=sender) for _ in range(4)]
    for t in threads:
        t.start()
    committer_stop = threading.Event()

    def committer() -> None:  # the ISR catching up meanwhile
        while not committer_stop.is_set():
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
