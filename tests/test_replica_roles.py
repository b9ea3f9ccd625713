"""A replica's ring as readers see it when its role changes under them."""

from __future__ import annotations

import contextlib
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


def test_a_leader_ring_resumed_by_a_follower_shows_readers_only_what_was_committed(
    tmp_path: Path, ring_name: str
) -> None:
    """A broker led the partition, the whole daemon was killed with records in its ring
    above the high watermark (the followers did not hold them), and it comes back as a
    follower of another leader. A consumer still mapping that ring (it did not see the
    seal yet) reads only what the ISR held: the rest is cut from this log as soon as it
    follows, and reading it was reading records that then vanish (the soak found it)."""
    leader = LeaderReplica("t", 0, tmp_path / "leader", ring_name, CONFIG, 0, broker_id=1,
                           followers={2: "/engine-test-roles-none"}, isr=(1, 2))  # fmt: skip
    leader.start()
    fields = producer_fields()
    for i in range(10):
        leader.ring.append(fields, b"%d" % i)
    leader.ring.set_high_watermark(4)  # what the ISR held when the daemon died
    leader.ring.set_leader(0, sealed=True)  # a SIGKILL: no stop, the ring stays as it is
    leader._stop.set()
    leader._interrupt.set()
    leader._wake()
    for thread in leader._threads:
        thread.join(10)
    leader.log.close()
    follower = FollowerReplica("t", 0, tmp_path / "leader", ring_name, CONFIG, 1,
                               leader_ring="/engine-test-roles-absent")  # fmt: skip
    try:
        assert readable(ring_name) == [0, 1, 2, 3]
        with Ring.open(ring_name, populate=False) as ring:  # the follower still holds all
            code, _ = ring.read(Cursor(), bytearray(1 << 20), NO_LIMIT)
            assert code == OK and ring.status().tail_offset == 10
    finally:
        follower.stop()


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
