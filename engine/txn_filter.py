"""read_committed: which record batches of one partition a read_committed consumer may see.

A :class:`ReadCommitted` filter is fed the whole batches of one partition in offset
order (any chunking) and gives back only what Kafka's ``isolation.level=read_committed``
lets a consumer see. It reads batch headers with ``struct`` (one unpack per batch, never
per record) and passes the delivered batches on untouched. The rules:

1. A batch without the transactional bit (attributes 0x10) is decided at once: delivered.
2. A transactional data batch (0x10 without the control bit 0x20) is undecided until a
   transaction marker of the same producer_id, with a producer_epoch >= the batch's,
   comes after it: COMMIT delivers it, ABORT drops it.
3. A transactional batch whose producer_id already had a marker of a *higher* epoch is
   dropped at once: it is a fenced zombie's late write.
4. Markers are control batches (0x30) with one control record: key = int16 version,
   int16 type (0 ABORT, 1 COMMIT); value = int16 version, int32 coordinator epoch
   (ignored). They carry the producer's producer_id and producer_epoch in the batch
   header, and are never delivered. Control batches of any other type are dropped and
   decide nothing.
5. Offset order is kept: nothing after the first undecided batch is released, not even
   a decided one. That batch's base offset is Kafka's last stable offset (LSO).

:meth:`ReadCommitted.take` returns the released bytes and the offset up to which every
batch has been released or dropped (so a consumer's position moves past aborted
batches and markers even when nothing is delivered). ``next_offset`` is where the next
fetch starts; ``buffered_bytes`` is what undecided transactions (and the batches behind
them) hold in memory, for a consumer that bounds it.
"""

from __future__ import annotations

import enum
import struct
from collections import deque

from engine.errors import CorruptRecordError

__all__ = [
    "ABORT",
    "COMMIT",
    "CONTROL",
    "MARKER_KEY",
    "TRANSACTIONAL",
    "ReadCommitted",
    "marker_type",
]

TRANSACTIONAL = 0x10
CONTROL = 0x20
#: Control record types (the key's second int16).
ABORT, COMMIT = 0, 1

# base_offset @0, batch_length @8, magic @16, attributes @21, last_offset_delta @23,
# producer_id @43, producer_epoch @51 (record_batch.py has the whole 61-byte header).
_HEADER = struct.Struct(">qi4xb4xhi16xqh")
_LENGTH_OVERHEAD = 12  # batch_length counts the bytes after its own field
_RECORDS_START = 61
#: A control record's key: int16 version (0), int16 type (ABORT or COMMIT).
MARKER_KEY = struct.Struct(">hh")


class _Fate(enum.Enum):
    """What becomes of a batch held behind (or as) the first undecided one."""

    UNDECIDED = 0
    """Transactional, its marker not seen yet: it and everything after it wait."""
    DELIVER = 1
    """Released, in offset order, once every batch before it is decided."""
    DROP = 2
    """Aborted: never delivered."""


class _Held:
    """A batch kept until the batches before it are decided."""

    __slots__ = ("base_offset", "data", "fate", "producer_epoch")

    def __init__(self, base_offset: int, data: bytes, fate: _Fate, producer_epoch: int) -> None:
        self.base_offset = base_offset
        self.data = data
        self.fate = fate
        self.producer_epoch = producer_epoch


class ReadCommitted:
    """The read_committed filter of one partition, from one start offset on.

    Holds the batches from the first undecided one on (in offset order), the
    undecided ones also by producer_id, the highest marker epoch seen per producer_id,
    and the released bytes not yet taken. Invariants: the first held batch, if any, is
    undecided; everything below it was released or dropped. Pure memory: a consumer
    that restarts (or seeks) makes a new filter at its delivery position and re-reads
    the undecided batches. Used by one thread.
    """

    def __init__(self, offset: int) -> None:
        """A filter whose first fetch starts at ``offset``."""
        self.next_offset = offset
        """Where the next fetch must start: the last offset fed + 1."""
        self._end = offset  # everything below was released or dropped
        self._held: deque[_Held] = deque()
        self._undecided: dict[int, list[_Held]] = {}  # producer_id -> its undecided batches
        self._marker_epochs: dict[int, int] = {}  # producer_id -> highest marker epoch seen
        self._released: list[bytes] = []
        self._buffered = 0

    @property
    def buffered_bytes(self) -> int:
        """Bytes held behind the first undecided batch (that batch included)."""
        return self._buffered

    def feed(self, chunk: bytes) -> None:
        """Take the whole batches in ``chunk``, the next ones of the partition in offset
        order. A batch wholly below ``next_offset`` (already fed) is ignored.
        CorruptRecordError when a batch does not fit the chunk or is not magic 2."""
        pos, size = 0, len(chunk)
        run = -1  # start of a run of batches delivered as they come (nothing held)
        while pos < size:
            if size - pos < _RECORDS_START:
                raise CorruptRecordError(f"truncated batch header: position={pos}")
            base, length, magic, attributes, delta, producer_id, epoch = _HEADER.unpack_from(
                chunk, pos
            )
            end = pos + length + _LENGTH_OVERHEAD
            if magic != 2 or length < _RECORDS_START - _LENGTH_OVERHEAD or end > size:
                raise CorruptRecordError(
                    f"not a whole magic-2 batch: position={pos} magic={magic} length={length}"
                )
            last = base + delta
            if last < self.next_offset:
                pos = end
                continue
            self.next_offset = last + 1
            if attributes & CONTROL:
                fate = _Fate.DROP
            elif not attributes & TRANSACTIONAL:
                fate = _Fate.DELIVER
            elif self._marker_epochs.get(producer_id, -1) > epoch:
                fate = _Fate.DROP  # fenced: a newer epoch of this producer already ended
            else:
                fate = _Fate.UNDECIDED
            if fate is _Fate.DELIVER and not self._held:
                if run < 0:
                    run = pos
            else:
                if run >= 0:
                    self._released.append(chunk[run:pos])
                    run = -1
                if fate is not _Fate.DROP:  # undecided, or delivered behind one
                    held = _Held(base, chunk[pos:end], fate, epoch)
                    self._held.append(held)
                    self._buffered += end - pos
                    if fate is _Fate.UNDECIDED:
                        self._undecided.setdefault(producer_id, []).append(held)
                if attributes & CONTROL:
                    self._marker(chunk, pos, end, producer_id, epoch)
            pos = end
        if run >= 0:
            self._released.append(chunk[run:])  # no copy when run == 0 (bytes)

    def _marker(self, chunk: bytes, pos: int, end: int, producer_id: int, epoch: int) -> None:
        """Apply the control batch at ``chunk[pos:end]`` if it is a transaction marker."""
        kind = _control_type(chunk, pos + _RECORDS_START, end)
        if kind not in (ABORT, COMMIT):
            return
        self._marker_epochs[producer_id] = max(self._marker_epochs.get(producer_id, -1), epoch)
        waiting = self._undecided.pop(producer_id, [])
        later = [held for held in waiting if held.producer_epoch > epoch]
        if later:
            self._undecided[producer_id] = later
        for held in waiting:
            if held.producer_epoch <= epoch:
                held.fate = _Fate.DELIVER if kind == COMMIT else _Fate.DROP
        while self._held and self._held[0].fate is not _Fate.UNDECIDED:
            held = self._held.popleft()
            self._buffered -= len(held.data)
            if held.fate is _Fate.DELIVER:
                self._released.append(held.data)

    def take(self) -> tuple[bytes, int]:
        """The released batches' bytes since the last take (concatenated, untouched),
        and the offset below which everything was released or dropped."""
        released, self._released = self._released, []
        data = released[0] if len(released) == 1 else b"".join(released)
        self._end = max(self._end, self._held[0].base_offset if self._held else self.next_offset)
        return data, self._end

    def skip_to(self, offset: int) -> None:
        """Offsets below ``offset`` hold no batch (a gap in the log): fetch from there."""
        self.next_offset = max(self.next_offset, offset)


def _varint(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    """A zigzag varint at ``pos``: (value, position after it)."""
    z = shift = 0
    while pos < end and shift < 64:
        b = buf[pos]
        pos += 1
        z |= (b & 0x7F) << shift
        if not b & 0x80:
            return (z >> 1) ^ -(z & 1), pos
        shift += 7
    raise CorruptRecordError(f"bad varint in a control record: position={pos}")


def marker_type(batch: bytes, position: int, end: int) -> int:
    """ABORT or COMMIT for the transaction marker at ``batch[position:end]`` (a whole
    control batch); another number (-1: no key) for another kind of control batch."""
    return _control_type(batch, position + _RECORDS_START, end)


def _control_type(buf: bytes, pos: int, end: int) -> int:
    """The type in the key of the control record at ``pos`` (-1 without a key)."""
    _, pos = _varint(buf, pos, end)  # record length
    pos += 1  # record attributes
    _, pos = _varint(buf, pos, end)  # timestamp delta
    _, pos = _varint(buf, pos, end)  # offset delta
    key_length, pos = _varint(buf, pos, end)
    if key_length < MARKER_KEY.size or pos + MARKER_KEY.size > end:
        return -1
    _version, kind = MARKER_KEY.unpack_from(buf, pos)
    return int(kind)
