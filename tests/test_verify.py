"""engine.verify on data dirs laid out by engine.log itself (no daemon): what it finds in
damaged segments and indexes, what it leaves alone, and what a repair makes of them.
The daemon-backed cases (consumers, the CLI, a 3-replica topic) are in test_integrity."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from engine.datadir import DataDir
from engine.log import Log
from engine.record_batch import encode_batch, scan_batches
from engine.verify import repair, stopped_daemon, verify

CONFIG = {"segment.bytes": 2_000, "index.interval.bytes": 256}


def batch(offset: int) -> bytes:
    return encode_batch(offset, [(None, b"value-%04d" % offset, [], 1_000 + offset)])


def replicas(root: Path, brokers: tuple[int, ...] = (1, 2), count: int = 100) -> DataDir:
    """The same log (``count`` one-record batches, several segments) on each broker."""
    dd = DataDir.resolve(root)
    for broker in brokers:
        directory = dd.partition_dir(broker, "t", 0)
        directory.mkdir(parents=True)
        (directory / "topic.id").write_text("id-1")
        with Log.open(directory, CONFIG) as log:
            for i in range(count):
                log.append(batch(i))
    return dd


def files(directory: Path) -> dict[str, bytes]:
    return {f.name: f.read_bytes() for f in sorted(directory.glob("0*"))}


def segment_of(directory: Path, offset: int) -> tuple[Path, int, int]:
    """(segment file, position, length) of the one-record batch at ``offset``."""
    for path in sorted(directory.glob("*.log"), reverse=True):
        if int(path.name[:20]) <= offset:
            infos, _, _ = scan_batches(path.read_bytes(), verify_crc=False)
            k = offset - int(path.name[:20])
            return path, int(infos["position"][k]), int(infos["length"][k])
    raise AssertionError(offset)


def lines(dd: DataDir) -> list[str]:
    return [p.line() for r in verify(dd) for p in r.problems]


def test_intact_replicas_have_no_problem(tmp_path: Path) -> None:
    dd = replicas(tmp_path)
    found = verify(dd)
    assert [(r.broker, r.log_start_offset, r.log_end_offset, r.problems) for r in found] == [
        (1, 0, 100, []), (2, 0, 100, []),
    ]  # fmt: skip
    assert len(list(dd.partition_dir(1, "t", 0).glob("*.log"))) > 3


def test_a_damaged_length_stops_the_walk_and_says_how_much_is_unchecked(tmp_path: Path) -> None:
    dd = replicas(tmp_path)
    directory = dd.partition_dir(1, "t", 0)
    path, position, _ = segment_of(directory, 40)
    data = bytearray(path.read_bytes())
    struct.pack_into(">i", data, position + 8, 1 << 30)  # batch_length
    path.write_bytes(bytes(data))
    (problem,) = lines(dd)
    assert problem.startswith(
        f"topic=t partition=0 broker=1 file={path.name} position={position} offset=40: "
        "not a whole magic-2 batch: the"
    ) and problem.endswith("bytes from here on are not checked")
    assert repair(verify(dd)) == [
        "repaired topic=t partition=0 broker=1: cut at offset 40 (its first bad batch at 40), "
        "copied offsets 40..99 from broker 2"
    ]
    assert lines(dd) == []
    assert files(directory) == files(dd.partition_dir(2, "t", 0))


def test_a_missing_middle_segment_is_found_and_refilled(tmp_path: Path) -> None:
    dd = replicas(tmp_path)
    directory = dd.partition_dir(1, "t", 0)
    path, _, _ = segment_of(directory, 50)
    following = sorted(directory.glob("*.log"))[sorted(directory.glob("*.log")).index(path) + 1]
    for suffix in (".log", ".index", ".timeindex"):
        path.with_suffix(suffix).unlink()
    (problem,) = lines(dd)
    start = int(path.name[:20])
    assert problem == (
        f"topic=t partition=0 broker=1 file={following.name} offset={start}: the segment "
        f"starts at offset {int(following.name[:20])}, the one before it ends at {start}"
    )
    repair(verify(dd))
    assert lines(dd) == []
    assert files(directory) == files(dd.partition_dir(2, "t", 0))


def test_a_torn_tail_of_a_log_not_stopped_cleanly_is_recoverys_not_a_problem(
    tmp_path: Path,
) -> None:
    dd = replicas(tmp_path, brokers=(1,))
    directory = dd.partition_dir(1, "t", 0)
    last = sorted(directory.glob("*.log"))[-1]
    last.write_bytes(last.read_bytes()[:-5])
    assert len(lines(dd)) == 1  # cleanly closed: a cut batch is damage
    (directory / "recovery-point").write_text(json.dumps({"recovery_point": 0, "clean": False}))
    assert lines(dd) == []  # a broker writes it, or recovery cuts it at the next start


def test_a_format_1_log_is_checked_for_increasing_offsets_only(tmp_path: Path) -> None:
    dd = DataDir.resolve(tmp_path)
    directory = dd.partition_dir(1, "t", 0)
    Log.open(directory).close()
    meta = json.loads((directory / "log.meta").read_text())
    (directory / "log.meta").write_text(json.dumps({**meta, "format_version": 1}))
    with Log.open(directory) as log:
        log.append(batch(0) + batch(5) + batch(6))  # a gap: allowed in format 1
    assert lines(dd) == []
    path, position, _ = segment_of(directory, 0)
    data = bytearray(path.read_bytes())
    struct.pack_into(">q", data, position + 2 * len(batch(0)), 3)  # offset 6 -> 3: backwards
    path.write_bytes(bytes(data))
    (problem,) = lines(dd)
    assert "offset=6: offsets out of sequence (stored offsets 3..3)" in problem


def test_repair_refuses_while_the_data_dir_is_locked(tmp_path: Path) -> None:
    import fcntl
    import os

    from engine.errors import EngineError

    dd = replicas(tmp_path, brokers=(1,))
    fd = os.open(dd.lock_file, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a running daemon holds it
        with (
            pytest.raises(EngineError, match="repair needs the daemon stopped"),
            stopped_daemon(dd),
        ):
            pass
    finally:
        os.close(fd)
    with stopped_daemon(dd):
        pass


def test_a_source_must_reach_as_far_as_the_damaged_replica(tmp_path: Path) -> None:
    """A replica that holds less than the damaged one (a lagging follower) is no source:
    copying it would lose what only the damaged one holds."""
    dd = replicas(tmp_path)
    with Log.open(dd.partition_dir(1, "t", 0), CONFIG) as log:
        log.append(batch(100))
    path, position, length = segment_of(dd.partition_dir(1, "t", 0), 30)
    data = bytearray(path.read_bytes())
    data[position + length - 2] ^= 1
    path.write_bytes(bytes(data))
    (line,) = repair(verify(dd))
    assert line.startswith("cannot repair topic=t partition=0 broker=1: no intact replica "
                           "holds offsets 30..100 (broker 2 holds 0..99)")  # fmt: skip
