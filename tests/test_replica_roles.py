"""A replica's ring as readers see it when its role changes under them."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.config import validate_topic_config
from engine.replica import FollowerReplica, LeaderReplica
from engine.ring import NO_LIMIT, OK, Cursor, Ring, producer_fields, unlink

CONFIG = validate_topic_config({"ring.bytes": 1 << 20, "max.message.bytes": 65536})


@pytest.fixture
def ring_name() -> Iterator[str]:
    name = f"/engine-test-roles-{uuid.uuid4().hex[:12]}"
    yield name
    with contextlib.suppress(FileNotFoundError):
        unlink(name)


def readable(name: str) -> list[int]:
    """The offsets a consumer mapping ``name`` reads (bounded by the high watermark)."""
    from engine.record_batch import scan_batches

    with Ring.open(name, populate=False) as ring:
        buf = bytearray(1 << 20)
        code, n = ring.read(Cursor(), buf)
        if code != OK:
            return []
        infos, _, _ = scan_batches(memoryview(buf)[:n], False)
        return [o for i in infos for o in range(int(i["base_offset"]), int(i["last_offset"]) + 1)]


def test_a_leader_ring_resumed_by_a_follower_keeps_nothing_the_new_leader_lacks(
    tmp_path: Path, ring_name: str
) -> None:
    """A broker led the partition, the whole daemon was killed with records in its ring
    above the high watermark (the followers did not hold them), and it comes back as a
    follower of another leader, which took other records at those offsets. A consumer
    still mapping that ring (it did not see the seal yet) reads only what the ISR held;
    the follower keeps none of that tail: it makes its ring anew at its log end and
    copies the leader's records there. (It resumed the ring, tail and all: the leader
    counted the tail as held, the ISR took the follower back, and consumers read records
    that then vanished, at offsets that then held others. The soak found it.)"""
    leader = LeaderReplica("t", 0, tmp_path / "old", ring_name, CONFIG, 0, broker_id=1,
                           followers={2: "/engine-test-roles-none"}, isr=(1, 2))  # fmt: skip
    leader.start()
    fields = producer_fields()
    for i in range(10):
        leader.ring.append(fields, b"old %d" % i)
    leader.ring.set_high_watermark(4)  # what the ISR held when the daemon died
    leader.ring.set_leader(0, sealed=True)  # a SIGKILL: no stop, the ring stays as it is
    leader._stop.set()
    leader._interrupt.set()
    leader._wake()
    for thread in leader._threads:
        thread.join(10)
    leader.log.close()
    mapped = Ring.open(ring_name, populate=False)  # a consumer's mapping from before
    new_name = f"{ring_name}-new"
    new = Ring.create(new_name, 1 << 20)  # the new leader: the committed four, then others
    buf = bytearray(1 << 20)
    code, n = mapped.read(Cursor(), buf)
    assert code == OK
    new.append_raw(bytes(buf[:n]))
    for i in range(4, 12):
        new.append(fields, b"new %d" % i)
    follower = FollowerReplica("t", 0, tmp_path / "old", ring_name, CONFIG, 1,
                               leader_ring=new_name)  # fmt: skip
    try:
        assert mapped.sealed and readable_of(mapped) == [(i, b"old %d" % i) for i in range(4)]
        assert follower.log.log_end_offset == 4
        follower.start()
        deadline = time.monotonic() + 10
        while follower.ring.status().tail_offset < 12:
            assert time.monotonic() < deadline, "the follower did not copy the leader's records"
            time.sleep(0.01)
        with Ring.open(ring_name, populate=False) as ring:
            assert ring.status().tail_offset == 12
            held = all_of(ring)  # from its log end on: 0-3 are in its log
        assert held == all_of(new)[4:] == [(i, b"new %d" % i) for i in range(4, 12)]
    finally:
        follower.stop()
        mapped.close()
        new.close()
        unlink(new_name)


def readable_of(ring: Ring) -> list[tuple[int, bytes]]:
    """(offset, value) of what a consumer mapping ``ring`` reads (to the high watermark)."""
    return _records(ring, None)


def all_of(ring: Ring) -> list[tuple[int, bytes]]:
    """(offset, value) of every record ``ring`` holds."""
    return _records(ring, NO_LIMIT)


def _records(ring: Ring, max_offset: int | None) -> list[tuple[int, bytes]]:
    from engine.record_batch import decode_record_infos

    buf = bytearray(1 << 20)
    code, n = ring.read(Cursor(), buf) if max_offset is None else ring.read(
        Cursor(), buf, max_offset)
    if code != OK:
        return []
    infos = decode_record_infos(bytes(buf[:n]))
    return [(int(r["offset"]), bytes(buf[int(r["value_position"]):][: int(r["value_length"])]))
            for r in infos]  # fmt: skip


def test_a_new_follower_ring_shows_readers_nothing(tmp_path: Path, ring_name: str) -> None:
    follower = FollowerReplica("t", 0, tmp_path / "f", ring_name, CONFIG, 0,
                               leader_ring="/engine-test-roles-absent")  # fmt: skip
    try:
        follower.ring.append_raw(_batches(5))
        assert readable(ring_name) == []
    finally:
        follower.stop()


def _batches(count: int) -> bytes:
    """``count`` one-record batches at offsets 0.. (what a follower copies)."""
    name = f"/engine-test-roles-src-{uuid.uuid4().hex[:8]}"
    src = Ring.create(name, 1 << 16)
    try:
        for i in range(count):
            src.append(producer_fields(), b"%d" % i)
        buf = bytearray(1 << 16)
        code, n = src.read(Cursor(), buf, NO_LIMIT)
        assert code == OK
        return bytes(buf[:n])
    finally:
        src.close()
        unlink(name)
