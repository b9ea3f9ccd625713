"""engine.segment, offset_index, time_index: one segment's files, indexes and recovery."""

from __future__ import annotations

import itertools
import os
import stat
from pathlib import Path

import numpy as np
import pytest

from engine.offset_index import OFFSET_INDEX_DTYPE, OffsetIndex
from engine.record_batch import encode_batch, scan_batches
from engine.segment import LogSegment, segment_path
from engine.time_index import TimeIndex

INTERVAL = 512


def _batches(first: int, count: int, value_length: int = 100, ts0: int = 1_000) -> bytes:
    return b"".join(
        encode_batch(first + i, [(None, bytes([i % 256]) * value_length, [], ts0 + first + i)])
        for i in range(count)
    )


def _append(segment: LogSegment, data: bytes) -> None:
    infos, scanned, _ = scan_batches(data)
    assert scanned == len(data)
    segment.append(data, infos, 0)


def _new(directory: Path, base: int = 0) -> LogSegment:
    return LogSegment.create(
        str(directory), base, index_interval_bytes=INTERVAL, index_bytes=1 << 20
    )


def test_files_are_named_by_20_digit_base_offset_and_created_0600(tmp_path: Path) -> None:
    segment = _new(tmp_path, 4711)
    segment.close()
    names = sorted(os.listdir(tmp_path))
    assert names == [
        "00000000000000004711.index",
        "00000000000000004711.log",
        "00000000000000004711.timeindex",
    ]
    for name in names:
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == 0o600


def test_read_by_offset_returns_the_batch_holding_it(tmp_path: Path) -> None:
    segment = _new(tmp_path, 100)
    data = _batches(100, 200)
    _append(segment, data)
    assert segment.next_offset == 300 and segment.size == len(data)
    for offset in (100, 101, 150, 199, 250, 299):
        out = segment.read(offset, 1)
        infos, scanned, _ = scan_batches(out)
        assert scanned == len(out) and list(infos["base_offset"]) == [offset]
    assert segment.read(300, 1000) == b""
    whole = segment.read(100, 10**9)
    assert whole == data
    segment.close()


def test_index_entries_are_sparse_and_bounded_by_the_interval(tmp_path: Path) -> None:
    segment = _new(tmp_path)
    data = _batches(0, 300)
    infos, _, _ = scan_batches(data)
    for part in np.array_split(np.arange(300), 7):  # several appends
        first, last = int(part[0]), int(part[-1])
        start = int(infos["position"][first])
        end = int(infos["position"][last]) + int(infos["length"][last])
        _append(segment, data[start:end])
    entries = segment.offset_index.entries
    positions = entries["position"].astype(np.int64)
    assert positions[0] == 0
    assert (np.diff(positions) <= INTERVAL + int(infos["length"].max())).all()
    assert len(entries) < 300 // 2
    # every entry names the start of the batch whose base offset it carries
    for relative, position in entries.tolist():
        assert int(infos["position"][relative]) == position
    segment.close()


def test_rebuilt_indexes_equal_the_ones_written_while_appending(tmp_path: Path) -> None:
    segment = _new(tmp_path)
    data = _batches(0, 120)
    _append(segment, data)
    segment.close()
    paths = [segment_path(str(tmp_path), 0, s) for s in (".index", ".timeindex")]
    written = [Path(p).read_bytes() for p in paths]
    segment, cut = LogSegment.open(
        str(tmp_path), 0, index_interval_bytes=INTERVAL, index_bytes=1 << 20, recover=True
    )
    assert cut == 0
    segment.close()
    assert [Path(p).read_bytes() for p in paths] == written


def test_index_entries_follow_the_block_rule_across_appends(tmp_path: Path) -> None:
    """An entry for each batch that starts in another index.interval.bytes block than
    the batch before it; a time entry beside it when the running max timestamp grew."""
    rng = np.random.default_rng(7)
    sizes = rng.integers(1, 700, 400)
    stamps = rng.integers(0, 5_000, 400)  # not in order: the running max matters
    data = b"".join(
        encode_batch(i, [(None, b"v" * int(sizes[i]), [], int(stamps[i]))]) for i in range(400)
    )
    infos, _, _ = scan_batches(data)
    segment = _new(tmp_path)
    cuts = sorted({0, len(infos), *rng.integers(1, len(infos), 12).tolist()})
    for first, end in itertools.pairwise(cuts):  # appends of uneven chunks
        chunk = data[
            int(infos["position"][first]) : int(infos["position"][end - 1])
            + int(infos["length"][end - 1])
        ]
        _append(segment, chunk)
    want_offsets, want_times = [], []
    previous, running, last_time = -1, -1, -1
    for row in infos:
        position = int(row["position"])
        running = max(running, int(row["max_timestamp"]))
        if previous < 0 or position // INTERVAL != previous // INTERVAL:
            want_offsets.append((int(row["base_offset"]), position))
            if running > last_time:
                want_times.append((running, int(row["base_offset"])))
                last_time = running
        previous = position
    assert segment.offset_index.entries.tolist() == want_offsets
    assert segment.time_index.entries.tolist() == want_times
    assert (segment.size, segment.next_offset, segment.max_timestamp) == (
        len(data),
        400,
        int(stamps.max()),
    )
    segment.close()


def test_a_full_index_leaves_batches_for_the_next_segment(tmp_path: Path) -> None:
    # room for 4 offset entries (and 4 time entries, one of them kept for the roll)
    segment = LogSegment.create(str(tmp_path), 0, index_interval_bytes=0, index_bytes=48)
    data = _batches(0, 10)
    infos, _, _ = scan_batches(data)
    assert segment.append(data, infos) == 3
    assert segment.append(data, infos, 3) == 0
    assert len(segment.offset_index) == 3 and segment.next_offset == 3
    segment.close()


def test_recover_cuts_a_torn_tail_and_keeps_the_intact_prefix(tmp_path: Path) -> None:
    segment = _new(tmp_path)
    data = _batches(0, 50)
    _append(segment, data)
    segment.close()
    infos, _, _ = scan_batches(data)
    cut_at = int(infos["position"][30]) + 17  # mid-batch 30
    with open(segment_path(str(tmp_path), 0, ".log"), "r+b") as f:
        f.truncate(cut_at)
    segment, cut = LogSegment.open(
        str(tmp_path), 0, index_interval_bytes=INTERVAL, index_bytes=1 << 20, recover=False
    )
    assert cut == 17 and segment.next_offset == 30
    assert segment.read(0, 10**9) == data[: int(infos["position"][30])]
    assert int(segment.offset_index.entries["position"][-1]) < segment.size
    segment.close()


def test_time_index_finds_the_first_batch_at_or_after_a_timestamp(tmp_path: Path) -> None:
    segment = _new(tmp_path)
    _append(segment, _batches(0, 100, ts0=10_000))  # batch i has timestamp 10_000 + i
    assert segment.max_timestamp == 10_099
    for ts, expected in ((0, 0), (10_000, 0), (10_042, 42), (10_099, 99)):
        found = segment.find_timestamp(ts)
        assert found is not None and found[1] == expected
    assert segment.find_timestamp(10_100) is None
    segment.on_roll()
    assert segment.time_index.last_timestamp == 10_099
    segment.close()


def test_truncate_to_cuts_whole_batches_and_the_indexes(tmp_path: Path) -> None:
    segment = _new(tmp_path)
    data = _batches(0, 100)
    _append(segment, data)
    infos, _, _ = scan_batches(data)
    removed = segment.truncate_to(60)
    assert segment.next_offset == 60 and segment.size == int(infos["position"][60])
    assert removed == len(data) - segment.size
    assert (segment.offset_index.entries["relative_offset"] < 60).all()
    assert (segment.time_index.entries["relative_offset"] < 60).all()
    _append(segment, _batches(60, 5))
    assert segment.next_offset == 65
    segment.close()


def test_index_lookup_is_a_floor(tmp_path: Path) -> None:
    index = OffsetIndex(str(tmp_path / "x.index"), 1000, writable=True, max_entries=10)
    index.append(np.array([(0, 0), (10, 400), (20, 900)], dtype=OFFSET_INDEX_DTYPE))
    assert index.lookup(999) == (1000, 0)
    assert index.lookup(1015) == (1010, 400)
    assert index.lookup(5000) == (1020, 900)
    reader = OffsetIndex(str(tmp_path / "x.index"), 1000, writable=False, max_entries=10)
    assert len(reader) == 3
    index.append_raw(np.array([(30, 1300)], dtype=OFFSET_INDEX_DTYPE).tobytes(), 1)
    assert reader.refresh() and reader.lookup(1031) == (1030, 1300)
    index.close()
    reader.close()
    times = TimeIndex(str(tmp_path / "x.timeindex"), 1000, writable=True, max_entries=10)
    times.append_entries(np.array([5, 5, 7, 9]), np.array([1000, 1001, 1002, 1003]))
    assert times.entries.tolist() == [(5, 0), (7, 2), (9, 3)]
    assert times.lookup_below(5) is None and times.lookup_below(8) == 1002
    times.close()


def test_a_torn_index_entry_is_cut_on_open(tmp_path: Path) -> None:
    path = tmp_path / "x.index"
    path.write_bytes(b"\x00" * 8 + b"\x00\x00\x00\x05\x00\x00\x01\x00" + b"\x00\x00\x00")
    index = OffsetIndex(str(path), 0, writable=True, max_entries=10)
    assert len(index) == 2 and path.stat().st_size == 16
    index.close()


def test_reader_segment_cannot_write(tmp_path: Path) -> None:
    _new(tmp_path).close()
    reader = LogSegment.open_reader(str(tmp_path), 0)
    with pytest.raises(PermissionError):
        reader.truncate_to(0)
    reader.close()


# ---- indexes found missing or damaged at open (issue 17, item 9) ------------------------


def _closed_segment(directory: Path) -> tuple[bytes, bytes, bytes]:
    """A segment of 300 batches, sealed and closed as a clean stop leaves it: the bytes
    of its .log, .index and .timeindex."""
    segment = _new(directory)
    _append(segment, _batches(0, 300))
    segment.on_roll()
    segment.close()
    return tuple(  # type: ignore[return-value]
        Path(segment_path(str(directory), 0, suffix)).read_bytes()
        for suffix in (".log", ".index", ".timeindex")
    )


def _reopen(directory: Path) -> LogSegment:
    segment, cut = LogSegment.open(
        str(directory), 0, index_interval_bytes=INTERVAL, index_bytes=1 << 20, recover=False
    )
    assert cut == 0
    return segment


def _reads_by_offset(segment: LogSegment) -> None:
    for offset in (0, 77, 150, 299):
        infos, _, _ = scan_batches(segment.read(offset, 1))
        assert int(infos["base_offset"][0]) == offset


@pytest.mark.parametrize(
    ("suffix", "damage", "reason"),
    [
        (".index", "delete", "missing"),
        (".timeindex", "delete", "missing"),
        (".index", "truncate", "entries missing after the last one"),
        (".timeindex", "truncate", "entries missing after the last one"),
        (".index", "tear", "torn last entry"),
        (".index", "garble", "entries out of order or past the log"),
        (".index", "first", "no entry for the first batch"),
        (".index", "last", "an entry names no batch of its offset"),
        (".timeindex", "garble", "entries out of order or past the log"),
    ],
)
def test_open_rebuilds_a_missing_or_damaged_index_from_the_log(
    tmp_path: Path, suffix: str, damage: str, reason: str
) -> None:
    log, index, times = _closed_segment(tmp_path)
    path = Path(segment_path(str(tmp_path), 0, suffix))
    raw = path.read_bytes()
    item = 8 if suffix == ".index" else 12
    assert len(raw) // item > 10
    if damage == "delete":
        path.unlink()
    elif damage == "truncate":
        path.write_bytes(raw[: len(raw) // 2 // item * item])
    elif damage == "tear":
        path.write_bytes(raw[:-3])
    elif damage == "garble":
        middle = len(raw) // 2 // item * item
        path.write_bytes(raw[:middle] + b"\xff" * item + raw[middle + item :])
    elif damage == "first":
        path.write_bytes(raw[item:])
    else:  # the last entry points one byte into its batch
        entry = np.frombuffer(raw, OFFSET_INDEX_DTYPE).copy()
        entry["position"][-1] += 1
        path.write_bytes(entry.tobytes())
    segment = _reopen(tmp_path)
    try:
        assert segment.rebuilt_indexes == (str(path), reason)
        assert Path(segment_path(str(tmp_path), 0, ".index")).read_bytes() == index
        assert Path(segment_path(str(tmp_path), 0, ".timeindex")).read_bytes() == times
        assert Path(segment_path(str(tmp_path), 0, ".log")).read_bytes() == log
        assert segment.next_offset == 300
        _reads_by_offset(segment)
    finally:
        segment.close()


def test_intact_indexes_are_trusted_at_open(tmp_path: Path) -> None:
    _closed_segment(tmp_path)
    segment = _reopen(tmp_path)
    assert segment.rebuilt_indexes is None
    segment.close()


def test_a_damaged_entry_in_the_middle_does_not_break_reads(tmp_path: Path) -> None:
    """An entry still in order but pointing into a batch passes the checks at open (they
    read two entries' batches, not every one: a clean start does not read every page of
    every log); a read that uses it walks from the segment's start instead, and
    `engine verify` reports it (test_integrity)."""
    _closed_segment(tmp_path)
    path = Path(segment_path(str(tmp_path), 0, ".index"))
    entries = np.frombuffer(path.read_bytes(), OFFSET_INDEX_DTYPE).copy()
    middle = len(entries) // 2
    entries["position"][middle] += 1
    path.write_bytes(entries.tobytes())
    segment = _reopen(tmp_path)
    try:
        assert segment.rebuilt_indexes is None
        target = int(entries["relative_offset"][middle])
        for offset in (target, target + 1, target + 3):
            infos, _, _ = scan_batches(segment.read(offset, 1))
            assert int(infos["base_offset"][0]) == offset
    finally:
        segment.close()
    reader = LogSegment.open_reader(str(tmp_path), 0)
    try:
        infos, _, _ = scan_batches(reader.read(target, 1))
        assert int(infos["base_offset"][0]) == target
    finally:
        reader.close()


def test_a_log_that_does_not_walk_is_recovered_not_indexed(tmp_path: Path) -> None:
    """Rebuilding needs the batches' boundaries: a damaged length leaves only recovery,
    which cuts the log there (as before)."""
    log, _, _ = _closed_segment(tmp_path)
    Path(segment_path(str(tmp_path), 0, ".index")).unlink()
    infos, _, _ = scan_batches(log)
    at = int(infos["position"][200])
    damaged = bytearray(log)
    damaged[at + 16] = 7  # the magic
    Path(segment_path(str(tmp_path), 0, ".log")).write_bytes(bytes(damaged))
    segment, cut = LogSegment.open(
        str(tmp_path), 0, index_interval_bytes=INTERVAL, index_bytes=1 << 20, recover=False
    )
    try:
        assert cut == len(log) - at and segment.next_offset == 200
        assert segment.rebuilt_indexes is None
    finally:
        segment.close()
