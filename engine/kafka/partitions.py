"""The partitions a broker leads, as the Kafka listener reads and writes them.

The broker publishes, after every reconcile pass, which partitions it leads
(:class:`Leadership`: topic id, leader epoch, ring name, log directory, limits). A
connection of the listener reaches a partition through its own
:class:`PartitionHandle`: its own mapping of the leader's ring (Ring objects are one
thread's each, and a replica that stops unmaps its own) and its own LogReader of the
segments, exactly as an engine client in another process does. A sealed ring, or a
leadership that changed, means NOT_LEADER_OR_FOLLOWER: the client looks the leader up
again.

Writing (:meth:`PartitionHandle.append`): the client's one batch is checked (magic 2,
whole, its CRC32C, a record count that matches its offset delta, neither a control batch
nor a transactional one its transaction refuses (engine.kafka.transactions), its first
and largest timestamps within the topic's message.timestamp.before.max.ms and
message.timestamp.after.max.ms of now, on a compacted topic a key on every record) and
appended to the ring as it came, compressed or not (engine_ring_append_client: the ring gives its
base offset and leader epoch). An idempotent producer's batch (producer id >= 0) is
checked against what this leadership saw of that producer, as Kafka's
ProducerStateManager does: the same epoch must go on in sequence (last sequence + 1) or
repeat one of the last five batches (a retry: the answer is the offset the batch took
the first time, nothing is written again); a new epoch starts at sequence 0; an older
epoch is refused. A new leadership (a leader after a failover, a restarted broker) first
reads what the last RECOVERY_OFFSETS offsets of its log hold of those producers, so a
retry of a batch written under the old leader is still answered with its offset; a
producer not found there is taken at whatever sequence it sends, as Kafka takes one
whose state it lost.

Reading (:meth:`PartitionHandle.read`): whole batches from the offset asked, out of the
ring (the connection's cursor continues where the last fetch ended) or, below what the
ring holds, out of the segments; never past the high watermark.

Threads: each connection thread uses its own handles. :class:`ProducerStates` is shared
by the connections of one listener, one lock per partition, held across an idempotent
batch's check and append so that sequences land in the ring in order.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from engine.compression import plain_batch
from engine.errors import EngineError, OffsetOutOfRangeError
from engine.kafka.error_codes import ErrorCode
from engine.log import LogReader
from engine.record_batch import (
    BATCH_HEADER_LENGTH,
    ProducerFields,
    ScanStatus,
    decode_record_infos,
    read_producer_fields,
    scan_batches,
    scan_two_batches,
)
from engine.ring import (
    BAD_ARGUMENT,
    EMPTY,
    FENCED,
    FULL,
    NO_LIMIT,
    NOT_ENOUGH_REPLICAS,
    OK,
    OUT_TOO_SMALL,
    OVERWRITTEN,
    PRODUCER_FENCED,
    REAPED,
    SEALED,
    TIMEOUT,
    TOO_LARGE,
    Cursor,
    Ring,
    producer_fields,
)

__all__ = [
    "Append",
    "Fetched",
    "Leadership",
    "PartitionHandle",
    "PartitionHandles",
    "ProducerStates",
]

#: Batch attributes (native/batch.h).
COMPRESSION_MASK = 0x07
MAX_COMPRESSION = 4  # zstd
TRANSACTIONAL = 0x10
CONTROL = 0x20
_MAGIC_POSITION = 16
#: The batch header's first and largest timestamps (int64, big-endian).
_FIRST_TIMESTAMP_POSITION = 27
_MAX_TIMESTAMP_POSITION = 35
#: Kafka keeps this many batches per producer to answer retries (ProducerStateEntry).
RETRY_BATCHES = 5
#: How far back a new leadership reads its log for idempotent producers' last batches:
#: more than any client has in flight (5 requests of 1 MB of small records each).
RECOVERY_OFFSETS = 1_000_000
LOAD_CHUNK = 4 << 20
#: How often a connection closes the handles of partitions no longer led here.
SWEEP_S = 5.0
#: A partition directory changed this recently is listed at every read (file times
#: are only as fine as a clock tick: a later change may not move its mtime).
LISTING_FRESH_NS = 100_000_000
_SEQUENCE_MASK = 0x7FFFFFFF


@dataclass(frozen=True)
class Leadership:
    """One partition this broker leads, as of its last reconcile pass."""

    topic: str
    partition: int
    topic_id: str
    leader_epoch: int
    ring_name: str
    directory: Path
    min_insync: int
    max_message_bytes: int
    #: message.timestamp.before.max.ms and .after.max.ms: how far from now a Kafka
    #: client's record timestamps may lie (Kafka 4's defaults: unbounded, one hour).
    timestamp_before_max_ms: int = (1 << 63) - 1
    timestamp_after_max_ms: int = 3_600_000
    #: cleanup.policy has "compact": every record needs a key (Kafka's LogValidator).
    compacted: bool = False


#: What the broker publishes: (topic, partition) -> its leadership here.
Leaderships = Mapping[tuple[str, int], Leadership]


@dataclass(frozen=True)
class Append:
    """What :meth:`PartitionHandle.append` did: an error code, and where the batch went."""

    error: ErrorCode
    base_offset: int = -1
    last_offset: int = -1
    message: str | None = None


@dataclass(frozen=True)
class Fetched:
    """What :meth:`PartitionHandle.read` found."""

    error: ErrorCode
    high_watermark: int = -1
    log_start_offset: int = -1
    records: bytes = b""


@dataclass
class _ProducerEntry:
    epoch: int
    #: (first sequence, last sequence, base offset, last offset) of its last batches.
    batches: deque[tuple[int, int, int, int]] = field(
        default_factory=lambda: deque(maxlen=RETRY_BATCHES)
    )


class _PartitionProducers:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.producers: dict[int, _ProducerEntry] = {}
        self.loaded = False  # read from the log's tail (PartitionHandle._load_producers)

    def saw(self, pid: int, epoch: int, first: int, last: int, base: int, end: int) -> None:
        """A batch of producer ``pid`` landed at offsets base..end."""
        entry = self.producers.get(pid)
        if entry is None or entry.epoch != epoch:
            if entry is not None and epoch < entry.epoch:
                return
            entry = self.producers[pid] = _ProducerEntry(epoch)
        entry.batches.append((first, last, base, end))


class ProducerStates:
    """Idempotent producers' sequences per partition leadership (module docstring)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._partitions: dict[tuple[str, int, int], _PartitionProducers] = {}

    def of(self, leadership: Leadership) -> _PartitionProducers:
        key = (leadership.ring_name, leadership.partition, leadership.leader_epoch)
        with self._lock:
            found = self._partitions.get(key)
            if found is None:
                # A new leadership of the partition: what an older one saw goes.
                for old in [k for k in self._partitions if k[:2] == key[:2]]:
                    del self._partitions[old]
                found = self._partitions[key] = _PartitionProducers()
            return found


def _in_sequence(last: int, first: int) -> bool:
    return first == (last + 1) & _SEQUENCE_MASK


class PartitionHandle:
    """One connection's way into one partition it may read and write here (module
    docstring). Used by one thread."""

    def __init__(self, leadership: Leadership) -> None:
        self.leadership = leadership
        self.ring = Ring.open(leadership.ring_name)
        self._reader: LogReader | None = None
        self._cursor: Cursor | None = None
        self._buf = bytearray(1 << 16)
        self._log_start = -1
        self._listed_mtime = -1  # the directory's mtime at the last listing

    def _log_start_offset(self) -> int:
        """The log start offset, listed again (LogReader.log_start_offset: the directory
        and the log start file) only when the partition's directory changed since the
        last listing: a segment made or removed, the log start file replaced. A change
        within LISTING_FRESH_NS of the last one may share its mtime (file times are as
        coarse as a clock tick), so a directory changed that recently is listed again
        every time."""
        mtime = os.stat(self.leadership.directory).st_mtime_ns
        if mtime != self._listed_mtime or time.time_ns() - mtime < LISTING_FRESH_NS:
            self._log_start = self.reader.log_start_offset
            self._listed_mtime = mtime
        return self._log_start

    @property
    def reader(self) -> LogReader:
        if self._reader is None:
            self._reader = LogReader(self.leadership.directory)
        return self._reader

    @property
    def current(self) -> bool:
        """Whether this is still a leader's ring (not sealed)."""
        return not self.ring.sealed

    def close(self) -> None:
        self.ring.close()
        if self._reader is not None:
            self._reader.close()

    # -- writing ----------------------------------------------------------------

    def check_batch(self, records: memoryview | None) -> Append | None:
        """Why the client's records cannot be appended as they are; None when they can."""
        if records is None or len(records) < BATCH_HEADER_LENGTH:
            return Append(ErrorCode.INVALID_RECORD, message="no record batch")
        if records[_MAGIC_POSITION] != 2:
            return Append(
                ErrorCode.INVALID_RECORD,
                message=f"record batch magic {records[_MAGIC_POSITION]}, not 2",
            )
        status, batches, scanned, info = scan_two_batches(records)
        if status is ScanStatus.CORRUPT:
            return Append(ErrorCode.CORRUPT_MESSAGE, message="record batch fails its CRC32C")
        if status is ScanStatus.TRUNCATED or scanned != len(records) or batches != 1:
            return Append(  # more than one batch: Kafka's InvalidRecordException
                ErrorCode.INVALID_RECORD if batches > 1 else ErrorCode.CORRUPT_MESSAGE,
                message="a produce request carries one whole batch per partition",
            )
        attributes = int(info.attributes)
        count = int(info.records_count)
        if count < 1 or count != int(info.last_offset) - int(info.base_offset) + 1:
            return Append(
                ErrorCode.INVALID_RECORD,
                message=f"records_count {count} does not match the offset delta",
            )
        if attributes & CONTROL:
            return Append(ErrorCode.INVALID_RECORD, message="clients may not write control batches")
        if attributes & TRANSACTIONAL and read_producer_fields(records).producer_id < 0:
            return Append(
                ErrorCode.INVALID_RECORD, message="a transactional batch without a producer id"
            )
        if attributes & COMPRESSION_MASK > MAX_COMPRESSION:
            return Append(ErrorCode.INVALID_RECORD, message="unknown compression codec")
        refused = self._check_timestamps(records)
        if refused is not None:
            return refused
        if len(records) > self.leadership.max_message_bytes:
            return Append(
                ErrorCode.MESSAGE_TOO_LARGE,
                message=f"batch of {len(records)} bytes exceeds max.message.bytes="
                f"{self.leadership.max_message_bytes}",
            )
        return None

    def _check_timestamps(self, records: memoryview) -> Append | None:
        """INVALID_TIMESTAMP when the batch's first or largest timestamp lies further from
        now than the topic allows (Kafka checks each record's; the header bounds them as
        clients write it)."""
        now = int(time.time() * 1000)
        first = int.from_bytes(records[_FIRST_TIMESTAMP_POSITION:][:8], "big", signed=True)
        largest = int.from_bytes(records[_MAX_TIMESTAMP_POSITION:][:8], "big", signed=True)
        before = self.leadership.timestamp_before_max_ms
        after = self.leadership.timestamp_after_max_ms
        for timestamp in (first, largest):
            if timestamp > now + after or (timestamp >= 0 and timestamp < now - before):
                return Append(
                    ErrorCode.INVALID_TIMESTAMP,
                    message=f"timestamp {timestamp} is out of range: the topic takes "
                    f"[{now - before}, {now + after}] (message.timestamp.before.max.ms, "
                    "message.timestamp.after.max.ms)",
                )
        return None

    def append(
        self, records: memoryview | None, acks: int, timeout_ms: int, states: ProducerStates
    ) -> Append:
        """Append the client's batch (module docstring); with acks=-1 also wait up to
        ``timeout_ms`` until the ISR holds it."""
        refused = self.check_batch(records)
        if refused is None and self.leadership.compacted:
            refused = _keyless_refused(records, self.leadership)
        if refused is not None:
            return refused
        assert records is not None
        producer = read_producer_fields(records)
        if producer.producer_id < 0:
            done = self._append(records, acks, timeout_ms)
        else:
            partition = states.of(self.leadership)
            with partition.lock:
                if not partition.loaded:
                    self._load_producers(partition)
                done = self._append_idempotent(records, acks, timeout_ms, partition, producer)
        if done.error is not ErrorCode.NONE or acks != -1:
            return done
        return self._wait_committed(done, timeout_ms)

    def _append_idempotent(
        self,
        records: memoryview,
        acks: int,
        timeout_ms: int,
        partition: _PartitionProducers,
        producer: ProducerFields,
    ) -> Append:
        pid, epoch, first = producer.producer_id, producer.producer_epoch, producer.base_sequence
        count = int.from_bytes(records[57:61], "big")
        last = (first + count - 1) & _SEQUENCE_MASK
        entry = partition.producers.get(pid)
        if entry is not None:
            if epoch < entry.epoch:
                return Append(
                    ErrorCode.INVALID_PRODUCER_EPOCH,
                    message=f"producer epoch {epoch} is older than {entry.epoch}",
                )
            if epoch == entry.epoch:
                for seen_first, seen_last, base, last_offset in entry.batches:
                    if (seen_first, seen_last) == (first, last):
                        return Append(ErrorCode.NONE, base, last_offset)  # a retry
                if entry.batches and not _in_sequence(entry.batches[-1][1], first):
                    return Append(
                        ErrorCode.OUT_OF_ORDER_SEQUENCE_NUMBER,
                        message=f"sequence {first} does not follow {entry.batches[-1][1]}",
                    )
            elif first != 0:
                return Append(
                    ErrorCode.OUT_OF_ORDER_SEQUENCE_NUMBER,
                    message=f"a new epoch starts at sequence 0, not {first}",
                )
        done = self._append(records, acks, timeout_ms)
        if done.error is ErrorCode.NONE:
            partition.saw(pid, epoch, first, last, done.base_offset, done.last_offset)
        return done

    def _load_producers(self, partition: _PartitionProducers) -> None:
        """What this partition's log holds of idempotent producers, from its last
        RECOVERY_OFFSETS offsets to its end (committed or not): a new leader, or a
        restarted broker, then answers a client's retry of a batch written before (under
        the old leader, or before the restart) with the offset it took, as Kafka's
        ProducerStateManager does from its snapshots."""
        partition.loaded = True
        end = self.ring.status().tail_offset
        offset = max(self.reader.log_start_offset, end - RECOVERY_OFFSETS, 0)
        buf = bytearray(LOAD_CHUNK)
        cursor: Cursor | None = None
        while offset < end:
            data = b""
            if offset >= self.ring.status().drain_offset:
                if cursor is None or cursor.offset != offset:
                    cursor = self.ring.seek(offset)
                if cursor is not None:
                    code, n = self.ring.read(cursor, buf, NO_LIMIT)
                    if code == OUT_TOO_SMALL:
                        buf = bytearray(n)
                        continue
                    if code == OK:
                        data = bytes(memoryview(buf)[:n])
            drain_offset = self.ring.status().drain_offset
            if not data and offset < drain_offset:  # drained, or the ring moved on
                cursor = None
                try:
                    data = self.reader.read(offset, LOAD_CHUNK, drain_offset)
                except OffsetOutOfRangeError:
                    break
            if not data:
                break
            infos, _, _ = scan_batches(data, verify_crc=False)
            for info in infos:
                at = int(info["position"])
                producer = read_producer_fields(data, at)
                count = int(info["records_count"])
                if producer.producer_id < 0 or count < 1 or int(info["last_offset"]) < offset:
                    continue
                first = producer.base_sequence
                partition.saw(producer.producer_id, producer.producer_epoch, first,
                              (first + count - 1) & _SEQUENCE_MASK, int(info["base_offset"]),
                              int(info["last_offset"]))  # fmt: skip
            if not len(infos):
                break
            offset = int(infos["last_offset"][-1]) + 1

    def _append(self, records: memoryview, acks: int, timeout_ms: int) -> Append:
        fields = producer_fields(
            leader_epoch=self.leadership.leader_epoch,
            min_insync=self.leadership.min_insync if acks == -1 else 0,
            timeout_ms=timeout_ms,
        )
        count = int.from_bytes(records[57:61], "big")
        while True:
            result = self.ring.append_client(fields, records, max(timeout_ms, 0))
            if result >= 0:
                return Append(ErrorCode.NONE, result, result + count - 1)
            if -result != REAPED:  # a reaper tore the claim: nothing was written
                error, message = _APPEND_ERRORS.get(
                    -result, (ErrorCode.UNKNOWN_SERVER_ERROR, f"ring code {-result}")
                )
                return Append(error, message=message)

    def _wait_committed(self, done: Append, timeout_ms: int) -> Append:
        code = self.ring.wait_high_watermark(done.last_offset, max(timeout_ms, 0) / 1000)
        if code == SEALED:
            return Append(
                ErrorCode.NOT_LEADER_OR_FOLLOWER,
                done.base_offset,
                message="the leader moved before the ISR held the batch",
            )
        if code == TIMEOUT:
            return Append(
                ErrorCode.REQUEST_TIMED_OUT,
                done.base_offset,
                message="the ISR did not hold the batch within the timeout",
            )
        _, _, isr_count = self.ring.commit_state()
        if isr_count < self.leadership.min_insync:
            return Append(ErrorCode.NOT_ENOUGH_REPLICAS_AFTER_APPEND, done.base_offset)
        return done

    # -- reading ----------------------------------------------------------------

    def offsets(self) -> tuple[int, int]:
        """(log start offset, high watermark)."""
        return self._log_start_offset(), self.ring.status().readable_end

    def read(self, offset: int, max_bytes: int) -> Fetched:
        """Whole batches from the one holding ``offset``, about ``max_bytes`` (at least one
        batch), none at or past the high watermark."""
        status = self.ring.status()
        if status.sealed:
            return Fetched(ErrorCode.NOT_LEADER_OR_FOLLOWER)
        high_watermark = status.readable_end
        log_start = self._log_start_offset()
        if offset < log_start or offset > high_watermark:
            return Fetched(ErrorCode.OFFSET_OUT_OF_RANGE, high_watermark, log_start)
        if offset == high_watermark:
            return Fetched(ErrorCode.NONE, high_watermark, log_start)
        data = self._from_ring(offset, max_bytes)
        if data is None:
            # The ring drained it after ``status`` was taken: the segment holds it up to
            # the drain offset as it is now (the one in ``status`` may stop short of it,
            # and the read would then come back empty below the high watermark).
            upper = min(self.ring.status().drain_offset, high_watermark)
            try:
                data = self.reader.read(offset, max(max_bytes, 1), upper) if offset < upper else b""
            except OffsetOutOfRangeError:
                return Fetched(ErrorCode.OFFSET_OUT_OF_RANGE, high_watermark, log_start)
        return Fetched(ErrorCode.NONE, high_watermark, log_start, data)

    def _from_ring(self, offset: int, max_bytes: int) -> bytes | None:
        """Batches out of the ring; None when the ring no longer holds ``offset``."""
        cursor = self._cursor
        if cursor is None or cursor.offset != offset:
            cursor = self._cursor = self.ring.seek(offset)
            if cursor is None:
                return None
        if len(self._buf) < max_bytes:
            self._buf = bytearray(min(max_bytes, 1 << 24))
        while True:
            code, n = self.ring.read(cursor, self._buf)
            if code == OK:
                return bytes(memoryview(self._buf)[:n])
            if code == OUT_TOO_SMALL:
                self._buf = bytearray(n)
                continue
            if code == OVERWRITTEN:
                self._cursor = None
                return None
            assert code == EMPTY
            return b""

    def read_log(self, offset: int, max_bytes: int) -> bytes | None:
        """Whole batches from ``offset`` below the high watermark (b"" at it); None
        when they cannot be read (engine.kafka.txn_index's reader)."""
        got = self.read(offset, max_bytes)
        return got.records if got.error is ErrorCode.NONE else None

    def wait_target(self, offset: int) -> Cursor | None:
        """A cursor to wait at for what comes after ``offset`` (the high watermark the
        client caught up with); None when the ring cannot say."""
        with contextlib.suppress(EngineError):
            if self._cursor is not None and self._cursor.offset == offset:
                return self._cursor
            return self.ring.seek(offset)
        return None


_APPEND_ERRORS: dict[int, tuple[ErrorCode, str]] = {
    SEALED: (ErrorCode.NOT_LEADER_OR_FOLLOWER, "this broker no longer leads the partition"),
    FENCED: (ErrorCode.NOT_LEADER_OR_FOLLOWER, "the partition has a new leader epoch"),
    NOT_ENOUGH_REPLICAS: (
        ErrorCode.NOT_ENOUGH_REPLICAS,
        "fewer in-sync replicas than min.insync.replicas",
    ),
    FULL: (ErrorCode.REQUEST_TIMED_OUT, "the partition's ring stayed full for the timeout"),
    TOO_LARGE: (ErrorCode.MESSAGE_TOO_LARGE, "the batch exceeds max.message.bytes"),
    PRODUCER_FENCED: (ErrorCode.INVALID_PRODUCER_EPOCH, "a newer producer epoch exists"),
    BAD_ARGUMENT: (ErrorCode.INVALID_RECORD, "the batch's length or offsets are impossible"),
}


class PartitionHandles:
    """One connection's handles, by partition, checked against the broker's current
    leaderships at each use; at most every SWEEP_S the handles of partitions this broker
    no longer leads are closed (a deleted topic's ring is unmapped, not kept as long as
    the connection)."""

    def __init__(self, leaderships: Callable[[], Leaderships]) -> None:
        self._leaderships = leaderships
        self._handles: dict[tuple[str, int], PartitionHandle] = {}
        self._swept = time.monotonic()

    def _sweep(self, current: Leaderships) -> None:
        self._swept = time.monotonic()
        for key, handle in list(self._handles.items()):
            if current.get(key) != handle.leadership or not handle.current:
                self._handles.pop(key).close()

    def get(self, topic: str, partition: int) -> PartitionHandle | None:
        """The handle of a partition this broker leads now; None when it does not."""
        key = (topic, partition)
        current = self._leaderships()
        if time.monotonic() - self._swept > SWEEP_S:
            self._sweep(current)
        leadership = current.get(key)
        handle = self._handles.get(key)
        if handle is not None and (handle.leadership != leadership or not handle.current):
            self._handles.pop(key).close()
            handle = None
        if handle is None and leadership is not None:
            try:
                handle = PartitionHandle(leadership)
            except (FileNotFoundError, EngineError):
                return None  # not open yet, or gone: the client asks again
            if not handle.current:
                handle.close()
                return None
            self._handles[key] = handle
        return handle

    def close(self) -> None:
        for handle in self._handles.values():
            handle.close()
        self._handles.clear()


def _keyless_refused(records: memoryview | None, leadership: Leadership) -> Append | None:
    """INVALID_RECORD for a batch with a record without a key, on a compacted topic (the
    cleaner could never replace or remove it): Kafka's check and words. A compressed
    batch is read decompressed; one that does not decompress is CORRUPT_MESSAGE."""
    assert records is not None
    try:
        infos = decode_record_infos(plain_batch(records))
    except (EngineError, ValueError) as exc:
        return Append(ErrorCode.CORRUPT_MESSAGE, message=str(exc))
    if bool((infos["key_length"] < 0).any()):
        return Append(
            ErrorCode.INVALID_RECORD,
            message="Compacted topic cannot accept message without key in topic partition "
            f"{leadership.topic}-{leadership.partition}.",
        )
    return None

