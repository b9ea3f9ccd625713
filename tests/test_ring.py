"""The partition ring: layout, append/read, wrap, back-pressure, many producers, torn claims."""

from __future__ import annotations

import multiprocessing as mp
import os
import struct
import threading
import time
import uuid
from collections.abc import Iterator

import pytest
import ring_procs
from engine._native import ffi
from engine_harness import join_ok, started, wait_for

from engine.errors import (
    BufferFullError,
    CorruptRecordError,
    NotEnoughReplicasError,
    NotLeaderError,
    ProducerFencedError,
    RecordTooLargeError,
    TransactionError,
)
from engine.record import RecordDecoder
from engine.ring import (
    EMPTY,
    NO_LIMIT,
    OK,
    OVERWRITTEN,
    TIMEOUT,
    Cursor,
    Ring,
    ValuesReader,
    crc32c,
    murmur2,
    producer_fields,
    ready_many,
    unlink,
)

SPAWN = mp.get_context("spawn")


@pytest.fixture
def ring_name() -> Iterator[str]:
    name = f"/engine-test-{uuid.uuid4().hex[:12]}"
    yield name
    unlink(name)


def read_all(ring: Ring, cursor: Cursor, decoder: RecordDecoder | None = None) -> list:
    decoder = decoder or RecordDecoder()
    buf = bytearray(1 << 20)
    out = []
    while True:
        code, n = ring.read(cursor, buf)
        if code != OK:
            assert code == EMPTY
            return out
        data = bytes(buf[:n])
        pos, next_offset = 0, 0
        while pos < n:
            records, used = decoder.decode(data[pos:], "t", 0, next_offset, 1 << 30)
            out += records
            if records:
                next_offset = records[-1].offset + 1
            if used == 0 and not records:
                break
            pos += used


def drain(ring: Ring, cursor: Cursor, buf: bytearray) -> None:
    """Play the broker: move the drain cursor over everything published."""
    while True:
        code, _ = ring.read(cursor, buf)
        if code != OK:
            break
    ring.drain_to(cursor)


def test_header_bytes_match_the_diagram(ring_name: str) -> None:
    ring = Ring.create(ring_name, 1 << 16, base_offset=42, leader_epoch=7)
    raw = bytes(ffi.buffer(ring._ptr(), 4096))
    assert struct.unpack_from("<II", raw, 0) == (4, 4096)  # version, header_length
    assert raw[8:16] == b"ENGNRING"
    assert struct.unpack_from("<QQq", raw, 16) == (1 << 16, 1 << 15, 42)
    assert struct.unpack_from("<Q", raw, 128)[0] == 42 << 32  # tail: offset 42, position 0
    assert struct.unpack_from("<Qq", raw, 256) == (0, 42)  # drain position, drain offset
    assert struct.unpack_from("<iIq", raw, 640) == (7, 0, -1)  # epoch, sealed, high watermark
    ring.fence(41, 3)
    raw = bytes(ffi.buffer(ring._ptr(), 4096))
    slots = [struct.unpack_from("<Qi", raw, 1024 + 16 * i) for i in range(64)]
    assert [s for s in slots if s[0]] == [(42, 3)]  # producer fencing table: key = id + 1
    ring.close()


def test_reads_count_offsets_and_frame_bytes_out_in_the_header(ring_name: str) -> None:
    """read_offsets (2048) and read_bytes (2056): what consumers read, for the metrics."""
    ring = Ring.create(ring_name, 1 << 16, base_offset=10)
    try:
        for value in (b"a", b"bb", b"ccc"):
            ring.append(producer_fields(), value)
        cursor = ring.seek(10)
        assert cursor is not None
        code, _ = ring.read(cursor, bytearray(4096))
        assert code == OK
        raw = bytes(ffi.buffer(ring._ptr(), 4096))
        tail = ring.status().tail_position
        assert struct.unpack_from("<QQ", raw, 2048) == (3, tail)
        assert (ring.status().read_offsets, ring.status().read_bytes) == (3, tail)
        assert ring.read(cursor, bytearray(4096))[0] == EMPTY  # nothing more: nothing counted
        assert ring.status().read_offsets == 3
    finally:
        ring.close()


def test_a_ring_of_another_version_is_refused_with_both_versions(ring_name: str) -> None:
    ring = Ring.create(ring_name, 1 << 16)
    try:
        ffi.buffer(ring._ptr(), 4)[0:4] = struct.pack("<I", 3)  # the version word
        with pytest.raises(CorruptRecordError, match=r"of version 4: .* version=3"):
            Ring.open(ring_name)
    finally:
        ring.close()


def test_high_watermark_waiters_sleep_on_their_own_word(ring_name: str) -> None:
    """An acks="all" wait sleeps on hw_seq (header offset 896), so appends do not wake
    it; raising the high watermark does."""
    ring = Ring.create(ring_name, 1 << 16)
    ring.set_high_watermark(0)
    result: list[int] = []
    waiter = threading.Thread(target=lambda: result.append(ring.wait_high_watermark(5, 10.0)))
    waiter.start()
    try:

        def words() -> tuple[int, int, int, int]:
            raw = bytes(ffi.buffer(ring._ptr(), 4096))
            return struct.unpack_from("<II", raw, 384) + struct.unpack_from("<II", raw, 896)

        wait_for(lambda: words()[3] == 1, what="the waiter on hw_waiters")
        _, publish_waiters, hw_seq, _ = words()
        assert publish_waiters == 0
        ring.append(producer_fields(), b"v")  # no wake for the high-watermark waiter
        assert words()[2] == hw_seq and not result
        ring.set_high_watermark(6)
        waiter.join(timeout=5)
        assert result == [OK]
        assert words()[2] == hw_seq + 1 and words()[3] == 0
    finally:
        ring.set_high_watermark(-1)
        waiter.join(timeout=15)
        ring.close()


def _crc32c_reference(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 & -(crc & 1))
    return crc ^ 0xFFFFFFFF


@pytest.mark.parametrize("size", [0, 1, 7, 8, 9, 12287, 12288, 12289, 24576 + 5, 3 * 12288 + 17])
def test_crc32c_matches_the_bitwise_definition_around_the_block_joins(size: int) -> None:
    """The three-stream hardware CRC joins blocks of 4 KiB: check sizes around them,
    and continuing a CRC across a cut."""
    data = bytes((i * 131 + size) % 251 for i in range(size))
    assert crc32c(data) == _crc32c_reference(data)
    cut = size // 3
    assert crc32c(data[cut:], crc32c(data[:cut])) == _crc32c_reference(data)


def test_crc32c_and_murmur2_match_published_vectors() -> None:
    assert crc32c(b"123456789") == 0xE3069283
    assert murmur2(b"21") == -973932308  # Kafka's UtilsTest
    assert murmur2(b"foobar") == -790332482
    assert murmur2(b"") == 275646681


def test_append_then_read_returns_records_with_dense_offsets(ring_name: str) -> None:
    ring = Ring.create(ring_name, 1 << 16, base_offset=100)
    f = producer_fields()
    assert ring.append(f, b"v0", key=b"k0", timestamp_ms=5) == 100
    assert ring.append(f, None, key=None, timestamp_ms=6) == 101
    headers = b"\x02h" + b"\x04ab"  # one header: "h" -> b"ab" (zigzag varints)
    assert ring.append(f, b"v2", headers=headers, header_count=1, timestamp_ms=7) == 102
    records = read_all(ring, Cursor(0, 100))
    assert [(r.offset, r.key, r.value, r.timestamp, r.headers) for r in records] == [
        (100, b"k0", b"v0", 5, []),
        (101, None, None, 6, []),
        (102, None, b"v2", 7, [("h", b"ab")]),
    ]
    ring.close()


def test_batch_append_of_fixed_size_records(ring_name: str) -> None:
    import numpy as np

    ring = Ring.create(ring_name, 1 << 20)
    values = np.arange(1000, dtype=np.int64).view(np.uint8)
    out = np.empty(125, dtype=np.int64)
    assert ring.append_batch(producer_fields(), values, value_stride=64, offsets=out) == 125
    assert list(out) == list(range(125))
    records = read_all(ring, Cursor())
    assert [r.offset for r in records] == list(range(125))
    assert records[3].value == values[3 * 64 : 4 * 64].tobytes()
    ring.close()


def test_full_ring_blocks_then_raises_and_overwrites_nothing(ring_name: str) -> None:
    ring = Ring.create(ring_name, 1 << 16)
    f = producer_fields()
    value = b"x" * 1000
    n = 0
    with pytest.raises(BufferFullError):
        while True:
            ring.append(f, value, timeout_ms=50)
            n += 1
    assert 50 < n < 66
    records = read_all(ring, Cursor())
    assert [r.offset for r in records] == list(range(n))
    assert all(r.value == value for r in records)
    ring.close()


def test_a_producer_that_finds_the_ring_full_wakes_the_sleeping_drain(ring_name: str) -> None:
    """The drain sleeps between passes in wait_full (futex full_seq, header offset 800);
    a producer in another process whose append finds the ring full ends that sleep at
    once instead of waiting out the rest of it."""
    ring = Ring.create(ring_name, 1 << 16)
    assert not ring.wait_full(ring.status().full_waits, 0.01)  # nothing full: the timeout
    seen = ring.status().full_waits
    woken: list[bool] = []
    drain = threading.Thread(target=lambda: woken.append(ring.wait_full(seen, 600.0)))
    drain.start()
    child = SPAWN.Process(target=ring_procs.fill_when_waited_on, args=(ring_name,))
    child.start()
    try:
        # Long before the sleep's 600 s: woken by the append that found the ring full.
        wait_for(lambda: woken, timeout=60, what="the full ring to end the drain's sleep")
        assert woken == [True] and ring.status().full_waits > seen
        join_ok([child])
    finally:
        ring.wake()  # ends the sleep if the test failed
        drain.join(10)
        child.join(10)
        if child.is_alive():
            child.kill()
    raw = bytes(ffi.buffer(ring._ptr(), 4096))
    assert struct.unpack_from("<I", raw, 804)[0] == 0  # full_waiters: nobody left waiting
    ring.close()


def test_record_over_the_frame_limit_is_refused_before_writing(ring_name: str) -> None:
    ring = Ring.create(ring_name, 1 << 16, max_frame_length=4096)
    with pytest.raises(RecordTooLargeError):
        ring.append(producer_fields(), b"x" * 5000)
    assert ring.status().tail_offset == 0
    ring.close()


def test_wraps_many_times_with_a_draining_broker(ring_name: str) -> None:
    ring = Ring.create(ring_name, 1 << 16)
    f = producer_fields()
    reader = Cursor()
    drainer = Cursor()
    buf = bytearray(1 << 16)
    seen = []
    for i in range(20_000):
        ring.append(f, struct.pack("<I", i) + b"z" * (i % 300))
        if i % 50 == 0:
            seen += [r.offset for r in read_all(ring, reader)]
            drain(ring, drainer, buf)
    seen += [r.offset for r in read_all(ring, reader)]
    assert seen == list(range(20_000))
    assert ring.status().tail_position > 20 * (1 << 16)
    ring.close()


def test_a_lapped_reader_is_told_overwritten(ring_name: str) -> None:
    ring = Ring.create(ring_name, 1 << 16)
    f = producer_fields()
    drainer = Cursor()
    buf = bytearray(1 << 16)
    for _ in range(2000):
        ring.append(f, b"q" * 200)
        drain(ring, drainer, buf)
    code, _ = ring.read(Cursor(0, 0), buf)
    assert code == OVERWRITTEN
    assert ring.seek(0) is None  # older than the drain cursor: read the segments
    ring.close()


@pytest.mark.parametrize("batch", [1, 37])
def test_many_producer_processes_on_one_ring_every_record_once_in_order(
    ring_name: str, batch: int
) -> None:
    """4 processes append at once through wrap-arounds; a reader sees every record
    exactly once, each producer's in its order, at dense offsets."""
    ring = Ring.create(ring_name, 1 << 18)
    producers, count = 4, 5000
    procs = [
        SPAWN.Process(target=ring_procs.produce, args=(ring_name, p, count, batch))
        for p in range(producers)
    ]
    with started(procs):
        reader = Cursor()
        decoder = RecordDecoder()
        got: list = []
        deadline = time.monotonic() + 60
        while len(got) < producers * count:
            assert time.monotonic() < deadline, f"only {len(got)} records arrived"
            assert all(p.exitcode in (None, 0) for p in procs), "a producer failed"
            got += read_all(ring, reader, decoder)
            # The broker's part: free what the reader has read, and no more (a drain
            # cursor of its own could run ahead of the reader and let the producers
            # lap it: OVERWRITTEN, seen once in a full run).
            ring.drain_to(reader)
            ring.wait(reader, 0.05)
        join_ok(procs, 10)
    assert [r.offset for r in got] == list(range(producers * count))
    per_producer: dict[int, list[int]] = {}
    for r in got:
        pid, seq = struct.unpack_from("<II", r.value)
        assert r.key == b"p%d" % pid
        assert r.value[8:] == (b"x" if batch == 1 else b"y") * (seq % 50)
        per_producer.setdefault(pid, []).append(seq)
    assert per_producer == {p: list(range(count)) for p in range(producers)}


@pytest.mark.parametrize("stamped", [True, False], ids=["stamped", "unstamped"])
def test_a_producer_killed_between_claim_and_publish_does_not_wedge_the_ring(
    ring_name: str, stamped: bool
) -> None:
    ring = Ring.create(ring_name, 1 << 16)
    f = producer_fields()
    ring.append(f, b"before")
    child = SPAWN.Process(target=ring_procs.claim_and_die, args=(ring_name, stamped))
    child.start()
    child.join(30)
    assert child.exitcode == -9
    after = ring.append(f, b"after")  # claims past the torn frame; offsets go on
    reader = Cursor()
    got = read_all(ring, reader)
    assert [r.value for r in got] == [b"before"]  # stopped at the torn claim
    t0 = time.monotonic()
    assert ring.wait(reader, 5.0)  # reaps the torn frame
    assert time.monotonic() - t0 < 1.0
    got = read_all(ring, reader)
    assert [(r.value, r.offset) for r in got] == [(b"after", after)]
    assert ring.status().reaped_frames == 1
    ring.close()


def test_a_waiting_reader_in_another_process_is_woken_by_an_append(ring_name: str) -> None:
    ring = Ring.create(ring_name, 1 << 16)
    reader = Cursor()
    child = SPAWN.Process(target=ring_procs.append_after, args=(ring_name, 0.3, b"wake"))
    child.start()
    try:
        assert ring.wait(reader, 20.0)
        assert [r.value for r in read_all(ring, reader)] == [b"wake"]
    finally:
        child.join(10)
        if child.is_alive():
            child.kill()
    ring.close()


def test_a_ring_is_private_to_its_owner(ring_name: str) -> None:
    ring = Ring.create(ring_name, 1 << 16)
    mode = os.stat("/dev/shm" + ring_name).st_mode & 0o777
    assert mode == 0o600
    ring.close()


def test_a_reader_racing_producer_and_drain_never_returns_a_torn_record(ring_name: str) -> None:
    """The reader is lapped now and then (it is told OVERWRITTEN and jumps to the drain
    cursor, as a consumer would go to the segments); every record it does return is
    intact and at its own offset."""
    ring = Ring.create(ring_name, 1 << 16)
    stop = threading.Event()
    seen: list[tuple[int, bytes]] = []
    lapped = [0]
    errors: list[BaseException] = []

    def consume() -> None:
        try:
            reader, buf, decoder = Cursor(), bytearray(1 << 16), RecordDecoder()
            while True:
                code, n = ring.read(reader, buf)
                if code == OVERWRITTEN:
                    lapped[0] += 1
                    reader = ring.drain_cursor()
                    continue
                if code == OK:
                    data = bytes(buf[:n])
                    records, _ = decoder.decode(data, "t", 0, 0, 1 << 30)
                    seen.extend((r.offset, r.value) for r in records)
                    continue
                if stop.is_set():
                    return
                ring.wait(reader, 0.01)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    t = threading.Thread(target=consume)
    t.start()
    drainer, buf = Cursor(), bytearray(1 << 16)
    f = producer_fields()
    for i in range(20_000):
        ring.append(f, struct.pack("<I", i) + b"w" * (i % 97))
        if i % 20 == 0:
            drain(ring, drainer, buf)
    stop.set()
    t.join(30)
    assert not errors
    assert seen, "the reader saw nothing"
    offsets = [o for o, _ in seen]
    assert offsets == sorted(set(offsets))
    for offset, value in seen:
        assert value == struct.pack("<I", offset) + b"w" * (offset % 97)
    ring.close()


def test_a_follower_ring_copies_batches_with_their_offsets(ring_name: str) -> None:
    leader = Ring.create(ring_name, 1 << 16, base_offset=10)
    follower_name = ring_name + "-f"
    follower = Ring.create(follower_name, 1 << 16, base_offset=10)
    try:
        follower.set_leader(0, sealed=True)  # producers are kept off a follower
        f = producer_fields()
        for i in range(5):
            leader.append(f, b"r%d" % i)
        lead_cursor, buf = Cursor(0, 10), bytearray(1 << 16)
        code, n = leader.read(lead_cursor, buf, max_offset=NO_LIMIT)
        assert code == OK
        follower.append_raw(bytes(buf[:n]))
        got = read_all(follower, Cursor(0, 10))
        assert [(r.offset, r.value) for r in got] == [(10 + i, b"r%d" % i) for i in range(5)]
        with pytest.raises(NotLeaderError):
            follower.append(f, b"producer")
    finally:
        follower.close()
        unlink(follower_name)
        leader.close()


def test_readers_stop_at_the_high_watermark_and_acks_all_waits_for_it(ring_name: str) -> None:
    ring = Ring.create(ring_name, 1 << 16)
    f = producer_fields()
    ring.set_high_watermark(0)  # replicated: nothing is committed yet
    for i in range(4):
        ring.append(f, b"h%d" % i)
    reader = Cursor()
    assert read_all(ring, reader) == []
    assert not ring.wait(reader, 0.01)  # published, but above the high watermark
    assert ring.wait(reader, 0.01, respect_hw=False)
    assert ring.wait_high_watermark(1, 0.01) == TIMEOUT
    ring.set_high_watermark(2)
    assert ring.wait_high_watermark(1, 0.01) == OK
    assert [r.offset for r in read_all(ring, reader)] == [0, 1]
    ring.set_isr_count(1)
    with pytest.raises(NotEnoughReplicasError):
        ring.append(producer_fields(min_insync=2), b"refused")
    assert ring.status().tail_offset == 4
    ring.close()


def test_a_fenced_producer_epoch_lands_nothing_after_the_fence(ring_name: str) -> None:
    """Two zombie processes (epoch 0 of producer id 7, per record and batched) append
    while the parent fences epoch 1 and appends its own marker: every zombie record
    sits below the marker's offset, both zombies are told ProducerFenced, and the
    frames they claimed after the fence read as skipped offsets, not a wedge."""
    ring = Ring.create(ring_name, 1 << 20)
    procs = [SPAWN.Process(target=ring_procs.zombie, args=(ring_name, b)) for b in (1, 7)]
    with started(procs):
        reader = Cursor()
        got: list = []
        deadline = time.monotonic() + 60
        while len(got) < 500:  # both are appending
            assert time.monotonic() < deadline, f"only {len(got)} zombie records arrived"
            got += read_all(ring, reader)
            ring.drain_to(reader)  # free what was read, no more (see the test above)
            ring.wait(reader, 0.05)
        ring.fence(7, 1)
        assert ring.producer_epoch(7) == 1
        marker = ring.append(
            producer_fields(producer_id=7, producer_epoch=1, attributes=0x10), b"m"
        )
        for p in procs:
            p.join(30)
            assert p.exitcode == 0, "a zombie was never fenced"
        after = ring.append(producer_fields(), b"after")
        while not got or got[-1].offset != after:
            assert time.monotonic() < deadline, "the reader stopped before the last record"
            got += read_all(ring, reader)
            ring.drain_to(reader)
            ring.wait(reader, 0.05)
    zombies = [r.offset for r in got if r.value == b"zombie"]
    assert zombies and max(zombies) < marker
    assert [r.value for r in got if r.offset >= marker] == [b"m", b"after"]
    with pytest.raises(ProducerFencedError):
        ring.append(producer_fields(producer_id=7, producer_epoch=0, attributes=0x10), b"late")
    ring.fence(7, 0)  # an epoch only rises
    assert ring.producer_epoch(7) == 1 and ring.producer_epoch(8) == -1


def test_the_fencing_table_holds_64_producer_ids_then_says_so(ring_name: str) -> None:
    ring = Ring.create(ring_name, 1 << 16)
    for pid in range(64):
        ring.fence(pid * 1000, 3)
    assert all(ring.producer_epoch(pid * 1000) == 3 for pid in range(64))
    with pytest.raises(TransactionError, match="64 transactional producer ids"):
        ring.fence(99, 0)


def test_a_follower_ring_keeps_the_fences_of_the_batches_it_copies(ring_name: str) -> None:
    leader = Ring.create(ring_name, 1 << 16)
    follower_name = ring_name + "-f"
    follower = Ring.create(follower_name, 1 << 16)
    try:
        leader.append(producer_fields(producer_id=5, producer_epoch=4, attributes=0x10), b"t")
        leader.append(producer_fields(producer_id=6, producer_epoch=2), b"idempotent only")
        buf = bytearray(1 << 16)
        code, n = leader.read(Cursor(), buf, NO_LIMIT)
        assert code == OK
        follower.append_raw(bytes(buf[:n]))
        assert follower.producer_epoch(5) == 4
        assert follower.producer_epoch(6) == -1  # not transactional: nothing to fence
    finally:
        follower.close()
        unlink(follower_name)


def test_a_forked_child_cannot_use_its_parents_mapping(ring_name: str) -> None:
    """A mapping belongs to the process that made it: a forked child gets ClosedError
    (it must map the ring again), and its close() leaves the parent's view intact."""
    ring = Ring.create(ring_name, 1 << 16)
    fork = mp.get_context("fork")
    out = fork.Queue()
    child = fork.Process(target=ring_procs.use_inherited, args=(ring, out))
    child.start()
    try:
        assert out.get(timeout=30) == "refused"
        child.join(30)
        assert child.exitcode == 0
    finally:
        if child.is_alive():
            child.kill()
    fields = producer_fields()
    assert ring.append(fields, b"after the fork") == 0
    assert ring.status().tail_offset == 1
    ring.close()


def test_threads_sharing_a_ring_each_read_into_their_own_buffer(ring_name: str) -> None:
    """Threads sharing one Ring (a broker's drain and replicate threads, a producer's
    acker and its caller) each get their own bytes and lengths: Ring.read keeps a view
    of the last buffer it was given, and the C calls' out-parameters are per thread."""
    ring = Ring.create(ring_name, 1 << 20)
    fields = producer_fields()
    for i in range(300):
        ring.append(fields, struct.pack("<I", i) * 16)
    expected = [struct.pack("<I", i) * 16 for i in range(300)]
    failures: list[str] = []

    def reader(k: int) -> None:
        decoder = RecordDecoder()
        for _ in range(200):
            buf = bytearray(4096 + 64 * k)  # small: many reads per pass, each into buf
            cursor, got = Cursor(), []
            while True:
                code, n = ring.read(cursor, buf)
                if code != OK:
                    break
                data, pos = bytes(buf[:n]), 0
                while pos < n:
                    records, used = decoder.decode(data[pos:], "t", 0, 0, 1 << 30)
                    got += [r.value for r in records]
                    pos += used
            if got != expected:
                wrong = [i for i, v in enumerate(got) if i >= len(expected) or v != expected[i]]
                failures.append(f"reader {k}: {len(got)} records, wrong at {wrong[:3]}")
                return

    threads = [threading.Thread(target=reader, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    ring.close()
    assert not any(t.is_alive() for t in threads)
    assert failures == []


def test_a_consumers_spin_shrinks_while_it_misses_and_comes_back_when_data_is_near(
    ring_name: str,
) -> None:
    """poll_values' wait spins before it sleeps; a spin that keeps missing halves each
    time (it only burns a core another process could use), and the first wait that
    ends within the spin window restores it."""
    ring = Ring.create(ring_name, 1 << 16)
    cursor = ring.seek(0)
    assert cursor is not None
    reader, out = ValuesReader(), bytearray(1 << 12)
    reader.bind([(ring, cursor, 0)])
    window_s = 0.01
    spins = []
    for _ in range(3):  # nothing comes: each wait times out, after 50 ms > 10 ms
        assert reader.read(0, 4, out, 100, timeout_s=0.05, spin_s=window_s) == 0
        spins.append(reader._spin_ns[0])
    assert spins == [5_000_000, 2_500_000, 1_250_000]
    fields = producer_fields()
    timer = threading.Timer(0.002, lambda: ring.append(fields, b"near"))
    timer.start()
    try:
        assert reader.read(0, 4, out, 100, timeout_s=5.0, spin_s=0.5) == 1  # a 0.5 s window
    finally:
        timer.join()
    assert reader._spin_ns[0] == 500_000_000 and bytes(out[:4]) == b"near"
    ring.close()


def test_ready_many_names_the_rings_a_read_has_something_for(ring_name: str) -> None:
    """A consumer's poll reads only these: a batch below the high watermark, a seal, a
    claim that is not published (the read decides whether it is stuck); not an empty
    ring, nor one whose records wait for the high watermark."""
    names = [f"{ring_name}-{k}" for k in ("empty", "data", "sealed", "above-hw", "torn")]
    rings = [Ring.create(name, 1 << 16) for name in names]
    try:
        _empty, data, sealed, above_hw, torn = rings
        f = producer_fields()
        data.append(f, b"one")
        sealed.set_leader(1, True)
        above_hw.set_high_watermark(0)
        above_hw.append(f, b"not yet committed")
        torn.append(f, b"before")
        child = SPAWN.Process(target=ring_procs.claim_and_die, args=(names[4], True))
        child.start()
        child.join(30)
        assert child.exitcode == -9
        cursors = [Cursor() for _ in rings]
        torn_reader = cursors[4]
        assert [r.value for r in read_all(torn, torn_reader)] == [b"before"]
        assert ready_many(list(zip(rings, cursors, strict=True))) == [
            False, True, True, False, True,
        ]  # fmt: skip
        above_hw.set_high_watermark(1)
        read_all(data, cursors[1])
        assert ready_many(list(zip(rings, cursors, strict=True))) == [
            False, False, True, True, True,
        ]  # fmt: skip
    finally:
        for ring, name in zip(rings, names, strict=True):
            ring.close()
            unlink(name)


def test_reader_processes_on_one_ring_each_see_every_record_in_order(ring_name: str) -> None:
    """3 reader processes read the ring at once while 4 producer processes append to it:
    each reader sees every record once, at dense offsets, each producer's in its order."""
    ring = Ring.create(ring_name, 1 << 20)  # holds every record: nothing drains here
    producers, count, readers = 4, 1500, 3
    total = producers * count
    out = SPAWN.Queue()
    ready = [SPAWN.Event() for _ in range(readers)]
    reading = [
        SPAWN.Process(target=ring_procs.read_every_record, args=(ring_name, total, r, out))
        for r in ready
    ]
    producing = [
        SPAWN.Process(target=ring_procs.produce, args=(ring_name, p, count, 1))
        for p in range(producers)
    ]
    with started(reading):
        assert all(r.wait(60) for r in ready), "a reader did not start"
        with started(producing):  # the readers are waiting on the ring meanwhile
            join_ok(producing, 60)
        seen = [out.get(timeout=60) for _ in reading]
        join_ok(reading, 10)
    assert ring.status().tail_offset == total
    for got in seen:
        assert [offset for offset, _, _ in got] == list(range(total))
        per_producer: dict[int, list[int]] = {}
        for _, key, value in got:
            assert value is not None
            producer, seq = struct.unpack_from("<II", value)
            assert key == b"p%d" % producer
            per_producer.setdefault(producer, []).append(seq)
        assert per_producer == {p: list(range(count)) for p in range(producers)}
    assert seen[0] == seen[1] == seen[2]
    ring.close()
