"""The end offset of a leader epoch in a partition's log: OffsetForLeaderEpoch's answer.

A client that saw a leader change asks the new leader where the last epoch it read
from ends (KIP-320): when that end lies below its position, the records it read past
it were never committed and are gone (truncation).

Where the engine records epochs: in the log itself. Every batch carries its partition
leader epoch in its header (RecordBatch, magic 2: bytes 12-15, a big-endian int32; the
format's version is the batch's magic byte), written by the leader's ring at append
with the ring's own leader epoch (native/ring.h: the ring writes the base offset and
the leader epoch over the client's) and copied byte for byte by followers. Along a
log, epochs never decrease: a leader stamps its own epoch, a newer leader's is
higher, and a replica cuts whatever it holds beyond its leader's log before it
follows (Replica._prepare_log). So the log is its own leader-epoch cache: Kafka keeps
(epoch, start offset) pairs in a leader-epoch-checkpoint file beside the log; here the
start offset of epoch E is the base offset of the first batch stamped E, found by a
binary search over the offsets (about log2 of the number of batches reads of one
batch each). Nothing else is kept, so nothing can disagree with the log after a
crash, a truncation or a DeleteRecords.

The answer (:func:`end_offset_for`, as Kafka's LeaderEpochFileCache.endOffsetFor):

- the leader's current epoch: (that epoch, the log end offset);
- an epoch above it, or below 0: (-1, -1), Kafka's UNDEFINED_EPOCH and offset;
- an older epoch E: the base offset of the first batch stamped above E (the log end
  offset when there is none), and the largest epoch up to E the log holds before it
  (E itself when it holds none: those records were deleted).

Limit: in a compacted topic the cleaner may merge a run of emptied batches of several
epochs into one empty batch stamped with the last of them (engine.cleaner); an epoch
whose last batches were merged so ends, by this answer, where that batch starts. A
consumer whose position lies inside such a run (offsets without records) sees a
truncation there.

Threads: a connection thread, with its own PartitionHandle.
"""

from __future__ import annotations

from collections.abc import Callable

from engine.errors import EngineError
from engine.kafka.partitions import PartitionHandle
from engine.record_batch import BATCH_HEADER_LENGTH
from engine.ring import NO_LIMIT, OK, OUT_TOO_SMALL

UNDEFINED_EPOCH = -1
UNDEFINED_OFFSET = -1
#: How often a read of a batch is tried before the answer is an error (a batch claimed
#: in the ring but not published yet is looked at again).
READ_ATTEMPTS = 1000
_EPOCH = slice(12, 16)
_LAST_OFFSET_DELTA = slice(23, 27)

#: (base offset, last offset, partition leader epoch) of a batch.
BatchEpoch = tuple[int, int, int]


def end_offset_for(
    epoch: int,
    current_epoch: int,
    log_start: int,
    log_end: int,
    batch_at: Callable[[int], BatchEpoch | None],
) -> tuple[int, int] | None:
    """(epoch, end offset) for a requested ``epoch`` (module docstring). ``batch_at(o)``
    gives the batch that holds offset ``o`` (or the first after it), for ``log_start <=
    o < log_end``; None when it cannot be read (then the answer is None)."""
    if epoch < 0 or epoch > current_epoch:
        return UNDEFINED_EPOCH, UNDEFINED_OFFSET
    if epoch == current_epoch:
        return epoch, log_end
    # The first offset whose batch is stamped above `epoch`: in [lo, hi].
    lo, hi = log_start, log_end
    while lo < hi:
        mid = (lo + hi) // 2
        found = batch_at(mid)
        if found is None:
            return None
        base, last, stamped = found
        if stamped > epoch:
            hi = max(lo, min(base, mid))
        else:
            lo = last + 1
    if lo <= log_start:
        return epoch, max(lo, log_start)
    before = batch_at(lo - 1)
    if before is None:
        return None
    return min(before[2], epoch), lo


def batch_reader(handle: PartitionHandle) -> Callable[[int], BatchEpoch | None]:
    """``batch_at`` over a leader's partition: its ring where the ring still holds the
    offset, else its segments; up to the log end (above the high watermark too: the
    end of an epoch is the leader's, as in Kafka)."""
    buf = bytearray(1 << 16)

    def batch_at(offset: int) -> BatchEpoch | None:
        nonlocal buf
        ring = handle.ring
        try:
            for _attempt in range(READ_ATTEMPTS):
                drained = ring.status().drain_offset
                data = b""
                if offset >= drained:
                    cursor = ring.seek(offset)
                    if cursor is not None:
                        code, n = ring.read(cursor, buf, NO_LIMIT)
                        if code == OUT_TOO_SMALL:
                            buf = bytearray(n)
                            continue
                        if code == OK:
                            data = bytes(buf[:BATCH_HEADER_LENGTH])
                if not data:
                    drained = ring.status().drain_offset
                    if offset >= drained:
                        continue  # claimed, not yet published: look again
                    data = handle.reader.read(offset, 1, drained)[:BATCH_HEADER_LENGTH]
                if len(data) < BATCH_HEADER_LENGTH:
                    return None
                base = int.from_bytes(data[0:8], "big", signed=True)
                last = base + int.from_bytes(data[_LAST_OFFSET_DELTA], "big", signed=True)
                return base, last, int.from_bytes(data[_EPOCH], "big", signed=True)
        except EngineError:
            return None
        return None

    return batch_at
