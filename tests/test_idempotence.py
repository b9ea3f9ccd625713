"""engine.idempotence: which records of a send a new leader already holds."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from engine.idempotence import batch_at, parse_identity, present_prefix
from engine.log import Log, LogReader
from engine.record_batch import scan_batches
from engine.ring import NO_LIMIT, OK, Cursor, Ring, producer_fields, unlink


@pytest.fixture
def rings() -> Iterator[tuple[Ring, Ring]]:
    names = [f"/engine-test-{uuid.uuid4().hex[:12]}" for _ in range(2)]
    old, new = (Ring.create(n, 1 << 16) for n in names)
    yield old, new
    for ring, name in zip((old, new), names, strict=True):
        ring.close()
        unlink(name)


@pytest.fixture
def reader(tmp_path: Path) -> Iterator[LogReader]:
    Log.open(tmp_path).close()  # an empty log: nothing drained, the ring holds it all
    r = LogReader(tmp_path)
    yield r
    r.close()


def copy(src: Ring, dst: Ring, upto: int) -> None:
    """A follower copying the leader's batches below offset ``upto``."""
    buf = bytearray(1 << 16)
    code, n = src.read(Cursor(), buf, upto)
    assert code == OK
    dst.append_raw(bytes(buf[:n]))


def test_a_new_leader_holding_part_of_a_send_reports_that_prefix(
    rings: tuple[Ring, Ring], reader: LogReader
) -> None:
    old, new = rings
    mine = producer_fields(producer_id=5, producer_epoch=0, base_sequence=0)
    offsets = [old.append(mine, b"r0")]
    mine.base_sequence = 1
    out = np.empty(6, dtype=np.int64)
    old.append_batch(mine, b"x" * 60, value_lengths=[10] * 6, offsets=out)  # sequences 1..6
    offsets += [int(o) for o in out]
    copy(old, new, upto=1)  # the follower got offset 0 only before it was promoted
    other = producer_fields(producer_id=9, producer_epoch=0, base_sequence=0)
    for _ in range(5):
        new.append(other, b"someone else's")  # the new leader's own appends at 1..5
    assert present_prefix(new, reader, offsets, 5, 0, 0) == 1
    assert present_prefix(old, reader, offsets, 5, 0, 0) == 7
    assert present_prefix(new, reader, offsets, 5, 1, 0) == 0  # another epoch: not ours
    assert present_prefix(new, reader, offsets[1:], 5, 0, 2) == 0  # other sequences
    assert batch_at(new, reader, 100) is None  # not there (yet)
    found = batch_at(old, reader, 3)
    assert found is not None and (found.base_offset, found.base_sequence) == (1, 1)


def test_sequences_advance_per_frame_when_a_batch_is_split(tmp_path: Path) -> None:
    name = f"/engine-test-{uuid.uuid4().hex[:12]}"
    ring = Ring.create(name, 1 << 16, max_frame_length=4096)  # 3 records of 1 KB a frame
    try:
        fields = producer_fields(producer_id=3, producer_epoch=2, base_sequence=100)
        out = np.empty(10, dtype=np.int64)
        ring.append_batch(fields, b"y" * 10_000, value_lengths=[1000] * 10, offsets=out)
        buf = bytearray(1 << 16)
        code, length = ring.read(Cursor(), buf, NO_LIMIT)
        assert code == OK
        infos, _, _ = scan_batches(bytes(buf[:length]))
        assert len(infos) == 4  # 3 + 3 + 3 + 1
        for info in infos:
            assert int(info["base_offset"]) + 100 == read_batch_sequence(buf, int(info["position"]))
    finally:
        ring.close()
        unlink(name)


def read_batch_sequence(buf: bytearray, position: int) -> int:
    return parse_identity(memoryview(buf)[position:]).base_sequence
