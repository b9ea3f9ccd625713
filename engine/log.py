"""A partition's durable log: ordered segments in one directory, and a reader for other processes.

A partition directory holds::

    log.meta                          format versions (JSON), written once at creation
    recovery-point                    JSON {"recovery_point": offset, "clean": bool}
    log-start-offset                  JSON {"log_start_offset": offset}, once records were
                                      deleted before an offset (Log.delete_records_before)
    00000000000000000000.log          segments, named by base offset (segment.py)
    00000000000000000000.index
    00000000000000000000.timeindex
    00000000000000004711.log ...
    cleaning/                         a clean's output until it replaces segments
                                      (compacted topics: segment_swap.py)
    cleaner-checkpoint                JSON: where the last clean ended (cleaner.py)

``log.meta`` names the on-disk formats: the ``.log`` files hold Kafka RecordBatch
magic 2 (native/batch.h); the index formats are drawn in offset_index.py and
time_index.py. :meth:`Log.open` refuses a directory whose ``format_version`` it does
not know. Files are created 0600 and directories 0700.

Format 2 logs are dense: every offset from the log start to the log end lies in a
batch, and each batch starts right after the one before it (a segment's first batch
at the segment's base offset). Offsets that hold no record (those of a producer's
frame reaped after it died mid-append, or of a fenced batch) are covered by an empty
batch, Kafka's record-count-0 batch (record_batch.empty_batches_before), written by
:meth:`Log.append` in front of the batch after them. A damaged base offset, which no
CRC covers, then shows as offsets out of sequence: readers (the consumer, recovery,
``engine verify``) refuse it instead of skipping records or delivering them under a
wrong offset. Format 1 logs (older) may hold gaps: they are read and appended to as
they are, with offsets only checked to increase.

Format 3 is format 2 as a compacted topic's cleaner (engine/cleaner.py) leaves it: a
batch may hold fewer records than offsets (its records keep their offsets, Kafka's
batch after compaction: record_batch.filter_batch), and the ``cleaning/`` directory
may hold a committed swap, which :meth:`Log.open` finishes (segment_swap.py) before it
reads the segments. Code that reads only formats 1 and 2 refuses it, so it never opens
a log half swapped. New logs are written as format 3; the cleaner makes a format-2 log
format 3 (rewriting ``log.meta``) before its first swap, and leaves format-1 logs alone.

Durability (``flush.messages``, ``flush.ms``): by default the log never fsyncs on the
write path, as Kafka does: a batch written to a segment is in the page cache, so it
survives a crash of the broker process (``kill -9``) but not a power loss or kernel
crash until the OS writes it back (about 30 s on Linux). Set ``flush.messages`` (fsync
once that many records were appended since the last fsync, checked in ``append``) or
``flush.ms`` (checked in :meth:`Log.maybe_flush`, which the broker calls from its drain
loop) to bound that window. Independently of the policy, a segment is fsynced when it
is rolled (by a background thread, engine/flusher.py, so that appends never wait for
the disk) and everything is fsynced at :meth:`Log.close`, and ``recovery-point`` then
records the offset below which the log is known durable (moved on once the rolled
segments' fsyncs are done), so a restart after an unclean stop re-checks (by CRC) only
the segments that can hold later offsets.
"""

from __future__ import annotations

import bisect
import contextlib
import functools
import json
import logging
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from engine import flusher, segment_swap
from engine._native import ffi, lib
from engine.compression import plain_or_raise
from engine.datadir import fsync_directory, write_private_file
from engine.errors import (
    ClosedError,
    ConfigError,
    CorruptRecordError,
    OffsetOutOfRangeError,
    RecordTooLargeError,
)
from engine.record_batch import (
    ScanStatus,
    decode_record_infos,
    empty_batches_before,
    read_batch_header,
    scan_batches,
)
from engine.segment import (
    DELETED_SUFFIX,
    INDEX_SUFFIX,
    LOG_SUFFIX,
    TIME_INDEX_SUFFIX,
    LogSegment,
)

__all__ = [
    "CLEANUP_POLICIES",
    "DENSE_FORMAT",
    "LOG_FORMAT_VERSION",
    "Log",
    "LogConfig",
    "LogReader",
    "list_segment_bases",
    "read_log_format",
    "read_log_start",
    "read_recovery_point",
]

#: Version of the partition directory's layout and of the index formats (2: dense,
#: 3: dense, compacted batches and the cleaner's swap).
LOG_FORMAT_VERSION = 3
#: The format versions this code reads; logs from DENSE_FORMAT on are dense.
READABLE_FORMATS = (1, 2, 3)
DENSE_FORMAT = 2
#: The first format the cleaner may write (module docstring).
COMPACTED_FORMAT = 3
META_FILE = "log.meta"
RECOVERY_POINT_FILE = "recovery-point"
LOG_START_FILE = "log-start-offset"
DIR_MODE = 0o700
FILE_MODE = 0o600
_NEVER = 2**63 - 1
#: cleanup.policy values: delete old segments, compact them (engine/cleaner.py), or both.
CLEANUP_POLICIES = ("delete", "compact", "compact,delete")

logger = logging.getLogger("engine.log")


@dataclass(frozen=True)
class LogConfig:
    """The topic-level settings a partition's log obeys (Kafka's names in ``KEYS``).

    Defaults are Kafka's, and are defined here only: :meth:`from_mapping` fills in any
    key the mapping leaves out.
    """

    segment_bytes: int = 1 << 30
    """segment.bytes: roll to a new segment before a segment would exceed this size."""
    segment_ms: int = 7 * 24 * 3600 * 1000
    """segment.ms: roll when a batch is this much newer than the segment's first batch."""
    segment_index_bytes: int = 10 * 1024 * 1024
    """segment.index.bytes: the largest index file; a full index rolls the segment."""
    index_interval_bytes: int = 4096
    """index.interval.bytes: about how many log bytes between two index entries."""
    retention_ms: int = 7 * 24 * 3600 * 1000
    """retention.ms: delete a segment whose newest timestamp is older; -1 keeps forever."""
    retention_bytes: int = -1
    """retention.bytes: delete old segments while the log is larger; -1 is unlimited."""
    flush_messages: int = _NEVER
    """flush.messages: fsync after this many records (default: never, leave it to the OS)."""
    flush_ms: int = _NEVER
    """flush.ms: fsync when the oldest unflushed record is this old (default: never)."""
    max_message_bytes: int = 1024 * 1024
    """max.message.bytes: the largest batch an append accepts."""
    cleanup_policy: str = "delete"
    """cleanup.policy: "delete" (retention), "compact" (the cleaner) or "compact,delete"."""
    min_cleanable_dirty_ratio: float = 0.5
    """min.cleanable.dirty.ratio: clean once this share of the cleanable bytes is dirty."""
    delete_retention_ms: int = 24 * 3600 * 1000
    """delete.retention.ms: keep tombstones and transaction markers this long once cleaned."""
    min_compaction_lag_ms: int = 0
    """min.compaction.lag.ms: a segment with a record this young is not cleaned yet."""
    max_compaction_lag_ms: int = _NEVER
    """max.compaction.lag.ms: clean, whatever the dirty ratio, a dirty segment this old."""

    #: Kafka key -> (field, smallest value, largest value).
    KEYS: ClassVar[dict[str, tuple[str, int, int]]] = {
        "segment.bytes": ("segment_bytes", 14, 2**31 - 1),
        "segment.ms": ("segment_ms", 1, _NEVER),
        "segment.index.bytes": ("segment_index_bytes", 24, 2**31 - 1),
        "index.interval.bytes": ("index_interval_bytes", 0, 2**31 - 1),
        "retention.ms": ("retention_ms", -1, _NEVER),
        "retention.bytes": ("retention_bytes", -1, _NEVER),
        "flush.messages": ("flush_messages", 1, _NEVER),
        "flush.ms": ("flush_ms", 0, _NEVER),
        "max.message.bytes": ("max_message_bytes", 0, 2**31 - 1),
        "delete.retention.ms": ("delete_retention_ms", 0, _NEVER),
        "min.compaction.lag.ms": ("min_compaction_lag_ms", 0, _NEVER),
        "max.compaction.lag.ms": ("max_compaction_lag_ms", 1, _NEVER),
    }

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any] | None = None) -> LogConfig:
        """Build from Kafka-named topic config; keys for other layers are ignored.

        Raises ConfigError naming the key and value when a value is not an int in range.
        """
        values: dict[str, Any] = {}
        if mapping is not None and "cleanup.policy" in mapping:
            values["cleanup_policy"] = _cleanup_policy(mapping["cleanup.policy"])
        if mapping is not None and "min.cleanable.dirty.ratio" in mapping:
            ratio = mapping["min.cleanable.dirty.ratio"]
            number = isinstance(ratio, (int, float)) and not isinstance(ratio, bool)
            if not number or not 0 <= ratio <= 1:
                raise ConfigError(
                    "topic config must be a number in [0, 1]: "
                    f"key='min.cleanable.dirty.ratio' value={ratio!r}"
                )
            values["min_cleanable_dirty_ratio"] = float(ratio)
        for key, (field, low, high) in cls.KEYS.items():
            if mapping is None or key not in mapping:
                continue
            value = mapping[key]
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"topic config must be an integer: key={key!r} value={value!r}")
            if not low <= value <= high:
                raise ConfigError(
                    f"topic config out of range [{low}, {high}]: key={key!r} value={value!r}"
                )
            values[field] = value
        return cls(**values)

    def to_mapping(self) -> dict[str, int | float | str]:
        """The settings under their Kafka names."""
        out: dict[str, int | float | str] = {
            key: getattr(self, field) for key, (field, _, _) in self.KEYS.items()
        }
        out["cleanup.policy"] = self.cleanup_policy
        out["min.cleanable.dirty.ratio"] = self.min_cleanable_dirty_ratio
        return out

    @property
    def compact(self) -> bool:
        """cleanup.policy has "compact": the cleaner keeps the last record of each key."""
        return "compact" in self.cleanup_policy.split(",")

    @property
    def delete(self) -> bool:
        """cleanup.policy has "delete": retention.ms and retention.bytes delete segments."""
        return "delete" in self.cleanup_policy.split(",")


def _cleanup_policy(value: object) -> str:
    """cleanup.policy in its one spelling ("delete,compact" is "compact,delete");
    ConfigError naming the value when it is none of CLEANUP_POLICIES."""
    policy = value
    if isinstance(value, str):
        policy = ",".join(sorted(part.strip() for part in value.split(",")))
    if policy not in CLEANUP_POLICIES:
        raise ConfigError(
            f"topic config must be one of {CLEANUP_POLICIES}: key='cleanup.policy' value={value!r}"
        )
    return str(policy)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def list_segment_bases(directory: str) -> list[int]:
    """The base offsets of the segments in a partition directory, in order."""
    bases = []
    for name in os.listdir(directory):
        stem, suffix = os.path.splitext(name)
        if suffix == LOG_SUFFIX and len(stem) == 20 and stem.isdigit():
            bases.append(int(stem))
    return sorted(bases)


def read_log_format(directory: str) -> int:
    """The format version ``log.meta`` names; CorruptRecordError unless this code
    reads it. FileNotFoundError when there is no ``log.meta`` (no log in ``directory`` yet).
    """
    path = os.path.join(directory, META_FILE)
    try:
        with open(path, "rb") as f:  # FileNotFoundError: no log here (yet)
            raw = f.read()
        version = json.loads(raw)["format_version"]
    except (ValueError, KeyError, TypeError) as e:
        raise CorruptRecordError(f"unreadable log.meta: path={path} error={e}") from e
    if version not in READABLE_FORMATS:
        raise CorruptRecordError(
            f"unsupported log format: path={path} format_version={version!r} "
            f"supported={READABLE_FORMATS}"
        )
    return int(version)


def _meta_bytes() -> bytes:
    meta = {
        "format_version": LOG_FORMAT_VERSION,
        "log": "kafka-record-batch-magic-2",
        "offset_index": "u32 relative_offset, u32 position (big-endian)",
        "time_index": "i64 timestamp, u32 relative_offset (big-endian)",
        "offsets": "dense: skipped offsets are covered by batches of record count 0",
        "compaction": "a batch may hold fewer records than offsets; cleaning/swap finishes "
        "an interrupted swap of cleaned segments",
    }
    return json.dumps(meta, indent=1).encode() + b"\n"


class Log:
    """The durable log of one partition replica: its ordered segments in one directory.

    Holds the segments (the last is the active one, the only one appended to), the
    configuration, and the flush state. ``log_start_offset`` is the first segment's base
    offset, or the offset records were deleted before (:meth:`delete_records_before`,
    kept in LOG_START_FILE) when that is later; ``log_end_offset`` is one past the last
    offset appended.

    Invariants: segments are ordered by base offset and their offsets do not overlap;
    all files hold only whole batches with increasing offsets (``dense``, format 2: each
    batch starting right after the one before it); there is always an active segment;
    an append either writes all its batches or none (validation comes first).

    Crash: see the module docstring. On open after an unclean stop, segments past the
    recovery point are walked with CRC (and, when dense, offset sequence) checks; a torn
    or corrupt tail is cut off (one warning on the ``engine.log`` logger) and any later
    segment is deleted, so the log keeps exactly its intact prefix and appends continue
    at its end. After a clean stop the data is trusted and the indexes checked; a
    missing or corrupt index is rebuilt from its ``.log`` (one warning naming the file).

    Who may call: the one broker process that owns this replica, one thread at a time
    (the drain thread, or callers that serialize on a lock). Other processes read the
    files through :class:`LogReader`. The exception is the cleaner (engine/cleaner.py):
    on its own thread it holds ``cleaning_lock`` for a whole clean, reads the sealed
    segments and swaps cleaned ones in (:meth:`replace_segments`), while the drain goes
    on appending to the active segment and rolling (which only add at the end of the
    segment list); retention skips its turn while the lock is held, and truncation and
    close wait for it.
    """

    def __init__(
        self, directory: str, config: LogConfig, segments: list[LogSegment], dense: bool = True
    ) -> None:
        self.directory = directory
        self.config = config
        #: Format 2: every skipped offset is covered by an empty batch (module docstring).
        self.dense = dense
        self._segments = segments
        self._bases = [segment.base_offset for segment in segments]
        self._unflushed_records = 0
        self._last_flush_ms = _now_ms()
        self._closed = False
        #: fsyncs of rolled segments not yet known done, oldest first.
        self._rolled: list[flusher.PendingFlush] = []
        self._flushes = flusher.LogFlushes(functools.partial(_write_recovery_point, directory))
        #: The base offset of the newest segment whose directory entry is fsynced.
        self._entry_synced = self._bases[-1]
        #: Held by the cleaner through a clean (class docstring).
        self.cleaning_lock = threading.Lock()
        #: Records before this offset are deleted (read as out of range), even where
        #: a segment still holds them (the first segment, or the active one).
        self._deleted_before = min(read_log_start(directory), self.log_end_offset)

    # ---- opening -----------------------------------------------------------

    @classmethod
    def open(
        cls,
        directory: str | os.PathLike[str],
        config: LogConfig | Mapping[str, Any] | None = None,
        *,
        initial_offset: int = 0,
        recover_from: int | None = None,
    ) -> Log:
        """Open (creating if needed) the log in ``directory``, recovering it if needed.

        ``initial_offset`` is the base offset of the first segment of a new log.
        ``recover_from`` recovers the segments that may hold that offset or later ones
        as after an unclean stop, clean or not (``engine verify --repair`` cuts a log at
        its first bad batch this way).
        """
        directory = os.fspath(directory)
        if not isinstance(config, LogConfig):
            config = LogConfig.from_mapping(config)
        os.makedirs(directory, mode=DIR_MODE, exist_ok=True)
        meta_path = os.path.join(directory, META_FILE)
        if not os.path.exists(meta_path):
            if list_segment_bases(directory):
                raise CorruptRecordError(f"segments without log.meta: directory={directory}")
            write_private_file(meta_path, _meta_bytes())
        dense = read_log_format(directory) >= DENSE_FORMAT
        if segment_swap.recover(directory):
            logger.warning("finished a cleaner swap a crash interrupted: directory=%s", directory)
        _remove_strays(directory)
        recovery_point, clean = read_recovery_point(directory)
        if recover_from is not None:
            recovery_point, clean = min(recovery_point, recover_from), False
        bases = list_segment_bases(directory)
        interval, index_bytes = config.index_interval_bytes, config.segment_index_bytes
        segments: list[LogSegment] = []
        try:
            if not bases:
                segments.append(
                    LogSegment.create(
                        directory,
                        initial_offset,
                        index_interval_bytes=interval,
                        index_bytes=index_bytes,
                        dense=dense,
                    )
                )
                fsync_directory(directory)
            for i, base in enumerate(bases):
                last = i == len(bases) - 1
                recover = not clean and (last or bases[i + 1] > recovery_point)
                segment, cut = LogSegment.open(
                    directory,
                    base,
                    recover=recover,
                    index_interval_bytes=interval,
                    index_bytes=index_bytes,
                    dense=dense,
                )
                segments.append(segment)
                if segment.rebuilt_indexes:
                    logger.warning(
                        "rebuilt a missing or corrupt index from its log: path=%s reason=%s",
                        segment.rebuilt_indexes[0],
                        segment.rebuilt_indexes[1],
                    )
                # A dense log's next segment starts where this one ends: else one is
                # missing or damaged, and recovery keeps the intact prefix before it.
                gap = dense and recover and not last and segment.next_offset != bases[i + 1]
                if cut or gap or (not last and segment.next_offset > bases[i + 1]):
                    dropped = bases[i + 1 :]
                    for later in dropped:
                        LogSegment(directory, later, writable=True).delete()
                    logger.warning(
                        "log recovery cut a torn or corrupt tail: directory=%s segment=%020d "
                        "bytes_cut=%d log_end_offset=%d later_segments_deleted=%d",
                        directory,
                        base,
                        cut,
                        segment.next_offset,
                        len(dropped),
                    )
                    break
                if recover and not last:
                    segment.on_roll()
        except BaseException:
            for segment in segments:
                segment.close()
            raise
        log = cls(directory, config, segments, dense)
        log.flush()  # durable recovered state; marks the log as not cleanly closed
        return log

    # ---- state -------------------------------------------------------------

    @property
    def log_start_offset(self) -> int:
        """The first offset the log can still hold: the oldest segment's base offset, or
        the offset records were deleted before when that is later."""
        return max(self._segments[0].base_offset, self._deleted_before)

    @property
    def log_end_offset(self) -> int:
        """One past the last offset appended (the next offset to append)."""
        active = self._active
        return active.next_offset

    @property
    def size_bytes(self) -> int:
        """Bytes of all segment log files."""
        return sum(segment.size for segment in self._segments)

    @property
    def segment_base_offsets(self) -> list[int]:
        return list(self._bases)

    @property
    def sealed_segments(self) -> list[LogSegment]:
        """Every segment but the active one, oldest first (the cleaner reads them)."""
        self._active  # noqa: B018 - raises ClosedError after close
        return self._segments[:-1]

    # ---- compaction --------------------------------------------------------

    @property
    def format_version(self) -> int:
        """The format version ``log.meta`` names (module docstring)."""
        return read_log_format(self.directory)

    def upgrade_format(self) -> None:
        """Make a format-2 log format 3 (the cleaner, before its first swap)."""
        if self.format_version < COMPACTED_FORMAT:
            if not self.dense:
                raise CorruptRecordError(f"a format-1 log is never compacted: {self.directory}")
            write_private_file(os.path.join(self.directory, META_FILE), _meta_bytes())

    def replace_segments(self, replaced: list[int], cleaned: list[int]) -> None:
        """Swap in the cleaned segments the cleaner committed (segment_swap.commit) for
        the sealed segments ``replaced``; the caller holds ``cleaning_lock``.

        The replaced segments' files go in the background, as retention's."""
        i = self._bases.index(replaced[0])
        j = i + len(replaced)
        if self._bases[i:j] != replaced or j >= len(self._bases):
            raise CorruptRecordError(
                f"cleaned segments replace segments the log no longer has: replaced={replaced} "
                f"segments={self._bases}"
            )
        for segment in self._segments[i:j]:
            segment.close()
        retired = segment_swap.complete(self.directory, replaced, cleaned)
        opened: list[LogSegment] = []
        try:
            for base in cleaned:
                segment, _ = LogSegment.open(
                    self.directory,
                    base,
                    recover=False,
                    index_interval_bytes=self.config.index_interval_bytes,
                    index_bytes=self.config.segment_index_bytes,
                    dense=self.dense,
                )
                opened.append(segment)
        except BaseException:
            for segment in opened:
                segment.close()
            raise
        # One slice assignment each: the drain thread only appends at the end meanwhile.
        self._segments[i:j] = opened
        self._bases[i:j] = cleaned
        if retired:
            flusher.submit(flusher.Removal(retired, self.directory))

    @property
    def _active(self) -> LogSegment:
        if self._closed:
            raise ClosedError(f"log is closed: directory={self.directory}")
        return self._segments[-1]

    # ---- appending ---------------------------------------------------------

    def append(self, batches: bytes | bytearray | memoryview, *, now_ms: int | None = None) -> int:
        """Append whole record batches whose offsets are already assigned; returns log_end_offset.

        The batches must be intact (CRC32C checked), each at most ``max.message.bytes``,
        with offsets increasing and starting at or after ``log_end_offset``; otherwise
        CorruptRecordError or RecordTooLargeError is raised and nothing of this call is
        written. A dense log writes an empty batch over offsets the batches skip (see
        the module docstring). Rolls to new segments by ``segment.bytes``,
        ``segment.ms`` and a full index. ``now_ms`` is the time for the
        ``flush.messages`` check (default: now).
        """
        active = self._active
        view = memoryview(batches).cast("B")
        if not len(view):
            return active.next_offset
        infos, scanned, status = scan_batches(view, verify_crc=True)
        if status is not ScanStatus.OK or scanned != len(view):
            raise CorruptRecordError(
                f"append rejected, not whole intact batches: reason={status.name} "
                f"position={scanned} length={len(view)}"
            )
        largest, records = _check_offsets(infos, active.next_offset)
        if largest > self.config.max_message_bytes:
            raise RecordTooLargeError(
                f"batch larger than max.message.bytes: length={largest} "
                f"max.message.bytes={self.config.max_message_bytes}"
            )
        if self.dense:
            view, infos = _fill_gaps(view, infos, active.next_offset)
        start, count = 0, len(infos)
        while start < count:
            placed = self._active.append(
                view,
                infos,
                start,
                segment_bytes=self.config.segment_bytes,
                segment_ms=self.config.segment_ms,
            )
            if not placed:
                self._roll(int(infos["base_offset"][start]))
                continue
            start += placed
        self._unflushed_records += records
        if self._unflushed_records >= self.config.flush_messages:
            self.flush(now_ms)
        return self._active.next_offset

    def append_checked(
        self, data: Any, infos: npt.NDArray[Any], *, now_ms: int | None = None
    ) -> int:
        """Append batches a caller has checked (shape and CRC: engine_ring_peek did) where
        they lie: ``data`` (a cffi pointer, a ring's data area) holds each at its info's
        position, not necessarily back to back. Written into the segment from there, no
        copy on the way (a broker's drain: see Replica). Otherwise as :meth:`append`."""
        active = self._active
        if not len(infos):
            return active.next_offset
        largest, records = _check_offsets(infos, active.next_offset)
        if largest > self.config.max_message_bytes:
            raise RecordTooLargeError(
                f"batch larger than max.message.bytes: length={largest} "
                f"max.message.bytes={self.config.max_message_bytes}"
            )
        if self.dense and _has_gaps(infos, active.next_offset):
            # Offsets skipped (a reaped claim): rare; the empty batches that cover them
            # need one buffer with everything, so copy once and append that.
            whole = b"".join(
                bytes(ffi.buffer(data + int(i["position"]), int(i["length"]))) for i in infos
            )
            return self.append(whole, now_ms=now_ms)
        start, count = 0, len(infos)
        while start < count:
            placed = self._active.append(
                data,
                infos,
                start,
                segment_bytes=self.config.segment_bytes,
                segment_ms=self.config.segment_ms,
            )
            if not placed:
                self._roll(int(infos["base_offset"][start]))
                continue
            start += placed
        self._unflushed_records += records
        if self._unflushed_records >= self.config.flush_messages:
            self.flush(now_ms)
        return self._active.next_offset

    def roll(self) -> None:
        """Start a new active segment at ``log_end_offset`` (nothing when the active one is
        empty): ``engine verify --repair`` rolls where the replica it copies from rolled."""
        active = self._active
        if active.size:
            self._roll(active.next_offset)

    def _roll(self, base_offset: int) -> None:
        """Make a new active segment at ``base_offset`` (the next batch's base offset)."""
        old = self._active
        if old.size == 0:  # an empty active segment is replaced, never left behind
            old.delete()
            self._segments.pop()
            self._bases.pop()
        else:
            old.seal()
            fds = old.duplicate_fds()
            pending = flusher.PendingFlush(
                fds, old.base_offset, base_offset, self.directory, self._flushes
            )
            self._rolled.append(flusher.submit(pending))
        # The new segment's directory entry becomes durable with the next fsync of the
        # directory (at the next roll, or close): until then it holds nothing durable.
        segment = LogSegment.create(
            self.directory,
            base_offset,
            index_interval_bytes=self.config.index_interval_bytes,
            index_bytes=self.config.segment_index_bytes,
            dense=self.dense,
        )
        self._segments.append(segment)
        self._bases.append(base_offset)

    def _sync_entry(self) -> None:
        """fsync the directory if the active segment's entry may not be durable yet."""
        if self._entry_synced != self._bases[-1]:
            fsync_directory(self.directory)
            self._entry_synced = self._bases[-1]

    def _forget_flushed(self) -> None:
        """Forget the rolled segments whose fsyncs are done (the flusher moved the
        recovery point past them); raise the error of one that failed."""
        done = 0
        while done < len(self._rolled) and self._rolled[done].done.is_set():
            done += 1
        if done:
            finished, self._rolled = self._rolled[:done], self._rolled[done:]
            for pending in finished:
                pending.wait()  # raises the fsync's error: the drain fails and restarts

    def _wait_rolled(self) -> None:
        """Until every rolled segment's fsync is done (before claiming them durable)."""
        rolled, self._rolled = self._rolled, []
        for pending in rolled:
            pending.wait()

    def _cancel_rolled(self, base_offsets: set[int] | None = None) -> None:
        """Skip the fsyncs of rolled segments being deleted (all when None)."""
        for pending in self._rolled:
            if base_offsets is None or pending.base_offset in base_offsets:
                pending.cancel()

    # ---- reading -----------------------------------------------------------

    def read(self, offset: int, max_bytes: int) -> bytes:
        """Whole batches from the one holding ``offset`` up to ``max_bytes`` (at least one).

        Empty at ``log_end_offset``; OffsetOutOfRangeError outside
        ``[log_start_offset, log_end_offset]``. Reads one segment at a time, by mmap.
        """
        self._check_range(offset)
        i = bisect.bisect_right(self._bases, offset) - 1
        for segment in self._segments[max(i, 0) :]:
            data = segment.read(offset, max_bytes)
            if data:
                return data
        return b""

    def _check_range(self, offset: int) -> None:
        if not self.log_start_offset <= offset <= self.log_end_offset:
            raise OffsetOutOfRangeError(
                f"offset out of range: offset={offset} log_start_offset={self.log_start_offset} "
                f"log_end_offset={self.log_end_offset}"
            )

    def offset_for_timestamp(self, timestamp_ms: int) -> int | None:
        """The first offset whose record timestamp is >= ``timestamp_ms``; None if none."""
        self._active  # noqa: B018 - raises ClosedError after close
        for segment in self._segments:
            found = segment.find_timestamp(timestamp_ms)
            if found is None:
                continue
            _, offset = found
            # From that batch on: it may hold no record (a marker, an empty batch).
            while batch := segment.read(offset, 0):
                records = decode_record_infos(plain_or_raise(batch, f"path={self.directory}"))
                hits = np.flatnonzero(records["timestamp"] >= timestamp_ms)
                if len(hits):
                    return int(records["offset"][int(hits[0])])
                offset = read_batch_header(batch).last_offset + 1
        return None

    # ---- durability --------------------------------------------------------

    def flush(self, now_ms: int | None = None) -> None:
        """fsync the active segment and its indexes, then record the recovery point."""
        active = self._active
        self._wait_rolled()
        active.flush()
        self._sync_entry()
        _write_recovery_point(self.directory, active.next_offset)
        self._unflushed_records = 0
        self._last_flush_ms = _now_ms() if now_ms is None else now_ms

    def maybe_flush(self, now_ms: int | None = None) -> bool:
        """Flush if ``flush.messages`` or ``flush.ms`` says so; True when it flushed.

        Also forgets rolled segments the flusher has fsynced since, raising the error of
        one whose fsync failed (the drain calls it after every append)."""
        now_ms = _now_ms() if now_ms is None else now_ms
        if self._rolled:
            self._forget_flushed()
        if self._unflushed_records and (
            self._unflushed_records >= self.config.flush_messages
            or now_ms - self._last_flush_ms >= self.config.flush_ms
        ):
            self.flush(now_ms)
            return True
        return False

    # ---- retention and truncation ------------------------------------------

    def apply_retention(self, now_ms: int | None = None) -> int:
        """Delete old segments by ``retention.ms`` and ``retention.bytes``; returns how many.

        Oldest first; never the active segment. ``log_start_offset`` advances to the
        base offset of the oldest remaining segment. Nothing unless ``cleanup.policy``
        has "delete"; nothing while the cleaner swaps segments (the next check does it).
        """
        now_ms = _now_ms() if now_ms is None else now_ms
        self._active  # noqa: B018 - raises ClosedError after close
        if not self.config.delete or not self.cleaning_lock.acquire(blocking=False):
            return 0
        try:
            return self._apply_retention(now_ms)
        finally:
            self.cleaning_lock.release()

    def _apply_retention(self, now_ms: int) -> int:
        deleted = 0
        if self.config.retention_ms >= 0:
            while len(self._segments) > 1 and (
                now_ms - self._segments[0].max_timestamp > self.config.retention_ms
            ):
                self._delete_oldest()
                deleted += 1
        if self.config.retention_bytes >= 0:
            excess = self.size_bytes - self.config.retention_bytes
            while len(self._segments) > 1 and excess - self._segments[0].size >= 0:
                excess -= self._segments[0].size
                self._delete_oldest()
                deleted += 1
        return deleted

    def delete_records_before(self, offset: int) -> int:
        """Kafka's DeleteRecords: move the log start offset up to ``offset`` (at most the
        log end offset), durably (LOG_START_FILE, written before anything is removed),
        and delete the segments that hold only offsets below it (never the active one).
        Reads below it raise OffsetOutOfRangeError from now on. Returns the log start
        offset."""
        self._active  # noqa: B018 - raises ClosedError after close
        offset = min(offset, self.log_end_offset)
        if offset > self.log_start_offset:
            _write_log_start(self.directory, offset)
            self._deleted_before = offset
            while len(self._segments) > 1 and self._bases[1] <= offset:
                self._delete_oldest()
        return self.log_start_offset

    def _delete_oldest(self) -> None:
        """Retention: the oldest segment leaves the log now, its files go in the
        background (engine/flusher.py: removing them can wait for their writeback)."""
        segment = self._segments.pop(0)
        self._bases.pop(0)
        self._cancel_rolled({segment.base_offset})
        flusher.submit(flusher.Removal(segment.retire(), self.directory))

    def truncate_to(self, offset: int) -> None:
        """Remove every batch whose last offset is >= ``offset`` (whole batches).

        At or below ``log_start_offset`` the log is emptied and restarts at ``offset``.
        Afterwards ``log_end_offset <= offset``.
        """
        active = self._active
        if offset >= active.next_offset:
            return
        with self.cleaning_lock:
            self._truncate_to(offset)

    def _truncate_to(self, offset: int) -> None:
        self._cancel_rolled({base for base in self._bases if base >= offset})
        if offset <= self.log_start_offset:
            self._start_empty_at(offset)
        else:
            while len(self._segments) > 1 and self._bases[-1] >= offset:
                self._segments.pop().delete()
                self._bases.pop()
            self._segments[-1].truncate_to(offset)
        fsync_directory(self.directory)
        self._entry_synced = self._bases[-1]
        self.flush()

    def truncate_fully_and_start_at(self, offset: int) -> None:
        """Empty the log and restart it at ``offset``, which may lie past its end (Kafka's
        name): a follower whose log ends below its leader's log start, which can never
        fetch the offsets in between, starts again at the leader's log start."""
        self._active  # noqa: B018 - raises ClosedError after close
        self._start_empty_at(offset)
        fsync_directory(self.directory)
        self._entry_synced = self._bases[-1]
        self.flush()

    def _start_empty_at(self, offset: int) -> None:
        """Delete every segment and make an empty one at ``offset``."""
        if self._deleted_before > offset:
            _write_log_start(self.directory, offset)
            self._deleted_before = offset
        self._cancel_rolled()
        for segment in self._segments:
            segment.delete()
        self._segments.clear()
        self._bases.clear()
        self._segments.append(
            LogSegment.create(
                self.directory,
                offset,
                index_interval_bytes=self.config.index_interval_bytes,
                index_bytes=self.config.segment_index_bytes,
                dense=self.dense,
            )
        )
        self._bases.append(offset)

    # ---- lifecycle ---------------------------------------------------------

    def close(self, flush: bool = True) -> None:
        """Flush everything and mark the log cleanly closed; idempotent.

        ``flush=False`` (a log about to be deleted) only closes the files: no fsync, and
        the log is not marked clean, so if it survives it is recovered at the next open.
        """
        if self._closed:
            return
        with self.cleaning_lock:
            self._close(flush)

    def _close(self, flush: bool) -> None:
        try:
            if flush:
                active = self._active
                active.on_roll()
                self._wait_rolled()
                self._sync_entry()
                _write_recovery_point(self.directory, active.next_offset, clean=True)
            else:
                self._cancel_rolled()
        finally:
            for segment in self._segments:
                segment.close()
            self._closed = True

    def __enter__(self) -> Log:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"Log(directory={self.directory!r}, log_start_offset={self.log_start_offset}, "
            f"segments={len(self._segments)}, closed={self._closed})"
        )


def _check_offsets(infos: npt.NDArray[Any], log_end_offset: int) -> tuple[int, int]:
    """Raise CorruptRecordError unless the batches' offsets may follow ``log_end_offset``;
    returns (the largest batch's length, the records in all batches)."""
    order = ffi.new("engine_batch_order_t *")
    code = lib.engine_batch_check_order(
        ffi.from_buffer("engine_batch_info_t[]", infos), len(infos), log_end_offset, order
    )
    i = int(order.bad_batch)
    if code == lib.ENGINE_ORDER_BELOW_START:
        raise CorruptRecordError(
            "append rejected, offset below log_end_offset: "
            f"base_offset={int(infos[0]['base_offset'])} log_end_offset={log_end_offset}"
        )
    if code == lib.ENGINE_ORDER_NOT_INCREASING:
        raise CorruptRecordError(
            f"append rejected, offsets not increasing: batch={i} "
            f"base_offset={int(infos[i]['base_offset'])} "
            f"previous_last_offset={int(infos[i - 1]['last_offset'])}"
        )
    if code == lib.ENGINE_ORDER_TOO_WIDE:
        raise CorruptRecordError(
            f"append rejected, a batch spans more than 2**31 offsets: batch={i}"
        )
    return int(order.largest_length), int(order.records)


def _has_gaps(infos: npt.NDArray[Any], log_end_offset: int) -> bool:
    """Whether the batches (increasing from ``log_end_offset``) skip offsets."""
    if int(infos["base_offset"][0]) != log_end_offset:
        return True
    return bool(np.any(infos["base_offset"][1:] != infos["last_offset"][:-1] + 1))


def _fill_gaps(
    view: memoryview, infos: npt.NDArray[Any], log_end_offset: int
) -> tuple[memoryview, npt.NDArray[Any]]:
    """A dense log's append: the batches (checked to increase from ``log_end_offset``)
    with the empty batches that cover the offsets skipped before each one; the same
    view and infos when none are skipped (the common case: no copy)."""
    starts = np.empty(len(infos), dtype=np.int64)
    starts[0] = log_end_offset
    starts[1:] = infos["last_offset"][:-1] + 1
    gaps = np.flatnonzero(infos["base_offset"] != starts).tolist()
    if not gaps:
        return view, infos
    pieces: list[Any] = []
    at = 0
    for i in gaps:
        position = int(infos["position"][i])
        pieces.append(view[at:position])
        pieces += empty_batches_before(view, position, int(starts[i]))
        at = position
    pieces.append(view[at:])
    filled = b"".join(pieces)
    filled_infos, _, _ = scan_batches(filled, verify_crc=False)
    return memoryview(filled), filled_infos


def _remove_strays(directory: str) -> None:
    """Delete temp files, retired segments' files and indexes whose .log is gone (a
    crash mid-delete or mid-create)."""
    names = set(os.listdir(directory))
    for name in names:
        stem, suffix = os.path.splitext(name)
        stray = suffix in (".tmp", DELETED_SUFFIX) or (
            suffix in (INDEX_SUFFIX, TIME_INDEX_SUFFIX) and stem + LOG_SUFFIX not in names
        )
        if stray:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(directory, name))


def read_recovery_point(directory: str) -> tuple[int, bool]:
    """``(recovery_point, clean)``; (0, False) when missing or unreadable."""
    try:
        with open(os.path.join(directory, RECOVERY_POINT_FILE), "rb") as f:
            state = json.loads(f.read())
        return int(state["recovery_point"]), bool(state["clean"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0, False


def read_log_start(directory: str) -> int:
    """The offset records were deleted before (LOG_START_FILE); 0 when none were."""
    try:
        with open(os.path.join(directory, LOG_START_FILE), "rb") as f:
            return int(json.loads(f.read())["log_start_offset"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def _write_log_start(directory: str, offset: int) -> None:
    data = json.dumps({"log_start_offset": offset}).encode() + b"\n"
    write_private_file(os.path.join(directory, LOG_START_FILE), data)


def _write_recovery_point(directory: str, offset: int, clean: bool = False) -> None:
    data = json.dumps({"recovery_point": offset, "clean": clean}).encode() + b"\n"
    write_private_file(os.path.join(directory, RECOVERY_POINT_FILE), data)


class LogReader:
    """A read-only view of a partition's segment files, for processes other than the broker.

    Holds the list of segment base offsets it last saw and open read-only segments.
    Reads whole batches by offset, bounded by an ``upper_offset`` the caller passes (the
    broker's drain offset): batches at or past it may be half written and are never
    returned. New segments are found by listing the directory again; a segment deleted
    by retention underneath the reader turns into OffsetOutOfRangeError naming the new
    log start offset; one the cleaner replaced (segment_swap.py) is opened again. Reads
    use ``pread``, so a file cut by the broker (recovery, truncate_to) cannot fault the
    reader; what a read returns during such a cut is unspecified.

    Who may call: any process; one thread at a time per object. Never writes.
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        """FileNotFoundError when the broker has not created the log yet."""
        self.directory = os.fspath(directory)
        #: Format 2: no offset is skipped (a reader may check the offsets' sequence).
        self.dense = read_log_format(self.directory) >= DENSE_FORMAT
        self._bases: list[int] = []
        self._segments: dict[int, LogSegment] = {}
        self._closed = False
        self._deleted_before = 0  # as of the last listing (Log.delete_records_before)
        self._list()

    def _list(self) -> None:
        self._deleted_before = read_log_start(self.directory)
        self._bases = list_segment_bases(self.directory)
        for base in list(self._segments):
            if base not in self._bases:
                self._segments.pop(base).close()

    @property
    def log_start_offset(self) -> int:
        """The oldest segment's base offset, or the offset records were deleted before
        when that is later, as of a fresh listing (-1 when there is no segment)."""
        self._check_open()
        self._list()
        return self._start()

    def _start(self) -> int:
        return max(self._bases[0], self._deleted_before) if self._bases else -1

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError(f"log reader is closed: directory={self.directory}")

    def read(self, offset: int, max_bytes: int, upper_offset: int) -> bytes:
        """Whole batches from the one holding ``offset`` up to ``max_bytes`` (at least one
        batch), only batches whose last offset is below ``upper_offset``.

        Empty when ``offset == upper_offset`` or nothing is there yet.
        OffsetOutOfRangeError when ``offset`` is above ``upper_offset`` or below the log
        start offset (for example after retention deleted its segment).
        """
        self._check_open()
        if offset > upper_offset:
            raise OffsetOutOfRangeError(
                f"offset out of range: offset={offset} upper_offset={upper_offset}"
            )
        if offset == upper_offset:
            return b""
        for _attempt in range(100):
            if not self._bases or offset < self._start():
                self._list()
            if not self._bases or offset < self._start():
                raise OffsetOutOfRangeError(
                    f"offset out of range: offset={offset} "
                    f"log_start_offset={self._start()} "
                    f"directory={self.directory}"
                )
            base = self._bases[bisect.bisect_right(self._bases, offset) - 1]
            try:
                while True:
                    j = bisect.bisect_right(self._bases, base)
                    # A successor listed before this read means `base` was complete.
                    successor = self._bases[j] if j < len(self._bases) else None
                    data = self._segment(base).read(offset, max_bytes, upper_offset)
                    if data:
                        return data
                    if successor is None:
                        self._list()  # a roll may have made a newer segment
                        if base not in self._bases:
                            break  # deleted underneath us: start over
                        j = bisect.bisect_right(self._bases, base)
                        if j == len(self._bases):
                            return b""
                        continue  # read `base` once more: it was complete when listed
                    if successor >= upper_offset:
                        return b""
                    base = successor
            except FileNotFoundError:
                # Retention deleted a segment, or the cleaner replaced it (a new file of
                # the same name): look again, with that file opened anew.
                stale = self._segments.pop(base, None)
                if stale is not None:
                    stale.close()
                self._list()
        raise OffsetOutOfRangeError(f"segments keep vanishing: offset={offset}")

    def _segment(self, base_offset: int) -> LogSegment:
        segment = self._segments.get(base_offset)
        if segment is None:
            segment = LogSegment.open_reader(self.directory, base_offset)
            self._segments[base_offset] = segment
        return segment

    def close(self) -> None:
        for segment in self._segments.values():
            segment.close()
        self._segments.clear()
        self._closed = True

    def __enter__(self) -> LogReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
