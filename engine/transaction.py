"""Transactions: the transaction state in the coordinator, and transaction markers.

Kafka keeps a transactional id's state in its ``__transaction_state`` topic, run by a
transaction coordinator broker. Here producers append to the partition rings
themselves, so the state lives in one znode per transactional id and every change
to it is a compare-and-set on the znode's version::

    /latest_producer_id_block      {"version": 1, "block_start": N, "block_end": N}
    /transactions/<transactional.id>
        {"version": 1, "producer_id": P, "epoch": E, "state": "Ongoing",
         "partitions": [["orders", 0], ...], "started_ms": T, "timeout_ms": 60000,
         "last_abort": null | {"epoch": E, "reason": "timeout" | "fenced"},
         "groups": ["g", ...], "offsets": [["g", "orders", 0, 42], ...]}

``groups`` and ``offsets`` are a Kafka client's (engine.kafka.transactions): the
groups of its AddOffsetsToTxn and the offsets of its TxnOffsetCommit, held here until
the transaction ends, then committed in the decision's multi-op or dropped.

States, as Kafka's: ``Empty`` -> ``Ongoing`` (the first partition added) ->
``PrepareCommit`` | ``PrepareAbort`` (the decision) -> ``Empty`` (markers written).

- The decision to commit is the CAS to PrepareCommit, made in one coordinator
  multi-op with the consumer offsets of ``send_offsets_to_transaction``: the
  offsets are committed exactly when the records are.
- Then one marker (a control batch, attributes 0x30, whose one record's key is
  int16 version 0 + int16 type, 0 ABORT / 1 COMMIT) is appended to every partition
  of the transaction and waited for until the ISR holds it (acks="all"); only
  then is the state Empty again. read_committed consumers deliver a transaction's
  records when its COMMIT marker arrives and drop them at its ABORT marker
  (engine.txn_filter).
- Fencing: a producer that initialises a transactional id bumps its epoch (CAS)
  before anything else, which makes every later CAS of an older instance fail
  (ProducerFencedError); it then raises the epoch in the fencing table of every
  partition of the unfinished transaction (engine_ring_fence, ring.h), so that
  the older instance's appends no longer land, and finishes that transaction:
  rolls a PrepareCommit forward, aborts anything else.
- A transaction left Ongoing for longer than its timeout (its producer died and
  did not come back) is aborted the same way by the controller
  (:func:`abort_expired`), so that read_committed consumers are not held forever.
"""

from __future__ import annotations

import json
import logging
import struct
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from kazoo.client import KazooClient
from kazoo.exceptions import BadVersionError, NodeExistsError, NoNodeError

from engine.cluster import ClusterView
from engine.errors import (
    ConfigError,
    EngineTimeoutError,
    InvalidTxnStateError,
    NotLeaderError,
    ProducerFencedError,
    TransactionAbortedError,
    UnknownTopicError,
)
from engine.metadata import GUARD
from engine.offset_store import ensure_offset_nodes, offset_path
from engine.record import TopicPartition
from engine.ring import SEALED, producer_fields
from engine.txn_filter import ABORT, COMMIT, CONTROL, MARKER_KEY, TRANSACTIONAL

log = logging.getLogger("engine.transaction")

TRANSACTIONS = "/transactions"
PRODUCER_ID_BLOCK = "/latest_producer_id_block"
MAX_EPOCH = 32766  # int16; at the limit a transactional id gets a new producer id
_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")

EMPTY, ONGOING, PREPARE_COMMIT, PREPARE_ABORT = "Empty", "Ongoing", "PrepareCommit", "PrepareAbort"


def validate_transactional_id(tid: object) -> str:
    if not isinstance(tid, str) or not tid or len(tid) > 249 or not set(tid) <= _ID_CHARS:
        raise ConfigError(
            f"transactional_id must be 1-249 characters of [a-zA-Z0-9._-]: transactional_id={tid!r}"
        )
    return tid


def txn_path(tid: str) -> str:
    return f"{TRANSACTIONS}/{tid}"


def marker_key(kind: int) -> bytes:
    """A control record's key: version 0, then the marker type (0 ABORT, 1 COMMIT)."""
    return MARKER_KEY.pack(0, kind)


MARKER_VALUE = struct.pack(">hi", 0, 0)  # version 0, coordinator epoch 0


@dataclass(frozen=True)
class TxnState:
    """One transactional id's state as stored in its znode."""

    producer_id: int
    epoch: int
    state: str = EMPTY
    partitions: tuple[TopicPartition, ...] = ()
    started_ms: int = 0
    timeout_ms: int = 60_000
    last_abort: dict[str, Any] | None = field(default=None, compare=False)
    #: A Kafka client's groups and pending offsets (group, topic, partition, offset).
    groups: tuple[str, ...] = ()
    offsets: tuple[tuple[str, str, int, int], ...] = ()

    def ended(self) -> TxnState:
        """This state once its transaction is over: Empty, nothing pending."""
        return replace(self, state=EMPTY, partitions=(), started_ms=0, groups=(), offsets=())

    def encode(self) -> bytes:
        return json.dumps(
            {
                "version": 1,
                "producer_id": self.producer_id,
                "epoch": self.epoch,
                "state": self.state,
                "partitions": [[tp.topic, tp.partition] for tp in self.partitions],
                "started_ms": self.started_ms,
                "timeout_ms": self.timeout_ms,
                "last_abort": self.last_abort,
                "groups": list(self.groups),
                "offsets": [list(o) for o in self.offsets],
            },
            separators=(",", ":"),
        ).encode()

    @classmethod
    def decode(cls, data: bytes) -> TxnState:
        obj = json.loads(data)
        return cls(
            producer_id=int(obj["producer_id"]),
            epoch=int(obj["epoch"]),
            state=str(obj["state"]),
            partitions=tuple(TopicPartition(t, int(p)) for t, p in obj["partitions"]),
            started_ms=int(obj["started_ms"]),
            timeout_ms=int(obj["timeout_ms"]),
            last_abort=obj.get("last_abort"),
            groups=tuple(str(g) for g in obj.get("groups", ())),
            offsets=tuple(
                (str(g), str(t), int(p), int(o)) for g, t, p, o in obj.get("offsets", ())
            ),
        )


def load(zk: KazooClient, tid: str) -> tuple[TxnState, int] | None:
    """The state of ``tid`` and its znode version; None if it was never initialised."""
    try:
        data, stat = zk.get(txn_path(tid))
    except NoNodeError:
        return None
    return TxnState.decode(data), stat.version


def list_transactional_ids(zk: KazooClient) -> list[str]:
    """The children of /transactions but its guard (engine/acl.py)."""
    try:
        return sorted(t for t in zk.get_children(TRANSACTIONS) if t != GUARD)
    except NoNodeError:
        return []


def current_epochs(zk: KazooClient) -> list[tuple[int, int]]:
    """What a new leader ring fences: (producer id, epoch) of every transactional id
    that was initialised more than once (only those can have a zombie), the most
    recently changed first (a ring's table holds 64)."""
    found = []
    for tid in list_transactional_ids(zk):
        try:
            data, stat = zk.get(txn_path(tid))
        except NoNodeError:
            continue
        state = TxnState.decode(data)
        if state.epoch > 0:
            found.append((stat.mtime, state.producer_id, state.epoch))
    return [(pid, epoch) for _, pid, epoch in sorted(found, reverse=True)]


def allocate_producer_id(zk: KazooClient) -> int:
    """A producer id no other producer of this cluster ever had (CAS on a counter)."""
    zk.ensure_path(PRODUCER_ID_BLOCK)
    while True:
        data, stat = zk.get(PRODUCER_ID_BLOCK)
        last = json.loads(data)["block_end"] if data else -1
        new = last + 1
        block = {"version": 1, "block_start": new, "block_end": new}
        try:
            zk.set(PRODUCER_ID_BLOCK, json.dumps(block).encode(), version=stat.version)
            return int(new)
        except BadVersionError:
            continue


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class Transactions:
    """The coordinator side of one transactional producer: every state change is a CAS
    that fails with ProducerFencedError once a newer instance (or the timeout abort)
    moved the state on."""

    def __init__(self, cluster: ClusterView, tid: str, timeout_ms: int) -> None:
        self.cluster = cluster
        self.tid = tid
        self.timeout_ms = timeout_ms
        self.state: TxnState | None = None
        self.version = -1

    # -- state changes -----------------------------------------------------

    def _write(self, new: TxnState, extra_ops: Iterable[tuple[str, bytes]] = ()) -> None:
        """CAS the znode from our version to ``new`` (with extra set_data ops, atomically)."""
        assert self.state is not None
        zk = self.cluster.zk
        ops = list(extra_ops)
        try:
            if ops:
                tx = zk.transaction()
                tx.set_data(txn_path(self.tid), new.encode(), version=self.version)
                for path, data in ops:
                    tx.set_data(path, data)
                for result in tx.commit():
                    if isinstance(result, Exception):
                        raise result
                version = self.version + 1
            else:
                version = zk.set(txn_path(self.tid), new.encode(), version=self.version).version
        except (BadVersionError, NoNodeError):
            self._raise_moved_on()
        self.state, self.version = new, version

    def _raise_moved_on(self) -> None:
        """Our CAS failed: say why (a newer instance, or the transaction timed out)."""
        assert self.state is not None
        now = load(self.cluster.zk, self.tid)
        if now is not None:
            current, _ = now
            abort = current.last_abort or {}
            if (
                current.producer_id == self.state.producer_id
                and abort.get("epoch") == self.state.epoch
                and abort.get("reason") == "timeout"
            ):
                raise TransactionAbortedError(
                    f"transaction of transactional_id={self.tid!r} was aborted after "
                    f"transaction_timeout_ms={self.state.timeout_ms}: call abort_transaction()"
                )
        raise ProducerFencedError(
            f"a newer producer initialised transactional_id={self.tid!r}: this one "
            f"(producer_id={self.state.producer_id} epoch={self.state.epoch}) is fenced"
        )

    def init(self) -> TxnState:
        """Kafka's initTransactions: take the id, fence older instances, finish their work."""
        zk = self.cluster.zk
        zk.ensure_path(TRANSACTIONS)
        while True:
            loaded = load(zk, self.tid)
            if loaded is None:
                fresh = TxnState(allocate_producer_id(zk), 0, timeout_ms=self.timeout_ms)
                try:
                    zk.create(txn_path(self.tid), fresh.encode())
                except NodeExistsError:
                    continue
                self.state, self.version = fresh, 0
                return fresh
            old, version = loaded
            pid, epoch = next_identity(zk, old)
            bumped = replace(
                old,
                producer_id=pid,
                epoch=epoch,
                timeout_ms=self.timeout_ms,
                last_abort={"epoch": old.epoch, "reason": "fenced"}
                if old.state != EMPTY
                else old.last_abort,
            )
            try:
                version = zk.set(txn_path(self.tid), bumped.encode(), version=version).version
            except BadVersionError:
                continue
            self.state, self.version = bumped, version
            finish(self.cluster, old)
            self._write(bumped.ended())
            return self.state

    def begin(self) -> None:
        """Nothing is written until the first partition joins (Kafka's habit)."""

    def add_partitions(self, tps: Iterable[TopicPartition]) -> None:
        """Record partitions in the transaction before the first append to each."""
        assert self.state is not None
        new = tuple(tp for tp in tps if tp not in self.state.partitions)
        if not new:
            return
        started = self.state.started_ms if self.state.state == ONGOING else _now_ms()
        self._write(
            replace(
                self.state,
                state=ONGOING,
                partitions=self.state.partitions + new,
                started_ms=started,
            )
        )
        for tp in new:  # older epochs of this id write here no more
            self.cluster.topic(tp.topic).rings[tp.partition].fence(
                self.state.producer_id, self.state.epoch
            )

    def commit(self, group_id: str | None, offsets: dict[TopicPartition, int]) -> None:
        """Decide (with the offsets, atomically), then write the markers, then Empty."""
        assert self.state is not None
        if self.state.state == PREPARE_COMMIT:
            self._complete(COMMIT)  # a retry after the markers timed out: decided already
            return
        ops: list[tuple[str, bytes]] = []
        if group_id is not None and offsets:
            ensure_offset_nodes(self.cluster.zk, group_id, offsets, set())
            ops = [(offset_path(group_id, tp), str(o).encode()) for tp, o in offsets.items()]
        if self.state.state == EMPTY and not ops:
            return  # nothing was sent: nothing to commit
        if self.state.state == EMPTY:
            # Offsets alone: still decided atomically with (an empty) transaction.
            self._write(replace(self.state, state=EMPTY), ops)
            return
        self._write(replace(self.state, state=PREPARE_COMMIT), ops)
        self._complete(COMMIT)

    def abort(self) -> None:
        assert self.state is not None
        if self.state.state == EMPTY:
            return
        if self.state.state == PREPARE_COMMIT:
            raise InvalidTxnStateError(
                f"the commit of transactional_id={self.tid!r} was decided before its markers "
                "timed out: call commit_transaction() again to finish it"
            )
        self._write(replace(self.state, state=PREPARE_ABORT))
        self._complete(ABORT)

    def _complete(self, kind: int) -> None:
        assert self.state is not None
        write_markers(
            self.cluster,
            self.state.producer_id,
            self.state.epoch,
            self.state.partitions,
            kind,
            self.state.timeout_ms / 1000,
        )
        self._write(self.state.ended())

    def check_current(self) -> None:
        """Raise if the state moved on without us (fenced, or aborted by the timeout)."""
        assert self.state is not None
        loaded = load(self.cluster.zk, self.tid)
        if loaded is None or loaded[1] != self.version:
            self._raise_moved_on()


def next_identity(zk: KazooClient, old: TxnState) -> tuple[int, int]:
    """The (producer id, epoch) after ``old``'s: the epoch bumped, or at the int16 limit
    a new producer id at epoch 0."""
    if old.epoch + 1 > MAX_EPOCH:
        return allocate_producer_id(zk), 0
    return old.producer_id, old.epoch + 1


def finish(cluster: ClusterView, old: TxnState) -> None:
    """Complete ``old``'s unfinished transaction after its epoch was bumped: fence
    old's epoch on its partitions, then commit (PrepareCommit) or abort."""
    if old.state == EMPTY or not old.partitions:
        return
    for tp in old.partitions:
        ring = _partition_ring(cluster, tp, refresh=True)
        if ring is not None:
            ring.fence(old.producer_id, old.epoch + 1)
    kind = COMMIT if old.state == PREPARE_COMMIT else ABORT
    # Markers carry the old producer id (its batches are the ones decided) at a newer epoch.
    write_markers(cluster, old.producer_id, old.epoch + 1, old.partitions, kind, 60.0)


def _partition_ring(cluster: ClusterView, tp: TopicPartition, refresh: bool = False) -> Any:
    """The leader ring of tp; None when its topic was deleted (never auto-created here)
    or no longer has that partition. Without refresh a topic this client has mapped is
    used as mapped (a deleted topic's ring is sealed: the append says so, then refresh)."""
    cached = cluster.topics.get(tp.topic)
    if cached is not None and not refresh:
        return cached.rings.get(tp.partition)
    if not cluster.exists(tp.topic):
        cluster.forget(tp.topic)  # deleted: its sealed ring is no use to anyone
        return None
    try:
        view = cluster.refresh(tp.topic) if refresh else cluster.topic(tp.topic)
    except UnknownTopicError:
        return None
    return view.rings.get(tp.partition)


def write_markers(
    cluster: ClusterView,
    producer_id: int,
    epoch: int,
    partitions: Iterable[TopicPartition],
    kind: int,
    timeout_s: float,
) -> None:
    """Append a COMMIT or ABORT marker to each partition and wait until its ISR holds
    it; after a leader change, write it again to the new leader (a repeated marker
    decides nothing more)."""
    fields = producer_fields(
        producer_id=producer_id,
        producer_epoch=epoch,
        attributes=TRANSACTIONAL | CONTROL,
    )
    deadline = time.monotonic() + timeout_s
    key = marker_key(kind)
    for tp in partitions:
        while True:
            if time.monotonic() > deadline:
                raise EngineTimeoutError(
                    f"transaction marker not committed within {timeout_s:.0f} s: "
                    f"topic={tp.topic!r} partition={tp.partition}"
                )
            try:
                ring = _partition_ring(cluster, tp)
                if ring is None:
                    break  # the topic was deleted meanwhile: nothing left to decide
                offset = ring.append(fields, MARKER_VALUE, key=key)
                code = ring.wait_high_watermark(offset, max(0.0, deadline - time.monotonic()))
            except NotLeaderError:
                code = SEALED
            if code == SEALED:
                _partition_ring(cluster, tp, refresh=True)  # the new leader's, or None
                continue
            if code == 0:
                break


def abort_expired(cluster: ClusterView, now_ms: int | None = None) -> list[str]:
    """Abort every transaction Ongoing for longer than its timeout (the controller's
    duty); returns the transactional ids aborted."""
    zk = cluster.zk
    now_ms = _now_ms() if now_ms is None else now_ms
    aborted: list[str] = []
    for tid in list_transactional_ids(zk):
        loaded = load(zk, tid)
        if loaded is None:
            continue
        old, version = loaded
        if old.state != ONGOING or now_ms - old.started_ms <= old.timeout_ms:
            continue
        pid, epoch = next_identity(zk, old)
        bumped = replace(
            old,
            producer_id=pid,
            epoch=epoch,
            state=PREPARE_ABORT,
            last_abort={"epoch": old.epoch, "reason": "timeout"},
        )
        try:
            version = zk.set(txn_path(tid), bumped.encode(), version=version).version
        except BadVersionError:
            continue  # it moved on by itself
        finish(cluster, replace(old, state=PREPARE_ABORT))
        done = bumped.ended()
        try:
            zk.set(txn_path(tid), done.encode(), version=version)
        except BadVersionError:
            continue
        aborted.append(tid)
    return aborted


class TimeoutAborter:
    """The controller's duty as a thread: once a second, while ``is_controller()``,
    abort the transactions left open past their timeout (:func:`abort_expired`)."""

    def __init__(self, data_dir: Any, is_controller: Any, every_s: float = 1.0) -> None:
        self.data_dir = data_dir
        self.is_controller = is_controller
        self.every_s = every_s
        self._stop = threading.Event()
        self._cluster: ClusterView | None = None
        self._thread = threading.Thread(target=self._run, name="txn-timeouts", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        if self._cluster is not None:
            self._cluster.close()

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            if not self.is_controller():
                continue
            try:
                if self._cluster is None:
                    self._cluster = ClusterView(self.data_dir)
                for tid in abort_expired(self._cluster):
                    log.warning("aborted transaction of %r: transaction_timeout_ms passed", tid)
            except Exception:  # keep watching; try again in a second
                log.exception("aborting expired transactions failed")
