"""``engine verify``: find the corrupt batches and indexes in a data dir's logs, and repair
a corrupt replica from an intact one.

What is checked, for every replica's log (``broker-<id>/<topic>-<partition>/``) of
every partition, or of one topic, reading the files only:

- every batch of every segment: a whole magic-2 batch, its CRC32C, and its offsets in
  sequence. In a dense log (log.py, formats 2 and 3) each batch starts right after the
  one before it (a compacted batch still covers all its offsets, its records fewer:
  engine/cleaner.py) and a segment's first batch at the segment's base offset, so a damaged
  base offset (which no CRC covers) is found; in a format-1 log offsets must only
  increase. A segment that does not walk to its end (a damaged length or magic) is
  checked up to there; the bytes after are reported unchecked. The torn tail of a log
  that was not stopped cleanly (its broker runs, or was killed) is not a problem:
  recovery cuts it at the next start.
- every index: present, whole, in order; every offset-index entry names the start of
  a batch of its offset, the first batch has one; every time-index entry names a
  batch, bounds the timestamps up to it, and (in a sealed segment: all but the active
  one of a running log) the last bounds them all.

Each problem is one :class:`Problem` (one line of ``engine verify``). A missing index
file is a note, not a problem: the broker rebuilds it from its log at its next start;
so is a cleaner's ``cleaning/`` directory (segment_swap.py).
It can run while the daemon runs (a segment deleted meanwhile by retention is skipped).

Repair (:func:`repair`, ``engine verify --repair``) needs the daemon stopped: it holds
the data dir's lock while it works, so ``engine start`` waits for it to finish. A
replica with a bad batch is cut at its first bad batch by recovery (``Log.open`` with
``recover_from``, which also rebuilds the indexes of what it walked) and refilled
from an intact replica of the same partition, batch for batch (the bytes every
replica holds), rolling where that replica rolled, through :class:`engine.log.Log`,
so indexes and the recovery point are right. A replica may serve as the source when
none of its problems is at or after the bad offset, it holds that offset, and its log
ends where the corrupt one's ends or later (nothing the corrupt replica held is
lost). Without such a replica (replication 1, or every copy damaged) the log is left
as it is, and said so. Indexes are taken from a replica whose segment holds the same
bytes (the indexes follow from the log's bytes and the topic's settings, which the
replica's broker used); a damaged index without such a copy is removed, and the broker
rebuilds it with the topic's settings at its next start. A crash during a repair leaves
a cut, partly refilled log that a second run repairs.

Who may call: the ``engine`` command line, one thread.
"""

from __future__ import annotations

import contextlib
import fcntl
import mmap
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from engine.datadir import DataDir, write_private_file
from engine.errors import CorruptRecordError, EngineError
from engine.log import (
    DENSE_FORMAT,
    Log,
    LogConfig,
    LogReader,
    list_segment_bases,
    read_log_format,
    read_recovery_point,
)
from engine.offset_index import OFFSET_INDEX_DTYPE
from engine.record_batch import BatchProblem, ScanStatus, check_chunk, scan_batches
from engine.segment import INDEX_SUFFIX, LOG_SUFFIX, TIME_INDEX_SUFFIX, segment_path
from engine.segment_swap import CLEANING_DIR
from engine.time_index import TIME_INDEX_DTYPE

__all__ = [
    "Problem",
    "Replica",
    "find_replicas",
    "repair",
    "stopped_daemon",
    "verify",
    "verify_replica",
]

#: How long a replica whose cleaner is swapping segments is checked again.
SWAP_RETRY_S = 2.0

#: Batches one scan of a segment walks at most (bounds the info array).
_SCAN_BATCHES = 1 << 16
#: How many bad entries of one index file are reported one by one.
_MAX_INDEX_LINES = 3
#: Bytes a refill copies per read of the intact replica.
_REFILL_CHUNK = 1 << 20
_INT64_MIN = -(2**63)
_MISSING = "missing (the broker rebuilds it at its next start)"
#: The log settings of a repair: the batches were accepted once already (any size), and
#: segments roll where the source's did (Log.roll), not by size or age.
_REPAIR_CONFIG = LogConfig(
    segment_bytes=2**31 - 1, segment_ms=2**63 - 1, max_message_bytes=2**31 - 1
)


@dataclass(frozen=True)
class Problem:
    """One thing wrong in a replica's files: a batch (``in_data``) or an index entry."""

    topic: str
    partition: int
    broker: int
    file: str
    """The file's name: ``<base offset>.log``, ``.index``, ``.timeindex``, ``log.meta``."""
    position: int
    """Byte position in the file (-1: the file as a whole)."""
    offset: int
    """The offset it concerns (-1: none): for a bad batch, the first offset it should hold."""
    what: str
    in_data: bool

    def line(self) -> str:
        where = f" position={self.position}" if self.position >= 0 else ""
        offset = f" offset={self.offset}" if self.offset >= 0 else ""
        return (
            f"topic={self.topic} partition={self.partition} broker={self.broker} "
            f"file={self.file}{where}{offset}: {self.what}"
        )


@dataclass
class Replica:
    """What :func:`verify_replica` found in one replica's log."""

    topic: str
    partition: int
    broker: int
    directory: Path
    topic_id: str
    dense: bool = True
    log_start_offset: int = -1
    log_end_offset: int = -1
    problems: list[Problem] = field(default_factory=list)
    notes: list[Problem] = field(default_factory=list)
    """Not problems: missing index files, which the broker rebuilds at its next start."""

    @property
    def first_bad_offset(self) -> int | None:
        """The offset of its first bad batch (None: every batch checked is intact)."""
        offsets = [p.offset for p in self.problems if p.in_data]
        return min(offsets) if offsets else None

    @property
    def name(self) -> str:
        return f"topic={self.topic} partition={self.partition} broker={self.broker}"


def find_replicas(data_dir: DataDir, topic: str | None = None) -> list[tuple[str, int, int, Path]]:
    """``(topic, partition, broker, directory)`` of every replica's log in the data dir
    (of ``topic`` only, when given), in that order."""
    found = []
    root = data_dir.root
    for broker_dir in root.glob("broker-*") if root.is_dir() else []:
        suffix = broker_dir.name[len("broker-") :]
        if not suffix.isdigit() or not broker_dir.is_dir():
            continue
        for directory in broker_dir.iterdir():
            name, _, number = directory.name.rpartition("-")
            if not name or not number.isdigit() or not (directory / "log.meta").exists():
                continue
            if topic is None or name == topic:
                found.append((name, int(number), int(suffix), directory))
    return sorted(found)


def verify(data_dir: DataDir, topic: str | None = None) -> list[Replica]:
    """Check every replica's log (of ``topic`` only, when given); see the module docstring."""
    return [verify_replica(*found) for found in find_replicas(data_dir, topic)]


def verify_replica(topic: str, partition: int, broker: int, directory: Path) -> Replica:
    """Check one replica's log: its batches and its indexes (module docstring).

    A log whose cleaner swaps segments meanwhile (``cleaning/`` there: for a moment a
    cleaned segment and one it replaces are both listed) is checked again, up to
    SWAP_RETRY_S; a swap a crash left half done stays reported, beside its note."""
    deadline = time.monotonic() + SWAP_RETRY_S
    while True:
        replica = _verify_replica(topic, partition, broker, directory)
        swapping = any(note.file == CLEANING_DIR for note in replica.notes)
        if not replica.problems or not swapping or time.monotonic() > deadline:
            return replica
        time.sleep(0.05)


def _verify_replica(topic: str, partition: int, broker: int, directory: Path) -> Replica:
    try:
        topic_id = (directory / "topic.id").read_text().strip()
    except OSError:
        topic_id = ""
    replica = Replica(topic, partition, broker, directory, topic_id)

    def problem(file: str, position: int, offset: int, what: str, in_data: bool) -> None:
        replica.problems.append(
            Problem(topic, partition, broker, file, position, offset, what, in_data)
        )

    try:
        replica.dense = read_log_format(str(directory)) >= DENSE_FORMAT
    except (CorruptRecordError, OSError) as exc:
        problem("log.meta", -1, -1, f"unreadable: {exc}", True)
        return replica
    _, clean = read_recovery_point(str(directory))
    cleaning = (directory / CLEANING_DIR).is_dir()
    bases = list_segment_bases(str(directory))
    end: int | None = None  # where the previous segment's offsets end (None: unknown)
    for i, base in enumerate(bases):
        last = i == len(bases) - 1
        name = f"{base:020d}{LOG_SUFFIX}"
        if end is not None and (base != end if replica.dense else base < end):
            problem(
                name, -1, end,
                f"the segment starts at offset {base}, the one before it ends at {end}",
                True,
            )  # fmt: skip
        try:
            walk = _walk(directory, base, replica.dense, torn_tail_ok=last and not clean)
        except FileNotFoundError:  # retention deleted it meanwhile
            end = None
            continue
        for position, offset, what in walk.data_problems:
            problem(name, position, offset, what, True)
        for file, position, offset, what in walk.index_problems:
            found = Problem(topic, partition, broker, file, position, offset, what, False)
            (replica.notes if what == _MISSING else replica.problems).append(found)
        if replica.log_start_offset < 0:
            replica.log_start_offset = base
        end = walk.end_offset
        replica.log_end_offset = walk.end_offset if walk.end_offset is not None else -1
    if cleaning or (directory / CLEANING_DIR).is_dir():
        what = "a clean in progress, or cut short (its broker finishes or drops it at start)"
        replica.notes.append(Problem(topic, partition, broker, CLEANING_DIR, -1, -1, what, False))
    return replica


@dataclass
class _Walk:
    """What walking one segment found."""

    data_problems: list[tuple[int, int, str]] = field(default_factory=list)
    index_problems: list[tuple[str, int, int, str]] = field(default_factory=list)
    end_offset: int | None = None  # one past its last offset; None: it did not walk to the end


@contextlib.contextmanager
def _mapped(path: str) -> Iterator[Any]:
    """The file's bytes, mapped read-only (b"" when empty)."""
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        if not size:
            yield b""
            return
        with mmap.mmap(fh.fileno(), size, prot=mmap.PROT_READ) as mm:
            yield mm


def _walk(directory: Path, base: int, dense: bool, torn_tail_ok: bool) -> _Walk:
    """Check one segment's batches, then its indexes against them."""
    walk = _Walk()
    # The indexes are read before the log: a writer appends log bytes before the index
    # entries that point at them, so every entry read points into the log read after.
    raw_index = _read_optional(segment_path(str(directory), base, INDEX_SUFFIX))
    raw_times = _read_optional(segment_path(str(directory), base, TIME_INDEX_SUFFIX))
    with _mapped(segment_path(str(directory), base, LOG_SUFFIX)) as data:
        size = len(data)
        view = memoryview(data)
        try:
            batches, walked, status = _batches(view)
            crc_bad = _crc_failures(view, batches, walked)
        finally:
            view.release()
    positions = batches["position"].astype(np.int64)
    stored = batches["base_offset"]
    counts = batches["last_offset"] - stored + 1
    # The offset each batch should start at (its stored one, unless that is out of order)
    expected, out_of_order = _offsets(stored, counts, base, dense, crc_bad)
    for k in sorted(set(crc_bad) | set(out_of_order)):
        stored_range = f"stored offsets {int(stored[k])}..{int(batches['last_offset'][k])}"
        what = "CRC32C mismatch" if k in crc_bad else "offsets out of sequence"
        walk.data_problems.append((int(positions[k]), int(expected[k]), f"{what} ({stored_range})"))
    if walked < size and not (torn_tail_ok and status is ScanStatus.TRUNCATED):
        at = int(expected[-1] + counts[-1]) if len(batches) else base
        walk.data_problems.append(
            (walked, at, f"not a whole magic-2 batch: the {size - walked} bytes from here on "
                         "are not checked")
        )  # fmt: skip
    if walked == size or torn_tail_ok:
        walk.end_offset = int(expected[-1] + counts[-1]) if len(batches) else base
    walk.data_problems.sort()
    sealed = not torn_tail_ok
    walk.index_problems += _check_offset_index(
        raw_index, base, size, positions, expected, walked
    )
    max_ts = batches["max_timestamp"].astype(np.int64).copy()
    if crc_bad:
        max_ts[sorted(crc_bad)] = _INT64_MIN  # a damaged batch's timestamp proves nothing
    walk.index_problems += _check_time_index(
        raw_times, base, size, expected, max_ts, walked == size, sealed
    )
    return walk


def _read_optional(path: str) -> bytes | None:
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except FileNotFoundError:
        return None


def _batches(view: memoryview) -> tuple[npt.NDArray[Any], int, ScanStatus]:
    """Every batch the segment walks to (shape only), the bytes walked, why it stopped."""
    chunks = []
    position, status = 0, ScanStatus.OK
    while position < len(view):
        infos, scanned, status = scan_batches(view[position:], False, _SCAN_BATCHES)
        if len(infos):
            infos = infos.copy()
            infos["position"] += position
            chunks.append(infos)
        position += scanned
        if status is not ScanStatus.OK or not len(infos):
            break
    if not chunks:
        return scan_batches(b"")[0], position, status
    return np.concatenate(chunks), position, status


def _crc_failures(view: memoryview, batches: npt.NDArray[Any], walked: int) -> set[int]:
    """The indexes (in ``batches``) of the batches whose CRC32C does not match (C)."""
    bad: set[int] = set()
    positions = batches["position"]
    position = 0
    while position < walked:
        found = check_chunk(view[position:walked], _INT64_MIN, crc=True, dense=False)
        if found is None:
            break
        k = int(np.searchsorted(positions, position + found.position))
        if found.problem is BatchProblem.CRC:
            bad.add(k)
        # (OFFSETS: judged by _offsets with the segment in view; SHAPE: cannot be, walked)
        position = int(positions[k]) + int(batches["length"][k])
    return bad


def _offsets(
    stored: npt.NDArray[Any], counts: npt.NDArray[Any], base: int, dense: bool, crc_bad: set[int]
) -> tuple[npt.NDArray[np.int64], set[int]]:
    """(the offset each batch should start at, the batches whose stored one is out of
    order). Dense: the first at ``base``, each after the one before it (by its count,
    which the CRC covers, when that one's base is damaged); else each above the one
    before it. A batch after one whose CRC fails is not judged by that one."""
    n = len(stored)
    expected = stored.astype(np.int64).copy()
    if not n:
        return expected, set()
    adjacent = np.empty(n, dtype=np.int64)
    adjacent[0] = base
    adjacent[1:] = stored[:-1] + counts[:-1]
    suspects = np.flatnonzero(stored != adjacent if dense else stored < adjacent)
    bad: set[int] = set()
    for k in suspects.tolist():
        if k and k - 1 in crc_bad and k - 1 not in bad:
            continue
        want = int(expected[k - 1] + counts[k - 1]) if k and k - 1 in bad else int(adjacent[k])
        if (int(stored[k]) != want) if dense else (int(stored[k]) < want):
            bad.add(k)
            expected[k] = want
    return expected, bad


def _entries(raw: bytes, dtype: np.dtype[Any]) -> npt.NDArray[Any]:
    return np.frombuffer(raw, dtype=dtype, count=len(raw) // dtype.itemsize)


def _check_offset_index(
    raw: bytes | None,
    base: int,
    size: int,
    positions: npt.NDArray[np.int64],
    expected: npt.NDArray[np.int64],
    walked: int,
) -> list[tuple[str, int, int, str]]:
    name = f"{base:020d}{INDEX_SUFFIX}"
    item = OFFSET_INDEX_DTYPE.itemsize
    if raw is None:
        return [(name, -1, -1, _MISSING)] if size else []
    out = []
    if len(raw) % item:
        out.append((name, len(raw) - len(raw) % item, -1, "torn last entry"))
    entries = _entries(raw, OFFSET_INDEX_DTYPE)
    rel = entries["relative_offset"].astype(np.int64)
    pos = entries["position"].astype(np.int64)
    if len(entries) > 1 and ((np.diff(rel) <= 0).any() or (np.diff(pos) <= 0).any()):
        out.append((name, -1, -1, "entries out of order"))
    if size and (not len(entries) or pos[0] != 0):
        out.append((name, 0, base, "no entry for the first batch"))
    bad = []
    for j in np.flatnonzero(pos < walked).tolist():
        k = int(np.searchsorted(positions, pos[j]))
        if k == len(positions) or positions[k] != pos[j]:
            bad.append((j, f"points at position {int(pos[j])}, which starts no batch"))
        elif int(expected[k]) != base + int(rel[j]):
            bad.append((j, f"names offset {base + int(rel[j])}, the batch it points at starts "
                           f"at {int(expected[k])}"))  # fmt: skip
    beyond = int(np.count_nonzero(pos >= size))
    if beyond:
        bad.append((int(np.argmax(pos >= size)), f"{beyond} entries point past the log's end"))
    for j, what in bad[:_MAX_INDEX_LINES]:
        out.append((name, j * item, base + int(rel[j]), f"entry {j} {what}"))
    if len(bad) > _MAX_INDEX_LINES:
        out.append((name, -1, -1, f"and {len(bad) - _MAX_INDEX_LINES} more bad entries"))
    return out


def _check_time_index(
    raw: bytes | None,
    base: int,
    size: int,
    expected: npt.NDArray[np.int64],
    max_ts: npt.NDArray[np.int64],
    complete: bool,
    sealed: bool,
) -> list[tuple[str, int, int, str]]:
    """``expected``, ``max_ts``: of the batches walked (all of them when ``complete``);
    ``sealed``: the segment's last entry must bound every batch."""
    name = f"{base:020d}{TIME_INDEX_SUFFIX}"
    item = TIME_INDEX_DTYPE.itemsize
    if raw is None:
        return [(name, -1, -1, _MISSING)] if size else []
    out = []
    if len(raw) % item:
        out.append((name, len(raw) - len(raw) % item, -1, "torn last entry"))
    entries = _entries(raw, TIME_INDEX_DTYPE)
    stamps = entries["timestamp"].astype(np.int64)
    rel = entries["relative_offset"].astype(np.int64)
    if len(entries) > 1 and ((np.diff(stamps) <= 0).any() or (np.diff(rel) < 0).any()):
        out.append((name, -1, -1, "entries out of order"))
    running = np.maximum.accumulate(max_ts) if len(max_ts) else max_ts
    newest = int(running[-1]) if len(running) else -1
    sealed = sealed and complete
    bad = []
    for j in range(len(entries)):
        k = int(np.searchsorted(expected, base + rel[j]))
        if k == len(expected) and not complete:
            continue  # after where the walk stopped: not checked
        if k == len(expected) or int(expected[k]) != base + int(rel[j]):
            bad.append((j, f"names offset {base + int(rel[j])}, where no batch starts"))
        elif stamps[j] < running[k]:
            bad.append((j, f"says {int(stamps[j])}, below a timestamp up to its batch "
                           f"({int(running[k])})"))  # fmt: skip
        elif sealed and stamps[j] > newest:
            bad.append((j, f"says {int(stamps[j])}, above every batch's ({newest})"))
    for j, what in bad[:_MAX_INDEX_LINES]:
        out.append((name, j * item, base + int(rel[j]), f"entry {j} {what}"))
    if len(bad) > _MAX_INDEX_LINES:
        out.append((name, -1, -1, f"and {len(bad) - _MAX_INDEX_LINES} more bad entries"))
    last = int(stamps[-1]) if len(stamps) else -1
    if sealed and newest > last:
        out.append((name, -1, -1, f"entries missing: the newest timestamp {newest} is past "
                                  f"the last entry's ({last})"))  # fmt: skip
    return out


# ---- repair ------------------------------------------------------------------------


@contextlib.contextmanager
def stopped_daemon(data_dir: DataDir) -> Iterator[None]:
    """Hold the data dir's lock (as a daemon does) for the block: EngineError naming the
    command that stops the daemon when one runs."""
    path = data_dir.lock_file
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:  # no daemon ever ran here
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise EngineError(
                f"repair needs the daemon stopped: data_dir={data_dir.root} is in use; "
                f"run `engine stop --data-dir {data_dir.root}` first"
            ) from None
        yield
    finally:
        os.close(fd)  # releases the lock


def repair(replicas: list[Replica]) -> list[str]:
    """Repair every replica with problems from an intact one (module docstring); one line
    per replica saying what was done or why it was left. The daemon must be stopped
    (:func:`stopped_daemon`)."""
    lines = []
    for replica in replicas:
        if not replica.problems:
            continue
        peers = [
            r for r in replicas
            if r is not replica and (r.topic, r.partition, r.topic_id)
            == (replica.topic, replica.partition, replica.topic_id)
        ]  # fmt: skip
        bad = replica.first_bad_offset
        if bad is None:
            lines.append(_repair_indexes(replica, peers))
            continue
        sources = [
            r for r in peers
            if all(p.offset < bad for p in r.problems if p.in_data)
            and 0 <= r.log_start_offset <= bad
            and r.log_end_offset >= replica.log_end_offset
        ]  # fmt: skip
        if not sources:
            held = ", ".join(
                f"broker {r.broker} holds {r.log_start_offset}..{r.log_end_offset - 1}"
                + (f" with a bad batch at {r.first_bad_offset}" if r.first_bad_offset else "")
                for r in peers
            ) or "it has no other replica"
            lines.append(
                f"cannot repair {replica.name}: no intact replica holds offsets {bad}.."
                f"{replica.log_end_offset - 1} ({held}); left as it is: consumers raise "
                f"CorruptRecordError at offset {bad} until they seek past the bad batch"
            )
            continue
        source = min(sources, key=lambda r: (bool(r.problems), -r.log_end_offset))
        lines.append(_refill(replica, source, bad, peers))
    return lines


def _repair_indexes(replica: Replica, peers: list[Replica]) -> str:
    """Copy each damaged segment's indexes from a peer holding the same segment bytes,
    or remove them (the broker rebuilds them at its next start)."""
    bases = sorted({int(p.file[:20]) for p in replica.problems if p.file[:20].isdigit()})
    copied, removed = [], []
    for base in bases:
        peer = next((r for r in peers if _same_segment(replica, r, base)), None)
        if peer is not None:
            _copy_indexes(peer, replica, base)
            copied.append(f"{base:020d} (from broker {peer.broker})")
        else:
            for suffix in (INDEX_SUFFIX, TIME_INDEX_SUFFIX):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(segment_path(str(replica.directory), base, suffix))
            removed.append(f"{base:020d}")
    done = []
    if copied:
        done.append(f"copied the indexes of segments {', '.join(copied)}")
    if removed:
        done.append(
            f"removed the damaged indexes of segments {', '.join(removed)} (the broker "
            "rebuilds them from the logs at its next start)"
        )
    return f"repaired {replica.name}: {'; '.join(done)}"


def _same_segment(replica: Replica, peer: Replica, base: int) -> bool:
    """Does ``peer`` hold segment ``base`` with the same log bytes, and intact indexes?"""
    if any(p.file[:20] == f"{base:020d}" for p in peer.problems + peer.notes):
        return False
    mine = Path(segment_path(str(replica.directory), base, LOG_SUFFIX))
    theirs = Path(segment_path(str(peer.directory), base, LOG_SUFFIX))
    try:
        return mine.stat().st_size == theirs.stat().st_size and (
            mine.read_bytes() == theirs.read_bytes()
        )
    except FileNotFoundError:
        return False


def _copy_indexes(source: Replica, replica: Replica, base: int) -> None:
    for suffix in (INDEX_SUFFIX, TIME_INDEX_SUFFIX):
        data = Path(segment_path(str(source.directory), base, suffix)).read_bytes()
        write_private_file(segment_path(str(replica.directory), base, suffix), data)


def _refill(replica: Replica, source: Replica, bad: int, peers: list[Replica]) -> str:
    """Cut ``replica`` at its first bad batch (recovery), copy ``source`` from there."""
    # Recovery rebuilds the indexes of the segment that may hold ``bad`` and of the later ones.
    first = max((b for b in list_segment_bases(str(replica.directory)) if b <= bad), default=0)
    log = Log.open(replica.directory, _REPAIR_CONFIG, recover_from=bad)
    try:
        cut = log.log_end_offset
        rolls = set(list_segment_bases(str(source.directory)))
        with LogReader(source.directory) as reader:
            offset = cut
            while offset < source.log_end_offset:
                data = reader.read(offset, _REFILL_CHUNK, source.log_end_offset)
                if not data:
                    raise EngineError(
                        f"repair of {replica.name} stopped: broker {source.broker} has no "
                        f"batch at offset {offset}"
                    )
                found = check_chunk(data, offset, dense=source.dense)
                if found is not None:
                    raise EngineError(
                        f"repair of {replica.name} stopped: broker {source.broker}'s batch at "
                        f"offset {found.expected_offset} fails too ({found.problem.what})"
                    )
                if offset in rolls:
                    log.roll()  # where the source rolled
                offset = log.append(data)
    finally:
        log.close()
    # The indexes the broker would build (the topic's settings): a peer's, for each
    # segment now holding the same bytes; any other keeps what the refill built.
    for base in (b for b in list_segment_bases(str(replica.directory)) if b >= first):
        peer = next((r for r in peers if _same_segment(replica, r, base)), None)
        if peer is not None:
            _copy_indexes(peer, replica, base)
    return (
        f"repaired {replica.name}: cut at offset {cut} (its first bad batch at {bad}), "
        f"copied offsets {cut}..{source.log_end_offset - 1} from broker {source.broker}"
    )
