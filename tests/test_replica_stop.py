"""A replica's stop() ends its replication loop at once, even while that loop sleeps on
another replica's ring: a leader's high-watermark loop on its followers' rings, a
follower's fetch on its leader's ring. (Before, each waited out its timeout: a leader up
to a second, a follower up to 100 ms, one replica after another, at every topic deletion
and broker shutdown.)"""

from __future__ import annotations

import contextlib
import os
import struct
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from engine._native import ffi
from engine_harness import wait_for

from engine import replica
from engine.config import validate_topic_config
from engine.replica import FollowerReplica, LeaderReplica, Replica
from engine.ring import Ring, producer_fields, unlink

EPOCH = 3
# The loops' timeouts here: a stop that waited one out would take stop()'s 30 s join.
LONG_S = 600.0
STOPPED_WITHIN_S = 20.0
CONFIG = validate_topic_config({"ring.bytes": 1 << 22})


@pytest.fixture
def names() -> Iterator[list[str]]:
    made = [f"/engine-test-stop-{uuid.uuid4().hex[:12]}" for _ in range(2)]
    yield made
    for name in made:
        with contextlib.suppress(FileNotFoundError):
            unlink(name)


def publish_waiters(ring: Ring) -> int:
    """How many threads sleep on the ring's publish word (header offset 388)."""
    return int(struct.unpack_from("<I", bytes(ffi.buffer(ring._ptr(), 392)), 388)[0])


@contextlib.contextmanager
def running(member: Replica) -> Iterator[Replica]:
    """member started, and stopped on the way out unless the test began its stop."""
    member.start()
    try:
        yield member
    finally:
        if not member._stop.is_set():
            member.stop()


def assert_stops_at_once(member: Replica, release: Callable[[], None]) -> None:
    """member.stop() must return within STOPPED_WITHIN_S. If it does not, ``release``
    wakes the loop it is stuck behind (so that the stop ends) and the test fails."""
    stopper = threading.Thread(target=member.stop, daemon=True)
    stopper.start()
    stopper.join(STOPPED_WITHIN_S)
    if stopper.is_alive():
        release()
        stopper.join(60)
        raise AssertionError(f"the {member.role}'s stop() took over {STOPPED_WITHIN_S} s")


def test_a_leader_stops_while_its_loop_sleeps_on_a_follower_ring(
    tmp_path: Path, names: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for timeout in ("HOUSEKEEPING_S", "LAG_CHECK_S", "FOLLOWER_RING_RETRY_S"):
        monkeypatch.setattr(replica, timeout, LONG_S)
    # A follower's ring of this leadership, caught up: the loop sleeps on it, since
    # only that ring's growth can raise the high watermark.
    follower = Ring.create(names[1], 1 << 22, leader_epoch=EPOCH, sealed=True)
    leader = LeaderReplica(
        "t", 0, tmp_path / "leader", names[0], CONFIG, EPOCH,
        broker_id=1, followers={2: names[1]}, isr=(1, 2), update_isr=lambda isr: True,
    )  # fmt: skip
    try:
        with running(leader):
            wait_for(lambda: publish_waiters(follower) == 1, what="the loop asleep on the follower")
            assert_stops_at_once(leader, release=follower.wake)
    finally:
        follower.close()


def test_a_follower_stops_while_its_fetch_sleeps_on_the_leader_ring(
    tmp_path: Path, names: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(replica, "FOLLOW_TIMEOUT_S", LONG_S)
    leader = Ring.create(names[0], 1 << 22, leader_epoch=EPOCH)
    member = FollowerReplica(
        "t", 0, tmp_path / "follower", names[1], CONFIG, EPOCH, leader_ring=names[0]
    )
    try:
        with running(member):
            leader.append(producer_fields(), b"v")
            wait_for(lambda: member.ring.status().tail_offset == 1, what="the record copied")
            wait_for(lambda: publish_waiters(leader) == 1, what="the fetch asleep on the leader")
            assert_stops_at_once(member, release=leader.wake)
    finally:
        leader.close()


@pytest.mark.parametrize("delete", [False, True])
def test_a_deleted_replica_removes_its_log_without_an_fsync(
    tmp_path: Path, names: list[str], monkeypatch: pytest.MonkeyPatch, delete: bool
) -> None:
    """stop(delete=True) (its topic was deleted) removes the log unflushed: an fsync of
    what is about to go only made deletions slow (about a second per 600 MB here)."""
    directory = tmp_path / "leader"
    leader = LeaderReplica(
        "t", 0, directory, names[0], CONFIG, EPOCH,
        broker_id=1, followers={}, isr=(1,), update_isr=lambda isr: True,
    )  # fmt: skip
    with running(leader):
        for _ in range(100):
            leader.ring.append(producer_fields(), b"v" * 100)
        wait_for(lambda: leader.log.log_end_offset == 100, what="the records drained")
        fsyncs: list[int] = []
        monkeypatch.setattr(os, "fsync", fsyncs.append)
        leader.stop(delete=delete)
    assert directory.exists() is not delete
    assert (fsyncs == []) is delete
