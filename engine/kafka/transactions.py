"""Transactions through Kafka's protocol: the transaction coordinator's APIs and the
checks of transactional Produce.

Kafka clients run the same transactions as the engine's own producers (engine.transaction):
one znode per transactional id, every change a compare-and-set on its version, the
COMMIT/ABORT markers written to the partitions by whoever decides, older epochs fenced
in the rings. So any broker may serve any transactional id: FindCoordinator names one,
but a request is accepted wherever it comes (the znode's version orders them).

- InitProducerId with a transactional id: engine.transaction.Transactions.init (the
  epoch bumped by CAS, the unfinished transaction of an older instance fenced in its
  rings and rolled forward or aborted). A request with the producer id and epoch of
  KIP-360 (a producer going on after an error) must name the current ones, or the epoch
  the transaction timeout aborted; any other is PRODUCER_FENCED.
- AddPartitionsToTxn / AddOffsetsToTxn: the partitions (fenced below this epoch in their
  rings, as the engine's add_partitions does) or the group join the transaction, which
  becomes Ongoing.
- TxnOffsetCommit: the offsets wait in the znode (``offsets``) until EndTxn.
- EndTxn: commit is the CAS to PrepareCommit in one coordinator multi-op with the
  pending offsets written to engine.offset_store's ``/consumers/<group>/offsets`` (the
  same nodes the engine's consumers commit to), so they are committed exactly when the
  records are; abort is the CAS to PrepareAbort (the offsets dropped). Then the markers
  (acks=all), then Empty. A transaction found in PrepareCommit/PrepareAbort (a broker
  died between the decision and the markers) is completed by the client's retry of
  the same EndTxn, or by the next InitProducerId.
- Produce of a transactional batch (:meth:`TransactionCoordinator.verify`): its producer
  id and epoch must be the transactional id's current ones and its partition added to
  the Ongoing transaction (Kafka's KIP-890 verification): one znode read per Produce
  request that carries transactional batches. A zombie that passed the check before a
  newer instance's fence is still stopped by the ring's fencing table at the append.

Errors are Kafka's: PRODUCER_FENCED (INVALID_PRODUCER_EPOCH for request versions before
it existed, and for Produce and TxnOffsetCommit), INVALID_PRODUCER_ID_MAPPING,
CONCURRENT_TRANSACTIONS (retriable: another request moved the state on, or markers are
still being written), INVALID_TXN_STATE.

The consumer group's generation is not checked by TxnOffsetCommit: no Kafka group
coordinator runs here to know it. A group id must name a znode (engine.offset_store:
[a-zA-Z0-9._-]); another is INVALID_GROUP_ID, as a transactional id of other characters
is INVALID_REQUEST (engine.transaction.validate_transactional_id).

Threads: any connection thread; each passes its own ClusterView (the rings it maps for
markers and fences), which shares the broker's coordinator session.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

from kazoo.client import KazooClient
from kazoo.exceptions import BadVersionError, NoNodeError

from engine import metadata as md
from engine import transaction as txn
from engine.cluster import ClusterView
from engine.errors import ConfigError, EngineError, UnknownTopicError
from engine.kafka.error_codes import ErrorCode
from engine.offset_store import ensure_offset_nodes, offset_path, validate_group_id
from engine.record import TopicPartition
from engine.txn_filter import ABORT, COMMIT

log = logging.getLogger("engine.kafka")

#: Kafka's transaction.max.timeout.ms default.
MAX_TRANSACTION_TIMEOUT_MS = 900_000
#: How often a request tries its CAS again when another one moved the state meanwhile.
CAS_ATTEMPTS = 20
#: How long EndTxn waits for its markers before answering CONCURRENT_TRANSACTIONS (the
#: client's retry completes them).
MARKER_TIMEOUT_S = 30.0

_Loaded = tuple[txn.TxnState, int]


def fenced(code: ErrorCode, before: bool) -> ErrorCode:
    """PRODUCER_FENCED as a client of a version ``before`` it existed knows it."""
    if before and code is ErrorCode.PRODUCER_FENCED:
        return ErrorCode.INVALID_PRODUCER_EPOCH
    return code


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class TransactionCoordinator:
    """The transaction APIs over the coordinator's tree (module docstring)."""

    def __init__(self, zk: KazooClient) -> None:
        self.zk = zk

    # -- state -----------------------------------------------------------------------

    def _current(self, tid: str, producer_id: int, epoch: int) -> _Loaded | ErrorCode:
        """The state of ``tid`` if (producer_id, epoch) are its current ones."""
        loaded = txn.load(self.zk, tid)
        if loaded is None or loaded[0].producer_id != producer_id:
            return ErrorCode.INVALID_PRODUCER_ID_MAPPING
        if loaded[0].epoch != epoch:
            return ErrorCode.PRODUCER_FENCED
        return loaded

    def _cas(
        self, tid: str, new: txn.TxnState, version: int, ops: Iterable[tuple[str, bytes]] = ()
    ) -> int | None:
        """Write ``new`` if the znode is still at ``version`` (with ``ops``, atomically):
        the new version, or None when another request moved it on."""
        extra = list(ops)
        try:
            if not extra:
                return int(self.zk.set(txn.txn_path(tid), new.encode(), version=version).version)
            tx = self.zk.transaction()
            tx.set_data(txn.txn_path(tid), new.encode(), version=version)
            for path, data in extra:
                tx.set_data(path, data)
            results = tx.commit()
        except (BadVersionError, NoNodeError):
            return None
        for result in results:
            if isinstance(result, (BadVersionError, NoNodeError)):
                return None
            if isinstance(result, Exception):
                raise result
        return version + 1

    def _exists(self, topic: str, partition: int) -> bool:
        try:
            meta = md.read_topic(self.zk, topic)
        except (UnknownTopicError, ConfigError):
            return False
        return partition in meta.assignment.replicas

    # -- InitProducerId ---------------------------------------------------------------

    def init_producer_id(
        self, view: ClusterView, version: int, request: dict[str, Any]
    ) -> dict[str, Any]:
        tid, timeout_ms = request["transactional_id"], request["transaction_timeout_ms"]
        code = self._init_refusal(
            tid, timeout_ms, request["producer_id"], request["producer_epoch"]
        )
        if code is None:
            try:
                state = txn.Transactions(view, tid, timeout_ms).init()
                return {"producer_id": state.producer_id, "producer_epoch": state.epoch}
            except EngineError as exc:  # fenced meanwhile, or markers not written yet
                log.info("InitProducerId of %r: %s", tid, exc)
                code = ErrorCode.CONCURRENT_TRANSACTIONS
        return {
            "error_code": fenced(code, version < 4),
            "producer_id": -1,
            "producer_epoch": -1,
        }

    def _init_refusal(
        self, tid: str, timeout_ms: int, producer_id: int, epoch: int
    ) -> ErrorCode | None:
        """Why InitProducerId may not go on (None: it may)."""
        try:
            txn.validate_transactional_id(tid)
        except ConfigError as exc:
            log.info("InitProducerId refused: %s", exc)
            return ErrorCode.INVALID_REQUEST
        if not 0 < timeout_ms <= MAX_TRANSACTION_TIMEOUT_MS:
            return ErrorCode.INVALID_TRANSACTION_TIMEOUT
        if producer_id < 0:
            return None
        loaded = txn.load(self.zk, tid)
        if loaded is None:
            return None
        state = loaded[0]
        abort = state.last_abort or {}
        # The epoch the transaction timeout took from this producer: it may go on.
        timed_out = abort.get("epoch") if abort.get("reason") == "timeout" else None
        if state.producer_id == producer_id and epoch in (state.epoch, timed_out):
            return None
        return ErrorCode.PRODUCER_FENCED

    # -- AddPartitionsToTxn, AddOffsetsToTxn ----------------------------------------

    def add_partitions(
        self, view: ClusterView, version: int, request: dict[str, Any]
    ) -> dict[str, Any]:
        asked = [(t["name"], p) for t in request["topics"] for p in t["partitions"]]
        unknown = {tp for tp in asked if not self._exists(*tp)}
        if unknown:
            codes = {
                tp: ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
                if tp in unknown
                else ErrorCode.OPERATION_NOT_ATTEMPTED
                for tp in asked
            }
        else:
            code = self._add(
                view,
                request["transactional_id"],
                request["producer_id"],
                request["producer_epoch"],
                [TopicPartition(t, p) for t, p in asked],
                (),
            )
            codes = dict.fromkeys(asked, fenced(code, version < 2))
        results: dict[str, list[dict[str, Any]]] = {}
        for (topic, partition), code in codes.items():
            results.setdefault(topic, []).append({"partition_index": partition, "error_code": code})
        return {"results": [{"name": t, "results": r} for t, r in results.items()]}

    def add_offsets(
        self, view: ClusterView, version: int, request: dict[str, Any]
    ) -> dict[str, Any]:
        try:
            group = validate_group_id(request["group_id"])
        except ConfigError:
            return {"error_code": ErrorCode.INVALID_GROUP_ID}
        code = self._add(
            view,
            request["transactional_id"],
            request["producer_id"],
            request["producer_epoch"],
            (),
            (group,),
        )
        return {"error_code": fenced(code, version < 2)}

    def _add(
        self,
        view: ClusterView,
        tid: str,
        producer_id: int,
        epoch: int,
        tps: Iterable[TopicPartition],
        groups: Iterable[str],
    ) -> ErrorCode:
        """Partitions and groups join the transaction, which becomes Ongoing."""
        for _ in range(CAS_ATTEMPTS):
            current = self._current(tid, producer_id, epoch)
            if isinstance(current, ErrorCode):
                return current
            state, version = current
            if state.state in (txn.PREPARE_COMMIT, txn.PREPARE_ABORT):
                return ErrorCode.CONCURRENT_TRANSACTIONS
            new_tps = tuple(dict.fromkeys(tp for tp in tps if tp not in state.partitions))
            new_groups = tuple(dict.fromkeys(g for g in groups if g not in state.groups))
            if state.state == txn.ONGOING and not new_tps and not new_groups:
                return ErrorCode.NONE
            started = state.started_ms if state.state == txn.ONGOING else _now_ms()
            joined = replace(
                state,
                state=txn.ONGOING,
                partitions=state.partitions + new_tps,
                groups=state.groups + new_groups,
                started_ms=started,
            )
            if self._cas(tid, joined, version) is None:
                continue
            for tp in new_tps:  # older epochs of this producer write here no more
                _fence(view, tp, producer_id, epoch)
            return ErrorCode.NONE
        return ErrorCode.CONCURRENT_TRANSACTIONS

    # -- TxnOffsetCommit -------------------------------------------------------------

    def txn_offset_commit(self, version: int, request: dict[str, Any]) -> dict[str, Any]:
        group = request["group_id"]
        asked = {
            (t["name"], p["partition_index"]): p["committed_offset"]
            for t in request["topics"]
            for p in t["partitions"]
        }
        codes = {
            tp: ErrorCode.NONE if self._exists(*tp) else ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
            for tp in asked
        }
        valid = {tp: o for tp, o in asked.items() if codes[tp] is ErrorCode.NONE}
        if valid:
            code = self._stage_offsets(
                request["transactional_id"],
                request["producer_id"],
                request["producer_epoch"],
                group,
                valid,
            )
            codes.update(dict.fromkeys(valid, code))
        topics: dict[str, list[dict[str, Any]]] = {}
        for (topic, partition), code in codes.items():
            topics.setdefault(topic, []).append({"partition_index": partition, "error_code": code})
        return {"topics": [{"name": t, "partitions": p} for t, p in topics.items()]}

    def _stage_offsets(
        self,
        tid: str,
        producer_id: int,
        epoch: int,
        group: str,
        offsets: dict[tuple[str, int], int],
    ) -> ErrorCode:
        """Keep the offsets in the transaction's znode until EndTxn."""
        for _ in range(CAS_ATTEMPTS):
            current = self._current(tid, producer_id, epoch)
            if isinstance(current, ErrorCode):
                return fenced(current, True)
            state, version = current
            if state.state != txn.ONGOING or group not in state.groups:
                return ErrorCode.INVALID_TXN_STATE  # AddOffsetsToTxn comes first
            staged = {(g, t, p): o for g, t, p, o in state.offsets}
            staged.update({(group, t, p): o for (t, p), o in offsets.items()})
            new = replace(state, offsets=tuple((g, t, p, o) for (g, t, p), o in staged.items()))
            if self._cas(tid, new, version) is not None:
                return ErrorCode.NONE
        return ErrorCode.CONCURRENT_TRANSACTIONS

    # -- EndTxn ---------------------------------------------------------------------

    def end_txn(self, view: ClusterView, version: int, request: dict[str, Any]) -> dict[str, Any]:
        code = self._end(
            view,
            request["transactional_id"],
            request["producer_id"],
            request["producer_epoch"],
            bool(request["committed"]),
        )
        return {"error_code": fenced(code, version < 2)}

    def _end(
        self, view: ClusterView, tid: str, producer_id: int, epoch: int, commit: bool
    ) -> ErrorCode:
        for _ in range(CAS_ATTEMPTS):
            current = self._current(tid, producer_id, epoch)
            if isinstance(current, ErrorCode):
                return current
            state, version = current
            if state.state == txn.EMPTY:
                return ErrorCode.NONE  # nothing open: a retry of an end that was done
            if state.state == txn.ONGOING:
                decided = replace(state, state=txn.PREPARE_COMMIT if commit else txn.PREPARE_ABORT)
                ops = self._offset_ops(state) if commit else []
                written = self._cas(tid, decided, version, ops)
                if written is None:
                    continue
                state, version = decided, written
            elif (state.state == txn.PREPARE_COMMIT) != commit:
                return ErrorCode.INVALID_TXN_STATE
            try:
                txn.write_markers(
                    view,
                    state.producer_id,
                    state.epoch,
                    state.partitions,
                    COMMIT if commit else ABORT,
                    min(state.timeout_ms / 1000, MARKER_TIMEOUT_S),
                )
            except EngineError as exc:
                log.warning("EndTxn of %r: markers not written yet: %s", tid, exc)
                return ErrorCode.CONCURRENT_TRANSACTIONS
            if self._cas(tid, state.ended(), version) is None:
                continue  # completed by another request meanwhile: look again
            return ErrorCode.NONE
        return ErrorCode.CONCURRENT_TRANSACTIONS

    def _offset_ops(self, state: txn.TxnState) -> list[tuple[str, bytes]]:
        """The set_data ops that commit the transaction's pending offsets."""
        by_group: dict[str, dict[TopicPartition, int]] = {}
        for group, topic, partition, offset in state.offsets:
            by_group.setdefault(group, {})[TopicPartition(topic, partition)] = offset
        ops = []
        for group, offsets in by_group.items():
            ensure_offset_nodes(self.zk, group, offsets, set())
            ops += [(offset_path(group, tp), str(o).encode()) for tp, o in offsets.items()]
        return ops

    # -- Produce ----------------------------------------------------------------------

    def verify(
        self, tid: str | None, producer_id: int, epoch: int, tps: Iterable[tuple[str, int]]
    ) -> dict[tuple[str, int], ErrorCode]:
        """Whether transactional batches of (producer_id, epoch) may go to ``tps``."""
        asked = list(tps)
        if tid is None:
            return dict.fromkeys(asked, ErrorCode.INVALID_TXN_STATE)
        current = self._current(tid, producer_id, epoch)
        if isinstance(current, ErrorCode):
            return dict.fromkeys(asked, fenced(current, True))
        state = current[0]
        if state.state in (txn.PREPARE_COMMIT, txn.PREPARE_ABORT):
            # Kafka's answer to a Produce racing its own EndTxn: retriable, no metadata refresh.
            return dict.fromkeys(asked, ErrorCode.NOT_ENOUGH_REPLICAS)
        added = set(state.partitions) if state.state == txn.ONGOING else set()
        return {
            tp: ErrorCode.NONE if TopicPartition(*tp) in added else ErrorCode.INVALID_TXN_STATE
            for tp in asked
        }


def _fence(view: ClusterView, tp: TopicPartition, producer_id: int, epoch: int) -> None:
    """Refuse appends of producer_id below ``epoch`` in tp's leader ring."""
    try:
        ring = view.topic(tp.topic).rings.get(tp.partition)
        if ring is None or ring.sealed:
            ring = view.refresh(tp.topic).rings.get(tp.partition)
        if ring is not None:
            ring.fence(producer_id, epoch)
    except EngineError as exc:  # the Produce check still refuses older epochs
        log.warning(
            "cannot fence producer %d below epoch %d in %s: %s", producer_id, epoch, tp, exc
        )
