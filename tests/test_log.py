"""engine.log.Log: appends, rolls, reads, retention, flush policy, truncation and recovery."""

from __future__ import annotations

import json
import logging
import os
import shutil
import stat
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from engine_harness import wait_for
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.errors import (
    ClosedError,
    ConfigError,
    CorruptRecordError,
    OffsetOutOfRangeError,
    RecordTooLargeError,
)
from engine.log import Log, LogConfig
from engine.record_batch import check_chunk, encode_batch, encode_empty_batch, scan_batches

SMALL = {"segment.bytes": 2_000, "index.interval.bytes": 256}


def batch(offset: int, value_length: int = 100, ts: int | None = None, records: int = 1) -> bytes:
    ts = 1_000 + offset if ts is None else ts
    return encode_batch(
        offset,
        [(None, bytes([(offset + i) % 256]) * value_length, [], ts + i) for i in range(records)],
    )


def batches(first: int, count: int, **kwargs: int) -> bytes:
    return b"".join(batch(first + i, **kwargs) for i in range(count))


def read_all(log: Log) -> bytes:
    out, offset = [], log.log_start_offset
    while offset < log.log_end_offset:
        data = log.read(offset, 700)
        infos, scanned, _ = scan_batches(data)
        assert scanned == len(data) and len(infos)
        out.append(data)
        offset = int(infos["last_offset"][-1]) + 1
    return b"".join(out)


def mark_unclean(directory: Path, recovery_point: int = 0) -> None:
    """Leave the on-disk state a kill -9 leaves: no clean-shutdown mark."""
    (directory / "recovery-point").write_text(
        json.dumps({"recovery_point": recovery_point, "clean": False})
    )


@pytest.fixture
def log(tmp_path: Path) -> Iterator[Log]:
    log = Log.open(tmp_path / "p0", SMALL)
    yield log
    log.close()


# ---- config ------------------------------------------------------------------


def test_config_defaults_are_kafkas_and_mapping_keys_are_kafka_names() -> None:
    config = LogConfig.from_mapping({})
    assert config == LogConfig()
    assert config.segment_bytes == 1 << 30 and config.index_interval_bytes == 4096
    assert config.retention_bytes == -1 and config.retention_ms == 7 * 24 * 3600 * 1000
    assert config.flush_messages == config.flush_ms == 2**63 - 1
    assert LogConfig.from_mapping(config.to_mapping()) == config
    other_layers = {"segment.bytes": 4096, "cleanup.policy": "delete", "ring.bytes": 1 << 20}
    assert LogConfig.from_mapping(other_layers).segment_bytes == 4096


@pytest.mark.parametrize(
    ("key", "value"),
    [("segment.bytes", 0), ("segment.bytes", "1"), ("retention.ms", -2), ("flush.ms", True)],
)
def test_bad_config_raises_config_error_naming_key_and_value(key: str, value: object) -> None:
    with pytest.raises(ConfigError, match=rf"key='{key}' value={value!r}"):
        LogConfig.from_mapping({key: value})


# ---- append and read -----------------------------------------------------------


def test_append_rolls_by_segment_bytes_and_reads_back_everything(log: Log) -> None:
    data = batches(0, 100)
    assert log.append(data) == 100
    assert log.log_start_offset == 0 and log.log_end_offset == 100
    bases = log.segment_base_offsets
    assert len(bases) > 5 and bases == sorted(bases)
    sizes = [os.path.getsize(log.directory + f"/{b:020d}.log") for b in bases]
    assert max(sizes) <= 2_000
    assert read_all(log) == data


def test_read_returns_at_least_one_whole_batch_even_if_larger_than_max_bytes(log: Log) -> None:
    big = batch(0, value_length=5_000)
    log.append(big + batch(1))
    assert log.read(0, 10) == big
    assert log.read(1, 10**6) == batch(1)
    assert log.read(2, 100) == b""
    with pytest.raises(OffsetOutOfRangeError, match="log_end_offset=2"):
        log.read(3, 100)


def test_read_of_an_offset_inside_a_batch_returns_that_batch(log: Log) -> None:
    log.append(batch(0, records=5) + batch(5, records=5))
    assert log.read(3, 1) == batch(0, records=5)
    assert log.read(7, 1) == batch(5, records=5)


@pytest.mark.parametrize(
    "bad",
    [
        lambda: batch(5) + batch(5),  # not increasing
        lambda: batch(6) + batch(5),
        lambda: batch(3),  # below log_end_offset (after the setup append)
        lambda: batch(5) + batch(6)[:-1],  # torn
        lambda: batch(5) + bytes([*batch(6)[:-1], batch(6)[-1] ^ 1]),  # bad CRC
    ],
)
def test_append_rejects_bad_batches_and_writes_nothing(log: Log, bad: object) -> None:
    log.append(batches(0, 5))
    before = read_all(log)
    with pytest.raises(CorruptRecordError):
        log.append(bad())  # type: ignore[operator]
    assert log.log_end_offset == 5 and read_all(log) == before
    assert log.append(batch(5)) == 6


def test_append_rejects_a_batch_over_max_message_bytes(tmp_path: Path) -> None:
    with Log.open(tmp_path / "p", {"max.message.bytes": 1_000}) as log:
        with pytest.raises(RecordTooLargeError, match=r"max\.message\.bytes=1000"):
            log.append(batch(0) + batch(1, value_length=2_000))
        assert log.log_end_offset == 0


def test_offsets_a_batch_skips_are_covered_by_an_empty_batch(log: Log) -> None:
    log.append(batch(0) + batch(10))
    assert log.log_end_offset == 11
    # offsets 1..9 hold no record: an empty batch with batch(10)'s epoch and timestamp
    empty = encode_empty_batch(1, 9, leader_epoch=0, timestamp=1_010)
    assert log.read(5, 1) == empty
    infos, _, _ = scan_batches(empty)  # CRC checked
    assert infos[["base_offset", "last_offset", "records_count"]].tolist() == [(1, 9, 0)]
    assert log.read(10, 1) == batch(10)
    log.append(batch(100_000))
    assert log.read(11, 10**6) == (
        encode_empty_batch(11, 100_000 - 11, leader_epoch=0, timestamp=101_000) + batch(100_000)
    )
    assert check_chunk(read_all(log), 0, dense=True) is None
    assert log.offset_for_timestamp(1_005) == 10  # the empty batch holds no record


def test_a_format_1_log_keeps_its_gaps(tmp_path: Path) -> None:
    directory = tmp_path / "p"
    Log.open(directory).close()
    meta = json.loads((directory / "log.meta").read_text())
    (directory / "log.meta").write_text(json.dumps({**meta, "format_version": 1}))
    with Log.open(directory) as log:
        assert not log.dense
        log.append(batch(0) + batch(10))
        assert log.read(5, 1) == batch(10)
        with pytest.raises(CorruptRecordError):
            log.append(batch(10))


def test_segment_ms_rolls_on_batch_timestamps(tmp_path: Path) -> None:
    with Log.open(tmp_path / "p", {"segment.ms": 1_000}) as log:
        log.append(batch(0, ts=10_000) + batch(1, ts=10_500) + batch(2, ts=11_001))
        log.append(batch(3, ts=11_500))
        assert log.segment_base_offsets == [0, 2]


def test_offset_for_timestamp_finds_the_first_record_at_or_after(log: Log) -> None:
    log.append(b"".join(batch(i * 3, ts=10_000 + i * 30, records=3) for i in range(100)))
    # record j of batch i has offset 3i + j and timestamp 10_000 + 30i + j
    assert log.offset_for_timestamp(0) == 0
    assert log.offset_for_timestamp(10_000) == 0
    assert log.offset_for_timestamp(10_001) == 1
    assert log.offset_for_timestamp(12_345) == 237
    assert log.offset_for_timestamp(12_972) == 299
    assert log.offset_for_timestamp(12_973) is None


# ---- retention ---------------------------------------------------------------


def test_retention_bytes_deletes_oldest_segments_never_the_active(tmp_path: Path) -> None:
    with Log.open(tmp_path / "p", {**SMALL, "retention.bytes": 5_000}) as log:
        log.append(batches(0, 100))
        before = log.segment_base_offsets
        deleted = log.apply_retention()
        assert deleted > 0 and log.segment_base_offsets == before[deleted:]
        assert log.size_bytes <= 5_000 and log.log_start_offset == before[deleted]
        with pytest.raises(OffsetOutOfRangeError, match=f"log_start_offset={before[deleted]}"):
            log.read(0, 100)
        assert not os.path.exists(log.directory + f"/{0:020d}.log")
        assert not os.path.exists(log.directory + f"/{0:020d}.index")
    with Log.open(tmp_path / "q", {**SMALL, "retention.bytes": 0}) as log:
        log.append(batches(0, 100))
        log.apply_retention()
        assert len(log.segment_base_offsets) == 1 and log.log_end_offset == 100


def test_retention_retires_segments_at_once_and_removes_their_files_in_the_background(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Removing a file can wait for its writeback: retention renames the segment out of
    the log (``.deleted``) and the flusher thread removes it; an open removes leftovers."""
    gate, real_unlink = threading.Event(), os.unlink

    def unlink(path: str) -> None:
        if threading.current_thread().name == "engine-segment-flusher":
            assert gate.wait(60), "the test never opened the gate"
        real_unlink(path)

    monkeypatch.setattr(os, "unlink", unlink)
    directory = tmp_path / "p"
    with Log.open(directory, {**SMALL, "retention.bytes": 5_000}) as log:
        log.append(batches(0, 100))
        before = log.segment_base_offsets
        deleted = log.apply_retention()  # returns while the removals are held
        assert deleted > 0 and log.segment_base_offsets == before[deleted:]
        retired = sorted(p.name for p in directory.glob("*.deleted"))
        assert f"{before[0]:020d}.log.deleted" in retired
        assert len(retired) == 3 * deleted
        gate.set()
        wait_for(lambda: not list(directory.glob("*.deleted")), what="the files removed")
    # A crash between the rename and the removal leaves them: the next open removes them.
    leftover = directory / f"{before[0]:020d}.log.deleted"
    leftover.write_bytes(b"x")
    with Log.open(directory, SMALL) as log:
        assert not leftover.exists()
        assert log.segment_base_offsets == before[deleted:]


def test_retention_ms_uses_each_segments_newest_timestamp(tmp_path: Path) -> None:
    with Log.open(tmp_path / "p", {**SMALL, "retention.ms": 1_000}) as log:
        log.append(batches(0, 100))  # batch o has timestamp 1_000 + o
        bases = log.segment_base_offsets
        second = bases[1]  # the first segment's newest timestamp: 1_000 + second - 1
        assert log.apply_retention(now_ms=1_000 + second - 1 + 1_000) == 0
        assert log.apply_retention(now_ms=1_000 + second - 1 + 1_001) == 1
        assert log.log_start_offset == second
        assert log.apply_retention(now_ms=10**12) == len(bases) - 2
        assert log.segment_base_offsets == bases[-1:]
    with Log.open(tmp_path / "p", {**SMALL, "retention.ms": -1}) as log:
        assert log.apply_retention(now_ms=10**15) == 0


# ---- flush policy ------------------------------------------------------------


def _recovery_point(log: Log) -> dict[str, object]:
    data: dict[str, object] = json.loads(Path(log.directory, "recovery-point").read_text())
    return data


def test_flush_messages_fsyncs_and_moves_the_recovery_point(tmp_path: Path) -> None:
    with Log.open(tmp_path / "p", {"flush.messages": 10}) as log:
        log.append(batches(0, 9))
        assert _recovery_point(log)["recovery_point"] == 0
        log.append(batch(9))
        assert _recovery_point(log) == {"recovery_point": 10, "clean": False}


def test_flush_ms_is_checked_by_maybe_flush(tmp_path: Path) -> None:
    with Log.open(tmp_path / "p", {"flush.ms": 500}) as log:
        log.flush(now_ms=1_000)
        assert not log.maybe_flush(now_ms=5_000)  # nothing to flush
        log.append(batches(0, 3))
        assert not log.maybe_flush(now_ms=1_499)
        assert log.maybe_flush(now_ms=1_500)
        assert _recovery_point(log)["recovery_point"] == 3


def test_default_policy_never_fsyncs_on_append_but_close_is_clean(tmp_path: Path) -> None:
    log = Log.open(tmp_path / "p")
    log.append(batches(0, 50))
    assert _recovery_point(log)["recovery_point"] == 0
    assert not log.maybe_flush()
    log.close()
    assert _recovery_point(log) == {"recovery_point": 50, "clean": True}
    with pytest.raises(ClosedError):
        log.append(batch(50))


def test_close_without_flush_never_fsyncs_and_is_not_clean(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A log about to be deleted closes without an fsync; if it survives, the next
    open recovers it (it is not marked clean)."""
    directory = tmp_path / "p"
    log = Log.open(directory, SMALL)
    log.append(batches(0, 40))
    data = read_all(log)
    log.flush()  # and so the rolled segments' fsyncs are done
    fsyncs: list[int] = []
    monkeypatch.setattr(os, "fsync", fsyncs.append)
    log.close(flush=False)
    assert fsyncs == []
    assert _recovery_point(log)["clean"] is False
    monkeypatch.undo()
    with Log.open(directory, SMALL) as log:
        assert log.log_end_offset == 40 and read_all(log) == data


def test_a_roll_never_waits_for_the_fsync_of_the_rolled_segment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rolled segments are fsynced by the flusher thread: appends go on while it works,
    the recovery point moves only once it is done, and flush() waits for it."""
    gate, real_fsync = threading.Event(), os.fsync
    flushed: list[int] = []  # fds the flusher thread has fsynced

    def fsync(fd: int) -> None:
        if threading.current_thread().name == "engine-segment-flusher":
            assert gate.wait(60), "the test never opened the gate"
            real_fsync(fd)
            flushed.append(fd)
        else:
            real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    directory = tmp_path / "p"
    log = Log.open(directory, SMALL)
    try:
        log.append(batches(0, 40))  # 2,000-byte segments: several rolls
        rolls = len(list(directory.glob("*.log"))) - 1
        assert rolls >= 3
        assert _recovery_point(log)["recovery_point"] == 0  # nothing known durable yet
        done: list[int] = []
        flusher = threading.Thread(target=lambda: (log.flush(), done.append(len(flushed))))
        flusher.start()
        gate.set()
        flusher.join(60)
        # Per rolled segment: the log, both indexes, the directory, then the recovery
        # point (its temporary file and the directory again).
        assert done == [6 * rolls]
        assert _recovery_point(log) == {"recovery_point": 40, "clean": False}
        # Later rolls: once their fsyncs are done, the flusher moves it on.
        log.append(batches(40, 40))
        bases = sorted(int(p.stem) for p in directory.glob("*.log"))
        wait_for(lambda: len(flushed) == 6 * (len(bases) - 1), what="the rolled segments fsynced")
        assert _recovery_point(log)["recovery_point"] == bases[-1]
    finally:
        gate.set()
        log.close()


# ---- open, close, truncate ---------------------------------------------------


def test_reopen_continues_at_log_end_offset_with_modes_0700_and_0600(tmp_path: Path) -> None:
    directory = tmp_path / "p"
    with Log.open(directory, SMALL) as log:
        log.append(batches(0, 40))
        data = read_all(log)
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    for name in os.listdir(directory):
        assert stat.S_IMODE((directory / name).stat().st_mode) == 0o600, name
    assert json.loads((directory / "log.meta").read_text())["format_version"] == 3
    with Log.open(directory, SMALL) as log:
        assert log.log_end_offset == 40 and read_all(log) == data
        log.append(batch(40))
        assert read_all(log) == data + batch(40)


def test_open_refuses_an_unknown_format_version(tmp_path: Path) -> None:
    directory = tmp_path / "p"
    Log.open(directory).close()
    (directory / "log.meta").write_text(json.dumps({"format_version": 99}))
    with pytest.raises(CorruptRecordError, match="format_version=99"):
        Log.open(directory)


def test_new_log_may_start_at_an_initial_offset(tmp_path: Path) -> None:
    with Log.open(tmp_path / "p", initial_offset=500) as log:
        assert log.log_start_offset == log.log_end_offset == 500
        with pytest.raises(CorruptRecordError):
            log.append(batch(0))
        log.append(batch(500))
        assert os.path.exists(log.directory + f"/{500:020d}.log")


def test_truncate_to_drops_later_segments_and_continues(log: Log) -> None:
    data = batches(0, 100)
    log.append(data)
    log.truncate_to(37)
    assert log.log_end_offset == 37
    assert all(base < 37 for base in log.segment_base_offsets)
    infos, _, _ = scan_batches(data)
    assert read_all(log) == data[: int(infos["position"][37])]
    log.append(batch(37))
    log.truncate_to(0)
    assert log.log_start_offset == log.log_end_offset == 0
    log.append(batch(0))
    assert read_all(log) == batch(0)


def test_unclean_restart_recovers_the_torn_tail_with_one_log_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    directory = tmp_path / "p"
    with Log.open(directory, SMALL) as log:
        log.append(batches(0, 30))
        last = log.segment_base_offsets[-1]
    mark_unclean(directory)
    path = directory / f"{last:020d}.log"
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size - 10)
    with caplog.at_level(logging.INFO, logger="engine.log"):
        log = Log.open(directory, SMALL)
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    assert "bytes_cut=" in caplog.records[0].getMessage()
    assert log.log_end_offset == 29
    log.append(batch(29))
    assert read_all(log) == batches(0, 30)
    log.close()


def test_a_deleted_index_is_rebuilt_at_open_with_one_warning_naming_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    directory = tmp_path / "p"
    with Log.open(directory, SMALL) as log:
        log.append(batches(0, 60))
        data = read_all(log)
        second = log.segment_base_offsets[1]
    index = directory / f"{second:020d}.index"
    intact = index.read_bytes()
    index.unlink()
    with caplog.at_level(logging.INFO, logger="engine.log"):
        log = Log.open(directory, SMALL)
    try:
        assert [r.getMessage() for r in caplog.records] == [
            f"rebuilt a missing or corrupt index from its log: path={index} reason=missing"
        ]
        assert index.read_bytes() == intact
        assert read_all(log) == data
    finally:
        log.close()


# ---- the recovery property ---------------------------------------------------


class _Count(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


# Bytes of a batch header that Kafka's CRC does not cover and whose damage recovery
# cannot notice: partition_leader_epoch (12..15). A damaged base_offset (0..7), not
# covered either, puts the batch's offsets out of sequence in a dense log: cut there.
_UNCOVERED = {*range(12, 16)}


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    sizes=st.lists(st.tuples(st.integers(0, 400), st.integers(1, 3)), min_size=1, max_size=40),
    damage=st.sampled_from(["truncate", "flip", "zero-tail"]),
    where=st.floats(0.0, 1.0),
    bit=st.integers(0, 7),
)
def test_recovery_keeps_exactly_the_intact_prefix(
    sizes: list[tuple[int, int]], damage: str, where: float, bit: int
) -> None:
    directory = Path(tempfile.mkdtemp(prefix="engine-recovery-"))
    try:
        _check_recovery(directory / "p", sizes, damage, where, bit)
    finally:
        shutil.rmtree(directory)


def _check_recovery(
    directory: Path, sizes: list[tuple[int, int]], damage: str, where: float, bit: int
) -> None:
    written, offset = [], 0
    for value_length, records in sizes:
        written.append(batch(offset, value_length=value_length, records=records))
        offset += records
    with Log.open(directory, SMALL) as log:
        for b in written:
            log.append(b)
        last_base = log.segment_base_offsets[-1]
    mark_unclean(directory)
    path = directory / f"{last_base:020d}.log"
    segment = path.read_bytes()
    # batches of the last segment and their positions in it
    first = next(
        i for i, b in enumerate(written) if scan_batches(b)[0]["base_offset"][0] == last_base
    )
    starts = np.cumsum([0] + [len(b) for b in written[first:]])
    assert starts[-1] == len(segment)
    position = min(int(where * len(segment)), max(len(segment) - 1, 0))
    if damage == "truncate":
        segment = segment[:position]
        # intact: batches ending at or before the cut
        intact = first + int(np.searchsorted(starts[1:], position, "right"))
        torn = position not in starts
    else:
        if not segment:
            return
        k = int(np.searchsorted(starts, position, "right")) - 1
        if position - starts[k] in _UNCOVERED:
            position = int(starts[k]) + 16  # move onto the magic byte, which is checked
        damaged = bytearray(segment)
        if damage == "flip":
            damaged[position] ^= 1 << bit
        else:
            damaged[position:] = bytes(len(damaged) - position)
        changed = np.flatnonzero(
            np.frombuffer(segment, np.uint8) != np.frombuffer(damaged, np.uint8)
        )
        torn = len(changed) > 0  # zeroing zeros changes nothing
        if torn:  # the first batch with a changed byte, and all after it, go
            k = int(np.searchsorted(starts, int(changed[0]), "right")) - 1
        intact = first + k if torn else len(written)
        segment = bytes(damaged)
    path.write_bytes(segment)

    handler = _Count()
    logging.getLogger("engine.log").addHandler(handler)
    try:
        log = Log.open(directory, SMALL)
    finally:
        logging.getLogger("engine.log").removeHandler(handler)
    try:
        expected = b"".join(written[:intact])
        end = sum(r for _, r in sizes[:intact])
        assert log.log_end_offset == end
        assert read_all(log) == expected
        assert len(handler.records) == (1 if torn else 0)
        log.append(batch(end))
        assert log.read(end, 1) == batch(end)
    finally:
        log.close()


def test_a_drain_writes_the_batches_from_the_ring_where_they_lie(tmp_path: Path) -> None:
    """The broker's drain: Ring.peek describes the ring's published batches in place
    (checked), Log.append_checked writes them from there into the segment, back to back
    (frame headers between them in the ring, none in the file): the log holds exactly
    the bytes a copying read of the ring gives, across more batches than one pwritev
    takes, and its index finds every offset."""
    import uuid

    from engine.record_batch import BATCH_INFO_DTYPE
    from engine.ring import NO_LIMIT, Cursor, Ring, producer_fields, unlink

    name = f"/engine-test-drain-{uuid.uuid4().hex[:8]}"
    ring = Ring.create(name, 1 << 20)
    try:
        for i in range(600):
            ring.append(producer_fields(), b"v%d" % i, key=b"k" * (i % 7))
        copied = bytearray(1 << 20)
        code, n = ring.read(Cursor(), copied, NO_LIMIT)
        infos = np.empty(1000, dtype=BATCH_INFO_DTYPE)
        cursor = ring.drain_cursor()
        count = ring.peek(cursor, NO_LIMIT, 1 << 20, infos)
        assert (code, count, cursor.offset) == (0, 600, 600)
        with Log.open(tmp_path / "p", {"index.interval.bytes": 256}) as log:
            assert log.append_checked(ring.data, infos[:count]) == 600
            assert log.read(0, 1 << 20) == bytes(copied[:n])
            for offset in (0, 1, 299, 599):
                assert int(scan_batches(log.read(offset, 1), True)[0]["base_offset"][0]) == offset
        assert ring.peek(cursor, NO_LIMIT, 1 << 20, infos) == 0  # nothing more published
    finally:
        ring.close()
        unlink(name)
