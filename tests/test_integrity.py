"""Stored data that was damaged is never delivered as data (issue 17, item 4), and a
missing or damaged index is rebuilt at start (item 9): a real daemon, real consumers,
bytes of the segment files changed after a clean stop, ``engine verify`` finding and
repairing them.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import struct
import time
from pathlib import Path

import pytest
import ring_procs
from engine_harness import Daemon, running_daemon, wait_for

from engine import Admin, Consumer, CorruptRecordError, Producer, TopicPartition
from engine.cluster import ClusterView
from engine.datadir import DataDir
from engine.record_batch import check_chunk, encode_empty_batch, scan_batches
from engine.ring import Ring

SPAWN = mp.get_context("spawn")
RECORDS = 100
SEGMENT = f"{0:020d}.log"


def value(i: int) -> bytes:
    return b"value-%04d" % i


def create(d: Daemon, topic: str, replication: int = 1) -> None:
    with Admin(d.data_dir) as admin:
        admin.create_topic(topic, partitions=1, replication=replication)


def produce(d: Daemon, topic: str, first: int, count: int, acks: int | str = 1) -> None:
    """One record per batch: ``value(i)`` at offset i."""
    with Producer(d.data_dir, acks=acks) as p:
        for i in range(first, first + count):
            md = p.send(topic, value=value(i), partition=0).get(timeout=10)
            assert md.offset == i


def replica_dirs(d: Daemon, topic: str) -> dict[int, Path]:
    """broker id -> that broker's directory of partition 0, the leader's first."""
    with Admin(d.data_dir) as admin:
        p = admin.describe_topic(topic).partitions[0]
    dd = DataDir.resolve(d.data_dir)
    order = [p.leader, *(b for b in p.replicas if b != p.leader)]
    return {b: dd.partition_dir(b, topic, 0) for b in order if b is not None}


def batch_position(segment: Path, offset: int) -> tuple[int, int]:
    """(position, length) of the batch holding ``offset`` in a segment file."""
    infos, _, _ = scan_batches(segment.read_bytes(), verify_crc=False)
    k = int(((infos["base_offset"] <= offset) & (infos["last_offset"] >= offset)).argmax())
    assert infos["base_offset"][k] <= offset <= infos["last_offset"][k]
    return int(infos["position"][k]), int(infos["length"][k])


def damage(segment: Path, position: int, new: bytes) -> None:
    data = bytearray(segment.read_bytes())
    assert data[position : position + len(new)] != new
    data[position : position + len(new)] = new
    segment.write_bytes(bytes(data))


def flip_value_byte(segment: Path, offset: int) -> None:
    """Change the last byte of the value of the one-record batch at ``offset``: the value
    still decodes, to another value of the same length (what a silent read would return)."""
    position, length = batch_position(segment, offset)
    last = position + length - 2  # the record ends with its value, then 0 headers
    damage(segment, last, bytes([segment.read_bytes()[last] ^ 0x01]))


def read_until_error(c: Consumer, tp: TopicPartition) -> tuple[list, CorruptRecordError]:
    """Every record poll() delivers before it raises CorruptRecordError, and the error."""
    got: list = []
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            got += c.poll(timeout=0.2)
        except CorruptRecordError as exc:
            return got, exc
    raise AssertionError(f"no CorruptRecordError in 15 s, after {len(got)} records")


def consume_all(d: Daemon, topic: str, count: int) -> list:
    with Consumer(data_dir=d.data_dir, auto_offset_reset="earliest") as c:
        c.assign([TopicPartition(topic, 0)])
        got: list = []
        wait_for(lambda: (got.extend(c.poll(timeout=0.2)), len(got) >= count)[1],
                 what=f"{count} records")  # fmt: skip
        return got


# ---- a flipped byte ----------------------------------------------------------


def test_a_flipped_byte_in_a_stored_batch_raises_instead_of_returning_a_wrong_value(
    daemon: Daemon,
) -> None:
    create(daemon, "flip")
    produce(daemon, "flip", 0, RECORDS)
    leader = next(iter(replica_dirs(daemon, "flip").values()))
    daemon.stop()
    flip_value_byte(leader / SEGMENT, 50)
    daemon.start()
    tp = TopicPartition("flip", 0)
    with Consumer(data_dir=daemon.data_dir, auto_offset_reset="earliest") as c:
        c.assign([tp])
        got, exc = read_until_error(c, tp)
        assert [(r.offset, r.value) for r in got] == [(i, value(i)) for i in range(50)]
        assert (exc.topic, exc.partition, exc.offset) == ("flip", 0, 50)
        assert "topic=flip partition=0 offset=50" in str(exc) and "CRC32C" in str(exc)
        for _ in range(3):  # again at every poll: never skipped, never delivered
            with pytest.raises(CorruptRecordError, match="offset=50"):
                c.poll(timeout=0.2)
        assert c.position(tp) == 50
        c.seek(tp, 51)  # the user's way past it
        rest = []
        wait_for(lambda: (rest.extend(c.poll(timeout=0.2)), len(rest) >= 49)[1])
        assert [(r.offset, r.value) for r in rest] == [(i, value(i)) for i in range(51, 100)]
    with Consumer(data_dir=daemon.data_dir, auto_offset_reset="earliest") as c:
        c.assign([tp])
        values = []
        with pytest.raises(CorruptRecordError, match="topic=flip partition=0 offset=50"):
            for _ in range(100):
                values += c.poll_values(len(value(0)), timeout=0.2)
        assert b"".join(a.tobytes() for a in values) == b"".join(value(i) for i in range(50))
    with Consumer(data_dir=daemon.data_dir, auto_offset_reset="earliest",
                  check_crcs=False) as c:  # fmt: skip
        c.assign([tp])
        wrong = consume_all_from(c, 100)
        assert wrong[50].value != value(50)  # what check_crcs=False (and the engine before) gave


def consume_all_from(c: Consumer, count: int) -> list:
    got: list = []
    wait_for(lambda: (got.extend(c.poll(timeout=0.2)), len(got) >= count)[1])
    return got


def test_a_damaged_base_offset_is_detected_not_skipped(daemon: Daemon) -> None:
    create(daemon, "base")
    produce(daemon, "base", 0, RECORDS)
    leader = next(iter(replica_dirs(daemon, "base").values()))
    daemon.stop()
    segment = leader / SEGMENT
    for target, new_base in ((30, 5030), (60, 20)):  # one moved forward, one back
        position, _ = batch_position(segment, target)
        damage(segment, position, struct.pack(">q", new_base))
    daemon.start()
    tp = TopicPartition("base", 0)
    with Consumer(data_dir=daemon.data_dir, auto_offset_reset="earliest") as c:
        c.assign([tp])
        got, exc = read_until_error(c, tp)
        assert [r.offset for r in got] == list(range(30))
        assert exc.offset == 30 and "offsets out of sequence" in str(exc)
        c.seek(tp, 31)
        got, exc = read_until_error(c, tp)
        assert [(r.offset, r.value) for r in got] == [(i, value(i)) for i in range(31, 60)]
        assert exc.offset == 60
    daemon.stop()
    out = daemon.cli("verify", "--data-dir", str(daemon.data_dir), check=False)
    assert out.returncode == 1
    lines = [ln for ln in out.stdout.decode().splitlines() if "topic=base" in ln]
    assert len(lines) == 2, out.stdout.decode()
    assert "file=00000000000000000000.log" in lines[0] and "offset=30" in lines[0]
    assert "offsets out of sequence (stored offsets 5030..5030)" in lines[0]
    assert "offset=60" in lines[1] and "stored offsets 20..20" in lines[1]
    # replication 1: nothing to repair from; the log is left as it is, and said so
    out = daemon.cli("verify", "--data-dir", str(daemon.data_dir), "--repair", check=False)
    assert out.returncode == 1
    assert "cannot repair topic=base partition=0" in out.stdout.decode()
    assert "consumers raise CorruptRecordError at offset 30" in out.stdout.decode()


# ---- three replicas: verify and repair -----------------------------------------


def test_a_corrupt_leader_of_three_replicas_is_found_and_repaired_from_a_follower(
    tmp_path: Path,
) -> None:
    with running_daemon(tmp_path / "engine", brokers=3) as d:
        with Admin(d.data_dir) as admin:  # small segments: the bad batch in the middle one
            admin.create_topic("trio", partitions=1, replication=3,
                               config={"segment.bytes": 3000, "index.interval.bytes": 256})
        produce(d, "trio", 0, RECORDS, acks="all")
        d.stop()
        d.start()  # every record now comes from the segments
        dirs = replica_dirs(d, "trio")
        leader = next(iter(dirs))  # the leader after the restart, whose copy consumers read
        files = {b: {f.name: f.read_bytes() for f in p.glob("0*")} for b, p in dirs.items()}
        assert all(f == files[leader] for f in files.values())  # byte for byte, indexes too
        bases = sorted(int(name[:20]) for name in files[leader] if name.endswith(".log"))
        assert len(bases) >= 3 and bases[0] < 50 < bases[-1]
        middle = f"{max(b for b in bases if b <= 50):020d}.log"
        segments = {b: (p / middle) for b, p in dirs.items()}
        flip_value_byte(segments[leader], 50)  # at rest: a byte of the file, not of a write
        with Consumer(data_dir=d.data_dir, auto_offset_reset="earliest") as c:
            tp = TopicPartition("trio", 0)
            c.assign([tp])
            got, exc = read_until_error(c, tp)
            assert [r.offset for r in got] == list(range(50))
            assert (exc.topic, exc.offset) == ("trio", 50)
        out = d.cli("verify", "--data-dir", str(d.data_dir), "--repair", check=False)
        assert out.returncode == 1  # refused while the daemon runs
        assert "repair needs the daemon stopped" in out.stderr.decode()
        d.stop()
        follower = list(dirs)[1]  # and a follower's index: an entry added out of order
        index = dirs[follower] / f"{0:020d}.index"
        index.write_bytes(index.read_bytes() + bytes(8))
        out = d.cli("verify", "--data-dir", str(d.data_dir), check=False)
        text = out.stdout.decode()
        assert out.returncode == 1, text
        bad = sorted(ln for ln in text.splitlines() if ln.startswith("topic="))
        assert bad == sorted([
            f"topic=trio partition=0 broker={leader} file={middle} "
            f"position={batch_position(segments[leader], 50)[0]} offset=50: "
            "CRC32C mismatch (stored offsets 50..50)",
            f"topic=trio partition=0 broker={follower} file={0:020d}.index: "
            "entries out of order",
        ])  # fmt: skip
        assert "verified 3 replicas of 1 partitions: 2 problems in 2 replicas" in text
        out = d.cli("verify", "--data-dir", str(d.data_dir), "--repair", check=False)
        text = out.stdout.decode()
        assert out.returncode == 0, text
        assert f"repaired topic=trio partition=0 broker={leader}: cut at offset 50" in text
        assert (
            f"repaired topic=trio partition=0 broker={follower}: copied the indexes of "
            f"segments {0:020d} (from broker "
        ) in text
        assert "after the repair: verified 3 replicas of 1 partitions: no problems" in text
        for b, p in dirs.items():  # every replica as before, segments and indexes
            assert {f.name: f.read_bytes() for f in p.glob("0*")} == files[leader], b
        d.start()
        got = consume_all(d, "trio", RECORDS)
        assert [(r.offset, r.value) for r in got] == [(i, value(i)) for i in range(RECORDS)]


# ---- legitimate gaps never raise ---------------------------------------------------


def test_offsets_a_reaped_frame_skipped_never_raise_and_replicas_stay_identical(
    tmp_path: Path,
) -> None:
    """A producer SIGKILLed between claim and publish (another process) leaves a gap of
    one offset: consumers read past it, from the ring and after a restart from the
    segments, where an empty batch covers it, the same bytes in both replicas."""
    with running_daemon(tmp_path / "engine", brokers=2) as d:
        create(d, "gap", replication=2)
        produce(d, "gap", 0, 10, acks="all")
        view = ClusterView(d.data_dir)
        try:
            ring_name = view.topic("gap").rings[0].name
        finally:
            view.close()
        child = SPAWN.Process(target=ring_procs.claim_and_die, args=(ring_name, True))
        child.start()
        child.join(30)
        assert child.exitcode == -9
        with Producer(d.data_dir, acks="all") as p:
            offsets = [p.send("gap", value=value(i), partition=0).get(timeout=10).offset
                       for i in range(10, 20)]  # fmt: skip
        assert offsets == list(range(11, 21))  # offset 10 went to the dead claim
        got = consume_all(d, "gap", 20)
        assert [r.offset for r in got] == [*range(10), *range(11, 21)]
        ring = Ring.open(ring_name)
        try:
            wait_for(lambda: ring.status().reaped_frames == 1, what="the reaped frame")
        finally:
            ring.close()
        dirs = replica_dirs(d, "gap")
        d.stop()
        segments = [p / SEGMENT for p in dirs.values()]
        data = segments[0].read_bytes()
        assert segments[1].read_bytes() == data
        assert check_chunk(data, 0, dense=True) is None
        position, length = batch_position(segments[0], 10)
        later = data[position + length :]
        assert data[position : position + length] == encode_empty_batch(
            10, 1, leader_epoch=struct.unpack_from(">i", later, 12)[0],
            timestamp=struct.unpack_from(">q", later, 27)[0],
        )  # fmt: skip
        out = d.cli("verify", "--data-dir", str(d.data_dir))
        assert "no problems" in out.stdout.decode()
        d.start()
        got = consume_all(d, "gap", 20)
        assert [(r.offset, r.value) for r in got] == [
            *((i, value(i)) for i in range(10)),
            *((i + 1, value(i)) for i in range(10, 20)),
        ]


# ---- indexes (item 9) ----------------------------------------------------------------


@pytest.mark.parametrize("damage", ["delete", "truncate", "garble"])
def test_a_deleted_or_damaged_index_is_rebuilt_at_start_and_logged(
    daemon: Daemon, damage: str
) -> None:
    with Admin(daemon.data_dir) as admin:
        admin.create_topic("idx", partitions=1, config={"index.interval.bytes": 256})
    produce(daemon, "idx", 0, 300)
    with Admin(daemon.data_dir) as admin:
        leader = admin.describe_topic("idx").partitions[0].leader
    assert leader is not None
    index = DataDir.resolve(daemon.data_dir).partition_dir(leader, "idx", 0) / f"{0:020d}.index"
    daemon.stop()
    intact = index.read_bytes()
    assert len(intact) // 8 > 10
    if damage == "delete":
        index.unlink()
    elif damage == "truncate":
        index.write_bytes(intact[:40])
    else:  # an entry in the middle overwritten
        index.write_bytes(intact[:48] + b"\xff" * 8 + intact[56:])
    broker_log = daemon.data_dir / "logs" / f"broker-{leader}.log"
    before = broker_log.read_text().count("rebuilt a missing or corrupt index")
    daemon.start()
    tp = TopicPartition("idx", 0)
    with Consumer(data_dir=daemon.data_dir) as c:
        c.assign([tp])
        c.seek(tp, 150)
        got: list = []
        wait_for(lambda: (got.extend(c.poll(timeout=0.2)), len(got) >= 150)[1])
        assert [(r.offset, r.value) for r in got] == [(i, value(i)) for i in range(150, 300)]
    assert index.read_bytes() == intact
    lines = [
        ln for ln in broker_log.read_text().splitlines()
        if "rebuilt a missing or corrupt index" in ln
    ][before:]  # fmt: skip
    assert len(lines) == 1 and f"path={index} " in lines[0], lines
    out = daemon.cli("verify", "--data-dir", str(daemon.data_dir), "--topic", "idx")
    assert "verified 1 replicas of 1 partitions: no problems" in out.stdout.decode()


def test_verify_finds_an_index_entry_that_names_no_batch_and_repair_rebuilds_it(
    daemon: Daemon,
) -> None:
    """An entry still in order that points into a batch is not seen at start (it reads
    two entries' batches, not every one); reads walk around it, and verify finds it."""
    with Admin(daemon.data_dir) as admin:
        admin.create_topic("deep", partitions=1, config={"index.interval.bytes": 256})
    produce(daemon, "deep", 0, 300)
    directory = next(iter(replica_dirs(daemon, "deep").values()))
    index = directory / f"{0:020d}.index"
    daemon.stop()
    intact = index.read_bytes()
    damaged = bytearray(intact)
    damaged[7 * 8 + 7] += 1  # entry 7's position, one byte on
    index.write_bytes(bytes(damaged))
    out = daemon.cli("verify", "--data-dir", str(daemon.data_dir), check=False)
    text = out.stdout.decode()
    assert out.returncode == 1, text
    lines = [ln for ln in text.splitlines() if ln.startswith("topic=deep")]
    assert len(lines) == 1 and f"file={0:020d}.index position=56" in lines[0], text
    assert "which starts no batch" in lines[0]
    out = daemon.cli("verify", "--data-dir", str(daemon.data_dir), "--repair")
    text = out.stdout.decode()
    assert "repaired topic=deep partition=0 broker=" in text
    assert "removed the damaged indexes of segments 00000000000000000000" in text
    assert "after the repair: verified 1 replicas of 1 partitions: no problems (2 notes)" in text
    assert not index.exists()  # no copy to take (replication 1): the broker's to rebuild
    daemon.start()
    wait_for(lambda: index.exists() and index.read_bytes() == intact, what="the rebuilt index")


# ---- the ring path ---------------------------------------------------------------------


def _damage_frame(ring: Ring, k: int) -> None:
    """Flip the last byte of the value in the ring's k-th frame (one-record batches,
    frames from position 0: a 24-byte header, the batch, 8-byte aligned)."""
    from engine._native import ffi

    region = ffi.buffer(ring._ptr(), 4096 + ring.status().capacity)
    position = 0
    for _ in range(k):
        position += (int.from_bytes(region[4096 + position + 8 : 4096 + position + 12],
                                    "little") + 7) & ~7  # fmt: skip
    frame_length = int.from_bytes(region[4096 + position + 8 : 4096 + position + 12], "little")
    last = 4096 + position + frame_length - 2
    region[last] = bytes([region[last][0] ^ 1])


def test_a_frame_damaged_in_the_ring_raises_until_drained_then_the_log_copy_is_read(
    daemon: Daemon, caplog: pytest.LogCaptureFixture
) -> None:
    """Consumers whose cursor was in the ring before the records came copy them out of it
    and check them as they check segments. While the broker is stopped (SIGSTOP) the ring
    holds the only copy: poll() and poll_values() raise. A copy damaged after the drain
    wrote it (checked) to the log is read from the log instead."""
    import os
    import signal

    create(daemon, "shm")
    tp = TopicPartition("shm", 0)
    with Admin(daemon.data_dir) as admin:
        leader = admin.describe_topic("shm").partitions[0].leader
    pid = daemon.runtime()["processes"][f"broker-{leader}"]
    readers = [Consumer(data_dir=daemon.data_dir) for _ in range(4)]
    view = ClusterView(daemon.data_dir)
    try:
        for c in readers:
            c.assign([tp])
            assert c.poll(timeout=0) == []  # its place in the ring, at the end
        ring = view.topic("shm").rings[0]
        os.kill(pid, signal.SIGSTOP)  # no drain: the ring holds the only copy
        try:
            produce(daemon, "shm", 0, 10)
            _damage_frame(ring, 5)
            assert ring.status().drain_offset == 0
            got, exc = read_until_error(readers[0], tp)
            assert [(r.offset, r.value) for r in got] == [(i, value(i)) for i in range(5)]
            assert (exc.offset, exc.partition) == (5, 0) and "CRC32C mismatch" in str(exc)
            with pytest.raises(CorruptRecordError, match="offset=5"):
                readers[0].poll(timeout=0.2)
            values: list = []
            with pytest.raises(CorruptRecordError, match="topic=shm partition=0 offset=5"):
                for _ in range(100):
                    values += readers[1].poll_values(len(value(0)), timeout=0.2)
            assert b"".join(a.tobytes() for a in values) == b"".join(value(i) for i in range(5))
            _damage_frame(ring, 5)  # flipped back, so that the drain can go on
        finally:
            os.kill(pid, signal.SIGCONT)
        wait_for(lambda: ring.status().drain_offset == 10, what="the drain")
        _damage_frame(ring, 7)  # now in memory only: the log's copy was checked
        with caplog.at_level(logging.WARNING, logger="engine.consumer"):
            rest = consume_all_from(readers[0], 5)
            assert [(r.offset, r.value) for r in rest] == [(i, value(i)) for i in range(5, 10)]
            every = consume_all_from(readers[2], 10)
            assert [(r.offset, r.value) for r in every] == [(i, value(i)) for i in range(10)]
            values = []
            wait_for(lambda: (values.extend(readers[3].poll_values(10, timeout=0.2)),
                              sum(map(len, values)) >= 10)[1])  # fmt: skip
            assert b"".join(a.tobytes() for a in values) == b"".join(map(value, range(10)))
        assert [r.getMessage() for r in caplog.records] == 2 * [
            "a batch's copy in the ring fails its checks, reading the log's: "
            "topic=shm partition=0 offset=7 problem=CRC32C mismatch"
        ]
    finally:
        for c in readers:
            c.close()
        view.close()
