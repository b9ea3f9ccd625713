"""What users send and receive: records, their metadata, topic-partitions, headers.

Names follow kafka-python: ``TopicPartition``, ``RecordMetadata``, and a
consumer ``Record`` with topic, partition, offset, timestamp, key, value, headers.
Decoding of stored batches into records happens here, through the C decoder
(native/batch.h), which yields positions, and engine._records (native/records.c),
which makes the Record objects from them.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import numpy as np

import engine._records as _records
from engine._native import ffi, lib
from engine.errors import ConfigError, CorruptRecordError, RecordTypeError

Headers = list[tuple[str, bytes]]


class TopicPartition(NamedTuple):
    """A partition of a topic."""

    topic: str
    partition: int


class OffsetAndTimestamp(NamedTuple):
    """An offset and the timestamp (ms) of its record: what Consumer.offsets_for_times
    finds (kafka-python's OffsetAndTimestamp)."""

    offset: int
    timestamp: int


#: Offsets are int64, as in Kafka.
MAX_OFFSET = (1 << 63) - 1


def as_offset(value: object, where: str = "") -> int:
    """``value`` as an offset: an int, a numpy integer included, in [0, 2**63-1];
    ConfigError naming the value otherwise (``where`` prefixes the key=value part)."""
    if not isinstance(value, (bool, np.bool_)):
        try:
            offset = operator.index(value)  # type: ignore[arg-type]  # refused below
        except TypeError:
            pass
        else:
            if 0 <= offset <= MAX_OFFSET:
                return offset
    raise ConfigError(
        f"offset must be a non-negative int64 (0 to 2**63-1): {where}offset={value!r}"
    )


class RecordMetadata(NamedTuple):
    """Where an acknowledged record landed (offset -1 when acks=0)."""

    topic: str
    partition: int
    offset: int
    timestamp: int


#: A record as a consumer receives it: topic, partition, offset, timestamp, key, value,
#: headers; also the 7-tuple of them. A C type (native/records.c) over the chunk the
#: record came from: key, value and headers are made when first read.
Record = _records.Record


BYTES_LIKE = (bytes, bytearray, memoryview)


def as_bytes(what: str, data: Any, nullable: bool = True) -> bytes | None:
    """Return ``data`` as bytes, or raise RecordTypeError naming ``what`` was wrong."""
    if type(data) is bytes:
        return data
    if data is None and nullable:
        return None
    if isinstance(data, BYTES_LIKE):
        return bytes(data)
    raise RecordTypeError(f"{what} must be bytes-like or None, not {type(data).__name__}")


def _varint(n: int) -> bytes:
    z = (n << 1) ^ (n >> 63)
    out = bytearray()
    while z >= 0x80:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z)
    return bytes(out)


def encode_headers(headers: Iterable[tuple[str, Any]] | None) -> tuple[bytes, int]:
    """Kafka's record header encoding: (bytes, count)."""
    if not headers:
        return b"", 0
    out = bytearray()
    count = 0
    for item in headers:
        try:
            name, value = item
        except (TypeError, ValueError):
            raise RecordTypeError(f"a header must be a (str, bytes) pair, not {item!r}") from None
        if not isinstance(name, str):
            raise RecordTypeError(f"header key must be str, not {type(name).__name__}")
        raw_name = name.encode()
        raw_value = as_bytes(f"header {name!r} value", value)
        out += _varint(len(raw_name)) + raw_name
        if raw_value is None:
            out += _varint(-1)
        else:
            out += _varint(len(raw_value)) + raw_value
        count += 1
    return bytes(out), count


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    z = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise CorruptRecordError("truncated varint in record headers")
        b = data[pos]
        pos += 1
        z |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return (z >> 1) ^ -(z & 1), pos


def decode_headers(data: bytes, count: int) -> Headers:
    headers: Headers = []
    pos = 0
    for _ in range(count):
        n, pos = _read_varint(data, pos)
        name = data[pos : pos + n].decode()
        pos += n
        n, pos = _read_varint(data, pos)
        value = b"" if n < 0 else data[pos : pos + n]
        pos += max(n, 0)
        headers.append((name, value))
    return headers


RECORD_INFO_DTYPE = np.dtype(
    [
        ("offset", "<i8"),
        ("timestamp", "<i8"),
        ("producer_id", "<i8"),
        ("key_position", "<u4"),
        ("key_length", "<i4"),
        ("value_position", "<u4"),
        ("value_length", "<i4"),
        ("headers_position", "<u4"),
        ("headers_length", "<u4"),
        ("header_count", "<i4"),
        ("batch_attributes", "<i2"),
        ("reserved", "<i2"),
    ]
)
assert RECORD_INFO_DTYPE.itemsize == ffi.sizeof("engine_record_info_t")


#: Kafka's compression codecs by the low 3 bits of a batch's attributes.
_CODECS = {1: "gzip", 2: "snappy", 3: "lz4", 4: "zstd"}


class RecordDecoder:
    """Turns a buffer of whole batches into Records; one per consumer thread."""

    def __init__(self, max_records: int = 4096) -> None:
        self._capacity = max_records
        self._infos = ffi.new("engine_record_info_t[]", max_records)
        self._infos_address = int(ffi.cast("uintptr_t", self._infos))
        self._count = ffi.new("int32_t *")
        self._consumed = ffi.new("uint64_t *")
        self._end_offset = ffi.new("int64_t *")

    @property
    def end_offset(self) -> int:
        """After the last decode: one past the last offset of the last batch it walked
        completely (up to the position it returned), -1 if none."""
        return int(self._end_offset[0])

    def _decode(
        self, data: bytes, start: int, topic: str, partition: int, min_offset: int,
        max_records: int,
    ) -> int:
        """Index the records of data[start:] into self._infos (C); returns how many.
        Positions (and the bytes used, self._consumed) count from the start of data."""
        code = lib.engine_batch_decode(
            data, len(data), start, min_offset, self._infos, min(max_records, self._capacity),
            self._count, self._consumed, self._end_offset,
        )  # fmt: skip
        n = int(self._count[0])
        if code == 2 and n == 0:
            at = int(self._consumed[0])
            codec = data[at + 22] & 0x07 if len(data) > at + 22 else 0  # attributes' low byte
            if codec:  # readers make chunks plain first (engine.compression): a bug
                raise CorruptRecordError(
                    f"a {_CODECS.get(codec, f'codec {codec}')}-compressed record batch reached "
                    f"the decoder: topic={topic} partition={partition} offset>={min_offset}"
                )
            raise CorruptRecordError(
                f"corrupt record batch: topic={topic} partition={partition} offset>={min_offset}"
            )
        return n

    def decode(
        self, data: bytes, topic: str, partition: int, min_offset: int, max_records: int,
        start: int = 0,
    ) -> tuple[list[Record], int]:
        """Records of data[start:] at or above ``min_offset`` (at most max_records), and
        the position in data after the last batch fully used."""
        n = self._decode(data, start, topic, partition, min_offset, max_records)
        if type(data) is not bytes:  # the records hold it: an immutable copy
            data = bytes(data)
        out: list[Record] = _records.build(
            data, self._infos_address, n, topic, partition, decode_headers
        )
        return out, int(self._consumed[0])

    def decode_values(
        self, data: bytes, topic: str, partition: int, min_offset: int, max_records: int,
        value_size: int, start: int = 0,
    ) -> tuple[np.ndarray[Any, Any], int, int]:
        """Values only, as an (n, value_size) uint8 array: (values, last offset, position
        after the last batch fully used)."""
        n = self._decode(data, start, topic, partition, min_offset, max_records)
        values = np.empty((n, value_size), dtype=np.uint8)
        if not n:
            return values, -1, int(self._consumed[0])
        bad = lib.engine_batch_copy_values(
            data, self._infos, n, value_size, ffi.from_buffer("uint8_t[]", values)
        )
        if bad > 0:  # deliver the values before it; the next call starts at it
            return values[:bad], int(self._infos[bad - 1].offset), start
        if bad == 0:
            raise CorruptRecordError(
                f"poll_values expects {value_size}-byte values: topic={topic} "
                f"partition={partition} found a value of {self._infos[bad].value_length} bytes "
                f"at offset {self._infos[bad].offset}"
            )
        return values, int(self._infos[n - 1].offset), int(self._consumed[0])


def pack_values(values: Sequence[Any], what: str = "values") -> tuple[bytes, Any]:
    """Concatenate a list of bytes-like values: (blob, int32 lengths in bytes)."""
    try:
        blob = b"".join(values)
    except TypeError:
        for i, v in enumerate(values):
            if not isinstance(v, BYTES_LIKE):
                raise RecordTypeError(
                    f"{what}[{i}] must be bytes-like, not {type(v).__name__}"
                ) from None
            if not memoryview(v).c_contiguous:
                raise RecordTypeError(
                    f"{what}[{i}] must be a contiguous buffer, not a strided memoryview"
                ) from None
        raise
    lengths = np.fromiter(map(len, values), dtype=np.int32, count=len(values))
    if int(lengths.sum()) != len(blob):
        # len() counts items, not bytes, for a memoryview of wider items or an array;
        # it is never more than the bytes, so equal sums mean every length is right.
        lengths = np.fromiter(
            (memoryview(v).nbytes for v in values), dtype=np.int32, count=len(values)
        )
    return blob, lengths
