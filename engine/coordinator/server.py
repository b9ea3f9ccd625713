"""The coordinator's server: an asyncio TCP server speaking ZooKeeper's client protocol.

Request flow, all on one event loop thread: a connection cuts frames out of its byte
stream, decodes each with jute.py and hands it to :class:`Coordinator`, which checks it
against the tree and, for a write, applies the transaction at once and appends it to the
transaction log. Every reply and watch event is queued on its connection with a
*barrier*: the zxid that must be on disk before it may leave. When a batch of the log
has been fsynced, everything behind it is written out. Hence:

- nothing a client can see (a reply, an event, a read of changed data) is lost by a
  crash, yet many concurrent writes share one fsync (group commit);
- a connection's replies leave in request order, and the watch events a change causes are
  queued before the reply to any later request, so a client sees the event first;
- a client reads its own writes: the tree is updated before the next request is read.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import errno
import logging
import os
import signal
import socket
import time
from collections.abc import Callable
from typing import Any, ClassVar

from engine.coordinator import jute
from engine.coordinator.errors import JuteError, KeeperError
from engine.coordinator.jute import (
    Acl,
    AddWatchMode,
    AuthRequest,
    CheckRequest,
    ConnectRequest,
    ConnectResponse,
    CreateFlag,
    CreateRequest,
    DeleteRequest,
    EventType,
    KeeperState,
    MultiRequest,
    OpCode,
    PathRequest,
    Perm,
    Record,
    RemoveWatchesRequest,
    SetACLRequest,
    SetDataRequest,
    SetWatchesRequest,
    WatchRequest,
)
from engine.coordinator.jute import AddWatchRequest as AddWatchReq
from engine.coordinator.jute import Err as E
from engine.coordinator.session import Session, SessionLimits, SessionTracker
from engine.coordinator.tree import (
    CONTAINER_OWNER,
    MAX_TTL_MS,
    TTL_OWNER_BASE,
    CloseSessionTxn,
    CreateSessionTxn,
    CreateTxn,
    DataTree,
    DeleteTxn,
    Event,
    Identity,
    MultiTxn,
    SetDataTxn,
    Txn,
    UndoLog,
    check_acl,
    digest_id,
    validate_path,
)
from engine.coordinator.txnlog import (
    DIR_MODE,
    DataDirLock,
    TxnLog,
    now_ms,
    recover,
    write_file_atomically,
)
from engine.coordinator.watch import Watches

log = logging.getLogger("engine.coordinator")

SERVER_VERSION = "3.8.0-engine"
FOUR_LETTER_WORDS = frozenset({b"ruok", b"srvr", b"mntr", b"stat", b"envi", b"conf", b"isro"})
_NO_PASSWD = bytes(16)
_HIGH_WATER = 4 * 1024 * 1024
_CREATE_FLAGS = frozenset(int(flag) for flag in CreateFlag)


class Connection(asyncio.Protocol):
    """One client TCP connection: framing, the handshake, and ordered, durable output.

    Holds the bytes received but not yet parsed, and the replies/events not yet allowed
    out (each with the zxid that must be durable first). Watches are keyed by this object.
    Called only from the event loop.
    """

    def __init__(self, coordinator: Coordinator) -> None:
        self.coordinator = coordinator
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self.session: Session | None = None
        self._inbuf = bytearray()
        self._held: list[tuple[int, bytes]] = []
        self._out: list[bytes] = []
        self._flush_scheduled = False
        self._closing = False
        self._lost = False
        self._paused = False
        self._handshake_timer: asyncio.TimerHandle | None = None

    # -- asyncio.Protocol --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if peer else "?"
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        transport.set_write_buffer_limits(high=_HIGH_WATER)
        loop = asyncio.get_running_loop()
        timeout = self.coordinator.limits.max_timeout_ms / 1000.0
        self._handshake_timer = loop.call_later(timeout, self._handshake_expired)
        self.coordinator.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        if self._handshake_timer is not None:
            self._handshake_timer.cancel()
        self.coordinator.connection_closed(self)

    def pause_writing(self) -> None:
        if self.transport is not None and not self._paused:
            self._paused = True
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None and self._paused:
            self._paused = False
            self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        buf = self._inbuf
        buf += data
        pos = 0
        try:
            while len(buf) - pos >= 4 and not self._closing:
                if self.session is None and pos == 0 and bytes(buf[:4]) in FOUR_LETTER_WORDS:
                    self._four_letter_word(bytes(buf[:4]))
                    return
                length = int.from_bytes(buf[pos : pos + 4], "big", signed=True)
                if length < 0 or length > jute.MAX_PACKET_LENGTH:
                    self.close_for(f"bad frame length: length={length}")
                    return
                if len(buf) - pos - 4 < length:
                    break
                payload = bytes(buf[pos + 4 : pos + 4 + length])
                pos += 4 + length
                self.coordinator.packets_received += 1
                if self.session is None:
                    self._handshake(payload)
                else:
                    self.coordinator.handle(self, payload)
        finally:
            if pos:
                del buf[:pos]
            self._schedule_flush()

    # -- handshake ---------------------------------------------------------------------

    def _handshake_expired(self) -> None:
        if self.session is None and not self._closing:
            self.close_for("no connect request within the session timeout")

    def _handshake(self, payload: bytes) -> None:
        try:
            request = ConnectRequest.decode(payload)
        except JuteError as exc:
            self.close_for(f"malformed connect request: {exc}")
            return
        if self._handshake_timer is not None:
            self._handshake_timer.cancel()
            self._handshake_timer = None
        self.coordinator.connect(self, request)

    # -- output ------------------------------------------------------------------------

    def send(self, data: bytes, barrier: int) -> None:
        """Queue a framed message that may leave once ``barrier`` is durable."""
        if self._lost:
            return
        if not self._held and barrier <= self.coordinator.log.durable_zxid:
            self._out.append(data)
            self._schedule_flush()
        else:
            self._held.append((barrier, data))
            self.coordinator.waiting.add(self)

    def release(self, durable_zxid: int) -> bool:
        """Move held messages whose barrier is durable to the socket; True when none left."""
        held = self._held
        count = 0
        for barrier, data in held:
            if barrier > durable_zxid:
                break
            self._out.append(data)
            count += 1
        if count:
            del held[:count]
            self._flush()
        return not held

    def _schedule_flush(self) -> None:
        if self._out and not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._out and self.transport is not None and not self._lost:
            out, self._out = self._out, []
            self.coordinator.packets_sent += len(out)
            self.transport.write(b"".join(out))
        if self._closing and not self._held and self.transport is not None:
            self.transport.close()

    def close_after_output(self) -> None:
        """Stop reading; close once everything queued has been written."""
        self._closing = True
        if self.transport is not None:
            if not self._held:
                self._flush()
            self._inbuf.clear()

    def close_for(self, reason: str) -> None:
        """Close this connection now, with one log line saying why."""
        if self._closing and self.transport is not None and self.transport.is_closing():
            return
        log.warning("closing connection: peer=%s session=%s reason=%s", self.peer,
                    f"{self.session.session_id:#x}" if self.session else "-", reason)
        self._closing = True
        self._held.clear()
        self._out.clear()
        if self.transport is not None:
            self.transport.close()

    # -- four-letter words -------------------------------------------------------------

    def _four_letter_word(self, word: bytes) -> None:
        text = self.coordinator.four_letter_word(word.decode("ascii"))
        self._closing = True
        if self.transport is not None:
            self.transport.write(text.encode("utf-8"))
            self.transport.close()


Handler = Callable[["Coordinator", Connection, Session, int, Record], bytes]

#: The upper bounds (seconds) of the request-time histogram `mntr` shows per request
#: type as engine_request_bucket_<op>_<bound>: requests that took at most that long.
LATENCY_BUCKETS_S = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                     0.25, 1.0)


class OpStats:
    """One request type's requests, the seconds spent handling them (the reply queued;
    the wait for the transaction log's fsync not included), and how many fell in each
    of LATENCY_BUCKETS_S (the last count: above them all). The event loop's only."""

    __slots__ = ("buckets", "count", "seconds")

    def __init__(self) -> None:
        self.count = 0
        self.seconds = 0.0
        self.buckets = [0] * (len(LATENCY_BUCKETS_S) + 1)

    def add(self, elapsed: float) -> None:
        self.count += 1
        self.seconds += elapsed
        self.buckets[bisect.bisect_left(LATENCY_BUCKETS_S, elapsed)] += 1


class Coordinator:
    """The state machine: tree, sessions, watches and the transaction log, and the
    request handlers that tie them together.

    Everything here runs on the event loop thread. Invariants: ``tree.zxid`` is the last
    applied transaction and ``log.appended_zxid`` equals it; ``log.durable_zxid`` never
    exceeds it; a connection is in ``waiting`` exactly while it holds output behind a
    barrier. On a crash, the state is rebuilt by :func:`recover` from the data dir.
    """

    def __init__(self, data_dir: str, limits: SessionLimits | None = None,
                 snapshot_every: int = 10000,
                 on_fatal: Callable[[BaseException], None] | None = None) -> None:
        os.makedirs(data_dir, mode=DIR_MODE, exist_ok=True)
        self.data_dir = data_dir
        self.limits = limits or SessionLimits()
        self.lock = DataDirLock(data_dir)
        started = time.monotonic()
        recovered = recover(data_dir)
        self.tree: DataTree = recovered.tree
        self.sessions = SessionTracker()
        for session_id, (passwd, timeout_ms) in recovered.sessions.items():
            self.sessions.add(session_id, passwd, timeout_ms)
        log.info("recovered: zxid=%#x snapshot=%#x replayed=%d nodes=%d sessions=%d ms=%d",
                 self.tree.zxid, recovered.snapshot_zxid, recovered.replayed,
                 len(self.tree.nodes), len(recovered.sessions),
                 (time.monotonic() - started) * 1000)
        self.watches = Watches()
        self.connections: set[Connection] = set()
        self.waiting: set[Connection] = set()
        self._on_fatal = on_fatal
        self.log = TxnLog(data_dir, self.tree.zxid, self._durable, self._log_failed,
                          snapshot_every, since_snapshot=recovered.replayed)
        self.packets_received = 0
        self.packets_sent = 0
        self._latency = [0, 0, 0, 0]  # count, total ms, min, max (requests only)
        #: Per request type (op code): requests, the time spent handling them, and how
        #: many took how long; `mntr` shows them (the daemon's metrics read them there).
        self.requests_by_op: dict[int, OpStats] = {}

    # -- durability ----------------------------------------------------------------------

    def _durable(self, zxid: int) -> None:
        for conn in list(self.waiting):
            if conn.release(zxid):
                self.waiting.discard(conn)

    def _log_failed(self, exc: BaseException) -> None:
        log.critical("transaction log write failed; stopping: error=%r", exc)
        if self._on_fatal is not None:
            self._on_fatal(exc)

    def _commit(self, txn: Txn) -> tuple[int, list[Event]]:
        zxid = self.tree.zxid + 1
        time_ms = now_ms()
        events = self.tree.apply(txn, zxid, time_ms)
        self._committed(zxid, time_ms, txn, events)
        return zxid, events

    def _committed(self, zxid: int, time_ms: int, txn: Txn, events: list[Event]) -> None:
        self.log.append(zxid, time_ms, txn)
        if isinstance(txn, CreateSessionTxn):
            self.sessions.add(txn.session_id, txn.passwd, txn.timeout_ms)
        elif isinstance(txn, CloseSessionTxn):
            self.sessions.remove(txn.session_id)
        self._fire(events, zxid)
        if self.log.since_snapshot >= self.log.snapshot_every:
            self.log.snapshot(self.tree, self._session_table())

    def _session_table(self) -> dict[int, tuple[bytes, int]]:
        return {s.session_id: (s.passwd, s.timeout_ms) for s in self.sessions.sessions.values()}

    def _fire(self, events: list[Event], zxid: int) -> None:
        """Send each event to its watchers that may read the node it is about; the others'
        watches are used up all the same (ZooKeeper's WatchManager does both)."""
        watches = self.watches
        for event_type, path, acl in events:
            watchers = watches.trigger(event_type, path)
            if not watchers:
                continue
            message = b""
            for conn in watchers:
                assert isinstance(conn, Connection)
                if not self._may_read(conn, acl):
                    continue
                if not message:
                    message = jute.frame(
                        jute.encode_reply_header(jute.NOTIFICATION_XID, zxid, 0)
                        + jute.encode_watcher_event(event_type, KeeperState.SYNC_CONNECTED, path)
                    )
                conn.send(message, zxid)

    def _may_read(self, conn: Connection, acl: tuple[Acl, ...]) -> bool:
        session = conn.session
        identities = self._identities(conn, session) if session is not None else []
        try:
            check_acl(acl, Perm.READ, identities)
        except KeeperError:
            return False
        return True

    # -- connections and sessions --------------------------------------------------------

    def connect(self, conn: Connection, request: ConnectRequest) -> None:
        if request.last_zxid_seen > self.tree.zxid:
            conn.close_for(f"client has seen a newer zxid: client={request.last_zxid_seen:#x} "
                           f"server={self.tree.zxid:#x}")
            return
        if request.session_id == 0:
            session_id, passwd = self.sessions.new_id()
            timeout = self.limits.negotiate(request.timeout_ms)
            zxid, _ = self._commit(CreateSessionTxn(session_id, timeout, passwd))
            session = self.sessions.sessions[session_id]
            log.info("session created: session=%#x timeout_ms=%d peer=%s",
                     session_id, timeout, conn.peer)
        else:
            found = self.sessions.get(request.session_id)
            if found is None or found.passwd != request.passwd or found.closing:
                log.info("session expired or unknown at reconnect: session=%#x peer=%s",
                         request.session_id, conn.peer)
                response = ConnectResponse(0, 0, 0, _NO_PASSWD)
                conn.session = Session(0, b"", 0)  # marks the handshake done
                conn.send(jute.frame(response.encode()), self.tree.zxid)
                conn.close_after_output()
                return
            session = found
            old = session.connection
            if old is not None and old is not conn:
                assert isinstance(old, Connection)
                old.close_for("session moved to a new connection")
            session.touch()
            zxid = self.tree.zxid
            log.info("session resumed: session=%#x peer=%s", session.session_id, conn.peer)
        session.connection = conn
        conn.session = session
        response = ConnectResponse(0, session.timeout_ms, session.session_id, session.passwd)
        conn.send(jute.frame(response.encode()), zxid)

    def connection_closed(self, conn: Connection) -> None:
        self.connections.discard(conn)
        self.waiting.discard(conn)
        self.watches.remove_watcher(conn)
        session = conn.session
        if session is not None and session.connection is conn:
            session.connection = None

    def tick(self) -> None:
        """Expire silent sessions; delete containers and TTL nodes whose time has come."""
        for session in self.sessions.expired():
            log.info("session expired: session=%#x timeout_ms=%d",
                     session.session_id, session.timeout_ms)
            self._close_session(session)
            conn = session.connection
            if conn is not None:
                assert isinstance(conn, Connection)
                conn.close_after_output()
        if self.tree.timed:
            for path in self.tree.expired_timed_nodes(now_ms()):
                node = self.tree.nodes.get(path)
                if node is not None and not node.children:
                    self._commit(DeleteTxn(path))

    def _close_session(self, session: Session) -> int:
        session.closing = True
        zxid, _ = self._commit(CloseSessionTxn(session.session_id))
        return zxid

    # -- requests ------------------------------------------------------------------------

    def handle(self, conn: Connection, payload: bytes) -> None:
        session = conn.session
        assert session is not None
        if session.session_id == 0 or session.closing:
            return
        session.touch()
        try:
            xid, op, record = jute.decode_request(payload)
        except JuteError as exc:
            conn.close_for(f"malformed request: {exc}")
            return
        started = time.monotonic()
        if op == OpCode.PING:
            self._reply(conn, jute.PING_XID, E.OK, b"")
            return
        if record is None:  # as ZooKeeper does: answer UNIMPLEMENTED, then hang up
            log.warning("closing connection: peer=%s session=%#x reason=unknown op code "
                        "op=%d xid=%d", conn.peer, session.session_id, op, xid)
            self._reply(conn, xid, E.UNIMPLEMENTED, b"")
            conn.close_after_output()
            return
        handler = self._handlers.get(op)
        try:
            if handler is None:
                raise KeeperError(E.UNIMPLEMENTED)
            body = handler(self, conn, session, op, record)
            err: int = E.OK
        except KeeperError as exc:
            body, err = b"", exc.code
        if op == OpCode.AUTH:
            xid = jute.AUTH_XID
        elif op in (OpCode.SET_WATCHES, OpCode.SET_WATCHES2):
            xid = jute.SET_WATCHES_XID
        self._reply(conn, xid, err, body)
        if op == OpCode.CLOSE_SESSION or (op == OpCode.AUTH and err):
            conn.close_after_output()
        self._note_latency(started)
        by_op = self.requests_by_op.get(op)
        if by_op is None:
            by_op = self.requests_by_op[op] = OpStats()
        by_op.add(time.monotonic() - started)

    def _reply(self, conn: Connection, xid: int, err: int, body: bytes) -> None:
        zxid = self.tree.zxid
        conn.send(jute.frame(jute.encode_reply_header(xid, zxid, err) + body), zxid)

    def _note_latency(self, started: float) -> None:
        elapsed = int((time.monotonic() - started) * 1000)
        stats = self._latency
        stats[0] += 1
        stats[1] += elapsed
        stats[2] = elapsed if stats[0] == 1 else min(stats[2], elapsed)
        stats[3] = max(stats[3], elapsed)

    @staticmethod
    def _identities(conn: Connection, session: Session) -> list[Identity]:
        return [*session.identities, ("ip", conn.peer.rsplit(":", 1)[0])]

    # ---- writes

    def _prepare_write(self, conn: Connection, session: Session, op: int,
                       record: Record) -> Txn:
        ids = self._identities(conn, session)
        if isinstance(record, CreateRequest):
            return self.tree.prepare_create(
                record.path, record.data, record.acl, self._owner_for(op, record, session),
                record.flags in (CreateFlag.PERSISTENT_SEQUENTIAL,
                                 CreateFlag.EPHEMERAL_SEQUENTIAL,
                                 CreateFlag.PERSISTENT_SEQUENTIAL_WITH_TTL),
                ids)
        if isinstance(record, DeleteRequest):
            return self.tree.prepare_delete(record.path, record.version, ids)
        if isinstance(record, SetDataRequest):
            return self.tree.prepare_set_data(record.path, record.data, record.version, ids)
        if isinstance(record, CheckRequest):
            return self.tree.prepare_check(record.path, record.version, ids)
        raise KeeperError(E.BAD_ARGUMENTS)

    @staticmethod
    def _owner_for(op: int, record: CreateRequest, session: Session) -> int:
        flags, ttl = record.flags, record.ttl
        if flags not in _CREATE_FLAGS:
            raise KeeperError(E.BAD_ARGUMENTS, f"unknown create flags: flags={flags}")
        is_ttl = flags in (CreateFlag.PERSISTENT_WITH_TTL,
                           CreateFlag.PERSISTENT_SEQUENTIAL_WITH_TTL)
        if op == OpCode.CREATE_TTL:
            if not is_ttl or not 0 < ttl <= MAX_TTL_MS:
                raise KeeperError(E.BAD_ARGUMENTS, f"bad ttl: flags={flags} ttl={ttl}")
            return TTL_OWNER_BASE | ttl
        if is_ttl:
            raise KeeperError(E.BAD_ARGUMENTS, "ttl flags need the createTTL op")
        if op == OpCode.CREATE_CONTAINER and flags != CreateFlag.CONTAINER:
            raise KeeperError(E.BAD_ARGUMENTS, "createContainer needs the container flag")
        if flags == CreateFlag.CONTAINER:
            return CONTAINER_OWNER
        if flags in (CreateFlag.EPHEMERAL, CreateFlag.EPHEMERAL_SEQUENTIAL):
            return session.session_id
        return 0

    def _write_one(self, conn: Connection, session: Session, op: int, record: Record) -> bytes:
        txn = self._prepare_write(conn, session, op, record)
        self._commit(txn)
        return self._write_result(op, txn)

    def _write_result(self, op: int, txn: Txn) -> bytes:
        """The result body of a write: create's path (create2 adds the stat), setData's
        stat, nothing for delete and check."""
        if isinstance(txn, CreateTxn):
            body = jute.encode_ustring(txn.path)
            if op != OpCode.CREATE:
                body += jute.encode_stat(self.tree.nodes[txn.path].stat())
            return body
        if isinstance(txn, SetDataTxn):
            return jute.encode_stat(self.tree.nodes[txn.path].stat())
        return b""

    def _multi(self, conn: Connection, session: Session, op: int, record: Record) -> bytes:
        assert isinstance(record, MultiRequest)
        tree = self.tree
        zxid = tree.zxid + 1
        time_ms = now_ms()
        undo: UndoLog = []
        txns: list[Txn] = []
        results: list[bytes] = []
        events: list[Event] = []
        failed_at, failure = -1, 0
        for index, (sub_op, sub) in enumerate(record.ops):
            try:
                txn = self._prepare_write(conn, session, sub_op, sub)
            except KeeperError as exc:
                failed_at, failure = index, exc.code
                break
            events += tree.apply(txn, zxid, time_ms, undo)
            txns.append(txn)
            result_op = OpCode.CREATE2 if sub_op in (OpCode.CREATE_CONTAINER,
                                                     OpCode.CREATE_TTL) else sub_op
            results.append(jute.encode_multi_header(result_op, False, 0)
                           + self._write_result(result_op, txn))
        if failed_at >= 0:
            tree.rollback(undo)
            tree.zxid = zxid - 1
            parts = []
            for index in range(len(record.ops)):
                code = (E.OK if index < failed_at else failure if index == failed_at
                        else E.RUNTIME_INCONSISTENCY)
                parts.append(jute.encode_multi_header(-1, False, code) + jute.encode_int(code))
            parts.append(jute.encode_multi_header(-1, True, -1))
            return b"".join(parts)
        if txns:
            self._committed(zxid, time_ms, MultiTxn(tuple(txns)), events)
        results.append(jute.encode_multi_header(-1, True, -1))
        return b"".join(results)

    def _set_acl(self, conn: Connection, session: Session, op: int, record: Record) -> bytes:
        assert isinstance(record, SetACLRequest)
        txn = self.tree.prepare_set_acl(record.path, record.acl, record.version,
                                        self._identities(conn, session))
        self._commit(txn)
        return jute.encode_stat(self.tree.nodes[record.path].stat())

    def _close(self, conn: Connection, session: Session, op: int, record: Record) -> bytes:
        log.info("session closed by client: session=%#x", session.session_id)
        self._close_session(session)
        return b""

    # ---- reads

    def _read_node(self, path: str, perm: int, conn: Connection, session: Session) -> Any:
        node = self.tree.get(path)
        if perm:
            check_acl(node.acl, perm, self._identities(conn, session))
        return node

    def _exists(self, conn: Connection, session: Session, op: int, record: Record) -> bytes:
        assert isinstance(record, WatchRequest)
        node = self.tree.nodes.get(record.path)
        if record.watch:
            self.watches.add("data", record.path, conn)
        if node is None:
            raise KeeperError(E.NO_NODE)
        return jute.encode_stat(node.stat())

    def _get_data(self, conn: Connection, session: Session, op: int, record: Record) -> bytes:
        assert isinstance(record, WatchRequest)
        node = self._read_node(record.path, Perm.READ, conn, session)
        if record.watch:
            self.watches.add("data", record.path, conn)
        return jute.encode_buffer(node.data) + jute.encode_stat(node.stat())

    def _get_children(self, conn: Connection, session: Session, op: int,
                      record: Record) -> bytes:
        assert isinstance(record, WatchRequest)
        node = self._read_node(record.path, Perm.READ, conn, session)
        if record.watch:
            self.watches.add("child", record.path, conn)
        body = jute.encode_strings(list(node.children))
        if op == OpCode.GET_CHILDREN2:
            body += jute.encode_stat(node.stat())
        return body

    def _get_acl(self, conn: Connection, session: Session, op: int, record: Record) -> bytes:
        """READ or ADMIN may read the ACL; without ADMIN the digest entries' hashes read
        "x" (ZooKeeper's getACL: a hash could be attacked offline)."""
        assert isinstance(record, PathRequest)
        node = self._read_node(record.path, Perm.READ | Perm.ADMIN, conn, session)
        acl = node.acl
        try:
            check_acl(acl, Perm.ADMIN, self._identities(conn, session))
        except KeeperError:
            acl = tuple(
                Acl(a.perms, a.scheme, a.id.split(":", 1)[0] + ":x") if a.scheme == "digest"
                else a for a in acl
            )
        return jute.encode_acls(acl) + jute.encode_stat(node.stat())

    def _sync(self, conn: Connection, session: Session, op: int, record: Record) -> bytes:
        assert isinstance(record, PathRequest)
        validate_path(record.path)
        return jute.encode_ustring(record.path)

    def _get_ephemerals(self, conn: Connection, session: Session, op: int,
                        record: Record) -> bytes:
        assert isinstance(record, PathRequest)
        return jute.encode_strings(self.tree.ephemerals_of(session.session_id, record.path))

    def _all_children_number(self, conn: Connection, session: Session, op: int,
                             record: Record) -> bytes:
        assert isinstance(record, PathRequest)
        self._read_node(record.path, Perm.READ, conn, session)
        return jute.encode_int(self.tree.count_descendants(record.path))

    def _multi_read(self, conn: Connection, session: Session, op: int, record: Record) -> bytes:
        assert isinstance(record, MultiRequest)
        parts = []
        for sub_op, sub in record.ops:
            try:
                body = (self._get_data if sub_op == OpCode.GET_DATA
                        else self._get_children)(conn, session, sub_op, sub)
                parts.append(jute.encode_multi_header(sub_op, False, 0) + body)
            except KeeperError as exc:
                parts.append(jute.encode_multi_header(-1, False, exc.code)
                             + jute.encode_int(exc.code))
        parts.append(jute.encode_multi_header(-1, True, -1))
        return b"".join(parts)

    # ---- auth and watches

    def _auth(self, conn: Connection, session: Session, op: int, record: Record) -> bytes:
        assert isinstance(record, AuthRequest)
        if record.scheme == "digest":
            try:
                credential = record.auth.decode("utf-8")
            except UnicodeDecodeError:
                raise KeeperError(E.AUTH_FAILED) from None
            identity: Identity = ("digest", digest_id(credential))
        elif record.scheme == "ip":
            identity = ("ip", conn.peer.rsplit(":", 1)[0])
        else:
            log.warning("auth failed: peer=%s scheme=%r", conn.peer, record.scheme)
            raise KeeperError(E.AUTH_FAILED)
        if identity not in session.identities:
            session.identities.append(identity)
        return b""

    def _who_am_i(self, conn: Connection, session: Session, op: int, record: Record) -> bytes:
        ids = self._identities(conn, session)
        return jute.encode_int(len(ids)) + b"".join(
            jute.encode_ustring(scheme) + jute.encode_ustring(ident) for scheme, ident in ids)

    def _set_watches(self, conn: Connection, session: Session, op: int,
                     record: Record) -> bytes:
        assert isinstance(record, SetWatchesRequest)
        nodes = self.tree.nodes
        zxid = self.tree.zxid
        relative = record.relative_zxid
        pending: list[tuple[EventType, str]] = []
        for path in record.data:
            node = nodes.get(path)
            if node is None:
                pending.append((EventType.NODE_DELETED, path))
            elif node.mzxid > relative:
                pending.append((EventType.NODE_DATA_CHANGED, path))
            else:
                self.watches.add("data", path, conn)
        for path in record.exist:
            if path in nodes:
                pending.append((EventType.NODE_CREATED, path))
            else:
                self.watches.add("data", path, conn)
        for path in record.child:
            node = nodes.get(path)
            if node is None:
                pending.append((EventType.NODE_DELETED, path))
            elif node.pzxid > relative:
                pending.append((EventType.NODE_CHILDREN_CHANGED, path))
            else:
                self.watches.add("child", path, conn)
        for path in record.persistent:
            self.watches.add("persistent", path, conn)
        for path in record.persistent_recursive:
            self.watches.add("recursive", path, conn)
        for event_type, path in pending:
            conn.send(jute.frame(
                jute.encode_reply_header(jute.NOTIFICATION_XID, zxid, 0)
                + jute.encode_watcher_event(event_type, KeeperState.SYNC_CONNECTED, path)), zxid)
        return b""

    def _add_watch(self, conn: Connection, session: Session, op: int, record: Record) -> bytes:
        assert isinstance(record, AddWatchReq)
        validate_path(record.path)
        if record.mode == AddWatchMode.PERSISTENT:
            self.watches.add("persistent", record.path, conn)
        elif record.mode == AddWatchMode.PERSISTENT_RECURSIVE:
            self.watches.add("recursive", record.path, conn)
        else:
            raise KeeperError(E.BAD_ARGUMENTS, f"bad addWatch mode: mode={record.mode}")
        return b""

    def _remove_watches(self, conn: Connection, session: Session, op: int,
                        record: Record) -> bytes:
        assert isinstance(record, RemoveWatchesRequest)
        validate_path(record.path)
        if not self.watches.remove(record.path, conn, record.type,
                                   apply=op == OpCode.REMOVE_WATCHES):
            raise KeeperError(E.NO_WATCHER)
        return b""

    def _reconfig(self, conn: Connection, session: Session, op: int, record: Record) -> bytes:
        raise KeeperError(E.RECONFIG_DISABLED)

    _handlers: ClassVar[dict[int, Handler]] = {
        OpCode.CREATE: _write_one,
        OpCode.CREATE2: _write_one,
        OpCode.CREATE_CONTAINER: _write_one,
        OpCode.CREATE_TTL: _write_one,
        OpCode.DELETE: _write_one,
        OpCode.SET_DATA: _write_one,
        OpCode.CHECK: _write_one,
        OpCode.SET_ACL: _set_acl,
        OpCode.MULTI: _multi,
        OpCode.CLOSE_SESSION: _close,
        OpCode.EXISTS: _exists,
        OpCode.GET_DATA: _get_data,
        OpCode.GET_CHILDREN: _get_children,
        OpCode.GET_CHILDREN2: _get_children,
        OpCode.GET_ACL: _get_acl,
        OpCode.SYNC: _sync,
        OpCode.GET_EPHEMERALS: _get_ephemerals,
        OpCode.GET_ALL_CHILDREN_NUMBER: _all_children_number,
        OpCode.MULTI_READ: _multi_read,
        OpCode.AUTH: _auth,
        OpCode.WHO_AM_I: _who_am_i,
        OpCode.SET_WATCHES: _set_watches,
        OpCode.SET_WATCHES2: _set_watches,
        OpCode.ADD_WATCH: _add_watch,
        OpCode.CHECK_WATCHES: _remove_watches,
        OpCode.REMOVE_WATCHES: _remove_watches,
        OpCode.RECONFIG: _reconfig,
    }

    # -- four-letter words ---------------------------------------------------------------

    def four_letter_word(self, word: str) -> str:
        count, total, low, high = self._latency
        avg = total / count if count else 0.0
        nodes = len(self.tree.nodes)
        if word == "ruok":
            return "imok"
        if word == "isro":
            return "rw"
        if word in ("srvr", "stat"):
            return (f"Zookeeper version: {SERVER_VERSION}, built on engine\n"
                    f"Latency min/avg/max: {low}/{avg:.4f}/{high}\n"
                    f"Received: {self.packets_received}\nSent: {self.packets_sent}\n"
                    f"Connections: {len(self.connections)}\nOutstanding: 0\n"
                    f"Zxid: {self.tree.zxid:#x}\nMode: standalone\nNode count: {nodes}\n")
        if word == "envi":
            return f"Environment:\nzookeeper.version={SERVER_VERSION}, built on engine\n"
        if word == "conf":
            return (f"clientPort=0\ndataDir={self.data_dir}\n"
                    f"tickTime={self.limits.tick_ms}\n"
                    f"minSessionTimeout={self.limits.min_timeout_ms}\n"
                    f"maxSessionTimeout={self.limits.max_timeout_ms}\n")
        data_size = sum(len(p) + len(n.data or b"") for p, n in self.tree.nodes.items())
        lines = [
            ("zk_version", SERVER_VERSION),
            ("zk_server_state", "standalone"),
            ("zk_avg_latency", f"{avg:.4f}"),
            ("zk_max_latency", high),
            ("zk_min_latency", low),
            ("zk_packets_received", self.packets_received),
            ("zk_packets_sent", self.packets_sent),
            ("zk_num_alive_connections", len(self.connections)),
            ("zk_outstanding_requests", 0),
            ("zk_znode_count", nodes),
            ("zk_watch_count", self.watches.count()),
            ("zk_ephemerals_count", sum(len(v) for v in self.tree.ephemerals.values())),
            ("zk_approximate_data_size", data_size),
            ("zk_global_sessions", len(self.sessions.sessions)),
            ("zk_last_zxid", f"{self.tree.zxid:#x}"),
            ("zk_durable_zxid", f"{self.log.durable_zxid:#x}"),
        ]
        for op, stats in sorted(self.requests_by_op.items()):
            name = OpCode(op).name.lower() if op in OpCode._value2member_map_ else str(op)
            lines.append((f"engine_request_count_{name}", stats.count))
            lines.append((f"engine_request_seconds_{name}", f"{stats.seconds:.6f}"))
            below = 0
            for bound, n in zip(LATENCY_BUCKETS_S, stats.buckets, strict=False):
                below += n
                lines.append((f"engine_request_bucket_{name}_{bound}", below))
        return "".join(f"{key}\t{value}\n" for key, value in lines)


class Server:
    """A running coordinator: the state machine plus its listening socket and ticker.

    Use ``await Server.start(...)`` then ``await server.stop()``; or :func:`serve`.
    """

    def __init__(self, coordinator: Coordinator, server: asyncio.base_events.Server,
                 port: int) -> None:
        self.coordinator = coordinator
        self.port = port
        self._server = server
        self._ticker = asyncio.get_running_loop().create_task(self._tick_loop())
        self.fatal: asyncio.Future[BaseException] = asyncio.get_running_loop().create_future()

    @classmethod
    async def start(cls, data_dir: str, host: str = "127.0.0.1", port: int = 0,
                    limits: SessionLimits | None = None, snapshot_every: int = 10000,
                    port_fallback: bool = False) -> Server:
        """Listen on ``host:port``; with ``port_fallback``, on a free port when ``port`` is
        taken (the daemon keeps its coordinator's port across restarts where it can)."""
        holder: list[Server] = []

        def fatal(exc: BaseException) -> None:
            if holder and not holder[0].fatal.done():
                holder[0].fatal.set_result(exc)

        coordinator = Coordinator(data_dir, limits, snapshot_every, on_fatal=fatal)
        loop = asyncio.get_running_loop()
        try:
            tcp = await loop.create_server(lambda: Connection(coordinator), host, port,
                                           reuse_address=True, backlog=1024)
        except OSError as exc:
            if not (port_fallback and port and exc.errno == errno.EADDRINUSE):
                raise
            log.warning("port %d is taken: listening on a free one", port)
            tcp = await loop.create_server(lambda: Connection(coordinator), host, 0,
                                           reuse_address=True, backlog=1024)
        actual = tcp.sockets[0].getsockname()[1]
        server = cls(coordinator, tcp, actual)
        holder.append(server)
        limits = coordinator.limits
        log.info("listening: host=%s port=%d data_dir=%s tick_ms=%d "
                 "min_session_timeout_ms=%d max_session_timeout_ms=%d", host, actual, data_dir,
                 limits.tick_ms, limits.min_timeout_ms, limits.max_timeout_ms)
        return server

    async def _tick_loop(self) -> None:
        interval = self.coordinator.limits.tick_ms / 1000.0
        while True:
            await asyncio.sleep(interval)
            try:
                self.coordinator.tick()
            except Exception:
                log.exception("tick failed")

    async def stop(self) -> None:
        """Stop accepting, close every connection, flush the log, release the data dir."""
        self._ticker.cancel()
        self._server.close()
        for conn in list(self.coordinator.connections):
            if conn.transport is not None:
                conn.transport.close()
        await self.coordinator.log.close()
        await self._server.wait_closed()
        self.coordinator.lock.release()
        log.info("stopped: zxid=%#x", self.coordinator.tree.zxid)


def write_port_file(path: str, port: int) -> None:
    """Write the port atomically (tmp + rename), mode 0600, so a watcher sees all or nothing."""
    write_file_atomically(path, f"{port}\n".encode("ascii"))


async def serve(data_dir: str, host: str = "127.0.0.1", port: int = 0,
                port_file: str | None = None, limits: SessionLimits | None = None,
                snapshot_every: int = 10000, stop: asyncio.Event | None = None,
                port_fallback: bool = False) -> int:
    """Run a coordinator until ``stop`` is set or SIGTERM/SIGINT; return an exit code."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)
    server = await Server.start(data_dir, host, port, limits, snapshot_every, port_fallback)
    if port_file:
        write_port_file(port_file, server.port)
    stopper: asyncio.Future[Any] = loop.create_task(stop.wait())
    fatal: asyncio.Future[Any] = server.fatal
    done, _ = await asyncio.wait({stopper, fatal}, return_when=asyncio.FIRST_COMPLETED)
    stopper.cancel()
    code = 1 if fatal in done else 0
    await server.stop()
    return code
