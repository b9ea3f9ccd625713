"""The idempotent producer's retry: which of its records a new leader already holds.

An idempotent producer (``enable_idempotence=True``, and every transactional
producer) has a producer id and epoch from the coordinator and numbers its
records per partition: sequence 0, 1, 2, ... stamped into each batch header
(``base_sequence``), as Kafka's producer does.

In Kafka a retry is a resent request and the broker drops a batch whose
sequence it has seen. Here the producer writes the leader's ring itself, so it
always knows the offset each record took; what it cannot know is whether a
record appended just before the leader changed reached the follower that leads
now. Offsets are the same on every replica, and a new leader's log up to its
promotion is a prefix of the old leader's, so the records of a send are in the
new leader exactly when the batch at their offset there carries this producer's
id, epoch and their sequence. :func:`present_prefix` reads those batches; the
producer appends again (with the same sequences) only the records that are
missing. No record is then written twice, and none is lost.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from engine.errors import OffsetOutOfRangeError
from engine.log import LogReader
from engine.record_batch import BATCH_HEADER_LENGTH, read_batch_header, read_producer_fields
from engine.ring import EMPTY, NO_LIMIT, OK, OUT_TOO_SMALL, Ring


class BatchIdentity(NamedTuple):
    base_offset: int
    last_offset: int
    producer_id: int
    producer_epoch: int
    base_sequence: int


def parse_identity(buf: bytes | bytearray | memoryview) -> BatchIdentity:
    """The producer fields of the batch at the start of ``buf``."""
    header, producer = read_batch_header(buf), read_producer_fields(buf)
    return BatchIdentity(
        header.base_offset,
        header.last_offset,
        producer.producer_id,
        producer.producer_epoch,
        producer.base_sequence,
    )


def batch_at(ring: Ring, reader: LogReader, offset: int) -> BatchIdentity | None:
    """The identity of the batch holding ``offset`` in this leader's log, or None
    when the log does not hold that offset (not there yet, or a skipped offset)."""
    cursor = ring.seek(offset)
    if cursor is not None:
        buf = bytearray(1 << 16)
        while True:
            code, n = ring.read(cursor, buf, NO_LIMIT)
            if code == OUT_TOO_SMALL:
                buf = bytearray(n)
                continue
            break
        if code == OK:
            found = parse_identity(buf)
            return found if found.base_offset <= offset <= found.last_offset else None
        if code == EMPTY:
            return None
    upper = ring.status().drain_offset  # overwritten in the ring, or drained: the segments
    try:
        data = reader.read(offset, 1 << 16, upper)
    except OffsetOutOfRangeError:
        return None
    if len(data) < BATCH_HEADER_LENGTH:
        return None
    found = parse_identity(data)
    return found if found.base_offset <= offset <= found.last_offset else None


def present_prefix(
    ring: Ring,
    reader: LogReader,
    offsets: Sequence[int],
    producer_id: int,
    epoch: int,
    first_sequence: int,
) -> int:
    """How many leading records of a send (their old ``offsets``, sequences
    first_sequence, first_sequence + 1, ...) this leader holds."""
    i = 0
    while i < len(offsets):
        found = batch_at(ring, reader, int(offsets[i]))
        if found is None or (found.producer_id, found.producer_epoch) != (producer_id, epoch):
            return i
        if found.base_sequence + (int(offsets[i]) - found.base_offset) != (
            (first_sequence + i) & 0x7FFFFFFF
        ):
            return i
        while i < len(offsets) and int(offsets[i]) <= found.last_offset:
            i += 1  # the rest of that batch: consecutive offsets and sequences
    return i
