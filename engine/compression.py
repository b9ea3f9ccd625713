"""Kafka's batch compression: the codecs, and compressed batches made plain.

A Kafka client may compress the records of a batch: bits 0-2 of the batch's attributes
name the codec, the 61-byte header stays as it is, and everything after it is one
compressed block holding the records (native/batch.h draws the layout). The broker
stores such a batch as it came; its CRC32C covers the compressed bytes, so every check
of a stored batch (the drain's, a reader's ``check_crcs``, ``engine verify``) holds for
it unchanged. What reads records makes the batch plain first: :func:`plain_batch` is the
same batch with its records decompressed, the compression bits cleared, and its length
and CRC32C made anew, a batch the C decoder (native/batch.c) reads as any other. The C
decoders refuse a compressed batch as corrupt, so none is ever misread as plain.

The codecs, all through cramjam (one well-kept extension with wheels for every platform
and no system library; aiokafka and python-snappy 0.7 are built on it too):

- gzip (1): one gzip stream (RFC 1952), as Java's GZIPOutputStream and librdkafka write.
- snappy (2): raw snappy, as librdkafka writes it, or in the xerial framing that Java's
  snappy-java and kafka-python write (a 16-byte header starting ``\\x82SNAPPY\\x00``,
  then blocks of a big-endian int32 length and raw snappy); both are read, xerial's is
  written (every Kafka client reads it).
- lz4 (3): the LZ4 frame format, written with independent blocks as Kafka's Java client
  writes it. (Kafka 0.8's broken frame header checksum concerns message format 0 and 1
  only; a magic-2 batch holds a correct frame.)
- zstd (4): a zstd frame, with or without its content size.

The other way, :func:`batch_of_records` makes a compressed batch of encoded records (the
engine's Producer with ``compression_type``) and :func:`compressed_batch` compresses a
plain batch (the cleaner, for what it keeps of a compressed one).

:func:`plain_chunk` makes every compressed batch of a chunk of whole batches plain;
:func:`first_compressed` tells in C, at the cost of a walk over the headers, whether a
chunk has any. A block that does not decompress stops the chunk there
(:class:`CompressedBatchFailure`): readers deliver the batches before it and raise
CorruptRecordError naming the codec and the offset at it.

Pure functions, no state: any thread or process may call them.
"""

from __future__ import annotations

import enum
import struct
from typing import Any, NamedTuple

import cramjam

# engine._native is a cffi extension without type stubs.
from engine._native import ffi, lib  # type: ignore[import-not-found, unused-ignore]
from engine.errors import ConfigError, CorruptRecordError

__all__ = [
    "COMPRESSION_MASK",
    "Codec",
    "CompressedBatchFailure",
    "batch_of_records",
    "codec_name",
    "compress",
    "compressed_batch",
    "decompress",
    "first_compressed",
    "plain_batch",
    "plain_chunk",
    "plain_or_raise",
]

#: The compression bits of a batch's attributes.
COMPRESSION_MASK = 0x07

_HEADER_LENGTH = 61
_LENGTH_OVERHEAD = 12  # batch_length counts the bytes after its own field
_CRC_START = 21
_ATTRIBUTES = struct.Struct(">h")
# base_offset, batch_length, partition_leader_epoch, magic, crc, attributes,
# last_offset_delta, base_timestamp, max_timestamp, producer_id, producer_epoch,
# base_sequence, records_count (native/batch.h)
_HEADER = struct.Struct(">qiibIhiqqqhii")
#: The largest batch_length (an int32).
_MAX_BATCH_LENGTH = 2**31 - 1

_XERIAL_MAGIC = b"\x82SNAPPY\x00"
#: xerial's header: the magic, version 1, the oldest version that reads it (1).
_XERIAL_HEADER = _XERIAL_MAGIC + struct.pack(">ii", 1, 1)
#: Uncompressed bytes per xerial block (snappy-java's default).
_XERIAL_BLOCK = 32 * 1024


class Codec(enum.Enum):
    """A batch's compression: the value of its attributes' bits 0-2."""

    NONE = 0
    """Records stored plain."""
    GZIP = 1
    """gzip (deflate)."""
    SNAPPY = 2
    """snappy, raw or in the xerial framing."""
    LZ4 = 3
    """The LZ4 frame format."""
    ZSTD = 4
    """A zstd frame."""

    @property
    def label(self) -> str:
        """Kafka's name for it (``compression.type``): none, gzip, snappy, lz4, zstd."""
        return self.name.lower()

    @classmethod
    def named(cls, name: str) -> Codec:
        """The codec of a ``compression_type`` (Kafka's names); ConfigError otherwise."""
        for codec in cls:
            if codec.label == name:
                return codec
        raise ConfigError(
            "compression_type must be one of none, gzip, snappy, lz4, zstd: "
            f"compression_type={name!r}"
        )


def codec_name(attributes: int) -> str:
    """The codec of a batch's attributes, for messages (``codec 5`` for an unknown one)."""
    bits = attributes & COMPRESSION_MASK
    try:
        return Codec(bits).label
    except ValueError:
        return f"codec {bits}"


def _snappy_decompress(data: Any) -> Any:
    view = memoryview(data)
    if view[: len(_XERIAL_MAGIC)] != _XERIAL_MAGIC:
        return cramjam.snappy.decompress_raw(data)
    blocks = []
    pos = len(_XERIAL_HEADER)
    while pos < len(view):
        if pos + 4 > len(view):
            raise ValueError("a xerial block length cut short")
        (length,) = struct.unpack_from(">i", view, pos)
        pos += 4
        if length < 0 or pos + length > len(view):
            raise ValueError(f"a xerial block runs past the data: length={length}")
        blocks.append(cramjam.snappy.decompress_raw(view[pos : pos + length]))
        pos += length
    return b"".join(blocks)


def _snappy_compress(data: bytes) -> bytes:
    out = [_XERIAL_HEADER]
    for start in range(0, len(data), _XERIAL_BLOCK):
        block = cramjam.snappy.compress_raw(data[start : start + _XERIAL_BLOCK])
        out.append(struct.pack(">i", len(block)))
        out.append(bytes(block))
    return b"".join(out)


def decompress(codec: Codec, data: Any) -> Any:
    """The bytes ``data`` holds compressed with ``codec`` (a bytes-like object; cramjam's
    Buffer or bytes). ValueError or cramjam's error when it does not decompress."""
    if codec is Codec.GZIP:
        return cramjam.gzip.decompress(data)
    if codec is Codec.SNAPPY:
        return _snappy_decompress(data)
    if codec is Codec.LZ4:
        return cramjam.lz4.decompress(data)
    if codec is Codec.ZSTD:
        return cramjam.zstd.decompress(data)
    raise ValueError(f"not a compression codec: codec={codec!r}")


def compress(codec: Codec, data: bytes) -> bytes:
    """``data`` compressed with ``codec`` as Kafka's clients write it."""
    if codec is Codec.GZIP:
        return bytes(cramjam.gzip.compress(data))
    if codec is Codec.SNAPPY:
        return _snappy_compress(data)
    if codec is Codec.LZ4:
        # Independent blocks, as Kafka's Java client writes them: its reader decompresses
        # each block alone, so a block linked to the one before it would not decompress.
        lz4 = cramjam.lz4.Compressor(content_checksum=False, block_linked=False)
        lz4.compress(data)
        return bytes(lz4.finish())
    if codec is Codec.ZSTD:
        return bytes(cramjam.zstd.compress(data))
    raise ValueError(f"not a compression codec: codec={codec!r}")


def _with_records(header: Any, attributes: int, records: Any) -> bytearray:
    """A batch of ``header`` (61 bytes) over ``records``, with ``attributes``, its length
    and its CRC32C made anew."""
    out = bytearray(header)
    out += records
    total = len(out)
    if total - _LENGTH_OVERHEAD > _MAX_BATCH_LENGTH:
        raise ValueError(f"the batch would exceed 2 GiB: length={total}")
    struct.pack_into(">i", out, 8, total - _LENGTH_OVERHEAD)
    _ATTRIBUTES.pack_into(out, _CRC_START, attributes)
    crc = lib.engine_crc32c(0, ffi.from_buffer("uint8_t[]", out) + _CRC_START, total - _CRC_START)
    struct.pack_into(">I", out, 17, crc)
    return out


def plain_batch(batch: Any) -> bytes:
    """The whole batch ``batch`` with its records decompressed: the same header but for
    the compression bits (cleared), the length and the CRC32C. A plain batch is returned
    as bytes unchanged. ValueError, saying why, when the records do not decompress or
    the codec is unknown."""
    view = memoryview(batch).cast("B")
    (attributes,) = _ATTRIBUTES.unpack_from(view, _CRC_START)
    if not attributes & COMPRESSION_MASK:
        return bytes(view)
    return bytes(_plain(view, attributes))


def _plain(view: memoryview, attributes: int) -> bytearray:
    """plain_batch of the compressed batch ``view``, whose attributes are given."""
    bits = attributes & COMPRESSION_MASK
    try:
        codec = Codec(bits)
    except ValueError:
        raise ValueError(f"an unknown compression codec: codec={bits}") from None
    try:
        records = decompress(codec, view[_HEADER_LENGTH:])
    except cramjam.DecompressionError as exc:
        raise ValueError(str(exc) or "does not decompress") from None
    return _with_records(view[:_HEADER_LENGTH], attributes & ~COMPRESSION_MASK, records)


def compressed_batch(batch: Any, codec: Codec) -> bytes:
    """The plain whole batch ``batch`` with its records compressed by ``codec`` (the
    header's compression bits set, its length and CRC32C made anew); unchanged for
    Codec.NONE."""
    view = memoryview(batch).cast("B")
    if codec is Codec.NONE:
        return bytes(view)
    (attributes,) = _ATTRIBUTES.unpack_from(view, _CRC_START)
    if attributes & COMPRESSION_MASK:
        raise ValueError(f"the batch is compressed already: attributes={attributes:#x}")
    records = compress(codec, bytes(view[_HEADER_LENGTH:]))
    return bytes(_with_records(view[:_HEADER_LENGTH], attributes | codec.value, records))


def batch_of_records(
    records: Any,
    count: int,
    base_timestamp: int,
    max_timestamp: int,
    codec: Codec,
    *,
    producer_id: int = -1,
    producer_epoch: int = -1,
    base_sequence: int = -1,
    attributes: int = 0,
) -> bytes:
    """One whole batch over ``count`` records already encoded (Kafka's record format:
    offset deltas 0.., timestamp deltas from ``base_timestamp``), its records compressed
    with ``codec`` unless that does not make them smaller (then plain, as librdkafka
    does). Its base offset is 0 and its partition leader epoch -1: the ring's append of
    a whole batch writes both (neither is under the CRC)."""
    records = bytes(records)
    if codec is not Codec.NONE:
        packed = compress(codec, records)
        if len(packed) < len(records):
            records, attributes = packed, attributes | codec.value
    header = _HEADER.pack(
        0, 0, -1, 2, 0, attributes, count - 1, base_timestamp, max_timestamp, producer_id,
        producer_epoch, base_sequence, count,
    )  # fmt: skip
    return bytes(_with_records(header, attributes, records))


def first_compressed(data: Any) -> int:
    """The byte position of the first compressed batch among the whole (checked) batches
    of ``data``, or ``len(data)`` when none is (C: a walk over the headers)."""
    if type(data) is not bytes:
        data = ffi.from_buffer("uint8_t[]", data)
    return int(lib.engine_batch_first_compressed(data, len(data)))


class CompressedBatchFailure(NamedTuple):
    """A compressed batch whose records do not decompress, found by :func:`plain_chunk`."""

    position: int
    """Its byte position in the chunk: the batches before it were made plain."""
    base_offset: int
    last_offset: int
    codec: str
    """Kafka's name of its codec (or ``codec N`` for an unknown one)."""
    reason: str
    """What the decompressor said."""

    def describe(self, where: str = "") -> str:
        """The failure in one line's words, for CorruptRecordError messages; ``where``
        (``key=value`` pairs) comes first among the pairs."""
        where = f"{where} " if where else ""
        return (
            f"a {self.codec}-compressed batch does not decompress: {where}codec={self.codec} "
            f"base_offset={self.base_offset} last_offset={self.last_offset} "
            f"reason={self.reason}"
        )


def plain_chunk(data: bytes) -> tuple[bytes, CompressedBatchFailure | None]:
    """The whole (checked) batches of ``data`` with every compressed one made plain:
    ``(plain, None)``; or, at a batch whose records do not decompress, the batches
    before it made plain and what failed. ``data`` itself when none is compressed."""
    at = first_compressed(data)
    if at >= len(data):
        return data, None
    view = memoryview(data)
    pieces: list[Any] = [view[:at]]
    failure = None
    while at < len(data):
        (batch_length,) = struct.unpack_from(">i", view, 8 + at)
        end = at + batch_length + _LENGTH_OVERHEAD
        batch = view[at:end]
        (attributes,) = _ATTRIBUTES.unpack_from(view, at + _CRC_START)
        if not attributes & COMPRESSION_MASK:
            pieces.append(batch)
        else:
            try:
                pieces.append(_plain(batch, attributes))
            except ValueError as exc:
                (base,) = struct.unpack_from(">q", view, at)
                (delta,) = struct.unpack_from(">i", view, at + 23)  # last_offset_delta
                failure = CompressedBatchFailure(
                    at, base, base + delta, codec_name(attributes), str(exc) or type(exc).__name__
                )
                break
        at = end
    return b"".join(pieces), failure


def plain_or_raise(data: bytes, where: str = "") -> bytes:
    """:func:`plain_chunk` for readers that need every batch: CorruptRecordError at the
    first that fails, naming it after ``where`` (``key=value`` pairs: the log's path)."""
    plain, failure = plain_chunk(data)
    if failure is not None:
        raise CorruptRecordError(failure.describe(where), offset=failure.base_offset)
    return plain
