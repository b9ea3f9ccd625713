"""Kafka record batches (magic 2) in pure Python, and the one wrapper of the C batch walker.

The byte layout is drawn in native/batch.h; this module writes exactly that layout
(big-endian, a 61-byte header, CRC32C over bytes 21..end) for tests, tools and a
future Kafka listener. The hot paths (ring append, segment append) never call
:func:`encode_batch`; they use the C encoder or pass batches through untouched.

:func:`scan_batches` and :func:`scan_two_batches` are the only places where the codes
of ``engine_batch_scan`` are mapped to Python (:class:`ScanStatus`). Callers decide what
a truncated or corrupt tail means for them (recovery cuts it off, an append rejects it).
:func:`check_chunk` does the same for ``engine_batch_check`` (:class:`BatchProblem`):
what a reader checks before it delivers a chunk (shape, CRC32C, offsets in sequence).

:func:`encode_empty_batch` makes the batch a dense log (log.py, format 2) writes over
offsets that hold no record: Kafka's batch of record count 0, the kind compaction
leaves behind. :func:`filter_batch` is what compaction (engine/cleaner.py) makes of a
batch that keeps some of its records: Kafka's batch whose records skip offsets (each
record keeps its offset delta), over the same offsets as before.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

# engine._native is a cffi extension without type stubs.
from engine._native import ffi, lib  # type: ignore[import-not-found, unused-ignore]
from engine.errors import CorruptRecordError
from engine.record import RECORD_INFO_DTYPE

__all__ = [
    "BATCH_HEADER_LENGTH",
    "BATCH_INFO_DTYPE",
    "RECORD_INFO_DTYPE",
    "BatchCheck",
    "BatchHeader",
    "BatchProblem",
    "BatchRecord",
    "ScanStatus",
    "check_chunk",
    "decode_record_infos",
    "empty_batches_before",
    "encode_batch",
    "encode_empty_batch",
    "filter_batch",
    "read_batch_header",
    "scan_batches",
    "scan_two_batches",
]

BATCH_HEADER_LENGTH = 61
MAGIC = 2
# batch_length counts the bytes after its own field: total length = batch_length + 12.
_LENGTH_OVERHEAD = 12
_CRC_START = 21

#: One row per batch found by :func:`scan_batches`; mirrors ``engine_batch_info_t``.
BATCH_INFO_DTYPE = np.dtype(
    [
        ("position", "<u8"),  # byte position of the batch in the scanned buffer
        ("base_offset", "<i8"),
        ("last_offset", "<i8"),
        ("max_timestamp", "<i8"),
        ("length", "<i4"),  # total bytes of the batch, header included
        ("records_count", "<i4"),
        ("attributes", "<i2"),
        ("reserved0", "<i2"),
        ("reserved1", "<i4"),
    ]
)
assert BATCH_INFO_DTYPE.itemsize == ffi.sizeof("engine_batch_info_t")
assert BATCH_INFO_DTYPE.fields is not None
assert BATCH_INFO_DTYPE.fields["attributes"][1] == ffi.offsetof("engine_batch_info_t", "attributes")

#: One row per record found by ``engine_batch_decode``; mirrors ``engine_record_info_t``.
# RECORD_INFO_DTYPE (engine_record_info_t as numpy) is defined in engine.record.

#: (key, value, headers, timestamp_ms) of one record to encode.
BatchRecord = tuple[bytes | None, bytes | None, Sequence[tuple[str, bytes]], int]

# base_offset, batch_length, partition_leader_epoch, magic, crc (filled later),
# attributes, last_offset_delta, base_timestamp, max_timestamp, producer_id,
# producer_epoch, base_sequence, records_count
_HEADER = struct.Struct(">qiibIhiqqqhii")
assert _HEADER.size == BATCH_HEADER_LENGTH


class ScanStatus(enum.Enum):
    """Why :func:`scan_batches` stopped walking."""

    OK = 0
    """The buffer ends exactly at a batch boundary (or max_batches were found)."""
    TRUNCATED = 1
    """The buffer ends inside a batch: a torn tail, or a batch still being written."""
    CORRUPT = 2
    """A batch has a bad magic, an impossible length or a CRC mismatch."""


class BatchProblem(enum.Enum):
    """What :func:`check_chunk` found wrong with a batch (engine_batch_check's codes)."""

    SHAPE = lib.ENGINE_BATCH_BAD_SHAPE
    """Not a whole magic-2 batch: a bad magic, an impossible length, or cut short."""
    CRC = lib.ENGINE_BATCH_BAD_CRC
    """Its CRC32C does not match: a byte from attributes to the end was changed."""
    OFFSETS = lib.ENGINE_BATCH_BAD_OFFSETS
    """Its offsets are out of sequence: a damaged base offset (which no CRC covers)."""

    @property
    def what(self) -> str:
        """The problem in a few words, for messages."""
        return _PROBLEM_WORDS[self]


_PROBLEM_WORDS = {
    BatchProblem.SHAPE: "not a whole magic-2 batch",
    BatchProblem.CRC: "CRC32C mismatch",
    BatchProblem.OFFSETS: "offsets out of sequence",
}


class BatchCheck(NamedTuple):
    """The first bad batch :func:`check_chunk` found in a chunk."""

    problem: BatchProblem
    position: int
    """Byte position of the bad batch: the chunk's whole good batches end here."""
    expected_offset: int
    """The offset the batch had to hold (the first of the chunk) or start at."""
    base_offset: int
    """Its base offset as stored (-1 when not even 8 bytes are there)."""
    last_offset: int
    """Its last offset as stored (-1 when its header is not whole)."""


def check_chunk(
    buf: Any, expected_offset: int, *, crc: bool = True, dense: bool = False
) -> BatchCheck | None:
    """The first bad batch of a chunk a reader is about to deliver, or None.

    ``buf`` holds whole batches read at ``expected_offset``. Checks each batch's shape,
    its CRC32C (``crc``), and that its offsets are in sequence: the first batch holds
    ``expected_offset`` (or, unless ``dense``, comes after it), each later one starts
    right after the one before it (``dense``: a log that fills skipped offsets) or
    anywhere after it (a ring, where a reaped frame's offsets are skipped). In C.
    """
    view = memoryview(buf).cast("B") if not isinstance(buf, bytes) else buf
    if not len(view):
        return None
    flags = (lib.ENGINE_CHECK_CRC if crc else 0) | (lib.ENGINE_CHECK_DENSE if dense else 0)
    out = ffi.new("engine_batch_check_t *")
    code = lib.engine_batch_check(
        ffi.from_buffer("uint8_t[]", view), len(view), expected_offset, flags, out
    )
    if code == lib.ENGINE_BATCH_INTACT:
        return None
    return BatchCheck(
        BatchProblem(code),
        int(out.position),
        int(out.expected_offset),
        int(out.base_offset),
        int(out.last_offset),
    )


def _varint(value: int, out: bytearray) -> None:
    """Append a zigzag varint (Kafka's varint/varlong encoding)."""
    z = (value << 1) ^ (value >> 63)
    z &= (1 << 64) - 1
    while z >= 0x80:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z)


def _encode_record(
    offset_delta: int,
    timestamp_delta: int,
    key: bytes | None,
    value: bytes | None,
    headers: Sequence[tuple[str, bytes]],
) -> bytes:
    body = bytearray(b"\x00")  # record attributes: unused by Kafka
    _varint(timestamp_delta, body)
    _varint(offset_delta, body)
    for field in (key, value):
        if field is None:
            _varint(-1, body)
        else:
            _varint(len(field), body)
            body += field
    _varint(len(headers), body)
    for header_key, header_value in headers:
        raw_key = header_key.encode()
        _varint(len(raw_key), body)
        body += raw_key
        if header_value is None:
            _varint(-1, body)
        else:
            _varint(len(header_value), body)
            body += header_value
    out = bytearray()
    _varint(len(body), out)
    out += body
    return bytes(out)


def encode_batch(
    base_offset: int,
    records: Sequence[BatchRecord],
    *,
    producer_id: int = -1,
    producer_epoch: int = -1,
    base_sequence: int = -1,
    attributes: int = 0,
    leader_epoch: int = 0,
) -> bytes:
    """Encode one uncompressed magic-2 batch holding ``records`` at consecutive offsets.

    Each record is ``(key, value, headers, timestamp_ms)``; the batch's base timestamp
    is the first record's, its max timestamp the largest. ``attributes`` must leave
    the compression bits (0-2) clear (engine.compression compresses a batch).
    """
    if not records:
        raise ValueError("a record batch holds at least one record: records=[]")
    if attributes & 0x07:
        raise ValueError(f"compressed batches are not supported: attributes={attributes:#x}")
    base_timestamp = records[0][3]
    body = b"".join(
        _encode_record(i, timestamp - base_timestamp, key, value, headers)
        for i, (key, value, headers, timestamp) in enumerate(records)
    )
    total = BATCH_HEADER_LENGTH + len(body)
    header = bytearray(
        _HEADER.pack(
            base_offset,
            total - _LENGTH_OVERHEAD,
            leader_epoch,
            MAGIC,
            0,
            attributes,
            len(records) - 1,
            base_timestamp,
            max(record[3] for record in records),
            producer_id,
            producer_epoch,
            base_sequence,
            len(records),
        )
    )
    crc = lib.engine_crc32c(0, bytes(header[_CRC_START:]), BATCH_HEADER_LENGTH - _CRC_START)
    crc = lib.engine_crc32c(crc, body, len(body))
    struct.pack_into(">I", header, 17, crc)
    return bytes(header) + body


#: The most offsets one empty batch covers (its last_offset_delta is an int32).
MAX_EMPTY_BATCH_OFFSETS = 2**31 - 1


def encode_empty_batch(
    base_offset: int, offset_count: int, *, leader_epoch: int, timestamp: int
) -> bytes:
    """A batch of no record over ``offset_count`` offsets from ``base_offset``.

    Kafka's record-count-0 batch (what compaction leaves of a batch whose records all
    went): 61 bytes, no producer, not transactional. Its other fields come from the
    caller, so that two replicas filling the same offsets write the same bytes.
    """
    if not 1 <= offset_count <= MAX_EMPTY_BATCH_OFFSETS:
        raise ValueError(
            f"an empty batch covers 1 to 2**31 - 1 offsets: offset_count={offset_count}"
        )
    header = bytearray(
        _HEADER.pack(
            base_offset,
            BATCH_HEADER_LENGTH - _LENGTH_OVERHEAD,
            leader_epoch,
            MAGIC,
            0,
            0,
            offset_count - 1,
            timestamp,
            timestamp,
            -1,
            -1,
            -1,
            0,
        )
    )
    crc = lib.engine_crc32c(0, bytes(header[_CRC_START:]), BATCH_HEADER_LENGTH - _CRC_START)
    struct.pack_into(">I", header, 17, crc)
    return bytes(header)


def empty_batches_before(buf: Any, position: int, base_offset: int) -> list[bytes]:
    """The empty batches that fill the offsets from ``base_offset`` up to the batch at
    ``position`` of ``buf`` (none when that batch starts there).

    Each takes that next batch's partition leader epoch and base timestamp: a pure
    function of the batch after the gap, so that every replica fills a gap with the
    same bytes (followers copy the leader's batches byte for byte, and the offsets a
    reaped frame skipped reach each replica's drain as the same gap).
    """
    fields = _HEADER.unpack_from(buf, position)
    next_base, leader_epoch, timestamp = fields[0], fields[2], fields[7]
    out = []
    while base_offset < next_base:
        count = min(next_base - base_offset, MAX_EMPTY_BATCH_OFFSETS)
        out.append(
            encode_empty_batch(base_offset, count, leader_epoch=leader_epoch, timestamp=timestamp)
        )
        base_offset += count
    return out


def filter_batch(batch: Any, spans: Sequence[tuple[int, int]], max_timestamp: int) -> bytes:
    """The whole uncompressed batch ``batch`` keeping only the records at ``spans``
    (their byte ranges in it, in order; at least one).

    The records are copied as they are (offset and timestamp deltas included), so each
    keeps its offset and timestamp. The header keeps its base offset, last offset delta
    (the batch covers the same offsets), base timestamp, partition leader epoch,
    attributes and producer fields; its length, records count, ``max_timestamp`` and
    CRC32C are made anew. As Kafka's cleaner writes a batch it keeps part of.
    """
    if not spans:
        raise ValueError("a filtered batch keeps at least one record: spans=[]")
    view = memoryview(batch).cast("B") if not isinstance(batch, bytes) else batch
    body = b"".join(bytes(view[start:end]) for start, end in spans)
    header = bytearray(view[:BATCH_HEADER_LENGTH])
    struct.pack_into(">i", header, 8, BATCH_HEADER_LENGTH + len(body) - _LENGTH_OVERHEAD)
    struct.pack_into(">q", header, 35, max_timestamp)
    struct.pack_into(">i", header, 57, len(spans))
    crc = lib.engine_crc32c(0, bytes(header[_CRC_START:]), BATCH_HEADER_LENGTH - _CRC_START)
    crc = lib.engine_crc32c(crc, body, len(body))
    struct.pack_into(">I", header, 17, crc)
    return bytes(header) + body


class BatchHeader(NamedTuple):
    """The fields of a batch header that the log needs."""

    base_offset: int
    last_offset: int
    length: int
    """Total bytes of the batch, header included."""
    max_timestamp: int


def read_batch_header(buf: Any, position: int = 0) -> BatchHeader:
    """The header of the batch at ``position`` of ``buf``.

    Checks nothing but the presence of 61 bytes; use :func:`scan_batches` to validate.
    """
    fields = _HEADER.unpack_from(buf, position)
    base_offset, batch_length, last_offset_delta, max_timestamp = (
        fields[0],
        fields[1],
        fields[6],
        fields[8],
    )
    return BatchHeader(
        base_offset, base_offset + last_offset_delta, batch_length + _LENGTH_OVERHEAD, max_timestamp
    )


class ProducerFields(NamedTuple):
    """The producer fields of a batch header (idempotence, transactions)."""

    attributes: int
    producer_id: int
    producer_epoch: int
    base_sequence: int


def read_producer_fields(buf: Any, position: int = 0) -> ProducerFields:
    """The producer fields of the batch at ``position`` of ``buf`` (61 bytes present)."""
    fields = _HEADER.unpack_from(buf, position)
    return ProducerFields(fields[5], fields[9], fields[10], fields[11])


def scan_batches(
    buf: Any, verify_crc: bool = True, max_batches: int | None = None
) -> tuple[npt.NDArray[np.void], int, ScanStatus]:
    """Walk the whole batches at the start of ``buf`` (bytes, memoryview, mmap, ndarray).

    Returns ``(infos, scanned, status)``: one :data:`BATCH_INFO_DTYPE` row per intact
    batch (positions relative to ``buf``), the byte length of that intact prefix, and
    why the walk stopped. ``verify_crc`` checks every batch's CRC32C (in C, ~9 GB/s).
    The walk stops after ``max_batches`` batches (default: as many as can fit).
    """
    view = memoryview(buf).cast("B") if not isinstance(buf, bytes) else buf
    length = len(view)
    if max_batches is None:
        max_batches = length // BATCH_HEADER_LENGTH + 1
    max_batches = min(max_batches, length // BATCH_HEADER_LENGTH + 1, 2**31 - 1)
    infos = np.empty(max_batches, dtype=BATCH_INFO_DTYPE)
    count = ffi.new("int32_t *")
    scanned = ffi.new("uint64_t *")
    if length:
        code = lib.engine_batch_scan(
            ffi.from_buffer("uint8_t[]", view),
            length,
            1 if verify_crc else 0,
            ffi.cast("engine_batch_info_t *", infos.ctypes.data),
            max_batches,
            count,
            scanned,
        )
    else:
        code, count[0], scanned[0] = 0, 0, 0
    return infos[: count[0]], int(scanned[0]), ScanStatus(code)


def scan_two_batches(buf: Any) -> tuple[ScanStatus, int, int, Any]:
    """:func:`scan_batches` with ``verify_crc`` and ``max_batches=2``, without numpy, for
    a caller that expects one batch (a Kafka client's produce): ``(status, count,
    scanned, first)``, ``first`` the first batch's ``engine_batch_info_t`` (fields by
    name; meaningful when ``count >= 1``)."""
    infos = ffi.new("engine_batch_info_t[2]")
    count = ffi.new("int32_t *")
    scanned = ffi.new("uint64_t *")
    length = len(buf)
    code = 0
    if length:
        code = lib.engine_batch_scan(
            ffi.from_buffer("uint8_t[]", buf), length, 1, infos, 2, count, scanned
        )
    return ScanStatus(code), int(count[0]), int(scanned[0]), infos[0]


def decode_record_infos(buf: Any, min_offset: int = 0) -> npt.NDArray[np.void]:
    """Every record of the whole batches in ``buf`` at or above ``min_offset``.

    One :data:`RECORD_INFO_DTYPE` row per record (control batches skipped), positions
    relative to ``buf``; raises CorruptRecordError when a record cannot be decoded.
    Used by the log to find a record by timestamp; consumers decode in engine.record.
    """
    view = memoryview(buf).cast("B") if not isinstance(buf, bytes) else buf
    length = len(view)
    if not length:
        return np.empty(0, dtype=RECORD_INFO_DTYPE)
    out = np.empty(length // 7 + 1, dtype=RECORD_INFO_DTYPE)  # a record takes >= 7 bytes
    count = ffi.new("int32_t *")
    consumed = ffi.new("uint64_t *")
    code = lib.engine_batch_decode(
        ffi.from_buffer("uint8_t[]", view),
        length,
        0,
        min_offset,
        ffi.cast("engine_record_info_t *", out.ctypes.data),
        min(len(out), 2**31 - 1),
        count,
        consumed,
        ffi.new("int64_t *"),
    )
    if ScanStatus(code) is ScanStatus.CORRUPT:
        raise CorruptRecordError(f"record batch does not decode: position={int(consumed[0])}")
    return out[: count[0]]
