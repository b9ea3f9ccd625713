"""engine.log.LogReader: another process reads the segments while the broker writes them.

Acceptable outcomes for a concurrent read at ``offset`` with ``upper_offset`` taken
from the writer: whole, CRC-intact batches starting at ``offset`` with every last
offset below ``upper_offset``, or nothing yet; never a torn batch, a skipped or
repeated offset, or an error other than OffsetOutOfRangeError after retention.
"""

from __future__ import annotations

import multiprocessing as mp
import time
from collections.abc import Callable
from multiprocessing.sharedctypes import Synchronized
from pathlib import Path

import numpy as np
import pytest

from engine.errors import ClosedError, OffsetOutOfRangeError
from engine.log import Log, LogReader
from engine.record_batch import ScanStatus, encode_batch, scan_batches

SPAWN = mp.get_context("spawn")
CONFIG = {"segment.bytes": 8_192, "index.interval.bytes": 512}


def batch(offset: int) -> bytes:
    """Batch at ``offset``: 1-3 records, contents derived from the offset."""
    return encode_batch(
        offset,
        [(b"k%d" % offset, bytes([offset % 251]) * (offset % 300), [], offset)],
    )


def write_log(directory: str, total: int, per_append: int, drain: Synchronized[int]) -> None:
    """Child body: append ``total`` batches, publishing the drain offset after each append."""
    log = Log.open(directory, CONFIG)
    offset = 0
    while offset < total:
        count = min(per_append, total - offset)
        log.append(b"".join(batch(o) for o in range(offset, offset + count)))
        offset += count
        drain.value = offset
    log.close()


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.0005)


def _advanced(
    drain: Synchronized[int], writer: mp.process.BaseProcess, offset: int
) -> Callable[[], bool]:
    return lambda: drain.value > offset or writer.exitcode is not None


def test_concurrent_reader_sees_every_batch_once_and_intact_across_rolls(tmp_path: Path) -> None:
    directory = tmp_path / "p0"
    total = 6_000
    drain: Synchronized[int] = SPAWN.Value("q", 0)
    writer = SPAWN.Process(target=write_log, args=(str(directory), total, 7, drain))
    writer.start()
    try:
        wait_for(lambda: (directory / "log.meta").exists(), 30, "the log to be created")
        reader = LogReader(directory)
        offset, reads, waits, deadline = 0, 0, 0, time.monotonic() + 45
        while offset < total:
            assert time.monotonic() < deadline, f"reader stuck at offset={offset}"
            upper = drain.value
            data = reader.read(offset, 2_000, upper)
            if not data:
                waits += 1
                wait_for(_advanced(drain, writer, offset), 30, "appends")
                assert drain.value > offset, f"writer exited at offset={offset}"
                continue
            infos, scanned, status = scan_batches(data, verify_crc=True)
            assert status is ScanStatus.OK and scanned == len(data)
            assert int(infos["last_offset"][-1]) < upper
            count = len(infos)
            assert infos["base_offset"].tolist() == list(range(offset, offset + count))
            assert data == b"".join(batch(o) for o in range(offset, offset + count))
            offset += count
            reads += 1
        writer.join(30)
        assert writer.exitcode == 0
        assert reads < total  # several batches per read, not one
        assert len(list(directory.glob("*.log"))) > 20  # it really rolled underneath
        assert reader.read(total, 2_000, total) == b""
        reader.close()
    finally:
        if writer.is_alive():
            writer.kill()
        writer.join()


def test_reader_never_returns_batches_at_or_past_upper_offset(tmp_path: Path) -> None:
    with Log.open(tmp_path / "p", CONFIG) as log:
        log.append(b"".join(batch(o) for o in range(50)))
        with LogReader(tmp_path / "p") as reader:
            data = reader.read(0, 10**6, 20)
            infos, _, _ = scan_batches(data)
            assert infos["base_offset"].tolist() == list(range(20))
            assert reader.read(20, 10**6, 20) == b""
            with pytest.raises(OffsetOutOfRangeError, match="upper_offset=20"):
                reader.read(21, 10**6, 20)


def test_reader_raises_offset_out_of_range_after_retention_deleted_its_segment(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "p"
    with Log.open(directory, {**CONFIG, "retention.bytes": 20_000}) as log:
        log.append(b"".join(batch(o) for o in range(100)))
        reader = LogReader(directory)
        first = reader.read(0, 100, 100)  # opens the first segment
        assert scan_batches(first)[0]["base_offset"].tolist() == [0]
        before = log.log_start_offset
        end = log.log_end_offset
        assert log.apply_retention() > 0 and log.log_start_offset > before
        start = log.log_start_offset
        with pytest.raises(OffsetOutOfRangeError, match=f"log_start_offset={start}"):
            reader.read(1, 100, end)
        assert reader.log_start_offset == start
        data = reader.read(start, 100, end)
        assert scan_batches(data)[0]["base_offset"].tolist() == [start]
        # a new segment appears while the reader holds the old list
        log.append(b"".join(batch(o) for o in range(100, 200)))
        offset = 100
        while offset < 200:
            data = reader.read(offset, 1_000, 200)
            infos = scan_batches(data)[0]
            assert int(infos["base_offset"][0]) == offset
            offset = int(infos["last_offset"][-1]) + 1
        reader.close()
        with pytest.raises(ClosedError):
            reader.read(0, 1, 1)


def test_reader_of_a_missing_log_raises_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        LogReader(tmp_path / "nothing")


def test_reader_reads_a_batch_larger_than_max_bytes_whole(tmp_path: Path) -> None:
    big = encode_batch(0, [(None, b"x" * 50_000, [], 1)])
    with Log.open(tmp_path / "p") as log:
        log.append(big)
        with LogReader(tmp_path / "p") as reader:
            assert reader.read(0, 10, 1) == big
            assert np.array_equal(
                scan_batches(reader.read(0, 10, 1))[0]["base_offset"], np.array([0])
            )
