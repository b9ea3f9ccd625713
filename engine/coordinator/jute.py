"""ZooKeeper's client wire format (jute), as pure functions and records: no I/O.

Every frame on the socket is a 4-byte big-endian length followed by that many bytes.
The first frame a client sends is a :class:`ConnectRequest` (no header); every later one
is a request header ``(int xid, int type)`` followed by the record of that op code. The
server answers a connect with a :class:`ConnectResponse` and everything else with a reply
header ``(int xid, long zxid, int err)`` followed, when ``err == 0``, by the op's result.
Watch notifications are replies with ``xid == -1`` and a ``WatcherEvent`` body.

Primitives (zookeeper.jute): ``int`` is 4 bytes and ``long`` 8 bytes, signed big-endian;
``boolean`` one byte; ``buffer`` and ``ustring`` an int length then the bytes (length -1
means null); ``vector<T>`` an int count (-1 means null) then the elements.

Request records, one per op code (several op codes share a shape)::

    op                                 record
    create(1) create2(15)              CreateRequest   path data acl flags
    createContainer(19) createTTL(21)  CreateRequest   ... and ttl (createTTL only)
    delete(2)                          DeleteRequest   path version
    exists(3) getData(4)               WatchRequest    path watch
    getChildren(8) getChildren2(12)    WatchRequest    path watch
    setData(5)                         SetDataRequest  path data version
    getACL(6) sync(9)                  PathRequest     path
    getEphemerals(103)                 PathRequest     prefix path
    getAllChildrenNumber(104)          PathRequest     path
    setACL(7)                          SetACLRequest   path acl version
    check(13)                          CheckRequest    path version
    multi(14) multiRead(22)            MultiRequest    (MultiHeader, record)* end header
    auth(100)                          AuthRequest     type scheme auth
    setWatches(101) setWatches2(105)   SetWatchesRequest relativeZxid paths...
    addWatch(106)                      AddWatchRequest path mode
    checkWatches(17) removeWatches(18) RemoveWatchesRequest path type
    reconfig(16)                       ReconfigRequest joining leaving newMembers configId
    ping(11) closeSession(-11)         EmptyRequest
    whoAmI(107)                        EmptyRequest
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Union

from engine.coordinator.errors import JuteError

#: jute.maxbuffer's default: the largest frame (and so the largest znode data) accepted.
MAX_PACKET_LENGTH = 0xFFFFF

NOTIFICATION_XID = -1
PING_XID = -2
AUTH_XID = -4
SET_WATCHES_XID = -8


class OpCode(enum.IntEnum):
    """The request types of ZooKeeper's client protocol (ZooDefs.OpCode)."""

    NOTIFICATION = 0
    CREATE = 1
    DELETE = 2
    EXISTS = 3
    GET_DATA = 4
    SET_DATA = 5
    GET_ACL = 6
    SET_ACL = 7
    GET_CHILDREN = 8
    SYNC = 9
    PING = 11
    GET_CHILDREN2 = 12
    CHECK = 13
    MULTI = 14
    CREATE2 = 15
    RECONFIG = 16
    CHECK_WATCHES = 17
    REMOVE_WATCHES = 18
    CREATE_CONTAINER = 19
    DELETE_CONTAINER = 20
    CREATE_TTL = 21
    MULTI_READ = 22
    AUTH = 100
    SET_WATCHES = 101
    SASL = 102
    GET_EPHEMERALS = 103
    GET_ALL_CHILDREN_NUMBER = 104
    SET_WATCHES2 = 105
    ADD_WATCH = 106
    WHO_AM_I = 107
    CREATE_SESSION = -10
    CLOSE_SESSION = -11
    ERROR = -1


class Err(enum.IntEnum):
    """ZooKeeper's error codes (KeeperException.Code); kazoo maps each to an exception."""

    OK = 0
    SYSTEM_ERROR = -1
    RUNTIME_INCONSISTENCY = -2
    DATA_INCONSISTENCY = -3
    CONNECTION_LOSS = -4
    MARSHALLING_ERROR = -5
    UNIMPLEMENTED = -6
    OPERATION_TIMEOUT = -7
    BAD_ARGUMENTS = -8
    UNKNOWN_SESSION = -12
    API_ERROR = -100
    NO_NODE = -101
    NO_AUTH = -102
    BAD_VERSION = -103
    NO_CHILDREN_FOR_EPHEMERALS = -108
    NODE_EXISTS = -110
    NOT_EMPTY = -111
    SESSION_EXPIRED = -112
    INVALID_CALLBACK = -113
    INVALID_ACL = -114
    AUTH_FAILED = -115
    SESSION_MOVED = -118
    NOT_READ_ONLY = -119
    NO_WATCHER = -121
    RECONFIG_DISABLED = -123


class EventType(enum.IntEnum):
    """What a watch notification reports."""

    NONE = -1
    NODE_CREATED = 1
    NODE_DELETED = 2
    NODE_DATA_CHANGED = 3
    NODE_CHILDREN_CHANGED = 4
    DATA_WATCH_REMOVED = 5
    CHILD_WATCH_REMOVED = 6
    PERSISTENT_WATCH_REMOVED = 7


class KeeperState(enum.IntEnum):
    """The session state carried by a watch notification."""

    DISCONNECTED = 0
    SYNC_CONNECTED = 3
    AUTH_FAILED = 4
    EXPIRED = -112


class Perm(enum.IntFlag):
    """ACL permission bits."""

    READ = 1
    WRITE = 2
    CREATE = 4
    DELETE = 8
    ADMIN = 16
    ALL = 31


class CreateFlag(enum.IntEnum):
    """The ``flags`` of a create request (CreateMode)."""

    PERSISTENT = 0
    EPHEMERAL = 1
    PERSISTENT_SEQUENTIAL = 2
    EPHEMERAL_SEQUENTIAL = 3
    CONTAINER = 4
    PERSISTENT_WITH_TTL = 5
    PERSISTENT_SEQUENTIAL_WITH_TTL = 6


class AddWatchMode(enum.IntEnum):
    """The mode of an addWatch request."""

    PERSISTENT = 0
    PERSISTENT_RECURSIVE = 1


class WatcherType(enum.IntEnum):
    """The watch kinds named by checkWatches/removeWatches."""

    CHILDREN = 1
    DATA = 2
    ANY = 3


class Acl(NamedTuple):
    """One ACL entry: permission bits granted to the identity ``scheme:id``."""

    perms: int
    scheme: str
    id: str


OPEN_ACL_UNSAFE: tuple[Acl, ...] = (Acl(int(Perm.ALL), "world", "anyone"),)

_INT = struct.Struct("!i")
_LONG = struct.Struct("!q")
_INT_INT = struct.Struct("!ii")
_REPLY_HEADER = struct.Struct("!iqi")
_MULTI_HEADER = struct.Struct("!i?i")
_STAT = struct.Struct("!qqqqiiiqiiq")
_CONNECT_HEAD = struct.Struct("!iqiq")
_CONNECT_RESPONSE_HEAD = struct.Struct("!iiq")


class Stat(NamedTuple):
    """A znode's metadata, in wire order (org.apache.zookeeper.data.Stat)."""

    czxid: int
    mzxid: int
    ctime: int
    mtime: int
    version: int
    cversion: int
    aversion: int
    ephemeral_owner: int
    data_length: int
    num_children: int
    pzxid: int


STAT_LENGTH = _STAT.size


# ---------------------------------------------------------------------------- reading


class Reader:
    """Decodes jute primitives from a byte string, front to back; raises JuteError."""

    __slots__ = ("_buf", "_end", "pos")

    def __init__(self, buf: bytes | memoryview, pos: int = 0) -> None:
        self._buf = buf
        self.pos = pos
        self._end = len(buf)

    def _need(self, length: int) -> int:
        start = self.pos
        if length < 0 or start + length > self._end:
            raise JuteError(f"record truncated: need={length} at={start} length={self._end}")
        self.pos = start + length
        return start

    def read_int(self) -> int:
        value: int = _INT.unpack_from(self._buf, self._need(4))[0]
        return value

    def read_long(self) -> int:
        value: int = _LONG.unpack_from(self._buf, self._need(8))[0]
        return value

    def read_bool(self) -> bool:
        return self._buf[self._need(1)] != 0

    def read_byte(self) -> int:
        return self._buf[self._need(1)]

    def skip(self, length: int) -> int:
        """Advance past ``length`` bytes; return where they start."""
        return self._need(length)

    def read_buffer(self) -> bytes | None:
        length = self.read_int()
        if length < 0:
            if length != -1:
                raise JuteError(f"negative buffer length: length={length}")
            return None
        start = self._need(length)
        return bytes(self._buf[start : start + length])

    def read_ustring(self) -> str | None:
        raw = self.read_buffer()
        if raw is None:
            return None
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise JuteError(f"ustring is not utf-8: {exc}") from None

    def read_path(self) -> str:
        """A ustring that must be present (paths may not be null)."""
        value = self.read_ustring()
        if value is None:
            raise JuteError("null path")
        return value

    def read_strings(self) -> list[str]:
        count = self.read_int()
        if count == -1:
            return []
        if count < 0 or count > self._end - self.pos:
            raise JuteError(f"bad vector length: count={count}")
        return [self.read_path() for _ in range(count)]

    def read_acls(self) -> list[Acl]:
        count = self.read_int()
        if count == -1:
            return []
        if count < 0 or count > self._end - self.pos:
            raise JuteError(f"bad vector length: count={count}")
        acls = []
        for _ in range(count):
            perms = self.read_int()
            acls.append(Acl(perms, self.read_ustring() or "", self.read_ustring() or ""))
        return acls

    def at_end(self) -> bool:
        return self.pos >= self._end


# ---------------------------------------------------------------------------- writing


def encode_int(value: int) -> bytes:
    return _INT.pack(value)


def encode_long(value: int) -> bytes:
    return _LONG.pack(value)


def encode_bool(value: bool) -> bytes:
    return b"\x01" if value else b"\x00"


def encode_buffer(value: bytes | None) -> bytes:
    if value is None:
        return _INT.pack(-1)
    return _INT.pack(len(value)) + value


def encode_ustring(value: str | None) -> bytes:
    if value is None:
        return _INT.pack(-1)
    raw = value.encode("utf-8")
    return _INT.pack(len(raw)) + raw


def encode_strings(values: Sequence[str]) -> bytes:
    return _INT.pack(len(values)) + b"".join(encode_ustring(v) for v in values)


def encode_acls(acls: Sequence[Acl]) -> bytes:
    parts = [_INT.pack(len(acls))]
    for acl in acls:
        parts.append(_INT.pack(acl.perms) + encode_ustring(acl.scheme) + encode_ustring(acl.id))
    return b"".join(parts)


def encode_stat(stat: Stat) -> bytes:
    return _STAT.pack(*stat)


def decode_stat(reader: Reader) -> Stat:
    return Stat._make(_STAT.unpack_from(reader._buf, reader._need(_STAT.size)))


def encode_reply_header(xid: int, zxid: int, err: int) -> bytes:
    return _REPLY_HEADER.pack(xid, zxid, err)


def decode_reply_header(reader: Reader) -> tuple[int, int, int]:
    return (reader.read_int(), reader.read_long(), reader.read_int())


def frame(payload: bytes) -> bytes:
    """Prefix a payload with its 4-byte length."""
    return _INT.pack(len(payload)) + payload


def encode_watcher_event(event_type: int, state: int, path: str) -> bytes:
    return _INT_INT.pack(event_type, state) + encode_ustring(path)


def encode_multi_header(op_type: int, done: bool, err: int) -> bytes:
    return _MULTI_HEADER.pack(op_type, done, err)


# ---------------------------------------------------------------------------- connect


@dataclass(frozen=True, slots=True)
class ConnectRequest:
    """The first frame of a connection: who the client is and what it last saw."""

    protocol_version: int
    last_zxid_seen: int
    timeout_ms: int
    session_id: int
    passwd: bytes
    read_only: bool = False

    @classmethod
    def decode(cls, body: bytes | memoryview) -> ConnectRequest:
        reader = Reader(body)
        version = reader.read_int()
        last_zxid = reader.read_long()
        timeout = reader.read_int()
        session_id = reader.read_long()
        passwd = reader.read_buffer() or b""
        read_only = reader.read_bool() if not reader.at_end() else False
        return cls(version, last_zxid, timeout, session_id, passwd, read_only)

    def encode(self) -> bytes:
        head = _CONNECT_HEAD.pack(
            self.protocol_version, self.last_zxid_seen, self.timeout_ms, self.session_id
        )
        return head + encode_buffer(self.passwd) + encode_bool(self.read_only)


@dataclass(frozen=True, slots=True)
class ConnectResponse:
    """The server's answer to a connect; ``timeout_ms == 0`` means the session is gone."""

    protocol_version: int
    timeout_ms: int
    session_id: int
    passwd: bytes
    read_only: bool = False

    def encode(self) -> bytes:
        head = _CONNECT_RESPONSE_HEAD.pack(self.protocol_version, self.timeout_ms, self.session_id)
        return head + encode_buffer(self.passwd) + encode_bool(self.read_only)

    @classmethod
    def decode(cls, body: bytes | memoryview) -> ConnectResponse:
        reader = Reader(body)
        version = reader.read_int()
        timeout = reader.read_int()
        session_id = reader.read_long()
        passwd = reader.read_buffer() or b""
        read_only = reader.read_bool() if not reader.at_end() else False
        return cls(version, timeout, session_id, passwd, read_only)


# ---------------------------------------------------------------------------- requests


@dataclass(frozen=True, slots=True)
class CreateRequest:
    path: str
    data: bytes | None  # None: null data (a buffer of length -1), kept apart from b""
    acl: tuple[Acl, ...]
    flags: int
    ttl: int = -1

    @classmethod
    def decode(cls, reader: Reader, with_ttl: bool) -> CreateRequest:
        path = reader.read_path()
        data = reader.read_buffer()
        acl = tuple(reader.read_acls())
        flags = reader.read_int()
        ttl = reader.read_long() if with_ttl else -1
        return cls(path, data, acl, flags, ttl)

    def encode(self, with_ttl: bool) -> bytes:
        body = (
            encode_ustring(self.path)
            + encode_buffer(self.data)
            + encode_acls(self.acl)
            + encode_int(self.flags)
        )
        return body + encode_long(self.ttl) if with_ttl else body


@dataclass(frozen=True, slots=True)
class DeleteRequest:
    path: str
    version: int

    @classmethod
    def decode(cls, reader: Reader) -> DeleteRequest:
        return cls(reader.read_path(), reader.read_int())

    def encode(self) -> bytes:
        return encode_ustring(self.path) + encode_int(self.version)


@dataclass(frozen=True, slots=True)
class CheckRequest:
    path: str
    version: int

    @classmethod
    def decode(cls, reader: Reader) -> CheckRequest:
        return cls(reader.read_path(), reader.read_int())

    def encode(self) -> bytes:
        return encode_ustring(self.path) + encode_int(self.version)


@dataclass(frozen=True, slots=True)
class WatchRequest:
    path: str
    watch: bool

    @classmethod
    def decode(cls, reader: Reader) -> WatchRequest:
        return cls(reader.read_path(), reader.read_bool())

    def encode(self) -> bytes:
        return encode_ustring(self.path) + encode_bool(self.watch)


@dataclass(frozen=True, slots=True)
class SetDataRequest:
    path: str
    data: bytes | None  # None: null data, as in CreateRequest
    version: int

    @classmethod
    def decode(cls, reader: Reader) -> SetDataRequest:
        return cls(reader.read_path(), reader.read_buffer(), reader.read_int())

    def encode(self) -> bytes:
        return encode_ustring(self.path) + encode_buffer(self.data) + encode_int(self.version)


@dataclass(frozen=True, slots=True)
class PathRequest:
    path: str

    @classmethod
    def decode(cls, reader: Reader) -> PathRequest:
        return cls(reader.read_path())

    def encode(self) -> bytes:
        return encode_ustring(self.path)


@dataclass(frozen=True, slots=True)
class SetACLRequest:
    path: str
    acl: tuple[Acl, ...]
    version: int

    @classmethod
    def decode(cls, reader: Reader) -> SetACLRequest:
        return cls(reader.read_path(), tuple(reader.read_acls()), reader.read_int())

    def encode(self) -> bytes:
        return encode_ustring(self.path) + encode_acls(self.acl) + encode_int(self.version)


@dataclass(frozen=True, slots=True)
class AuthRequest:
    type: int
    scheme: str
    auth: bytes

    @classmethod
    def decode(cls, reader: Reader) -> AuthRequest:
        return cls(reader.read_int(), reader.read_ustring() or "", reader.read_buffer() or b"")

    def encode(self) -> bytes:
        return encode_int(self.type) + encode_ustring(self.scheme) + encode_buffer(self.auth)


@dataclass(frozen=True, slots=True)
class SetWatchesRequest:
    relative_zxid: int
    data: tuple[str, ...]
    exist: tuple[str, ...]
    child: tuple[str, ...]
    persistent: tuple[str, ...] = ()
    persistent_recursive: tuple[str, ...] = ()

    @classmethod
    def decode(cls, reader: Reader, version2: bool) -> SetWatchesRequest:
        zxid = reader.read_long()
        data = tuple(reader.read_strings())
        exist = tuple(reader.read_strings())
        child = tuple(reader.read_strings())
        if not version2:
            return cls(zxid, data, exist, child)
        persistent = tuple(reader.read_strings())
        recursive = tuple(reader.read_strings())
        return cls(zxid, data, exist, child, persistent, recursive)

    def encode(self, version2: bool) -> bytes:
        body = (
            encode_long(self.relative_zxid)
            + encode_strings(self.data)
            + encode_strings(self.exist)
            + encode_strings(self.child)
        )
        if version2:
            body += encode_strings(self.persistent) + encode_strings(self.persistent_recursive)
        return body


@dataclass(frozen=True, slots=True)
class AddWatchRequest:
    path: str
    mode: int

    @classmethod
    def decode(cls, reader: Reader) -> AddWatchRequest:
        return cls(reader.read_path(), reader.read_int())

    def encode(self) -> bytes:
        return encode_ustring(self.path) + encode_int(self.mode)


@dataclass(frozen=True, slots=True)
class RemoveWatchesRequest:
    path: str
    type: int

    @classmethod
    def decode(cls, reader: Reader) -> RemoveWatchesRequest:
        return cls(reader.read_path(), reader.read_int())

    def encode(self) -> bytes:
        return encode_ustring(self.path) + encode_int(self.type)


@dataclass(frozen=True, slots=True)
class ReconfigRequest:
    joining: str | None
    leaving: str | None
    new_members: str | None
    config_id: int

    @classmethod
    def decode(cls, reader: Reader) -> ReconfigRequest:
        return cls(reader.read_ustring(), reader.read_ustring(), reader.read_ustring(),
                   reader.read_long())

    def encode(self) -> bytes:
        return (encode_ustring(self.joining) + encode_ustring(self.leaving)
                + encode_ustring(self.new_members) + encode_long(self.config_id))


@dataclass(frozen=True, slots=True)
class EmptyRequest:
    def encode(self) -> bytes:
        return b""


Record = Union[
    CreateRequest,
    DeleteRequest,
    CheckRequest,
    WatchRequest,
    SetDataRequest,
    PathRequest,
    SetACLRequest,
    AuthRequest,
    SetWatchesRequest,
    AddWatchRequest,
    RemoveWatchesRequest,
    ReconfigRequest,
    EmptyRequest,
    "MultiRequest",
]


@dataclass(frozen=True, slots=True)
class MultiRequest:
    """A transaction (multi) or a batch of reads (multiRead): (op code, record) pairs."""

    ops: tuple[tuple[int, Record], ...]

    @classmethod
    def decode(cls, reader: Reader, allowed: frozenset[int]) -> MultiRequest:
        ops: list[tuple[int, Record]] = []
        while True:
            op_type = reader.read_int()
            done = reader.read_bool()
            reader.read_int()  # err: always -1 in requests
            if done:
                return cls(tuple(ops))
            if op_type not in allowed:
                raise JuteError(f"op not allowed in multi: type={op_type}")
            ops.append((op_type, _decode_record(op_type, reader)))

    def encode(self) -> bytes:
        parts = []
        for op_type, record in self.ops:
            parts.append(encode_multi_header(op_type, False, -1))
            parts.append(encode_record(op_type, record))
        parts.append(encode_multi_header(-1, True, -1))
        return b"".join(parts)


MULTI_WRITE_OPS = frozenset(
    {OpCode.CREATE, OpCode.CREATE2, OpCode.CREATE_CONTAINER, OpCode.CREATE_TTL,
     OpCode.DELETE, OpCode.SET_DATA, OpCode.CHECK}
)
MULTI_READ_OPS = frozenset({OpCode.GET_CHILDREN, OpCode.GET_DATA})

_DECODERS: dict[int, Callable[[Reader], Record]] = {
    OpCode.CREATE: lambda r: CreateRequest.decode(r, with_ttl=False),
    OpCode.CREATE2: lambda r: CreateRequest.decode(r, with_ttl=False),
    OpCode.CREATE_CONTAINER: lambda r: CreateRequest.decode(r, with_ttl=False),
    OpCode.CREATE_TTL: lambda r: CreateRequest.decode(r, with_ttl=True),
    OpCode.DELETE: DeleteRequest.decode,
    OpCode.DELETE_CONTAINER: PathRequest.decode,
    OpCode.EXISTS: WatchRequest.decode,
    OpCode.GET_DATA: WatchRequest.decode,
    OpCode.GET_CHILDREN: WatchRequest.decode,
    OpCode.GET_CHILDREN2: WatchRequest.decode,
    OpCode.SET_DATA: SetDataRequest.decode,
    OpCode.GET_ACL: PathRequest.decode,
    OpCode.SYNC: PathRequest.decode,
    OpCode.GET_EPHEMERALS: PathRequest.decode,
    OpCode.GET_ALL_CHILDREN_NUMBER: PathRequest.decode,
    OpCode.SET_ACL: SetACLRequest.decode,
    OpCode.CHECK: CheckRequest.decode,
    OpCode.MULTI: lambda r: MultiRequest.decode(r, MULTI_WRITE_OPS),
    OpCode.MULTI_READ: lambda r: MultiRequest.decode(r, MULTI_READ_OPS),
    OpCode.AUTH: AuthRequest.decode,
    OpCode.SET_WATCHES: lambda r: SetWatchesRequest.decode(r, version2=False),
    OpCode.SET_WATCHES2: lambda r: SetWatchesRequest.decode(r, version2=True),
    OpCode.ADD_WATCH: AddWatchRequest.decode,
    OpCode.CHECK_WATCHES: RemoveWatchesRequest.decode,
    OpCode.REMOVE_WATCHES: RemoveWatchesRequest.decode,
    OpCode.RECONFIG: ReconfigRequest.decode,
    OpCode.PING: lambda r: EmptyRequest(),
    OpCode.CLOSE_SESSION: lambda r: EmptyRequest(),
    OpCode.WHO_AM_I: lambda r: EmptyRequest(),
}


def _decode_record(op_type: int, reader: Reader) -> Record:
    return _DECODERS[op_type](reader)


def is_known_op(op_type: int) -> bool:
    return op_type in _DECODERS


def decode_request(body: bytes | memoryview) -> tuple[int, int, Record | None]:
    """Decode a request frame's payload into ``(xid, op type, record)``.

    The record is None when the op code is unknown (the caller answers UNIMPLEMENTED).
    Raises JuteError when the header itself is truncated or the record is malformed;
    ``JuteError.args`` then carries a message, and the xid, when it was readable, is
    available by decoding the first 4 bytes again.
    """
    reader = Reader(body)
    xid = reader.read_int()
    op_type = reader.read_int()
    decoder = _DECODERS.get(op_type)
    if decoder is None:
        return xid, op_type, None
    return xid, op_type, decoder(reader)


def encode_record(op_type: int, record: Record) -> bytes:
    """The body of a request of this op code (the inverse of the decoders above)."""
    if isinstance(record, CreateRequest):
        return record.encode(with_ttl=op_type == OpCode.CREATE_TTL)
    if isinstance(record, SetWatchesRequest):
        return record.encode(version2=op_type == OpCode.SET_WATCHES2)
    return record.encode()


def encode_request(xid: int, op_type: int, record: Record) -> bytes:
    """A whole request frame, length prefix included."""
    return frame(_INT_INT.pack(xid, op_type) + encode_record(op_type, record))
