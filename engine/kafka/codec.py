"""Kafka's wire encoding: primitive types, message schemas as data, one codec that reads them.

Pure functions over bytes; no sockets (engine.kafka.listener has those). The schemas
of the messages the listener serves are declared in engine.kafka.messages, one
:class:`Message` per request and response, transcribed by hand from apache/kafka's
``clients/src/main/resources/common/message/*.json`` for the versions served only.

A field is present in the versions its ``versions`` range names ("3+", "0-12",
"none"), may be null in ``nullable`` (strings, bytes, records, arrays), and is a
tagged field (KIP-482) when it has a ``tag``: then it is written only in flexible
versions, inside the tagged-field section of its struct, and only when its value is
not its default. A message's ``flexible`` versions (Kafka's "flexibleVersions") use
the compact forms::

    type      classic                          flexible (compact)
    string    int16 length, -1: null           uvarint length + 1, 0: null
    bytes     int32 length, -1: null           uvarint length + 1, 0: null
    records   as bytes                         as compact bytes
    array     int32 count, -1: null            uvarint count + 1, 0: null
    struct    its fields                       its fields, then tagged fields:
                                               uvarint count, {uvarint tag,
                                               uvarint size, value}...

int8/16/32/64 are big-endian and signed, uint16 unsigned, bool one byte, uuid 16
bytes, float64 an IEEE double. Decoded messages are plain dicts keyed by the
fields' snake_case names; an absent field decodes to its default.

Headers (RequestHeader.json, ResponseHeader.json): a request header is v1 for a
request of a classic version (api_key int16, api_version int16, correlation_id
int32, client_id nullable string) and v2 for a flexible one (v1, then tagged
fields; client_id stays a classic string). A response header is v0 (correlation_id)
or, for a flexible response, v1 (then tagged fields), except ApiVersions, whose
response header is always v0 (a client that does not know the broker's versions
yet must read it).
"""

from __future__ import annotations

import enum
import struct
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from engine.errors import KafkaProtocolError

#: What the codec reads from.
Buffer = bytes | bytearray | memoryview

__all__ = [
    "Field",
    "Message",
    "RequestHeader",
    "Type",
    "VersionRange",
    "decode",
    "encode",
    "peek_request_ids",
    "read_request_header",
    "response_header",
]


class Type(enum.Enum):
    """A primitive type of Kafka's schemas."""

    INT8 = "int8"
    INT16 = "int16"
    INT32 = "int32"
    INT64 = "int64"
    UINT16 = "uint16"
    BOOL = "bool"
    FLOAT64 = "float64"
    UUID = "uuid"
    STRING = "string"
    BYTES = "bytes"
    RECORDS = "records"
    """Record batches, as bytes (kept as a memoryview of the request when decoded)."""


_FIXED: dict[Type, struct.Struct] = {
    Type.INT8: struct.Struct(">b"),
    Type.INT16: struct.Struct(">h"),
    Type.INT32: struct.Struct(">i"),
    Type.INT64: struct.Struct(">q"),
    Type.UINT16: struct.Struct(">H"),
    Type.BOOL: struct.Struct(">?"),
    Type.FLOAT64: struct.Struct(">d"),
}
_ZERO_UUID = bytes(16)


@dataclass(frozen=True)
class VersionRange:
    """Versions as Kafka's schemas write them: "3+", "0-12", "7", "none"."""

    low: int
    high: int  # inclusive; 2**15 for "N+"

    @classmethod
    def parse(cls, text: str) -> VersionRange:
        if text == "none":
            return cls(1, 0)
        if text.endswith("+"):
            return cls(int(text[:-1]), 1 << 15)
        low, _, high = text.partition("-")
        return cls(int(low), int(high or low))

    def __contains__(self, version: object) -> bool:
        return isinstance(version, int) and self.low <= version <= self.high


@dataclass(frozen=True)
class Field:
    """One field of a schema. ``type`` is a :class:`Type`, or the fields of a struct;
    ``array``: an array of them (a struct's fields are an array of structs unless
    declared ``struct=True``: one struct, as a tagged field's)."""

    name: str
    type: Type | tuple[Field, ...]
    versions: VersionRange
    nullable: VersionRange
    array: bool
    default: Any
    tag: int | None
    tagged: VersionRange


def F(
    name: str,
    type: Type | Sequence[Field],
    versions: str = "0+",
    *,
    nullable: str = "none",
    array: bool = False,
    struct: bool = False,
    default: Any = None,
    tag: int | None = None,
    tagged: str = "none",
) -> Field:
    """A :class:`Field` declared as Kafka's JSON does (a list of fields: an array of
    structs, or with ``struct`` one struct). ``default``: Kafka's default (None: 0, "",
    b"", false, the zero uuid, [], or null where the field is nullable; a struct's is
    null)."""
    kind = type if isinstance(type, Type) else tuple(type)
    return Field(
        name,
        kind,
        VersionRange.parse(versions),
        VersionRange.parse(nullable),
        array or not (isinstance(type, Type) or struct),
        default,
        tag,
        VersionRange.parse(tagged),
    )


@dataclass(frozen=True)
class Message:
    """One request or response schema: its API key, the versions served, its fields."""

    name: str
    api_key: int
    versions: VersionRange
    flexible: VersionRange
    fields: tuple[Field, ...] = field(default=())

    def is_flexible(self, version: int) -> bool:
        return version in self.flexible


def message(
    name: str, api_key: int, versions: str, flexible: str, fields: Sequence[Field]
) -> Message:
    return Message(
        name, api_key, VersionRange.parse(versions), VersionRange.parse(flexible), tuple(fields)
    )


# ---- primitives ------------------------------------------------------------


class Reader:
    """Reads primitives from a buffer, front to back; KafkaProtocolError past its end."""

    __slots__ = ("buf", "pos")

    def __init__(self, buf: Buffer, pos: int = 0) -> None:
        self.buf = memoryview(buf)
        self.pos = pos

    def take(self, n: int) -> memoryview:
        end = self.pos + n
        if n < 0 or end > len(self.buf):
            raise KafkaProtocolError(
                f"request ends inside a field: position={self.pos} wanted={n} "
                f"length={len(self.buf)}"
            )
        out = self.buf[self.pos : end]
        self.pos = end
        return out

    def fixed(self, codec: struct.Struct) -> Any:
        return codec.unpack(self.take(codec.size))[0]

    def uvarint(self) -> int:
        shift = value = 0
        while True:
            byte = self.take(1)[0]
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value
            shift += 7
            if shift > 35:
                raise KafkaProtocolError(f"varint longer than 5 bytes: position={self.pos}")


def _uvarint(value: int, out: bytearray) -> None:
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


# ---- the codec -------------------------------------------------------------


def _default(f: Field, version: int) -> Any:
    if f.default is not None:
        return f.default
    if version in f.nullable or (isinstance(f.type, tuple) and not f.array):
        return None
    if f.array:
        return []
    if f.type in (Type.STRING,):
        return ""
    if f.type in (Type.BYTES, Type.RECORDS):
        return b""
    if f.type is Type.UUID:
        return _ZERO_UUID
    if f.type is Type.BOOL:
        return False
    return 0


def decode(msg: Message, version: int, buf: Buffer, pos: int = 0) -> dict[str, Any]:
    """The message's fields at ``version`` from ``buf`` (from ``pos`` to its end)."""
    reader = Reader(buf, pos)
    out = _read_struct(reader, msg.fields, version, msg.is_flexible(version))
    return out


def _read_struct(
    r: Reader, fields: Sequence[Field], version: int, flexible: bool
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in fields:
        if f.tag is not None or version not in f.versions:
            out[f.name] = _default(f, version)
            continue
        out[f.name] = _read_field(r, f, version, flexible)
    if flexible:
        tagged = {f.tag: f for f in fields if f.tag is not None and version in f.tagged}
        for _ in range(r.uvarint()):
            tag, size = r.uvarint(), r.uvarint()
            body = r.take(size)
            known = tagged.get(tag)
            if known is not None:  # an unknown tag is skipped, as Kafka does
                out[known.name] = _read_field(Reader(body), known, version, flexible)
    return out


def _read_field(r: Reader, f: Field, version: int, flexible: bool) -> Any:
    if f.array:
        n = r.uvarint() - 1 if flexible else r.fixed(_FIXED[Type.INT32])
        if n < 0:
            return _null(f, version, "array")
        if isinstance(f.type, tuple):
            return [_read_struct(r, f.type, version, flexible) for _ in range(n)]
        return [_read_value(r, f, f.type, version, flexible) for _ in range(n)]
    if isinstance(f.type, tuple):
        return _read_struct(r, f.type, version, flexible)
    return _read_value(r, f, f.type, version, flexible)


def _read_value(r: Reader, f: Field, kind: Type, version: int, flexible: bool) -> Any:
    codec = _FIXED.get(kind)
    if codec is not None:
        return r.fixed(codec)
    if kind is Type.UUID:
        return bytes(r.take(16))
    if kind is Type.STRING:
        n = r.uvarint() - 1 if flexible else r.fixed(_FIXED[Type.INT16])
        if n < 0:
            return _null(f, version, "string")
        try:
            return str(r.take(n), "utf-8")
        except UnicodeDecodeError:
            raise KafkaProtocolError(f"string is not UTF-8: field={f.name}") from None
    n = r.uvarint() - 1 if flexible else r.fixed(_FIXED[Type.INT32])
    if n < 0:
        return _null(f, version, "bytes")
    data = r.take(n)
    return data if kind is Type.RECORDS else bytes(data)


def _null(f: Field, version: int, what: str) -> None:
    if version not in f.nullable:
        raise KafkaProtocolError(f"null {what} in a field that may not be null: field={f.name}")
    return None


def encode(msg: Message, version: int, values: Mapping[str, Any]) -> bytearray:
    """The message at ``version``; a field missing from ``values`` takes its default."""
    out = bytearray()
    _write_struct(out, msg.fields, version, msg.is_flexible(version), values)
    return out


def _write_struct(
    out: bytearray,
    fields: Sequence[Field],
    version: int,
    flexible: bool,
    values: Mapping[str, Any],
) -> None:
    tagged: list[tuple[int, bytearray]] = []
    for f in fields:
        if version not in f.versions:
            continue
        value = values.get(f.name, _default(f, version))
        if f.tag is not None:
            if flexible and version in f.tagged and value != _default(f, version):
                body = bytearray()
                _write_field(body, f, version, flexible, value)
                tagged.append((f.tag, body))
            continue
        _write_field(out, f, version, flexible, value)
    if flexible:
        _uvarint(len(tagged), out)
        for tag, body in sorted(tagged, key=lambda t: t[0]):
            _uvarint(tag, out)
            _uvarint(len(body), out)
            out += body


def _write_field(out: bytearray, f: Field, version: int, flexible: bool, value: Any) -> None:
    if f.array:
        if value is None:
            _write_null(out, f, version, flexible, 4)
            return
        if flexible:
            _uvarint(len(value) + 1, out)
        else:
            out += _FIXED[Type.INT32].pack(len(value))
        if isinstance(f.type, tuple):
            for item in value:
                _write_struct(out, f.type, version, flexible, item)
        else:
            for item in value:
                _write_value(out, f, f.type, version, flexible, item)
        return
    if isinstance(f.type, tuple):
        _write_struct(out, f.type, version, flexible, value)
        return
    _write_value(out, f, f.type, version, flexible, value)


def _write_value(
    out: bytearray, f: Field, kind: Type, version: int, flexible: bool, value: Any
) -> None:
    codec = _FIXED.get(kind)
    if codec is not None:
        out += codec.pack(value)
        return
    if kind is Type.UUID:
        raw = value.bytes if isinstance(value, uuid.UUID) else bytes(value)
        if len(raw) != 16:
            raise KafkaProtocolError(f"a uuid takes 16 bytes: field={f.name} length={len(raw)}")
        out += raw
        return
    if value is None:
        _write_null(out, f, version, flexible, 2 if kind is Type.STRING else 4)
        return
    data = value.encode() if kind is Type.STRING else value
    n = len(data)
    if flexible:
        _uvarint(n + 1, out)
    else:
        out += (_FIXED[Type.INT16] if kind is Type.STRING else _FIXED[Type.INT32]).pack(n)
    out += data


def _write_null(out: bytearray, f: Field, version: int, flexible: bool, width: int) -> None:
    if version not in f.nullable:
        raise KafkaProtocolError(f"null in a field that may not be null: field={f.name}")
    if flexible:
        out.append(0)
    else:
        out += (-1).to_bytes(width, "big", signed=True)


# ---- headers ---------------------------------------------------------------


@dataclass(frozen=True)
class RequestHeader:
    """A request's header (v1 or v2) and where its body starts."""

    api_key: int
    api_version: int
    correlation_id: int
    client_id: str | None
    body_position: int


_HEADER_START = struct.Struct(">hhi")


def read_request_header(frame: Buffer, flexible: bool | None) -> RequestHeader:
    """The header of a request frame (its 4-byte size already taken off). ``flexible``:
    whether the request's version is flexible (header v2: tagged fields follow the
    client id); None when the caller does not know the API, then the tagged fields are
    not read (only the first three fields matter for the error it answers)."""
    api_key, api_version, correlation_id = peek_request_ids(frame)
    r = Reader(frame, _HEADER_START.size)
    n = r.fixed(_FIXED[Type.INT16])
    client_id = None if n < 0 else str(r.take(n), "utf-8", "replace")
    if flexible:
        for _ in range(r.uvarint()):
            r.uvarint()
            r.take(r.uvarint())
    return RequestHeader(api_key, api_version, correlation_id, client_id, r.pos)


def peek_request_ids(frame: Buffer) -> tuple[int, int, int]:
    """(api_key, api_version, correlation_id) of a request frame."""
    if len(frame) < _HEADER_START.size:
        raise KafkaProtocolError(f"request shorter than its header: length={len(frame)}")
    api_key, api_version, correlation_id = _HEADER_START.unpack_from(frame)
    return int(api_key), int(api_version), int(correlation_id)


def response_header(correlation_id: int, flexible: bool) -> bytes:
    """Response header v0, or v1 (an empty tagged-field section) for a flexible response."""
    return _FIXED[Type.INT32].pack(correlation_id) + (b"\x00" if flexible else b"")
