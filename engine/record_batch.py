"""Kafka record batches (magic 2) in pure Python, and the one wrapper of the C batch walker.

The byte layout is drawn in native/batch.h; this module writes exactly that layout
(big-endian, a 61-byte header, CRC32C over bytes 21..end) for tests, tools and a
future Kafka listener. The hot paths (ring append, segment append) never call
:func:`encode_batch`; they use the C encoder or pass batches through untouched.

:func:`scan_batches` is the only place where the codes of ``engine_batch_scan``
are mapped to Python (:class:`ScanStatus`). Callers decide what a truncated or
corrupt tail means for them (recovery cuts it off, an append rejects it).
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
    "BatchHeader",
    "BatchRecord",
    "ScanStatus",
    "decode_record_infos",
    "encode_batch",
    "read_batch_header",
    "scan_batches",
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
    the compression bits (0-2) clear: the engine never compresses.
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
