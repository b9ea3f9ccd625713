"""engine.segment, offset_index, time_index: one segment's files, indexes and recovery."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest

from engine.offset_index import OffsetIndex
from engine.record_batch import encode_batch, scan_batches
from engine.segment import LogSegment, index_mask, segment_path
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


def test_index_mask_marks_the_first_batch_in_each_interval_block() -> None:
    positions = np.array([0, 100, 500, 520, 1100, 1200, 2100], dtype=np.int64)
    assert index_mask(positions, -1, 512).tolist() == [1, 0, 0, 1, 1, 0, 1]
    assert index_mask(positions[3:], 500, 512).tolist() == [1, 1, 0, 1]
    assert index_mask(positions, -1, 0).all()


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
    index.append_batches(np.array([1000, 1010, 1020]), np.array([0, 400, 900]))
    assert index.lookup(999) == (1000, 0)
    assert index.lookup(1015) == (1010, 400)
    assert index.lookup(5000) == (1020, 900)
    reader = OffsetIndex(str(tmp_path / "x.index"), 1000, writable=False, max_entries=10)
    assert len(reader) == 3
    index.append_batches(np.array([1030]), np.array([1300]))
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
