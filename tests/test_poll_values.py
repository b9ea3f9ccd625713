"""Consumer.poll_values: fixed-size values decoded in the ring straight into numpy arrays.

Pins that it delivers exactly what poll() delivers (same values, same positions), in
whole batches or split ones, past transaction markers, from the segments once the ring
has moved on, while a producer process writes, and that a value of another size is an
error that loses nothing.
"""

from __future__ import annotations

import multiprocessing as mp
import time
import uuid
from collections.abc import Iterator

import client_procs
import numpy as np
import pytest
from engine_harness import Daemon, join_ok, started

from engine import Admin, Consumer, CorruptRecordError, Producer, TopicPartition

SPAWN = mp.get_context("spawn")
SIZE = 12
DTYPE = np.dtype([("producer", "<u4"), ("seq", "<u4"), ("pad", "V4")])


@pytest.fixture
def one_partition(admin: Admin) -> Iterator[str]:
    name = f"pv-{uuid.uuid4().hex[:8]}"
    admin.create_topic(
        name, partitions=1, config={"ring.bytes": 1 << 16, "max.message.bytes": 8192}
    )
    yield name
    admin.delete_topic(name)


def values_of(n: int, producer: int = 0, start: int = 0) -> np.ndarray:
    values = np.zeros(n, dtype=DTYPE)
    values["producer"] = producer
    values["seq"] = np.arange(start, start + n)
    return values


def poll_all(c: Consumer, expect: int, max_records: int, timeout: float = 30.0) -> np.ndarray:
    import time

    chunks: list[np.ndarray] = []
    got, deadline = 0, time.monotonic() + timeout
    while got < expect and time.monotonic() < deadline:
        for chunk in c.poll_values(SIZE, timeout=0.5, max_records=max_records):
            assert chunk.shape[1] == SIZE and len(chunk) <= max_records
            chunks.append(chunk.view(DTYPE).reshape(-1))
            got += len(chunk)
    return np.concatenate(chunks) if chunks else np.zeros(0, dtype=DTYPE)


@pytest.mark.parametrize("max_records", [1, 7, 1000, 65536])
def test_poll_values_delivers_every_value_once_in_order_and_moves_the_position(
    shared_daemon: Daemon, one_partition: str, max_records: int
) -> None:
    tp = TopicPartition(one_partition, 0)
    with Producer(shared_daemon.data_dir) as p:
        for k in range(5):  # batches of 100: split by small max_records
            p.send_batch(one_partition, values_of(100, start=100 * k), partition=0)
    with Consumer(data_dir=shared_daemon.data_dir, auto_offset_reset="earliest") as c:
        c.assign([tp])
        got = poll_all(c, 500, max_records)
        assert list(got["seq"]) == list(range(500))
        assert c.position(tp) == 500
        c.seek(tp, 250)  # mid-batch
        again = poll_all(c, 250, max_records)
        assert list(again["seq"]) == list(range(250, 500))
        assert c.poll_values(SIZE, timeout=0.05) == []


def test_poll_values_skips_transaction_markers_like_poll(
    shared_daemon: Daemon, one_partition: str
) -> None:
    tp = TopicPartition(one_partition, 0)
    with Producer(shared_daemon.data_dir, transactional_id=f"pv-{uuid.uuid4().hex}") as p:
        p.init_transactions()
        for k in range(3):
            p.begin_transaction()
            p.send_batch(one_partition, values_of(10, start=10 * k), partition=0)
            if k == 1:
                p.abort_transaction()
            else:
                p.commit_transaction()
    # 30 records and 3 markers: read_uncommitted delivers all 30 (the aborted too),
    # never a marker, and the position ends past the last marker.
    with Consumer(data_dir=shared_daemon.data_dir, auto_offset_reset="earliest") as c:
        c.assign([tp])
        got = poll_all(c, 30, 1000)
        assert list(got["seq"]) == list(range(30))
        assert c.poll_values(SIZE, timeout=0.2) == []
        assert c.position(tp) == 33


def test_the_position_moves_past_a_trailing_marker_read_in_the_ring(
    shared_daemon: Daemon, one_partition: str
) -> None:
    """Consumers already waiting in the ring (poll_values' direct path, poll()'s chunk
    path) end past the commit marker, not before it."""
    tp = TopicPartition(one_partition, 0)
    with (
        Consumer(data_dir=shared_daemon.data_dir) as by_value,
        Consumer(data_dir=shared_daemon.data_dir) as by_record,
    ):
        for c in (by_value, by_record):
            c.assign([tp])
            c.seek(tp, 0)
        assert by_value.poll_values(SIZE, timeout=0.1) == []
        assert by_record.poll(timeout=0.1) == []
        with Producer(shared_daemon.data_dir, transactional_id=f"pv-{uuid.uuid4().hex}") as p:
            p.init_transactions()
            p.begin_transaction()
            p.send_batch(one_partition, values_of(10), partition=0)
            p.commit_transaction()
        assert len(poll_all(by_value, 10, 1000)) == 10
        records: list = []
        deadline = time.monotonic() + 30
        while len(records) < 10 and time.monotonic() < deadline:
            records += by_record.poll(timeout=0.5)
        assert [r.offset for r in records] == list(range(10))
        assert by_value.position(tp) == by_record.position(tp) == 11


def test_a_value_of_another_size_is_an_error_and_loses_nothing(
    shared_daemon: Daemon, one_partition: str
) -> None:
    """The values before it are delivered; then poll_values raises, naming its offset,
    at the same position every time, until poll() (or a seek) takes the position past it."""
    tp = TopicPartition(one_partition, 0)
    with (
        Producer(shared_daemon.data_dir) as p,
        Consumer(data_dir=shared_daemon.data_dir, auto_offset_reset="earliest") as c,
    ):
        c.assign([tp])
        for first in (True, False):  # read from a new chunk, then from the ring in place
            base = c.position(tp) if not first else 0
            p.send_batch(one_partition, values_of(3, start=base), partition=0)
            if not first:  # the consumer is caught up: the next records come in place
                assert c.position(tp) == base
            p.send(one_partition, b"short", partition=0).get(timeout=10)
            p.send_batch(one_partition, values_of(4, start=base + 4), partition=0)
            got = poll_all(c, 3, 1000)
            assert list(got["seq"]) == list(range(base, base + 3))
            for _ in range(2):
                with pytest.raises(CorruptRecordError, match=f"offset {base + 3}"):
                    c.poll_values(SIZE, timeout=1.0)
                assert c.position(tp) == base + 3
            records = c.poll(timeout=1.0, max_records=1)
            assert [(r.offset, r.value) for r in records] == [(base + 3, b"short")]
            rest = poll_all(c, 4, 1000)
            assert list(rest["seq"]) == list(range(base + 4, base + 8))
            assert c.poll_values(SIZE, timeout=0.05) == []


def test_many_partitions_in_one_poll_and_a_bad_value_in_one_of_them(
    shared_daemon: Daemon, admin: Admin
) -> None:
    """Four partitions read in one call: every good value is delivered once, in order per
    partition; the bad one raises (naming its offset) without losing what the same
    poll took from the others, and stays until poll() takes it."""
    name = f"pv-{uuid.uuid4().hex[:8]}"
    admin.create_topic(name, partitions=4, config={"max.message.bytes": 8192})
    tps = [TopicPartition(name, i) for i in range(4)]
    try:
        with (
            Producer(shared_daemon.data_dir) as p,
            Consumer(data_dir=shared_daemon.data_dir, auto_offset_reset="earliest") as c,
        ):
            c.assign(tps)
            assert c.poll_values(SIZE, timeout=0.1) == []  # every cursor in its ring
            for i in (0, 2, 3):
                p.send_batch(name, values_of(50, producer=i), partition=i)
            p.send_batch(name, values_of(3, producer=1), partition=1)
            p.send(name, b"short", partition=1).get(timeout=10)
            p.send_batch(name, values_of(4, producer=1, start=4), partition=1)
            p.flush()
            chunks, errors = [], 0
            deadline = time.monotonic() + 30
            while (errors == 0 or sum(map(len, chunks)) < 153) and time.monotonic() < deadline:
                try:
                    chunks += [a.view(DTYPE).reshape(-1) for a in c.poll_values(SIZE, 0.2, 10)]
                except CorruptRecordError as e:
                    assert "offset 3" in str(e)
                    errors += 1
            got = np.concatenate(chunks)
            for i in (0, 2, 3):
                assert list(got["seq"][got["producer"] == i]) == list(range(50))
            assert list(got["seq"][got["producer"] == 1]) == [0, 1, 2]
            assert errors >= 1 and c.position(tps[1]) == 3
            assert [c.position(tp) for tp in (tps[0], tps[2], tps[3])] == [50, 50, 50]
            records = c.poll(timeout=1.0, max_records=1)
            assert [(r.partition, r.offset, r.value) for r in records] == [(1, 3, b"short")]
            rest = poll_all(c, 4, 1000)
            assert list(rest["seq"]) == [4, 5, 6, 7] and set(rest["producer"]) == {1}
    finally:
        admin.delete_topic(name)


def test_poll_values_reads_the_segments_once_the_ring_moved_on(
    shared_daemon: Daemon, one_partition: str
) -> None:
    """20,000 records through a 64 KiB ring: the early ones only in segment files."""
    n = 20_000
    with Producer(shared_daemon.data_dir) as p:
        for k in range(0, n, 500):
            p.send_batch(one_partition, values_of(500, start=k), partition=0)
    with Consumer(data_dir=shared_daemon.data_dir, auto_offset_reset="earliest") as c:
        c.assign([TopicPartition(one_partition, 0)])
        got = poll_all(c, n, 4096)
    assert list(got["seq"]) == list(range(n))


def test_poll_values_while_producer_processes_write(
    shared_daemon: Daemon, one_partition: str
) -> None:
    producers, count = 3, 4000
    procs = [
        SPAWN.Process(
            target=client_procs.produce_values,
            args=(str(shared_daemon.data_dir), one_partition, i, count),
        )
        for i in range(producers)
    ]
    with Consumer(data_dir=shared_daemon.data_dir, auto_offset_reset="earliest") as c:
        c.assign([TopicPartition(one_partition, 0)])
        with started(procs):
            got = poll_all(c, producers * count, 333, timeout=90)
            join_ok(procs)
    assert len(got) == producers * count
    for i in range(producers):
        assert list(got["seq"][got["producer"] == i]) == list(range(count))


def test_values_larger_than_the_fetch_buffer(shared_daemon: Daemon, admin: Admin) -> None:
    """100 KB values with a 64 KiB fetch buffer, arriving once the consumer waits in
    the ring (so no chunk read has grown its buffer yet)."""
    name = f"pv-{uuid.uuid4().hex[:8]}"
    admin.create_topic(name, partitions=1, config={"max.message.bytes": 1 << 18})
    size = 100_000
    tp = TopicPartition(name, 0)
    try:
        with (
            Producer(shared_daemon.data_dir) as p,
            Consumer(
                data_dir=shared_daemon.data_dir, auto_offset_reset="earliest", fetch_max_bytes=65536
            ) as c,
        ):
            c.assign([tp])
            assert c.poll_values(size, timeout=0.1) == []
            got: list[bytes] = []
            for k in range(3):
                p.send(name, bytes([k]) * size, partition=0).get(timeout=10)
                deadline = time.monotonic() + 20
                while len(got) <= k and time.monotonic() < deadline:
                    for chunk in c.poll_values(size, timeout=0.5):
                        got += [bytes(row) for row in chunk]
            assert got == [bytes([k]) * size for k in range(3)]
            assert c.position(tp) == 3
    finally:
        admin.delete_topic(name)


def test_positions_set_between_polls_take_effect_on_the_ring_path(
    shared_daemon: Daemon, admin: Admin
) -> None:
    """While every partition is read in its ring, poll_values keeps its plan (the C
    call's arguments, positions included) from poll to poll: a seek, a poll(), a new
    assignment in between must each take effect, and position() stays exact."""
    name = f"pv-{uuid.uuid4().hex[:8]}"
    admin.create_topic(name, partitions=2, config={"max.message.bytes": 8192})
    tps = [TopicPartition(name, i) for i in range(2)]

    def seqs(c: Consumer, expect: int) -> dict[int, list[int]]:
        got = poll_all(c, expect, 1000, timeout=10.0)
        return {p: list(got["seq"][got["producer"] == p]) for p in set(got["producer"])}

    try:
        with (
            Producer(shared_daemon.data_dir) as p,
            Consumer(data_dir=shared_daemon.data_dir, auto_offset_reset="earliest") as c,
        ):
            c.assign(tps)
            assert c.poll_values(SIZE, timeout=0.1) == []  # both cursors in their rings
            for i in (0, 1):
                for k in range(5):
                    p.send(name, values_of(1, producer=i, start=k).tobytes(), partition=i)
            p.flush()
            assert seqs(c, 10) == {0: [0, 1, 2, 3, 4], 1: [0, 1, 2, 3, 4]}
            assert [c.position(tp) for tp in tps] == [5, 5]

            c.seek(tps[0], 2)  # back
            assert seqs(c, 3) == {0: [2, 3, 4]}
            assert c.poll_values(SIZE, timeout=0.05) == []
            assert [c.position(tp) for tp in tps] == [5, 5]

            p.send(name, values_of(1, producer=1, start=5).tobytes(), partition=1).get(10)
            records = c.poll(timeout=5.0)  # the record path moves partition 1 on
            assert [(r.partition, r.offset) for r in records] == [(1, 5)]
            p.send(name, values_of(1, producer=1, start=6).tobytes(), partition=1).get(10)
            assert seqs(c, 1) == {1: [6]}
            assert [c.position(tp) for tp in tps] == [5, 7]

            c.assign([tps[0]])
            p.send(name, values_of(1, producer=0, start=5).tobytes(), partition=0).get(10)
            p.send(name, values_of(1, producer=1, start=7).tobytes(), partition=1).get(10)
            assert seqs(c, 1) == {0: [5]}
            assert c.poll_values(SIZE, timeout=0.05) == []
            assert c.position(tps[0]) == 6
    finally:
        admin.delete_topic(name)
