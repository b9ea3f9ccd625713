"""What read_committed Kafka consumers need of one partition: its open and aborted
transactions.

A :class:`TxnIndex` is built from the batch headers of the partition's log, in offset
order up to the high watermark, whoever wrote them (Kafka clients through the listener,
the engine's producers and transaction markers straight into the ring):

- a transactional data batch opens its producer's transaction at its base offset, unless
  one is open already;
- a COMMIT or ABORT marker (engine.txn_filter) closes it; an ABORT keeps
  (producer id, first offset, marker offset) in the aborted list.

The last stable offset (LSO) is the first offset of the earliest transaction still open
(its marker not yet below the high watermark), else the high watermark. A
read_committed Fetch returns nothing at or past it, and with its records the aborted
transactions that overlap them (marker at or after the fetch offset, first offset below
the end of what is returned), from which Kafka's clients drop the aborted batches as
they do against Kafka.

Cost: one 61-byte header unpack per batch. A read_committed Fetch hands the index the
batches it read, so a consumer at the end of the log costs it nothing more; batches no
Fetch read first (a consumer behind, the open transaction's, which a Fetch stops
before) are read once more by whoever brings the index up to date. The first use in a
leadership reads the whole log from its start once (that Fetch waits for it); after
that, only what is new. Memory: the open transactions (one per producer) and the
aborted ones still in the log (three ints each); those below the log start are
dropped.

Threads: one index per partition leadership, shared by the listener's connections
(:class:`TxnIndexes`); :meth:`TxnIndex.update` and the reads take its lock.
"""

from __future__ import annotations

import bisect
import struct
import threading
import time
from collections.abc import Callable

from engine.errors import CorruptRecordError
from engine.kafka.partitions import SWEEP_S, Leadership, Leaderships
from engine.txn_filter import ABORT, COMMIT, CONTROL, TRANSACTIONAL, marker_type

__all__ = ["TxnIndex", "TxnIndexes"]

# base_offset @0, batch_length @8, magic @16, attributes @21, last_offset_delta @23,
# producer_id @43 (record_batch.py has the whole 61-byte header).
_HEADER = struct.Struct(">qi4xb4xhi16xq")
_HEADER_LENGTH = 61
_LENGTH_OVERHEAD = 12
#: What an update reads at a time.
SCAN_BYTES = 4 << 20

#: Reads whole batches from an offset up to about a byte count: (bytes, error).
Reader = Callable[[int, int], bytes | None]


class TxnIndex:
    """Open and aborted transactions of one partition up to ``scanned`` (module
    docstring). Invariants: ``aborted`` is sorted by marker offset; every batch below
    ``scanned`` was applied once."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.scanned = -1  # -1: not built yet (the first update starts at the log start)
        self.open: dict[int, int] = {}  # producer id -> first offset of its open transaction
        #: (marker offset, first offset, producer id) of aborted transactions.
        self.aborted: list[tuple[int, int, int]] = []

    def update(self, read: Reader, log_start: int, high_watermark: int) -> bool:
        """Apply the batches from ``scanned`` (or ``log_start``) up to the high watermark,
        read through ``read(offset, max_bytes)``; False when the log could not be read
        (the caller answers with an error and the index is left as it was)."""
        if self.scanned < log_start:
            if self.scanned >= 0:  # retention passed the index: start again
                self.open.clear()
                self.aborted.clear()
            self.scanned = log_start
        while self.scanned < high_watermark:
            data = read(self.scanned, SCAN_BYTES)
            if data is None:
                return False
            if not data:
                break
            self._apply(data)
        if self.aborted and self.aborted[0][0] < log_start:
            del self.aborted[: bisect.bisect_left(self.aborted, (log_start, -1, -1))]
        return True

    def feed(self, offset: int, data: bytes) -> None:
        """Apply whole batches read from ``offset`` on (a Fetch's), when they continue
        what the index holds: those below ``scanned`` are skipped."""
        if 0 <= offset <= self.scanned:
            self._apply(data)

    def _apply(self, data: bytes) -> None:
        pos, size = 0, len(data)
        while pos + _HEADER_LENGTH <= size:
            base, length, magic, attributes, delta, producer_id = _HEADER.unpack_from(data, pos)
            end = pos + length + _LENGTH_OVERHEAD
            if magic != 2 or end > size:
                raise CorruptRecordError(f"not a whole magic-2 batch: offset={base} magic={magic}")
            last = base + delta
            if last >= self.scanned and attributes & TRANSACTIONAL:
                if attributes & CONTROL:
                    kind = marker_type(data, pos, end)
                    first = self.open.pop(producer_id, None) if kind in (ABORT, COMMIT) else None
                    if kind == ABORT and first is not None:
                        self.aborted.append((base, first, producer_id))
                else:
                    self.open.setdefault(producer_id, base)
            self.scanned = max(self.scanned, last + 1)
            pos = end

    def last_stable_offset(self, high_watermark: int) -> int:
        return min(min(self.open.values(), default=high_watermark), high_watermark)

    def aborted_between(self, start: int, end: int) -> list[dict[str, int]]:
        """The aborted transactions whose batches may lie in [start, end): their marker
        at or after ``start``, their first offset below ``end``."""
        at = bisect.bisect_left(self.aborted, (start, -1, -1))
        return [
            {"producer_id": producer_id, "first_offset": first}
            for _, first, producer_id in self.aborted[at:]
            if first < end
        ]


class TxnIndexes:
    """The index of each partition leadership of one listener; at most every SWEEP_S,
    those of leaderships the broker no longer has (``leaderships()``) are dropped."""

    def __init__(self, leaderships: Callable[[], Leaderships]) -> None:
        self._leaderships = leaderships
        self._lock = threading.Lock()
        self._indexes: dict[tuple[str, int, int], TxnIndex] = {}
        self._swept = time.monotonic()

    def of(self, leadership: Leadership) -> TxnIndex:
        key = _key(leadership)
        with self._lock:
            if time.monotonic() - self._swept > SWEEP_S:
                self._swept = time.monotonic()
                live = {_key(current) for current in self._leaderships().values()}
                for gone in [k for k in self._indexes if k not in live]:
                    del self._indexes[gone]
            found = self._indexes.get(key)
            if found is None:
                for old in [k for k in self._indexes if k[:2] == key[:2]]:
                    del self._indexes[old]  # an older leadership of the partition
                found = self._indexes[key] = TxnIndex()
            return found


def _key(leadership: Leadership) -> tuple[str, int, int]:
    return leadership.ring_name, leadership.partition, leadership.leader_epoch
