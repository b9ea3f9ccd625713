"""Compacted topics: the log cleaner (engine/cleaner.py), its crash-safe swap
(engine/segment_swap.py), reads over the offsets it removed, and the IoT example on a
replicated topic across a restart and a leader's SIGKILL."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import stat
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from engine_harness import Daemon, wait_for

from engine import (
    Admin,
    ConfigError,
    Consumer,
    EngineError,
    InvalidRecordError,
    Producer,
    TopicPartition,
    verify,
)
from engine import segment_swap as swap
from engine.cleaner import LogCleaner
from engine.config import validate_topic_config
from engine.datadir import pid_alive
from engine.log import LOG_FORMAT_VERSION, Log, LogReader
from engine.record_batch import check_chunk, decode_record_infos, encode_batch, scan_batches
from engine.replica import _starting_at
from engine.txn_filter import ABORT, COMMIT, ReadCommitted
from engine.verify import verify_replica

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
sys.path.insert(0, str(EXAMPLES))
import device_state  # noqa: E402 - the example, from its directory

COMPACT = {
    "cleanup.policy": "compact",
    "segment.bytes": 1_000,
    "index.interval.bytes": 128,
    "min.cleanable.dirty.ratio": 0.01,
    "delete.retention.ms": 60_000,
}
TXN, MARKER = 0x10, 0x30
NOW = int(time.time() * 1000)


def record(offset: int, key: bytes | None, value: bytes | None, ts: int | None = None) -> bytes:
    """A batch of one record."""
    return encode_batch(offset, [(key, value, [], 1_000 + offset if ts is None else ts)])


def records(offset: int, pairs: list[tuple[bytes, bytes | None]], **producer: int) -> bytes:
    """A batch of several records at consecutive offsets."""
    rows = [(k, v, [], 1_000 + offset + i) for i, (k, v) in enumerate(pairs)]
    return encode_batch(offset, rows, **producer)


def marker(offset: int, pid: int, epoch: int, kind: int) -> bytes:
    key, value = struct.pack(">hh", 0, kind), struct.pack(">hi", 0, 0)
    return encode_batch(
        offset, [(key, value, [], 5_000)], producer_id=pid, producer_epoch=epoch, attributes=MARKER
    )


def read_log(directory: Path, start: int | None = None) -> tuple[bytes, list[tuple[int, Any, Any]]]:
    """Every batch of the log (through LogReader, as a consumer reads segments) checked as
    a consumer checks them (CRC, dense offsets), and its records (offset, key, value)."""
    reader = LogReader(directory)
    try:
        offset = reader.log_start_offset if start is None else start
        chunks = []
        while True:
            data = reader.read(offset, 4096, 2**62)
            if not data:
                break
            assert check_chunk(data, offset, crc=True, dense=True) is None
            chunks.append(data)
            infos, _, _ = scan_batches(data)
            offset = int(infos["last_offset"][-1]) + 1
    finally:
        reader.close()
    data = b"".join(chunks)
    rows = decode_record_infos(data)
    out = []
    for row in rows:
        kp, kl, vp, vl = (
            int(row[f]) for f in ("key_position", "key_length", "value_position", "value_length")
        )
        out.append(
            (
                int(row["offset"]),
                data[kp : kp + kl] if kl >= 0 else None,
                data[vp : vp + vl] if vl >= 0 else None,
            )
        )
    return data, out


def table(rows: list[tuple[int, Any, Any]]) -> dict[bytes, bytes]:
    """Latest value per key (a tombstone deletes it)."""
    out: dict[bytes, bytes] = {}
    for _, key, value in rows:
        if value is None:
            out.pop(key, None)
        else:
            out[key] = value
    return out


def fill(log: Log, count: int, keys: int, start: int = 0) -> None:
    """``count`` one-record batches: record o has key o % keys, value str(o)."""
    for o in range(start, start + count):
        log.append(record(o, b"k%d" % (o % keys), b"v%d" % o))


@pytest.fixture
def log(tmp_path: Path) -> Iterator[Log]:
    log = Log.open(tmp_path / "p0", COMPACT)
    yield log
    log.close()


# ---- configuration -----------------------------------------------------------


def test_cleanup_policy_takes_compact_and_both_and_kafkas_cleaner_settings() -> None:
    config = validate_topic_config(
        {"cleanup.policy": "delete,compact", "min.cleanable.dirty.ratio": "0.2",
         "delete.retention.ms": "1000", "min.compaction.lag.ms": 5}
    )  # fmt: skip
    assert config["cleanup.policy"] == "compact,delete"
    assert config["min.cleanable.dirty.ratio"] == 0.2
    assert validate_topic_config({})["cleanup.policy"] == "delete"
    with pytest.raises(ConfigError, match=r"key='cleanup.policy' value='shred'"):
        validate_topic_config({"cleanup.policy": "shred"})
    with pytest.raises(ConfigError, match=r"key='min\.cleanable\.dirty\.ratio' value=1\.5"):
        validate_topic_config({"min.cleanable.dirty.ratio": 1.5})


def test_retention_never_deletes_a_compact_only_log(tmp_path: Path) -> None:
    config = {**COMPACT, "retention.ms": 1}
    with Log.open(tmp_path / "p", config) as log:
        fill(log, 40, keys=40)
        assert log.apply_retention(NOW + 10**9) == 0
        assert log.log_start_offset == 0
    with Log.open(tmp_path / "q", {**config, "cleanup.policy": "compact,delete"}) as log:
        fill(log, 40, keys=40)
        assert log.apply_retention(NOW + 10**9) > 0


def test_the_cleaner_makes_a_format_2_log_format_3_and_leaves_format_1_alone(
    tmp_path: Path,
) -> None:
    for version in (1, 2):
        directory = tmp_path / f"v{version}"
        with Log.open(directory, COMPACT) as log:
            fill(log, 100, keys=3)
        meta = json.loads((directory / "log.meta").read_text())
        assert meta["format_version"] == LOG_FORMAT_VERSION == 3
        (directory / "log.meta").write_text(json.dumps({**meta, "format_version": version}))
        with Log.open(directory, COMPACT) as log:
            result = LogCleaner(log).clean(NOW, force=True)
            assert (result is not None) == (version == 2)
        meta = json.loads((directory / "log.meta").read_text())
        assert meta["format_version"] == (3 if version == 2 else 1)
        for name in os.listdir(directory):
            if not name.endswith(".deleted"):  # replaced segments the flusher is removing
                assert stat.S_IMODE((directory / name).stat().st_mode) == 0o600, name


def test_retention_of_a_compact_delete_log_waits_for_a_clean_in_progress(
    tmp_path: Path,
) -> None:
    config = {**COMPACT, "cleanup.policy": "compact,delete", "retention.ms": 1}
    with Log.open(tmp_path / "p", config) as log:
        fill(log, 100, keys=3)
        with log.cleaning_lock:  # as the cleaner holds it through a clean
            assert log.apply_retention(NOW + 10**9) == 0
        assert log.apply_retention(NOW + 10**9) > 0


# ---- what a clean keeps ------------------------------------------------------


def test_clean_keeps_the_last_record_of_each_key_at_its_own_offset(log: Log) -> None:
    fill(log, 300, keys=7)
    log.append(records(300, [(b"k1", b"a"), (b"k2", b"b"), (b"x", b"c")]))
    fill(log, 20, keys=7, start=303)
    directory = Path(log.directory)
    _, before = read_log(directory)
    active = log.segment_base_offsets[-1]
    result = LogCleaner(log).clean(NOW, force=True)
    assert result is not None and result.records_removed > 250
    assert len(log.segment_base_offsets) < 20  # tiny segments grouped up to segment.bytes
    _, after = read_log(directory)
    assert table(after) == table(before)
    original = {offset: (key, value) for offset, key, value in before}
    assert all(original[offset] == (key, value) for offset, key, value in after)
    cleaned = [key for offset, key, _ in after if offset < active]
    assert len(cleaned) == len(set(cleaned))  # one record per key where it cleaned
    assert log.log_start_offset == 0 and log.log_end_offset == 323


def test_the_active_segment_is_never_touched(log: Log) -> None:
    fill(log, 200, keys=3)
    active = log.segment_base_offsets[-1]
    path = Path(log.directory) / f"{active:020d}.log"
    before = path.read_bytes()
    assert LogCleaner(log).clean(NOW, force=True) is not None
    assert log.segment_base_offsets[-1] == active
    assert path.read_bytes() == before
    _, rows = read_log(Path(log.directory), start=active)
    assert [o for o, _, _ in rows] == list(range(active, 200))


def test_a_clean_waits_for_the_dirty_ratio_and_min_compaction_lag(tmp_path: Path) -> None:
    with Log.open(tmp_path / "p", {**COMPACT, "min.cleanable.dirty.ratio": 0.9}) as log:
        fill(log, 200, keys=3)
        cleaner = LogCleaner(log)
        assert cleaner.clean(NOW) is not None  # never cleaned: all dirty
        fill(log, 10, keys=3, start=200)
        assert cleaner.dirty_ratio() < 0.9
        assert cleaner.clean(NOW) is None
    lag = {**COMPACT, "min.compaction.lag.ms": 60_000}
    with Log.open(tmp_path / "q", lag) as log:
        for o in range(200):  # timestamps: now
            log.append(record(o, b"k%d" % (o % 3), b"v", ts=NOW))
        assert LogCleaner(log).clean(NOW, force=True) is None  # all too young
        assert LogCleaner(log).clean(NOW + 61_000, force=True) is not None


def test_nothing_above_the_committed_offset_is_cleaned(log: Log) -> None:
    """A record above the high watermark may yet be cut from this replica: it must not
    have removed the older record of its key meanwhile."""
    fill(log, 200, keys=3)
    assert LogCleaner(log).clean(NOW, force=True, committed_offset=10) is None
    _, rows = read_log(Path(log.directory))
    assert len(rows) == 200
    result = LogCleaner(log).clean(NOW, force=True, committed_offset=100)
    assert result is not None and result.end_offset <= 100
    _, rows = read_log(Path(log.directory))
    assert [o for o, _, _ in rows if o >= result.end_offset] == list(range(result.end_offset, 200))


def test_tombstones_stay_for_delete_retention_ms_then_go(log: Log) -> None:
    now = int(time.time() * 1000)  # the segment's mtime is its clock: now, not at import
    log.append(record(0, b"gone", b"1"))
    log.append(record(1, b"kept", b"2"))
    log.append(record(2, b"gone", None))  # the tombstone
    fill(log, 100, keys=5, start=3)
    cleaner = LogCleaner(log)
    assert cleaner.clean(now, force=True) is not None
    _, rows = read_log(Path(log.directory))
    assert (2, b"gone", None) in rows and (0, b"gone", b"1") not in rows
    assert (1, b"kept", b"2") in rows
    # It comes due delete.retention.ms after its segment was written (just now).
    assert cleaner.next_due_ms is not None
    assert now + 60_000 <= cleaner.next_due_ms < now + 120_000
    assert cleaner.clean(now + 59_000) is None  # not due, nothing dirty
    assert cleaner.clean(now + 120_000) is not None  # due: no need to force
    _, rows = read_log(Path(log.directory))
    assert all(key != b"gone" for _, key, _ in rows)
    assert (1, b"kept", b"2") in rows


def test_a_restart_remembers_where_the_last_clean_ended_and_what_comes_due(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "p"
    with Log.open(directory, COMPACT) as log:
        log.append(record(0, b"gone", None))
        fill(log, 200, keys=3, start=1)
        cleaner = LogCleaner(log)
        assert cleaner.clean(NOW) is not None
        clean_offset, due = cleaner.clean_offset, cleaner.next_due_ms
        assert clean_offset > 0 and due is not None
    with Log.open(directory, COMPACT) as log:
        cleaner = LogCleaner(log)
        assert (cleaner.clean_offset, cleaner.next_due_ms) == (clean_offset, due)
        assert cleaner.dirty_ratio() == 0.0  # nothing to clean again
        assert cleaner.clean(due + 1) is not None  # the tombstone came due meanwhile
        _, rows = read_log(directory)
        assert all(key != b"gone" for _, key, _ in rows)
        log.truncate_to(150)  # a follower's divergent tail: dirty again from its new end
        assert LogCleaner(log).clean_offset == log.log_end_offset <= 150


# ---- transactions --------------------------------------------------------------


def test_an_open_transactions_records_and_all_after_them_are_kept(log: Log) -> None:
    log.append(record(0, b"a", b"old"))
    log.append(records(1, [(b"a", b"txn"), (b"b", b"txn")], producer_id=7, producer_epoch=0,
                       attributes=TXN))  # fmt: skip
    fill(log, 100, keys=2, start=3)  # k0, k1 overwritten many times, a and b never again
    log.append(record(103, b"a", b"new"))
    fill(log, 60, keys=2, start=104)
    assert LogCleaner(log).clean(NOW, force=True) is None  # nothing before the open txn to clean
    _, rows = read_log(Path(log.directory))
    assert [o for o, _, _ in rows] == list(range(164))
    log.append(marker(164, pid=7, epoch=0, kind=COMMIT))
    fill(log, 40, keys=2, start=165)  # rolls past the marker
    assert LogCleaner(log).clean(NOW, force=True) is not None
    _, rows = read_log(Path(log.directory))
    assert (0, b"a", b"old") not in rows and (1, b"a", b"txn") not in rows
    assert (2, b"b", b"txn") in rows and (103, b"a", b"new") in rows


def test_aborted_records_are_removed_and_never_reach_read_committed(log: Log) -> None:
    log.append(record(0, b"a", b"committed-before"))
    log.append(records(1, [(b"a", b"aborted"), (b"c", b"aborted")], producer_id=7,
                       producer_epoch=0, attributes=TXN))  # fmt: skip
    log.append(records(3, [(b"b", b"committed")], producer_id=8, producer_epoch=0,
                       attributes=TXN))  # fmt: skip
    log.append(marker(4, pid=7, epoch=0, kind=ABORT))
    log.append(marker(5, pid=8, epoch=0, kind=COMMIT))
    fill(log, 100, keys=3, start=6)
    assert LogCleaner(log).clean(NOW, force=True) is not None
    data, rows = read_log(Path(log.directory))
    values = {value for _, _, value in rows}
    assert b"aborted" not in values  # gone, even for read_uncommitted
    assert (0, b"a", b"committed-before") in rows  # the aborted write is not its last
    assert (3, b"b", b"committed") in rows
    filtered = ReadCommitted(0)
    filtered.feed(data)
    delivered, end = filtered.take()
    seen = {value for _, _, value in read_rows(delivered)}
    assert b"committed" in seen and b"aborted" not in seen
    assert end == log.log_end_offset


def test_markers_go_after_delete_retention_ms_but_each_producers_last_stays(log: Log) -> None:
    log.append(records(0, [(b"a", b"1")], producer_id=7, producer_epoch=0, attributes=TXN))
    log.append(marker(1, pid=7, epoch=0, kind=COMMIT))
    log.append(records(2, [(b"a", b"2")], producer_id=7, producer_epoch=0, attributes=TXN))
    log.append(marker(3, pid=7, epoch=0, kind=COMMIT))
    fill(log, 60, keys=2, start=4)
    log.append(record(64, b"a", b"3"))
    fill(log, 60, keys=2, start=65)
    cleaner = LogCleaner(log)
    cleaner.clean(NOW + 3_600_000, force=True)
    data, _ = read_log(Path(log.directory))
    infos, _, _ = scan_batches(data)
    control = [int(i["base_offset"]) for i in infos if int(i["attributes"]) & 0x20]
    assert control == [3]  # the first marker went with its records; the last one stays


def read_rows(data: bytes) -> list[tuple[int, Any, Any]]:
    rows = decode_record_infos(data)
    return [
        (int(r["offset"]), None, data[int(r["value_position"]) :][: int(r["value_length"])])
        for r in rows
    ]


# ---- reading around the gaps ---------------------------------------------------


def test_a_read_at_a_removed_offset_starts_at_the_next_record_kept(log: Log) -> None:
    fill(log, 200, keys=4)
    LogCleaner(log).clean(NOW, force=True)
    _, rows = read_log(Path(log.directory))
    kept = [o for o, _, _ in rows]
    removed = next(o for o in range(200) if o not in kept)
    following = next(o for o in kept if o > removed)
    reader = LogReader(log.directory)
    try:
        data = reader.read(removed, 4096, log.log_end_offset)
        assert check_chunk(data, removed, dense=True) is None
        assert int(decode_record_infos(data, removed)["offset"][0]) == following
    finally:
        reader.close()
    # offset_for_timestamp: the record of timestamp 1000 + o is the one at offset o
    assert log.offset_for_timestamp(1_000 + removed) == following


def test_a_follower_behind_a_cleaned_run_fetches_from_its_own_log_end(log: Log) -> None:
    """The leader's cleaner merged emptied batches into one empty batch; a follower whose
    log ends inside that run gets an empty batch from its own end on (its ring refuses a
    batch that starts below its end)."""
    fill(log, 200, keys=2)
    LogCleaner(log).clean(NOW, force=True)
    data, _ = read_log(Path(log.directory))
    infos, _, _ = scan_batches(data)
    run = next(
        i for i in infos if int(i["records_count"]) == 0 and i["last_offset"] > i["base_offset"]
    )
    inside = int(run["base_offset"]) + 1
    reader = LogReader(log.directory)
    try:
        fetched = reader.read(inside, 1 << 16, log.log_end_offset)
    finally:
        reader.close()
    assert int(scan_batches(fetched)[0]["base_offset"][0]) < inside
    trimmed = _starting_at(fetched, inside)
    first = scan_batches(trimmed)[0][0]
    assert int(first["base_offset"]) == inside and int(first["last_offset"]) == int(
        run["last_offset"]
    )
    assert check_chunk(trimmed, inside, dense=True) is None
    assert trimmed[int(first["length"]) :] == fetched[int(scan_batches(fetched)[0]["length"][0]) :]


def test_a_reader_open_across_a_clean_reads_the_cleaned_segments(log: Log) -> None:
    """A consumer's reader holds the segment the clean replaced under the same name."""
    fill(log, 200, keys=3)
    reader = LogReader(log.directory)
    try:
        before = reader.read(0, 1 << 16, log.log_end_offset)
        assert int(scan_batches(before)[0]["base_offset"][0]) == 0
        LogCleaner(log).clean(NOW, force=True)
        after = reader.read(0, 1 << 16, log.log_end_offset)
        assert check_chunk(after, 0, dense=True) is None
        assert len(decode_record_infos(after)) < len(decode_record_infos(before))
    finally:
        reader.close()


def test_a_compacted_log_verifies_clean(log: Log) -> None:
    fill(log, 300, keys=5)
    log.append(record(300, b"k1", None))
    fill(log, 30, keys=3, start=301)
    LogCleaner(log).clean(NOW, force=True)
    replica = verify_replica("t", 0, 0, Path(log.directory))
    assert replica.problems == [] and replica.notes == []
    assert replica.log_end_offset == 331


# ---- crash safety ----------------------------------------------------------------


class Crash(BaseException):
    """Where the test stops the swap, as a kill -9 would."""


class CrashingOs:
    """The ``os`` module as segment_swap sees it, its renames cut after ``crash_after``."""

    def __init__(self, crash_after: int) -> None:
        self.left = crash_after

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    def _step(self) -> None:
        if self.left <= 0:
            raise Crash
        self.left -= 1

    def replace(self, *args: Any) -> None:
        self._step()
        os.replace(*args)

    def rename(self, *args: Any) -> None:
        self._step()
        os.rename(*args)


@pytest.mark.parametrize("crash_after", [0, 1, 2, 3, 4, 6, 9, 12, 1000])
def test_a_crash_at_any_step_of_the_swap_leaves_a_readable_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, crash_after: int
) -> None:
    """The swap's renames are cut after ``crash_after`` of them; the log opened again is
    the cleaned one (the swap was committed), whole and verified."""
    directory = tmp_path / "p"
    log = Log.open(directory, COMPACT)
    fill(log, 300, keys=6)
    _, before = read_log(directory)
    monkeypatch.setattr(swap, "os", CrashingOs(crash_after))
    try:
        LogCleaner(log).clean(NOW, force=True)
        crashed = False
    except Crash:
        crashed = True
    monkeypatch.undo()
    assert crashed == (crash_after < 1000)
    abandon(log)
    monkeypatch.setattr(verify, "SWAP_RETRY_S", 0.1)
    found = verify_replica("t", 0, 0, directory)  # what engine verify says of it meanwhile
    assert any(note.file == swap.CLEANING_DIR for note in found.notes) == crashed
    with Log.open(directory, COMPACT) as reopened:
        assert not (directory / swap.CLEANING_DIR).exists()
        _, after = read_log(directory)
        assert table(after) == table(before)
        assert len(after) < 100  # the committed clean is finished
        assert reopened.log_end_offset == 300
    assert verify_replica("t", 0, 0, directory).problems == []


def test_a_clean_cut_before_its_swap_commits_leaves_the_old_log(tmp_path: Path) -> None:
    directory = tmp_path / "p"
    with Log.open(directory, COMPACT) as log:
        fill(log, 300, keys=6)
    data, before = read_log(directory)
    staging = directory / swap.CLEANING_DIR
    staging.mkdir()
    for name in os.listdir(directory):  # what a cut clean leaves: segments, no swap file
        if name.endswith((".log", ".index", ".timeindex")):
            shutil.copy(directory / name, staging / name)
    (staging / "00000000000000000000.log").write_bytes(b"half written")
    with Log.open(directory, COMPACT):
        assert not staging.exists()
        assert read_log(directory) == (data, before)


def abandon(log: Log) -> None:
    """Drop a log's descriptors without closing it cleanly (a killed process's state),
    once the background fsyncs of its rolled segments are done (they would write its
    recovery point under the log opened next; a killed process writes nothing more)."""
    log._wait_rolled()
    for segment in log._segments:
        segment.close()


CHILD = r"""
import sys
from engine.cleaner import LogCleaner
from engine.log import Log
from engine.record_batch import encode_batch
config = {"cleanup.policy": "compact", "segment.bytes": 2000, "index.interval.bytes": 128,
          "min.cleanable.dirty.ratio": 0.0}
log = Log.open(sys.argv[1], config)
cleaner = LogCleaner(log)
o = log.log_end_offset
while True:
    for _ in range(50):
        log.append(encode_batch(o, [(b"k%d" % (o % 13), b"v%d" % o, [], 1000 + o)]))
        o += 1
    if cleaner.clean(force=True) is not None:
        print("cleaned", o, flush=True)
"""


def test_a_process_killed_mid_clean_leaves_a_log_that_opens_whole(tmp_path: Path) -> None:
    """A process appends and cleans without pause; SIGKILLed at random moments, its log
    opens again holding, for each key, the last record it wrote before the kill."""
    directory = tmp_path / "p"
    rng = random.Random(21)
    for _round in range(12):  # about 2 in 3 killed with a clean under way (measured)
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(directory)], stdout=subprocess.PIPE
        )
        try:
            assert child.stdout is not None
            for _ in range(rng.randint(1, 4)):
                assert child.stdout.readline().startswith(b"cleaned")
            time.sleep(rng.uniform(0, 0.05))
        finally:
            child.kill()
            child.wait()
            if child.stdout is not None:
                child.stdout.close()
        with Log.open(directory, {"cleanup.policy": "compact", "segment.bytes": 2000}) as log:
            end = log.log_end_offset
        _, rows = read_log(directory)
        assert rows and rows[-1][0] == end - 1
        expected = {b"k%d" % (o % 13): b"v%d" % o for o in range(end)}
        assert table(rows) == expected
        assert verify_replica("t", 0, 0, directory).problems == []


# ---- the IoT example on a replicated topic ----------------------------------------


def replica_rows(data_dir: Path, broker: int, topic: str) -> list[tuple[int, Any, Any]] | None:
    """The records of a replica's log (None while it cannot be read whole: not made yet,
    or a segment swapped under the read)."""
    try:
        return read_log(data_dir / f"broker-{broker}" / f"{topic}-0")[1]
    except (AssertionError, EngineError, OSError):
        return None


def test_device_state_table_survives_compaction_a_restart_and_a_leader_kill(
    tmp_path: Path,
) -> None:
    daemon = Daemon(tmp_path / "engine", brokers=2)
    daemon.env["ENGINE_CLEANER_BACKOFF_MS"] = "200"
    topic = device_state.TOPIC
    config = {
        **device_state.TOPIC_CONFIG,
        "segment.bytes": 4096,
        "min.cleanable.dirty.ratio": 0.05,
        "ring.bytes": 1 << 16,  # the ring moves on: early offsets are read from segments
        "max.message.bytes": 1 << 14,
        "min.insync.replicas": 1,
    }
    devices = device_state.device_ids(40)
    retired = devices[:4]
    data_dir = str(daemon.data_dir)
    try:
        daemon.start()
        with Admin(daemon.data_dir) as admin:
            created = admin.create_topic(topic, partitions=1, replication=2, config=config)
        brokers = created.partitions[0].replicas
        with Producer(daemon.data_dir, acks="all") as producer:
            device_state.write_rounds(producer, topic, devices, range(30))
            device_state.decommission(producer, topic, retired)
            device_state.write_rounds(producer, topic, devices[10:], range(30, 35))
        sent = 40 * 30 + 4 + 30 * 5
        expected = {d: device_state.reading(d, 29) for d in devices[4:10]}
        expected |= {d: device_state.reading(d, 34) for d in devices[10:]}
        for broker in brokers:  # each replica cleans its own log

            def compacted(b: int = broker) -> bool:
                rows = replica_rows(daemon.data_dir, b, topic)
                return rows is not None and 0 < len(rows) < sent // 3

            wait_for(compacted, timeout=60, what=f"broker {broker}'s replica compacted")
        assert device_state.rebuild_table(data_dir, topic) == expected
        live = daemon.cli("verify", "--data-dir", str(daemon.data_dir), check=False)
        assert live.returncode == 0, live.stdout.decode() + live.stderr.decode()  # cleaners run
        # Offset 0 (sensor-0000's first reading) was removed: a seek there, and a
        # search by time from the start, land on the first record kept.
        tp = TopicPartition(topic, 0)
        with Consumer(data_dir=data_dir) as consumer:
            consumer.assign([tp])
            consumer.seek(tp, 0)
            first = wait_for(lambda: consumer.poll(timeout=0.2, max_records=1), what="a record")
            assert first[0].offset > 0
            found = consumer.offsets_for_times({tp: 0})[tp]
            assert found is not None
            offset, _ = found
            assert offset >= first[0].offset

        daemon.stop()
        daemon.start()
        assert device_state.rebuild_table(data_dir, topic) == expected

        with Admin(daemon.data_dir) as admin:
            leader = admin.describe_topic(topic).partitions[0].leader
        pid = daemon.runtime()["processes"][f"broker-{leader}"]
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not pid_alive(pid), what="the leader to die")
        with Producer(daemon.data_dir, acks="all", delivery_timeout_ms=30_000) as producer:
            device_state.write_rounds(producer, topic, devices[20:], range(35, 40))
            device_state.decommission(producer, topic, devices[38:])
        expected |= {d: device_state.reading(d, 39) for d in devices[20:38]}
        for d in devices[38:]:
            del expected[d]
        assert device_state.rebuild_table(data_dir, topic) == expected
        # The killed broker comes back (the daemon restarts it) as a follower: its log,
        # cut where it diverged and fetched again, holds the same table.
        as_bytes = {d.encode(): v for d, v in expected.items()}

        def caught_up() -> bool:
            rows = replica_rows(daemon.data_dir, leader, topic)
            return rows is not None and table(rows) == as_bytes

        wait_for(caught_up, timeout=60, what="the killed broker's replica caught up")
        daemon.stop()
        verified = daemon.cli("verify", "--data-dir", str(daemon.data_dir), check=False)
        assert verified.returncode == 0, verified.stdout.decode() + verified.stderr.decode()
    except BaseException:
        daemon.print_logs()
        raise
    finally:
        daemon.stop()
        daemon.kill_everything()


def test_the_device_state_example_rebuilds_the_table(daemon: Daemon) -> None:
    args = ["--data-dir", str(daemon.data_dir), "--devices", "30", "--rounds", "10"]
    assert device_state.main(args) == 0


def test_transactions_on_a_compacted_topic_open_kept_aborted_gone(tmp_path: Path) -> None:
    """A transactional producer commits and aborts overwrites of the same keys: the
    brokers' cleaner removes the aborted records and the older committed ones, keeps
    an open transaction's records and everything after them, and read_committed sees
    each key's last committed value."""
    daemon = Daemon(tmp_path / "engine", brokers=1)
    daemon.env["ENGINE_CLEANER_BACKOFF_MS"] = "200"
    topic = "tx-compacted"
    config = {**COMPACT, "segment.bytes": 2048, "ring.bytes": 1 << 16, "max.message.bytes": 4096}
    try:
        daemon.start()
        with Admin(daemon.data_dir) as admin:
            created = admin.create_topic(topic, partitions=1, config=config)
        broker = created.partitions[0].replicas[0]
        with (
            Producer(daemon.data_dir, transactional_id="tx-compacted") as p,
            Producer(daemon.data_dir) as plain,
        ):
            p.init_transactions()
            for r in range(10):
                p.begin_transaction()
                for k in range(10):
                    p.send(topic, b"c%d" % r, key=b"k%d" % k, partition=0)
                p.commit_transaction()
                p.begin_transaction()
                for k in range(10):
                    p.send(topic, b"aborted", key=b"k%d" % k, partition=0)
                p.abort_transaction()
            for i in range(300):
                plain.send(topic, b"f%d" % i, key=b"f%d" % (i % 5), partition=0).get()
            p.begin_transaction()
            opened = p.send(topic, b"open", key=b"k0", partition=0).get().offset
            for i in range(300, 500):
                plain.send(topic, b"f%d" % i, key=b"f%d" % (i % 5), partition=0).get()

            def cleaned_below_the_open_transaction() -> bool:
                rows = replica_rows(daemon.data_dir, broker, topic)
                if rows is None:
                    return False
                values = [v for _, _, v in rows]
                after = [o for o, _, v in rows if o > opened and v.startswith(b"f")]
                return (
                    b"aborted" not in values
                    and values.count(b"c9") == 10
                    and b"c8" not in values
                    and b"open" in values
                    and len(after) == 200  # nothing after the open transaction cleaned
                )

            wait_for(cleaned_below_the_open_transaction, timeout=60, what="a clean")
            # read_committed reads up to the open transaction, and not its record
            latest = read_table(daemon.data_dir, topic, "read_committed", until=opened)
            assert {k: v for k, v in latest.items() if k.startswith(b"k")} == {
                b"k%d" % k: b"c9" for k in range(10)
            }
            p.commit_transaction()
        latest = read_table(daemon.data_dir, topic, "read_committed")
        assert latest[b"k0"] == b"open" and latest[b"k1"] == b"c9"
        assert b"aborted" not in read_table(daemon.data_dir, topic, "read_uncommitted").values()
    except BaseException:
        daemon.print_logs()
        raise
    finally:
        daemon.stop()
        daemon.kill_everything()


def read_table(
    data_dir: Path, topic: str, isolation: str, until: int | None = None
) -> dict[bytes, bytes]:
    """The latest value per key a consumer of that isolation reads from the beginning up
    to offset ``until`` (default: the partition's end)."""
    tp = TopicPartition(topic, 0)
    with Consumer(data_dir=data_dir, isolation_level=isolation) as consumer:
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        end = consumer.end_offsets([tp])[tp] if until is None else until
        out: dict[bytes, bytes] = {}

        def caught_up() -> bool:
            for r in consumer.poll(timeout=0.1, max_records=10_000):
                out[r.key] = r.value
            return consumer.position(tp) >= end

        wait_for(caught_up, timeout=30, what=f"{isolation} reads up to offset {end}")
        return out


def test_a_topic_altered_to_compact_is_cleaned_by_its_running_replicas(tmp_path: Path) -> None:
    """incremental_alter_configs to cleanup.policy=compact on a running topic: its
    replicas start their cleaners then, not only at their next start."""
    daemon = Daemon(tmp_path / "engine", brokers=1)
    daemon.env["ENGINE_CLEANER_BACKOFF_MS"] = "200"
    topic = "altered"
    try:
        daemon.start()
        with Admin(daemon.data_dir) as admin:
            admin.create_topic(topic, partitions=1, config={
                "segment.bytes": 4096, "min.cleanable.dirty.ratio": 0.05,
                "ring.bytes": 1 << 16, "max.message.bytes": 1 << 14})  # fmt: skip
        with Producer(daemon.data_dir, acks=1) as producer:
            for round_ in range(30):
                for device in range(10):
                    producer.send(topic, b"reading-%d" % round_, key=b"device-%d" % device)
        wait_for(lambda: (rows := replica_rows(daemon.data_dir, 1, topic)) is not None
                 and len(rows) == 300, what="every record drained")  # fmt: skip
        with Admin(daemon.data_dir) as admin:
            admin.incremental_alter_configs(topic, {"cleanup.policy": "compact"})

        def compacted() -> bool:
            rows = replica_rows(daemon.data_dir, 1, topic)
            return rows is not None and 0 < len(rows) < 100

        wait_for(compacted, timeout=60, what="the replica compacted after the alter")
        rows = replica_rows(daemon.data_dir, 1, topic)
        assert rows is not None
        latest = {key: value for _, key, value in rows}
        assert latest == {b"device-%d" % d: b"reading-29" for d in range(10)}
    finally:
        daemon.stop()
        daemon.kill_everything()


def test_a_record_without_a_key_is_refused_by_a_compacted_topic(daemon: Daemon) -> None:
    """As Kafka refuses them (InvalidRecordException): the cleaner could never replace
    or remove a keyless record. Refused by every acks, per record and in batches, also
    after a topic becomes compacted; keyed records still go."""
    with Admin(daemon.data_dir) as admin:
        admin.create_topic("keys-needed", partitions=1, config=COMPACT)
        admin.create_topic("becomes-compacted", partitions=1)
    for acks in (0, 1, "all"):
        with Producer(daemon.data_dir, acks=acks) as p:
            with pytest.raises(InvalidRecordError, match=r"without a key.*'keys-needed'"):
                p.send("keys-needed", b"no key")
            with pytest.raises(InvalidRecordError, match="without a key"):
                p.send_batch("keys-needed", [b"a", b"b"])
            p.send("keys-needed", b"keyed", key=b"k").get(10)
            p.send_batch("keys-needed", [b"a", b"b"], keys=[b"k1", b"k2"])
            p.flush(10)
    with Producer(daemon.data_dir, acks=1) as p:
        p.send("becomes-compacted", b"before").get(10)
        with Admin(daemon.data_dir) as admin:
            admin.incremental_alter_configs("becomes-compacted", {"cleanup.policy": "compact"})

        def refused() -> bool:
            try:
                p.send("becomes-compacted", b"after").get(10)
            except InvalidRecordError:
                return True
            return False

        wait_for(refused, what="a keyless send refused once the topic is compacted")
    with Consumer(data_dir=daemon.data_dir, auto_offset_reset="earliest") as c:
        c.assign([TopicPartition("keys-needed", 0)])
        got: list[Any] = []
        wait_for(lambda: got.extend(c.poll(timeout=0.2)) or len(got) >= 9, what="the keyed records")
        assert len(got) == 9 and all(r.key is not None for r in got)
