"""The log cleaner: compaction of one partition replica's log (``cleanup.policy=compact``).

Kafka's log compaction, for one replica's log (each replica cleans its own, as Kafka's
brokers do). A clean rewrites the log's *cleanable* segments and keeps of them:

- the last record of each key, as of the end of the cleanable segments; a record
  without a key is kept (Kafka refuses those on a compacted topic; the engine's
  producers write to the ring directly, so the broker cannot);
- a tombstone (a record whose value is null: "delete this key") while it is the last
  of its key, until ``delete.retention.ms`` after its segment was last written (the
  segment file's mtime, which a clean carries over to the segment it writes);
- every record of a committed transaction that is the last of its key, and none of an
  aborted one's, nor of a fenced producer's late batch (read_committed consumers never
  see those; read_uncommitted ones stop seeing them, as in Kafka);
- a transaction marker while a record of its transaction remains before it or its
  ``delete.retention.ms`` has not passed, and always the last marker of each producer
  id (read_committed readers judge a fenced producer's late batch by its epoch).
  A control batch of another kind is kept.

A compressed batch (a Kafka client's) is read plain (engine.compression): kept whole, it
is written as it was stored; kept in part, what is kept is compressed again with its
codec, as Kafka's cleaner does. One that does not decompress stops the clean
(CorruptRecordError, nothing changed), as one that fails its CRC does.

Offsets never change: a batch keeping some of its records keeps its offsets, and its
records skip the removed ones (record_batch.filter_batch); a run of batches that keep
nothing becomes one empty batch over their offsets (Kafka's batch of record count 0),
so the log stays dense (engine/log.py) and every reader's offset checks hold. A read
at a removed offset starts at the next record kept.

Cleanable segments: the sealed segments (never the active one) that end before the
first uncleanable offset, which is the replica's high watermark (above it a record may
yet be cut), the first offset of a transaction whose marker is not in a sealed segment
(open, or decided in the active segment only), or the base offset of the first segment
with a record younger than ``min.compaction.lag.ms``.

When: :meth:`LogCleaner.clean` cleans when the dirty share of the cleanable bytes
(those after where the last clean ended, kept in ``cleaner-checkpoint``) is at least
``min.cleanable.dirty.ratio``, when the first dirty segment is older than
``max.compaction.lag.ms``, or when a tombstone or marker that the last clean kept
comes due. A replica of a compacted topic asks from its cleaner
thread every ``BACKOFF_S`` (engine/replica.py; Kafka's ``log.cleaner.backoff.ms``).

How: a first pass over the sealed segments' batch headers decides every transaction;
a second makes the key map over the cleanable segments (key -> its last offset: a
dict, so memory grows with the distinct keys); a third writes what is kept into new
segments in the partition's ``cleaning/`` directory, their indexes built as batches
are written, a new one whenever one would pass ``segment.bytes`` (as the log rolls), so
a compacted log does not stay a row of small segments. Then everything is fsynced and
swapped in (segment_swap.py).

Crash: before the swap commits, the old segments stand and the next open removes
``cleaning/``; after it, the next open finishes the swap. Either way a readable log.

Who may call: :meth:`LogCleaner.clean` from one thread at a time (a replica's cleaner
thread, or a tool on a log it opened). It holds the log's ``cleaning_lock`` through a
clean, while the log's drain thread goes on appending to the active segment.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from engine.compression import (
    COMPRESSION_MASK,
    Codec,
    compressed_batch,
    first_compressed,
    plain_or_raise,
)
from engine.datadir import fsync_directory, write_private_file
from engine.errors import CorruptRecordError
from engine.log import Log
from engine.record_batch import (
    BATCH_HEADER_LENGTH,
    MAX_EMPTY_BATCH_OFFSETS,
    ScanStatus,
    decode_record_infos,
    encode_empty_batch,
    filter_batch,
    read_producer_fields,
    scan_batches,
)
from engine.segment import LogSegment
from engine.segment_swap import cleaning_dir, commit
from engine.txn_filter import ABORT, COMMIT, CONTROL, TRANSACTIONAL, marker_type

__all__ = ["BACKOFF_S", "CleanResult", "LogCleaner"]

#: How often a replica of a compacted topic asks its cleaner to clean (Kafka's
#: log.cleaner.backoff.ms is 15 s; the environment can set it, tests do).
BACKOFF_S = float(os.environ.get("ENGINE_CLEANER_BACKOFF_MS", "15000")) / 1000
#: Where the last clean ended, in the partition directory. JSON, version 1:
#: {"version": 1, "clean_offset": offset, "next_due_ms": ms or null}.
CHECKPOINT_FILE = "cleaner-checkpoint"
CHECKPOINT_VERSION = 1
#: Bytes of batches read from a segment at a time.
CHUNK_BYTES = 1 << 20
_NO_LIMIT = 2**63 - 1

logger = logging.getLogger("engine.cleaner")


@dataclass(frozen=True)
class CleanResult:
    """What one clean did."""

    replaced: list[int]
    """Base offsets of the segments it replaced."""
    cleaned: list[int]
    """Base offsets of the segments that replaced them (the same offsets, fewer records)."""
    end_offset: int
    """Where the cleaned offsets end: the first offset it did not clean."""
    bytes_before: int
    bytes_after: int
    records_removed: int


class _Transactions:
    """The first pass: what becomes of each transactional batch of the sealed segments,
    by the rules of the read_committed filter (engine/txn_filter.py)."""

    def __init__(self) -> None:
        #: Base offsets of the data batches whose records go: aborted, or fenced.
        self.aborted: set[int] = set()
        #: Producer id -> base offset of its last marker.
        self.last_marker: dict[int, int] = {}
        self._undecided: dict[int, list[tuple[int, int]]] = {}  # id -> [(base, epoch)]
        self._marker_epochs: dict[int, int] = {}

    def add(
        self, base_offset: int, attributes: int, producer_id: int, epoch: int, kind: int
    ) -> None:
        """One batch, in offset order; ``kind`` is its marker type (control batches)."""
        if attributes & CONTROL:
            if kind not in (ABORT, COMMIT):
                return
            self.last_marker[producer_id] = base_offset
            self._marker_epochs[producer_id] = max(self._marker_epochs.get(producer_id, -1), epoch)
            waiting = self._undecided.pop(producer_id, [])
            later = [(base, e) for base, e in waiting if e > epoch]
            if later:
                self._undecided[producer_id] = later
            if kind == ABORT:
                self.aborted.update(base for base, e in waiting if e <= epoch)
        elif attributes & TRANSACTIONAL:
            if self._marker_epochs.get(producer_id, -1) > epoch:
                self.aborted.add(base_offset)  # a fenced producer's late batch
            else:
                self._undecided.setdefault(producer_id, []).append((base_offset, epoch))

    @property
    def first_open(self) -> int | None:
        """The first offset of a transaction not decided by a sealed segment's marker."""
        bases = [base for waiting in self._undecided.values() for base, _ in waiting]
        return min(bases) if bases else None


class _Hole:
    """A run of offsets whose batches kept nothing: one empty batch (or more) later."""

    def __init__(self) -> None:
        self.start = -1
        self.end = -1
        self.leader_epoch = 0
        self.timestamp = -1

    def add(self, base_offset: int, last_offset: int, leader_epoch: int, timestamp: int) -> None:
        if self.start < 0:
            self.start = base_offset
        self.end = last_offset + 1
        self.leader_epoch, self.timestamp = leader_epoch, max(self.timestamp, timestamp)

    def take(self) -> list[bytes]:
        """The empty batches over the run (none when there is none); the run is reset."""
        out = []
        while 0 <= self.start < self.end:
            count = min(self.end - self.start, MAX_EMPTY_BATCH_OFFSETS)
            out.append(
                encode_empty_batch(
                    self.start, count, leader_epoch=self.leader_epoch, timestamp=self.timestamp
                )
            )
            self.start += count
        self.start = self.end = -1
        self.timestamp = -1
        return out


class _Output:
    """The cleaned segments being written into ``cleaning/``: the kept batches back to
    back, a new segment whenever one would pass ``segment.bytes`` (or its index is full,
    or 2**31 offsets), as the log rolls. Each is dated (mtime) with the newest of the
    segments whose batches it may hold."""

    def __init__(self, log: Log, staging: str) -> None:
        self.log = log
        self.staging = staging
        self.bases: list[int] = []
        #: Each written segment's mtime (ms), once finished.
        self.modified_ms: list[int] = []
        #: The written segments holding a tombstone or marker kept until it is due.
        self.holding_due: set[int] = set()
        self.size = 0
        self._segment: LogSegment | None = None
        self._modified_ms = 0
        self._input_modified_ms = 0

    def next_input(self, modified_ms: int) -> None:
        """The batches written from now on come from a segment last written then."""
        self._input_modified_ms = modified_ms
        self._modified_ms = max(self._modified_ms, modified_ms)

    def _start(self, base_offset: int) -> None:
        self.finish()
        config = self.log.config
        self._segment = LogSegment.create(
            self.staging,
            base_offset,
            index_interval_bytes=config.index_interval_bytes,
            index_bytes=config.segment_index_bytes,
            dense=True,
        )
        self.bases.append(base_offset)
        self._modified_ms = self._input_modified_ms

    def write(self, pieces: list[bytes], holds_due: bool = False) -> None:
        """Append whole batches, the next offsets after those written before;
        ``holds_due``: one of them is a tombstone or marker kept until it is due."""
        if not pieces:
            return
        first = max(len(self.bases) - 1, 0)
        data = b"".join(pieces)
        infos, _, _ = scan_batches(data, verify_crc=False)
        segment_bytes = self.log.config.segment_bytes
        start = 0
        while start < len(infos):
            placed = 0
            if self._segment is not None:
                placed = self._segment.append(
                    data, infos, start, segment_bytes=segment_bytes, segment_ms=_NO_LIMIT
                )
            if not placed:
                self._start(int(infos["base_offset"][start]))
                continue
            start += placed
        self.size += len(data)
        if holds_due:
            self.holding_due.update(range(first, len(self.bases)))

    def finish(self) -> None:
        """Seal, date and fsync the current cleaned segment."""
        segment, self._segment = self._segment, None
        if segment is None:
            return
        self.modified_ms.append(self._modified_ms)
        try:
            segment.seal()
            modified_ns = self._modified_ms * 1_000_000
            os.utime(segment.log_path, ns=(modified_ns, modified_ns))
            segment.flush()
        finally:
            segment.close()

    def abandon(self) -> None:
        if self._segment is not None:
            self._segment.close()
            self._segment = None
        shutil.rmtree(self.staging, ignore_errors=True)


def _read_checkpoint(directory: str) -> tuple[int, int | None]:
    """(clean_offset, next_due_ms) from ``cleaner-checkpoint``; (-1, None), everything
    dirty, when it is missing or unreadable (it is only ever a hint)."""
    try:
        with open(os.path.join(directory, CHECKPOINT_FILE), "rb") as f:
            data = json.loads(f.read())
        if data["version"] != CHECKPOINT_VERSION:
            return -1, None
        due = data["next_due_ms"]
        return int(data["clean_offset"]), None if due is None else int(due)
    except (OSError, ValueError, KeyError, TypeError):
        return -1, None


class _Stopped(Exception):
    """The replica stops: the clean is dropped (nothing was swapped)."""


class _Chunk(NamedTuple):
    """A chunk of a segment's whole batches, CRC-checked, compressed ones made plain."""

    data: bytes
    infos: npt.NDArray[Any]
    """scan_batches' rows of ``data``."""
    compressed: dict[int, bytes]
    """Each compressed batch as stored, by base offset (its plain copy is in data)."""


def _chunks(segment: LogSegment, should_stop: Callable[[], bool]) -> Iterator[_Chunk]:
    """The segment's whole batches, a chunk at a time, CRC-checked, compressed batches
    made plain. _Stopped when ``should_stop`` says so before a chunk. CorruptRecordError
    at a batch that fails its CRC or does not decompress."""
    offset = segment.base_offset
    while offset < segment.next_offset:
        if should_stop():
            raise _Stopped
        data = segment.read(offset, CHUNK_BYTES)
        if not data:
            return
        infos, scanned, status = scan_batches(data, verify_crc=True)
        if status is not ScanStatus.OK or scanned != len(data) or not len(infos):
            raise CorruptRecordError(
                f"the cleaner found a corrupt batch: path={segment.log_path} offset={offset} "
                f"reason={status.name}"
            )
        compressed: dict[int, bytes] = {}
        if first_compressed(data) < len(data):
            for info in infos[(infos["attributes"] & COMPRESSION_MASK) != 0]:
                position, length = int(info["position"]), int(info["length"])
                compressed[int(info["base_offset"])] = data[position : position + length]
            data = plain_or_raise(data, f"path={segment.log_path}")
            infos, _, _ = scan_batches(data, verify_crc=False)
        yield _Chunk(data, infos, compressed)
        offset = int(infos["last_offset"][-1]) + 1


def _marker_kind(data: bytes, info: Any) -> int:
    position = int(info["position"])
    try:
        return marker_type(data, position, position + int(info["length"]))
    except CorruptRecordError:
        return -1  # not a marker: kept, decides nothing


class LogCleaner:
    """Cleans one log now and then (module docstring).

    Holds the log, where its last clean ended (``clean_offset``: below it the
    cleanable segments were cleaned) and when a tombstone or marker that clean kept
    comes due (``next_due_ms``), both also in the log's ``cleaner-checkpoint`` (format
    at CHECKPOINT_FILE), read when it is made: a restart does not clean again what was
    clean. Used by one thread at a time.
    """

    def __init__(self, log: Log) -> None:
        self.log = log
        self.clean_offset, self.next_due_ms = _read_checkpoint(log.directory)
        # A log cut since (a follower's divergent tail, a repair) is dirty from its end.
        self.clean_offset = min(self.clean_offset, log.log_end_offset)

    def _checkpoint(self, clean_offset: int, next_due_ms: int | None) -> None:
        self.clean_offset, self.next_due_ms = clean_offset, next_due_ms
        data = {
            "version": CHECKPOINT_VERSION,
            "clean_offset": clean_offset,
            "next_due_ms": next_due_ms,
        }
        write_private_file(
            os.path.join(self.log.directory, CHECKPOINT_FILE), json.dumps(data).encode() + b"\n"
        )

    def dirty_ratio(self) -> float:
        """The share of the sealed segments' bytes written since the last clean."""
        sealed = self.log.sealed_segments
        total = sum(segment.size for segment in sealed)
        dirty = sum(s.size for s in sealed if s.base_offset >= self.clean_offset)
        return dirty / total if total else 0.0

    def _wanted(self, now_ms: int) -> bool:
        config = self.log.config
        sealed = self.log.sealed_segments
        dirty = [s for s in sealed if s.base_offset >= self.clean_offset and s.size]
        if self.next_due_ms is not None and now_ms >= self.next_due_ms:
            return True
        if not dirty:
            return False
        if self.dirty_ratio() >= config.min_cleanable_dirty_ratio:
            return True
        # Every record of the first dirty segment is older than max.compaction.lag.ms.
        return dirty[0].max_timestamp < now_ms - config.max_compaction_lag_ms

    def clean(
        self,
        now_ms: int | None = None,
        *,
        force: bool = False,
        should_stop: Callable[[], bool] = lambda: False,
        committed_offset: int = _NO_LIMIT,
    ) -> CleanResult | None:
        """Clean the log if it is due (``force``: whatever the dirty ratio); the result,
        or None when nothing was cleaned (not due, nothing cleanable, nothing to remove,
        or ``should_stop`` said so between two chunks). Only segments that end at or
        below ``committed_offset`` (the replica's high watermark) are cleaned: a record
        above it may yet be cut from this replica, and must not have removed an older
        record of its key (Kafka likewise cleans below the last stable offset only).

        CorruptRecordError when a batch to clean fails its CRC (nothing is changed).
        """
        log = self.log
        if not log.config.compact or not log.dense:
            return None
        now_ms = time.time_ns() // 1_000_000 if now_ms is None else now_ms
        with log.cleaning_lock:
            if self.clean_offset < log.log_start_offset:
                self.clean_offset = log.log_start_offset
            if not force and not self._wanted(now_ms):
                return None
            try:
                return self._clean(now_ms, should_stop, committed_offset)
            except _Stopped:
                return None

    def _cleanable(
        self, now_ms: int, should_stop: Callable[[], bool], committed_offset: int
    ) -> tuple[list[LogSegment], _Transactions]:
        """The cleanable segments and the first pass's transactions."""
        sealed = self.log.sealed_segments
        txns = _Transactions()
        for segment in sealed:
            for data, infos, _ in _chunks(segment, should_stop):
                transactional = np.flatnonzero(infos["attributes"] & (TRANSACTIONAL | CONTROL))
                for i in transactional.tolist():
                    info = infos[i]
                    position = int(info["position"])
                    fields = read_producer_fields(data, position)
                    kind = _marker_kind(data, info) if fields.attributes & CONTROL else -1
                    txns.add(
                        int(info["base_offset"]),
                        fields.attributes,
                        fields.producer_id,
                        fields.producer_epoch,
                        kind,
                    )
        limit = min(self.log.log_end_offset, committed_offset)
        first_open = txns.first_open
        if first_open is not None:
            limit = min(limit, first_open)
        lag = self.log.config.min_compaction_lag_ms
        cleanable = []
        for segment in sealed:
            if segment.next_offset > limit or (lag and segment.max_timestamp > now_ms - lag):
                break
            cleanable.append(segment)
        return cleanable, txns

    def _key_map(
        self, segments: list[LogSegment], aborted: set[int], should_stop: Callable[[], bool]
    ) -> dict[bytes, int]:
        """Each key's last offset in ``segments``, aborted batches left out."""
        keys: dict[bytes, int] = {}
        for segment in segments:
            for data, infos, _ in _chunks(segment, should_stop):
                records = decode_record_infos(data)
                if not len(records):
                    continue
                offsets = records["offset"]
                keep = records["key_length"] >= 0
                if aborted:
                    batch = np.searchsorted(infos["base_offset"], offsets, "right") - 1
                    gone = np.array([int(b) in aborted for b in infos["base_offset"]], dtype=bool)
                    keep &= ~gone[batch]
                rows = np.flatnonzero(keep)
                positions = records["key_position"][rows].tolist()
                lengths = records["key_length"][rows].tolist()
                for offset, position, length in zip(
                    offsets[rows].tolist(), positions, lengths, strict=True
                ):
                    keys[data[position : position + length]] = offset
        return keys

    def _clean(
        self, now_ms: int, should_stop: Callable[[], bool], committed_offset: int
    ) -> CleanResult | None:
        log = self.log
        config = log.config
        cleanable, txns = self._cleanable(now_ms, should_stop, committed_offset)
        if not cleanable:
            return None
        keys = self._key_map(cleanable, txns.aborted, should_stop)
        staging = cleaning_dir(log.directory)
        shutil.rmtree(staging, ignore_errors=True)  # an abandoned clean's
        os.mkdir(staging, 0o700)
        output = _Output(log, staging)
        hole = _Hole()
        removed = 0
        due: int | None = None
        kept_since_marker: dict[int, bool] = {}  # producer id -> a record of its txn kept
        try:
            for segment in cleanable:
                modified_ms = segment.modified_ms
                output.next_input(modified_ms)
                expired = modified_ms <= now_ms - config.delete_retention_ms
                expiry = modified_ms + config.delete_retention_ms
                for chunk in _chunks(segment, should_stop):
                    pieces, gone, kept_due = self._clean_chunk(
                        chunk, keys, txns, kept_since_marker, hole, expired
                    )
                    removed += gone
                    if kept_due:
                        due = expiry if due is None else min(due, expiry)
                    output.write(pieces, kept_due)
            output.write(hole.take())
            output.finish()
            end_offset = cleanable[-1].next_offset
            replaced = [segment.base_offset for segment in cleanable]
            before = sum(segment.size for segment in cleanable)
            if not removed and len(output.bases) >= len(cleanable):
                output.abandon()  # nothing would change
                self._checkpoint(end_offset, due)
                return None
            fsync_directory(staging)
            log.upgrade_format()
            commit(log.directory, replaced, output.bases)
        except BaseException:
            output.abandon()
            raise
        log.replace_segments(replaced, output.bases)
        # What the next clean sees: the written segments' mtimes.
        dues = [output.modified_ms[i] + config.delete_retention_ms for i in output.holding_due]
        self._checkpoint(end_offset, min(dues) if dues else None)
        result = CleanResult(replaced, output.bases, end_offset, before, output.size, removed)
        logger.info(
            "cleaned %s up to offset %d: %d segments into %d, %d -> %d bytes, %d records removed",
            log.directory, end_offset, len(replaced), len(output.bases), before, output.size,
            removed,
        )  # fmt: skip
        return result

    def _clean_chunk(
        self,
        chunk: _Chunk,
        keys: dict[bytes, int],
        txns: _Transactions,
        kept_since_marker: dict[int, bool],
        hole: _Hole,
        expired: bool,
    ) -> tuple[list[bytes], int, bool]:
        """What of one chunk's batches is kept: (the batches to write, in order, the
        records removed, whether a tombstone or marker was kept only until it is due)."""
        data, infos = chunk.data, chunk.infos
        records = _Records(data)
        pieces: list[bytes] = []
        removed = 0
        kept_due = False
        for info in infos:
            base, last = int(info["base_offset"]), int(info["last_offset"])
            position, length = int(info["position"]), int(info["length"])
            attributes = int(info["attributes"])
            batch = data[position : position + length]
            producer_id = read_producer_fields(data, position).producer_id
            keep: bytes | None = batch
            if attributes & CONTROL:
                if _marker_kind(data, info) in (ABORT, COMMIT):
                    needed = kept_since_marker.pop(producer_id, False)
                    if not needed and txns.last_marker.get(producer_id) != base:
                        if expired:
                            keep, removed = None, removed + 1
                        else:
                            kept_due = True
            elif not int(info["records_count"]):
                keep = None  # an empty batch: part of the run of offsets around it
            elif base in txns.aborted:
                keep = None
                removed += records.count(base, last)
            else:
                keep, gone, tombstone_kept = records.filter(
                    position, batch, base, last, keys, expired
                )
                removed += gone
                kept_due |= tombstone_kept
                if keep is not None and attributes & TRANSACTIONAL:
                    kept_since_marker[producer_id] = True
            if keep is None:
                leader_epoch = int.from_bytes(batch[12:16], "big", signed=True)
                hole.add(base, last, leader_epoch, int(info["max_timestamp"]))
                continue
            stored = chunk.compressed.get(base)
            if stored is not None:  # kept whole as stored, or what is kept recompressed
                codec = Codec(stored[22] & COMPRESSION_MASK)  # attributes' low byte
                keep = stored if keep is batch else compressed_batch(keep, codec)
            pieces += hole.take()
            pieces.append(keep)
        return pieces, removed, kept_due


class _Records:
    """The records of one chunk of batches, as lists (decode_record_infos' columns)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        rows = decode_record_infos(data)
        self.offsets: npt.NDArray[np.int64] = rows["offset"]
        self.offset = rows["offset"].tolist()
        self.timestamp = rows["timestamp"].tolist()
        self.key_position = rows["key_position"].tolist()
        self.key_length = rows["key_length"].tolist()
        self.value_length = rows["value_length"].tolist()
        # A record ends where its headers end (they run to the record's end).
        self.end = (rows["headers_position"].astype(np.int64) + rows["headers_length"]).tolist()

    def _rows(self, base: int, last: int) -> tuple[int, int]:
        lo = int(np.searchsorted(self.offsets, base, "left"))
        return lo, int(np.searchsorted(self.offsets, last, "right"))

    def count(self, base: int, last: int) -> int:
        """How many records the batch over offsets ``base..last`` holds."""
        lo, hi = self._rows(base, last)
        return hi - lo

    def filter(
        self, position: int, batch: bytes, base: int, last: int, keys: dict[bytes, int],
        expired: bool,
    ) -> tuple[bytes | None, int, bool]:  # fmt: skip
        """The batch at ``position`` (over offsets ``base..last``) keeping the last record
        of each key: (what is kept of it, None for nothing; the records removed; whether
        a tombstone was kept only until it is due). ``expired``: tombstones go."""
        lo, hi = self._rows(base, last)
        data = self.data
        spans: list[tuple[int, int]] = []
        start = position + BATCH_HEADER_LENGTH
        max_timestamp = -1
        tombstone_kept = False
        for k in range(lo, hi):
            end = self.end[k]
            key_length = self.key_length[k]
            keep = True
            if key_length >= 0:
                key_position = self.key_position[k]
                keep = keys.get(data[key_position : key_position + key_length]) == self.offset[k]
                if keep and self.value_length[k] < 0:  # a tombstone, the last of its key
                    keep = not expired
                    tombstone_kept = keep
            if keep:
                spans.append((start - position, end - position))
                max_timestamp = max(max_timestamp, self.timestamp[k])
            start = end
        if len(spans) == hi - lo:
            return batch, 0, tombstone_kept
        if not spans:
            return None, hi - lo, False
        return filter_batch(batch, spans, max_timestamp), hi - lo - len(spans), tombstone_kept
