"""Durability: the append-only transaction log, snapshots, and recovery after a crash.

On-disk format, version 3 (each file says its version; files of versions 1 and 2 are
still read, see below). Every file lives directly in the data dir, mode 0600::

    coordinator.lock             flock()ed by the running coordinator (one per data dir)
    log.<start zxid, 16 hex>     transactions with zxid >= start, in zxid order
    snapshot.<zxid, 16 hex>      the whole state after applying every zxid <= zxid

A log file::

    +--------+---------+------------------+
    | "EZKL" | u32 = 3 | i64 start zxid   |   file header, 16 bytes
    +--------+---------+------------------+
    | u32 length | u32 crc32(payload) | payload (length bytes) |   one record per txn
    ...
    | zeros ...  (preallocated in 16 MiB steps; a length of 0 ends the records)

    payload = i64 zxid, i64 time (ms since the epoch), txn
    txn     = u8 kind, then by kind (jute encodings: ustring, buffer, vector<ACL>):
              1 create        path, data, acl, i64 ephemeral owner
              2 delete        path
              3 setData       path, data, i32 new version
              4 setACL        path, acl, i32 new aversion
              5 check         path
              6 createSession i64 session id, i32 timeout ms, buffer password
              7 closeSession  i64 session id
              8 multi         i32 count, then count txns
    data    = a buffer whose length -1 means null data (kept apart from empty data)

A snapshot file::

    "EZKS", u32 = 3, i64 zxid,
    i32 session count, (i64 id, buffer password, i32 timeout ms) per session,
    i32 node count, per node in pre-order from "/" (a parent before its children, children
    in their listing order): path, data, acl, i64 czxid, i64 mzxid, i64 ctime, i64 mtime,
    i32 version, i32 cversion, i32 aversion, i64 ephemeral owner, i64 pzxid,
    u32 crc32 of everything before it.
    (data as in the log; cversion counts the creations of the node's children, as
    tree.Node keeps it)

Older versions, the same layouts, still read (new files are always version 3)::

    1       no null data: a data length of -1 never occurs
    1, 2    written while a delete, too, advanced its parent's cversion: a snapshot's
            cversion counts creations and deletions of children (for "/" one less: it
            began at -1), and a log's deletes advance their parent's cversion when
            replayed. So a node's count goes on from where those versions left it (it
            never falls back, and sequential children keep growing numbers, never one
            that was handed out already); only new deletes stop advancing it.

Writing: records are appended to an in-memory batch; once per event loop iteration the
batch is written and the file fdatasync()ed, and only then does the server send the
replies (and watch events) of those transactions. Transactions arriving during an fsync
form the next batch (group commit). Every ``snapshot_every`` transactions the state is
serialized, written to ``snapshot.<zxid>.tmp``, fsynced and renamed, and a new log file
begins at zxid + 1; files only needed for older snapshots than the previous one are
deleted.

Recovery: load the newest snapshot whose CRC checks (falling back to an older one),
then replay every log record with a zxid above it, in order, stopping a file at the first
torn or corrupt record (a write that never completed, hence was never acknowledged) and
truncating the file there. Sessions come back with fresh deadlines.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import fcntl
import logging
import os
import struct
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from engine.coordinator.errors import JuteError
from engine.coordinator.jute import (
    Acl,
    EventType,
    Reader,
    encode_acls,
    encode_buffer,
    encode_int,
    encode_long,
    encode_ustring,
)
from engine.coordinator.tree import (
    CheckTxn,
    CloseSessionTxn,
    CreateSessionTxn,
    CreateTxn,
    DataTree,
    DeleteTxn,
    MultiTxn,
    Node,
    SetACLTxn,
    SetDataTxn,
    Txn,
    name_of,
    parent_of,
)
from engine.errors import DaemonAlreadyRunningError

log = logging.getLogger("engine.coordinator.txnlog")

FORMAT_VERSION = 3
READABLE_VERSIONS = frozenset({1, 2, 3})
LOG_MAGIC = b"EZKL"
SNAPSHOT_MAGIC = b"EZKS"
_FILE_HEADER = struct.Struct("!4sIq")
_RECORD_HEADER = struct.Struct("!II")
_RECORD_PREFIX = struct.Struct("!qq")
_CRC = struct.Struct("!I")
FILE_MODE = 0o600
PREALLOCATE_LENGTH = 16 * 1024 * 1024
DIR_MODE = 0o700


# ---------------------------------------------------------------------------- encoding


def encode_txn(txn: Txn) -> bytes:
    if isinstance(txn, CreateTxn):
        return (b"\x01" + encode_ustring(txn.path) + encode_buffer(txn.data)
                + encode_acls(txn.acl) + encode_long(txn.ephemeral_owner))
    if isinstance(txn, DeleteTxn):
        return b"\x02" + encode_ustring(txn.path)
    if isinstance(txn, SetDataTxn):
        return (b"\x03" + encode_ustring(txn.path) + encode_buffer(txn.data)
                + encode_int(txn.version))
    if isinstance(txn, SetACLTxn):
        return b"\x04" + encode_ustring(txn.path) + encode_acls(txn.acl) + encode_int(txn.version)
    if isinstance(txn, CheckTxn):
        return b"\x05" + encode_ustring(txn.path)
    if isinstance(txn, CreateSessionTxn):
        return (b"\x06" + encode_long(txn.session_id) + encode_int(txn.timeout_ms)
                + encode_buffer(txn.passwd))
    if isinstance(txn, CloseSessionTxn):
        return b"\x07" + encode_long(txn.session_id)
    return b"\x08" + encode_int(len(txn.txns)) + b"".join(encode_txn(t) for t in txn.txns)


def _read_data(reader: Reader, version: int) -> bytes | None:
    """A znode's data: null stays null from version 2 on, of logs and snapshots alike
    (version 1 had none)."""
    data = reader.read_buffer()
    return b"" if data is None and version < 2 else data


def decode_txn(reader: Reader, version: int = FORMAT_VERSION) -> Txn:
    kind = reader.read_byte()
    if kind == 1:
        return CreateTxn(reader.read_path(), _read_data(reader, version),
                         tuple(reader.read_acls()), reader.read_long())
    if kind == 2:
        return DeleteTxn(reader.read_path())
    if kind == 3:
        return SetDataTxn(reader.read_path(), _read_data(reader, version), reader.read_int())
    if kind == 4:
        return SetACLTxn(reader.read_path(), tuple(reader.read_acls()), reader.read_int())
    if kind == 5:
        return CheckTxn(reader.read_path())
    if kind == 6:
        return CreateSessionTxn(reader.read_long(), reader.read_int(), reader.read_buffer() or b"")
    if kind == 7:
        return CloseSessionTxn(reader.read_long())
    if kind == 8:
        count = reader.read_int()
        if count < 0:
            raise JuteError(f"bad multi count: count={count}")
        return MultiTxn(tuple(decode_txn(reader, version) for _ in range(count)))
    raise JuteError(f"unknown txn kind: kind={kind}")


def encode_record(zxid: int, time_ms: int, txn: Txn) -> bytes:
    payload = _RECORD_PREFIX.pack(zxid, time_ms) + encode_txn(txn)
    return _RECORD_HEADER.pack(len(payload), zlib.crc32(payload)) + payload


@dataclass(frozen=True, slots=True)
class LogRecord:
    """One logged transaction and the format version of the file it was read from."""

    zxid: int
    time_ms: int
    txn: Txn
    version: int = FORMAT_VERSION


def replay(tree: DataTree, record: LogRecord) -> None:
    """Apply a logged transaction to the tree, by the rules of its file's version: in
    versions 1 and 2 a delete advanced its parent's cversion too."""
    _replay(tree, record.txn, record.zxid, record.time_ms, record.version)


def _replay(tree: DataTree, txn: Txn, zxid: int, time_ms: int, version: int) -> None:
    if version >= 3:
        tree.apply(txn, zxid, time_ms)
    elif isinstance(txn, MultiTxn):  # one part at a time: each delete's parent as it was
        for part in txn.txns:
            _replay(tree, part, zxid, time_ms, version)
    else:
        for event_type, path, _acl in tree.apply(txn, zxid, time_ms):
            if event_type == EventType.NODE_DELETED:
                tree.nodes[parent_of(path)].cversion += 1


def read_records(data: bytes) -> tuple[list[LogRecord], int]:
    """Decode a log file's records; return them and the length of the valid prefix."""
    magic, version, _start = _FILE_HEADER.unpack_from(data, 0)
    if magic != LOG_MAGIC or version not in READABLE_VERSIONS:
        raise JuteError(f"not a log file of a known version: magic={magic!r} "
                        f"version={version}")
    records = []
    pos = _FILE_HEADER.size
    while pos + _RECORD_HEADER.size <= len(data):
        length, crc = _RECORD_HEADER.unpack_from(data, pos)
        start = pos + _RECORD_HEADER.size
        payload = data[start : start + length]
        if length < _RECORD_PREFIX.size or len(payload) != length or zlib.crc32(payload) != crc:
            break  # the zero padding, or a write that never completed
        try:
            zxid, time_ms = _RECORD_PREFIX.unpack_from(payload, 0)
            reader = Reader(payload, _RECORD_PREFIX.size)
            txn = decode_txn(reader, version)
        except (JuteError, struct.error):
            break
        records.append(LogRecord(zxid, time_ms, txn, version))
        pos = start + length
    return records, pos


def encode_snapshot(tree: DataTree, sessions: dict[int, tuple[bytes, int]]) -> bytes:
    parts = [_FILE_HEADER.pack(SNAPSHOT_MAGIC, FORMAT_VERSION, tree.zxid)]
    parts.append(encode_int(len(sessions)))
    for session_id, (passwd, timeout_ms) in sorted(sessions.items()):
        parts.append(encode_long(session_id) + encode_buffer(passwd) + encode_int(timeout_ms))
    parts.append(encode_int(len(tree.nodes)))
    node_struct = _SNAPSHOT_NODE
    acl_bytes: dict[tuple[Acl, ...], bytes] = {}  # most nodes share a handful of ACLs
    stack = ["/"]
    while stack:
        path = stack.pop()
        node = tree.nodes[path]
        acl = acl_bytes.get(node.acl)
        if acl is None:
            acl = acl_bytes[node.acl] = encode_acls(node.acl)
        parts.append(encode_ustring(path) + encode_buffer(node.data) + acl)
        parts.append(node_struct.pack(node.czxid, node.mzxid, node.ctime, node.mtime,
                                      node.version, node.cversion, node.aversion,
                                      node.ephemeral_owner, node.pzxid))
        prefix = "/" if path == "/" else path + "/"
        stack.extend(prefix + name for name in reversed(node.children))
    body = b"".join(parts)
    return body + _CRC.pack(zlib.crc32(body))


_SNAPSHOT_NODE = struct.Struct("!qqqqiiiqq")


def decode_snapshot(data: bytes) -> tuple[DataTree, dict[int, tuple[bytes, int]]]:
    if len(data) < _FILE_HEADER.size + _CRC.size:
        raise JuteError("snapshot truncated")
    body, (crc,) = data[:-4], _CRC.unpack_from(data, len(data) - 4)
    if zlib.crc32(body) != crc:
        raise JuteError("snapshot crc mismatch")
    magic, version, zxid = _FILE_HEADER.unpack_from(body, 0)
    if magic != SNAPSHOT_MAGIC or version not in READABLE_VERSIONS:
        raise JuteError(f"not a snapshot of a known version: magic={magic!r} "
                        f"version={version}")
    reader = Reader(body, _FILE_HEADER.size)
    sessions = {}
    for _ in range(reader.read_int()):
        session_id = reader.read_long()
        passwd = reader.read_buffer() or b""
        sessions[session_id] = (passwd, reader.read_int())
    tree = DataTree()
    tree.nodes.clear()
    tree.ephemerals.clear()
    tree.timed.clear()
    for _ in range(reader.read_int()):
        path = reader.read_path()
        data_bytes = _read_data(reader, version)
        acl = tuple(reader.read_acls())
        fields = _SNAPSHOT_NODE.unpack_from(body, reader.skip(_SNAPSHOT_NODE.size))
        node = Node(data_bytes, acl, *fields)
        tree._put(path, node)
        if path != "/":
            tree.nodes[parent_of(path)].children[name_of(path)] = None
    if version < 3:
        tree.nodes["/"].cversion += 1  # versions 1 and 2 began it at -1
    tree.zxid = zxid
    return tree, sessions


# ---------------------------------------------------------------------------- files


def _fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _zxid_files(directory: str, prefix: str) -> list[tuple[int, str]]:
    found = []
    for name in os.listdir(directory):
        if name.startswith(prefix) and not name.endswith(".tmp"):
            try:
                found.append((int(name[len(prefix):], 16), os.path.join(directory, name)))
            except ValueError:
                continue
    return sorted(found)


def write_file_atomically(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` via a fsynced temporary file and a rename."""
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    _fsync_dir(os.path.dirname(path) or ".")


@dataclass
class Recovered:
    """The state rebuilt from disk: the tree (with its zxid) and the live sessions."""

    tree: DataTree
    sessions: dict[int, tuple[bytes, int]]
    replayed: int
    snapshot_zxid: int


def apply_to_sessions(sessions: dict[int, tuple[bytes, int]], txn: Txn) -> None:
    if isinstance(txn, CreateSessionTxn):
        sessions[txn.session_id] = (txn.passwd, txn.timeout_ms)
    elif isinstance(txn, CloseSessionTxn):
        sessions.pop(txn.session_id, None)


def recover(directory: str) -> Recovered:
    """Rebuild the state from the newest good snapshot and the logs after it."""
    tree, snapshot_zxid = DataTree(), 0
    sessions: dict[int, tuple[bytes, int]] = {}
    for zxid, path in reversed(_zxid_files(directory, "snapshot.")):
        try:
            with open(path, "rb") as fh:
                tree, sessions = decode_snapshot(fh.read())
            snapshot_zxid = zxid
            break
        except (JuteError, struct.error, OSError) as exc:
            log.warning("skipping unreadable snapshot: path=%s error=%s", path, exc)
    replayed = 0
    for _start, path in _zxid_files(directory, "log."):
        with open(path, "rb") as fh:
            data = fh.read()
        try:
            records, valid = read_records(data)
        except (JuteError, struct.error) as exc:
            log.warning("skipping unreadable log: path=%s error=%s", path, exc)
            continue
        if valid < len(data):
            tail = memoryview(data)[valid:]
            if tail.nbytes != bytes(tail).count(0):  # not just the preallocated zeros
                log.warning("truncating torn log tail: path=%s valid=%d length=%d",
                            path, valid, len(data))
            with open(path, "r+b") as fh:
                fh.truncate(valid)
                os.fsync(fh.fileno())
        for record in records:
            if record.zxid <= tree.zxid:
                continue
            if record.zxid != tree.zxid + 1:
                log.error("gap in log: expected=%d found=%d path=%s",
                          tree.zxid + 1, record.zxid, path)
                break
            replay(tree, record)
            apply_to_sessions(sessions, record.txn)
            replayed += 1
    return Recovered(tree, sessions, replayed, snapshot_zxid)


class DataDirLock:
    """An exclusive flock on ``coordinator.lock``: one coordinator per data dir."""

    def __init__(self, directory: str) -> None:
        os.makedirs(directory, mode=DIR_MODE, exist_ok=True)
        self._fd = os.open(os.path.join(directory, "coordinator.lock"),
                           os.O_RDWR | os.O_CREAT, FILE_MODE)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            raise DaemonAlreadyRunningError(
                f"another coordinator holds the data dir: dir={directory}") from None

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


@dataclass(frozen=True, slots=True)
class _SnapshotMark:
    zxid: int
    data: bytes


class TxnLog:
    """Appends transactions and makes them durable in batches (group commit).

    Owned by the server's event loop: ``append``, ``snapshot`` and ``close`` are called
    from it. Batches are written and fdatasynced on the loop itself; snapshots and the
    zero-filling that grows the file run on one private thread; either way in append
    order, one batch at a time.
    ``durable_zxid`` is the highest zxid known to be on disk; ``on_durable(zxid)`` is
    called on the loop after each batch. After a crash, whatever was not yet fsynced is
    lost, and none of it had been acknowledged.
    """

    def __init__(self, directory: str, last_zxid: int,
                 on_durable: Callable[[int], None], on_error: Callable[[BaseException], None],
                 snapshot_every: int = 10000, since_snapshot: int = 0) -> None:
        self.directory = directory
        self.durable_zxid = last_zxid
        self.appended_zxid = last_zxid
        self.snapshot_every = snapshot_every
        # Transactions in the logs since the last snapshot, those recovery replayed
        # included: a server restarted more often than every snapshot_every
        # transactions still snapshots (else every restart replays a longer log).
        self.since_snapshot = since_snapshot
        self._on_durable = on_durable
        self._on_error = on_error
        self._items: list[bytes | _SnapshotMark] = []
        self._pending_length = 0
        self._pending_snapshot = False
        self._flushing = False
        self._failed: BaseException | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        self._executor = concurrent.futures.ThreadPoolExecutor(1, "coordinator-fsync")
        self._offset = 0
        self._allocated = 0
        self._fd = self._open_log(last_zxid + 1)

    def _open_log(self, start_zxid: int) -> int:
        path = os.path.join(self.directory, f"log.{start_zxid:016x}")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
        header = _FILE_HEADER.pack(LOG_MAGIC, FORMAT_VERSION, start_zxid)
        self._allocated = 0
        self._preallocate(fd, len(header))
        os.pwrite(fd, header, 0)
        self._offset = len(header)
        os.fsync(fd)
        _fsync_dir(self.directory)
        return fd

    def _preallocate(self, fd: int, needed_end: int) -> None:
        """Write zeros ahead of the records, so that each fdatasync flushes data only
        (the file's size and extents do not change) - as ZooKeeper pads its logs."""
        if needed_end <= self._allocated:
            return
        new_end = max(needed_end, self._allocated + PREALLOCATE_LENGTH)
        zeros = bytes(min(new_end - self._allocated, 1 << 20))
        position = self._allocated
        while position < new_end:
            position += os.pwrite(fd, zeros[: new_end - position], position)
        os.fsync(fd)
        self._allocated = new_end

    def _close_log(self) -> None:
        os.ftruncate(self._fd, self._offset)  # drop the unused zeros
        os.fsync(self._fd)
        os.close(self._fd)
        self._fd = -1

    def append(self, zxid: int, time_ms: int, txn: Txn) -> None:
        record = encode_record(zxid, time_ms, txn)
        self._items.append(record)
        self._pending_length += len(record)
        self.appended_zxid = zxid
        self.since_snapshot += 1
        self._kick()

    def snapshot(self, tree: DataTree, sessions: dict[int, tuple[bytes, int]]) -> None:
        """Serialize the state now; the writer thread stores it and starts a new log."""
        self._items.append(_SnapshotMark(tree.zxid, encode_snapshot(tree, sessions)))
        self._pending_snapshot = True
        self.since_snapshot = 0
        self._kick()

    def _take(self) -> list[bytes | _SnapshotMark]:
        items, self._items = self._items, []
        self._pending_length = 0
        self._pending_snapshot = False
        return items

    def _kick(self) -> None:
        if not self._flushing and self._failed is None:
            self._flushing = True
            self._idle.clear()
            asyncio.get_running_loop().call_soon(self._flush_soon)

    def _flush_soon(self) -> None:
        """Write and fdatasync the batch - every append since the last one - right here
        on the loop: a few hundred microseconds, less than a round trip through a thread,
        and requests arriving meanwhile wait in the socket buffers to form the next
        batch. A batch holding a snapshot, or needing the file to grow, goes to the
        writer thread instead, so the loop never stalls for long."""
        if self._failed is not None:
            self._flushing = False
            self._idle.set()
            return
        if self._pending_snapshot or self._offset + self._pending_length > self._allocated:
            asyncio.get_running_loop().create_task(self._flush_loop())
            return
        last = self.appended_zxid
        try:
            self._write(self._take())
        except Exception as exc:  # noqa: BLE001 - any failure to persist is fatal
            self._failed = exc
            self._on_error(exc)
            return
        finally:
            self._flushing = False
            self._idle.set()
        self.durable_zxid = last
        self._on_durable(last)

    async def _flush_loop(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._items:
                last = self.appended_zxid
                items = self._take()
                await loop.run_in_executor(self._executor, self._write, items)
                self.durable_zxid = last
                self._on_durable(last)
        except Exception as exc:  # noqa: BLE001 - any failure to persist is fatal: nothing
            # later may be acknowledged, so the server stops
            self._failed = exc
            self._on_error(exc)
        finally:
            self._flushing = False
            self._idle.set()

    def _write(self, items: list[bytes | _SnapshotMark]) -> None:
        batch: list[bytes] = []
        for item in items:
            if isinstance(item, bytes):
                batch.append(item)
                continue
            self._write_all(b"".join(batch))
            batch = []
            os.fdatasync(self._fd)
            write_file_atomically(
                os.path.join(self.directory, f"snapshot.{item.zxid:016x}"), item.data)
            self._close_log()
            self._fd = self._open_log(item.zxid + 1)
            self._prune()
        if batch:
            self._write_all(b"".join(batch))
            os.fdatasync(self._fd)

    def _write_all(self, data: bytes) -> None:
        self._preallocate(self._fd, self._offset + len(data))
        view = memoryview(data)
        while view:
            written = os.pwrite(self._fd, view, self._offset)
            self._offset += written
            view = view[written:]

    def _prune(self) -> None:
        snapshots = _zxid_files(self.directory, "snapshot.")
        if len(snapshots) < 2:
            return
        keep_from = snapshots[-2][0]
        for zxid, path in snapshots[:-2]:
            os.unlink(path)
            log.info("removed old snapshot: zxid=%#x", zxid)
        for start, path in _zxid_files(self.directory, "log."):
            if start <= keep_from:
                os.unlink(path)

    async def close(self) -> None:
        """Flush everything appended so far, then close the file."""
        while self._flushing or (self._items and self._failed is None):
            self._kick()
            await self._idle.wait()
        self._executor.shutdown(wait=True)
        if self._fd >= 0:
            self._close_log()


def now_ms() -> int:
    return int(time.time() * 1000)


def iter_log_files(directory: str) -> Iterator[str]:
    for _zxid, path in _zxid_files(directory, "log."):
        yield path
