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
from collections.abc import Callable, Mapping, Sequence
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
        buf, pos = self.buf, self.pos
        shift = value = 0
        while True:
            if pos >= len(buf):
                self.pos = pos
                self.take(1)  # raises
            byte = buf[pos]
            pos += 1
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                self.pos = pos
                return value
            shift += 7
            if shift > 35:
                self.pos = pos
                raise KafkaProtocolError(f"varint longer than 5 bytes: position={pos}")


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
    out: dict[str, Any] = _struct_reader(msg.fields, version, msg.is_flexible(version))(reader)
    return out


def encode(msg: Message, version: int, values: Mapping[str, Any]) -> bytearray:
    """The message at ``version``; a field missing from ``values`` takes its default."""
    out = bytearray()
    _struct_writer(msg.fields, version, msg.is_flexible(version))(out, values)
    return out


# A schema is read and written through plans: for each struct (a tuple of fields), each
# version and flexibility, one function made once from the fields, which then does only
# what that version's wire format holds, without looking at the schema again. Plans are
# kept by the identity of the fields' tuple (the schemas are module constants).

_ReadFn = Callable[[Reader], Any]
_WriteFn = Callable[[bytearray, Any], None]
_READERS: dict[tuple[int, int, bool], tuple[tuple[Field, ...], _ReadFn]] = {}
_WRITERS: dict[tuple[int, int, bool], tuple[tuple[Field, ...], _WriteFn]] = {}
_MISSING = object()


def _struct_reader(fields: tuple[Field, ...], version: int, flexible: bool) -> _ReadFn:
    key = (id(fields), version, flexible)
    found = _READERS.get(key)
    if found is None:
        found = _READERS[key] = (fields, _plan_struct_reader(fields, version, flexible))
    return found[1]


def _struct_writer(fields: tuple[Field, ...], version: int, flexible: bool) -> _WriteFn:
    key = (id(fields), version, flexible)
    found = _WRITERS.get(key)
    if found is None:
        found = _WRITERS[key] = (fields, _plan_struct_writer(fields, version, flexible))
    return found[1]


def _plan_struct_reader(fields: tuple[Field, ...], version: int, flexible: bool) -> _ReadFn:
    # (name, reader) per field in order; a field absent at this version reads as its
    # default (a fresh list for an array: a handler may append to it).
    steps: list[tuple[str, _ReadFn]] = []
    for f in fields:
        if f.tag is not None or version not in f.versions:
            steps.append((f.name, _default_reader(f, version)))
        else:
            steps.append((f.name, _field_reader(f, version, flexible)))
    tagged = {
        f.tag: (f.name, _field_reader(f, version, flexible))
        for f in fields
        if f.tag is not None and version in f.tagged
    }
    plan = tuple(steps)

    if not flexible:

        def read_struct(r: Reader) -> dict[str, Any]:
            return {name: read(r) for name, read in plan}

        return read_struct

    def read_flexible_struct(r: Reader) -> dict[str, Any]:
        out = {name: read(r) for name, read in plan}
        for _ in range(r.uvarint()):
            tag, size = r.uvarint(), r.uvarint()
            body = r.take(size)
            known = tagged.get(tag)
            if known is not None:  # an unknown tag is skipped, as Kafka does
                out[known[0]] = known[1](Reader(body))
        return out

    return read_flexible_struct


def _default_reader(f: Field, version: int) -> _ReadFn:
    value = _default(f, version)
    if isinstance(value, list):
        return lambda r: []
    return lambda r: value


def _field_reader(f: Field, version: int, flexible: bool) -> _ReadFn:
    item = (
        _struct_reader(f.type, version, flexible)
        if isinstance(f.type, tuple)
        else _value_reader(f, f.type, version, flexible)
    )
    if not f.array:
        return item
    count = _length_reader(flexible, _INT32)

    def read_array(r: Reader) -> Any:
        n = count(r)
        if n < 0:
            return _null(f, version, "array")
        return [item(r) for _ in range(n)]

    return read_array


_INT16 = _FIXED[Type.INT16]
_INT32 = _FIXED[Type.INT32]


def _length_reader(flexible: bool, classic: struct.Struct) -> Callable[[Reader], int]:
    """A length (or count) prefix: uvarint + 1 when flexible, else int16/int32; -1 null."""
    if flexible:
        return lambda r: r.uvarint() - 1
    unpack_from, size = classic.unpack_from, classic.size

    def read_length(r: Reader) -> int:
        pos = r.pos
        if pos + size > len(r.buf):
            r.take(size)  # raises
        r.pos = pos + size
        n: int = unpack_from(r.buf, pos)[0]
        return n

    return read_length


def _value_reader(f: Field, kind: Type, version: int, flexible: bool) -> _ReadFn:
    codec = _FIXED.get(kind)
    if codec is not None:
        unpack_from, size = codec.unpack_from, codec.size

        def read_fixed(r: Reader) -> Any:
            pos = r.pos
            if pos + size > len(r.buf):
                r.take(size)  # raises
            r.pos = pos + size
            return unpack_from(r.buf, pos)[0]

        return read_fixed
    if kind is Type.UUID:
        return lambda r: bytes(r.take(16))
    length = _length_reader(flexible, _INT16 if kind is Type.STRING else _INT32)
    if kind is Type.STRING:

        def read_string(r: Reader) -> str | None:
            n = length(r)
            if n < 0:
                _null(f, version, "string")
                return None
            try:
                return str(r.take(n), "utf-8")
            except UnicodeDecodeError:
                raise KafkaProtocolError(f"string is not UTF-8: field={f.name}") from None

        return read_string
    records = kind is Type.RECORDS

    def read_bytes(r: Reader) -> Any:
        n = length(r)
        if n < 0:
            return _null(f, version, "bytes")
        data = r.take(n)
        return data if records else bytes(data)

    return read_bytes


def _null(f: Field, version: int, what: str) -> None:
    if version not in f.nullable:
        raise KafkaProtocolError(f"null {what} in a field that may not be null: field={f.name}")
    return None


def _plan_struct_writer(fields: tuple[Field, ...], version: int, flexible: bool) -> _WriteFn:
    # (name, default, writer) of the fields this version writes, in order; tagged ones
    # apart (written in flexible versions only, and only when not their default).
    plain: list[tuple[str, Any, _WriteFn]] = []
    tagged: list[tuple[int, str, Any, _WriteFn]] = []
    for f in fields:
        if version not in f.versions:
            continue
        default = _default(f, version)
        if f.tag is None:
            plain.append((f.name, default, _field_writer(f, version, flexible)))
        elif flexible and version in f.tagged:
            tagged.append((f.tag, f.name, default, _field_writer(f, version, flexible)))
    tagged.sort(key=lambda t: t[0])
    plan = tuple(plain)
    tagged_plan = tuple(tagged)

    def write_struct(out: bytearray, values: Mapping[str, Any]) -> None:
        get = values.get
        for name, default, write in plan:
            write(out, get(name, default))
        if not flexible:
            return
        bodies: list[tuple[int, bytearray]] = []
        for tag, name, default, write in tagged_plan:
            value = get(name, _MISSING)
            if value is not _MISSING and value != default:
                body = bytearray()
                write(body, value)
                bodies.append((tag, body))
        _uvarint(len(bodies), out)
        for tag, body in bodies:
            _uvarint(tag, out)
            _uvarint(len(body), out)
            out += body

    return write_struct


def _field_writer(f: Field, version: int, flexible: bool) -> _WriteFn:
    item = (
        _struct_writer(f.type, version, flexible)
        if isinstance(f.type, tuple)
        else _value_writer(f, f.type, version, flexible)
    )
    if not f.array:
        return item
    null = _null_writer(f, version, flexible, 4)
    pack_count = _INT32.pack

    def write_array(out: bytearray, value: Any) -> None:
        if value is None:
            null(out)
            return
        if flexible:
            _uvarint(len(value) + 1, out)
        else:
            out += pack_count(len(value))
        for element in value:
            item(out, element)

    return write_array


def _value_writer(f: Field, kind: Type, version: int, flexible: bool) -> _WriteFn:
    codec = _FIXED.get(kind)
    if codec is not None:
        pack = codec.pack

        def write_fixed(out: bytearray, value: Any) -> None:
            out += pack(value)

        return write_fixed
    if kind is Type.UUID:

        def write_uuid(out: bytearray, value: Any) -> None:
            raw = value.bytes if isinstance(value, uuid.UUID) else bytes(value)
            if len(raw) != 16:
                raise KafkaProtocolError(
                    f"a uuid takes 16 bytes: field={f.name} length={len(raw)}"
                )
            out += raw

        return write_uuid
    string = kind is Type.STRING
    null = _null_writer(f, version, flexible, 2 if string else 4)
    pack_length = (_INT16 if string else _INT32).pack

    def write_bytes(out: bytearray, value: Any) -> None:
        if value is None:
            null(out)
            return
        data = value.encode() if string else value
        if flexible:
            _uvarint(len(data) + 1, out)
        else:
            out += pack_length(len(data))
        out += data

    return write_bytes


def _null_writer(
    f: Field, version: int, flexible: bool, width: int
) -> Callable[[bytearray], None]:
    def write_null(out: bytearray) -> None:
        if version not in f.nullable:
            raise KafkaProtocolError(f"null in a field that may not be null: field={f.name}")
        if flexible:
            out.append(0)
        else:
            out += (-1).to_bytes(width, "big", signed=True)

    return write_null


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
