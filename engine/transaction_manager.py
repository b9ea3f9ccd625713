"""The producer's identity, its sequence numbers, and its transactions' state machine.

As in Kafka's client, one object keeps what idempotence and transactions need:

- the producer id and epoch (allocated for an idempotent producer; taken by
  ``init_transactions`` for a transactional one, which fences older instances);
- the next sequence number of each partition: a batch takes its sequences when it is
  first appended and keeps them when it is appended again (engine.sender);
- for a transactional producer, the state below. The coordinator side of a
  transaction (its znode, the markers) is engine.transaction.

States (``TransactionState``) and the calls that move them::

    UNINITIALIZED --init_transactions--> READY --begin_transaction--> IN_TRANSACTION
    IN_TRANSACTION --commit_transaction--> COMMITTING --> READY
    IN_TRANSACTION --abort_transaction--> ABORTING --> READY
    IN_TRANSACTION --a send failed, or the timeout aborted it--> ABORTABLE_ERROR
    ABORTABLE_ERROR --abort_transaction--> READY
    any --a newer instance took the id--> FATAL_ERROR (close the producer)

Threads: the application's threads make the calls (serialised by ``lock``); the
sender thread reads the identity and takes sequences (under the same lock) and tells
of failed batches (:meth:`batch_failed`).
"""

from __future__ import annotations

import contextlib
import enum
import threading
from collections.abc import Callable, Mapping
from typing import Any

from engine import transaction as txn
from engine.cluster import ClusterView
from engine.errors import (
    ConfigError,
    InvalidTxnStateError,
    ProducerFencedError,
    TransactionAbortedError,
    TransactionError,
)
from engine.offset_store import validate_offsets
from engine.record import TopicPartition
from engine.ring import producer_fields
from engine.txn_filter import TRANSACTIONAL


class TransactionState(enum.Enum):
    """Where a transactional producer stands (see the module docstring)."""

    UNINITIALIZED = "uninitialized"
    """init_transactions() was not called yet: nothing may be sent."""
    READY = "ready"
    """No transaction is open: begin_transaction() may be called."""
    IN_TRANSACTION = "in_transaction"
    """A transaction is open: sends and send_offsets_to_transaction() join it."""
    COMMITTING = "committing"
    """commit_transaction() is waiting for the records, then deciding."""
    ABORTING = "aborting"
    """abort_transaction() is waiting for the records, then deciding."""
    ABORTABLE_ERROR = "abortable_error"
    """The open transaction cannot commit (a record failed, or it timed out): abort it."""
    FATAL_ERROR = "fatal_error"
    """A newer instance took the transactional id: this producer must close."""


class TransactionManager:
    """Identity, sequences and (transactional producers) the transaction state."""

    def __init__(
        self, cluster: ClusterView, transactional_id: str | None, timeout_ms: int, idempotent: bool
    ) -> None:
        self.lock = threading.RLock()
        self.transactional_id = transactional_id
        self.idempotent = idempotent
        self.producer_id, self.epoch = -1, -1
        self._sequences: dict[TopicPartition, int] = {}
        self._coordinator = (
            txn.Transactions(cluster, transactional_id, timeout_ms)
            if transactional_id is not None
            else None
        )
        self.state = TransactionState.UNINITIALIZED
        self._error: BaseException | None = None  # why the state is an error state
        self._partitions: set[TopicPartition] = set()
        self._offsets: dict[str, dict[TopicPartition, int]] = {}
        if idempotent and transactional_id is None:
            self._set_identity(txn.allocate_producer_id(cluster.zk), 0)
            self.state = TransactionState.READY

    @property
    def transactional(self) -> bool:
        return self._coordinator is not None

    # -- identity and sequences (the sender) ----------------------------------------

    def _set_identity(self, producer_id: int, epoch: int) -> None:
        """A new producer id or epoch: sequences start again at 0 (Kafka's rule)."""
        self.producer_id, self.epoch = producer_id, epoch
        self._sequences.clear()

    def take_sequences(self, tp: TopicPartition, count: int) -> int:
        """The first of ``count`` sequence numbers for ``tp`` (they wrap as Kafka's)."""
        with self.lock:
            first = self._sequences.get(tp, 0)
            self._sequences[tp] = (first + count) & 0x7FFFFFFF
            return first

    def fields(self, sequence: int, min_insync: int, timeout_ms: int) -> Any:
        """The producer fields of an append whose first record has ``sequence`` (-1: not
        idempotent)."""
        return producer_fields(
            producer_id=self.producer_id if self.idempotent else -1,
            producer_epoch=self.epoch if self.idempotent else -1,
            base_sequence=sequence if self.idempotent else -1,
            attributes=TRANSACTIONAL if self.transactional else 0,
            timeout_ms=timeout_ms,
            min_insync=min_insync,
        )

    def batch_failed(self, error: BaseException) -> None:
        """The sender failed a batch: an open transaction can no longer commit."""
        with self.lock:
            if isinstance(error, ProducerFencedError):
                self._fail(TransactionState.FATAL_ERROR, error)
            elif self.state in (TransactionState.IN_TRANSACTION, TransactionState.COMMITTING):
                self._fail(TransactionState.ABORTABLE_ERROR, error)

    def _fail(self, state: TransactionState, error: BaseException) -> None:
        if self.state is not TransactionState.FATAL_ERROR:
            self.state, self._error = state, error

    # -- the application's calls -------------------------------------------------

    def _require(self, call: str, *states: TransactionState) -> txn.Transactions:
        if self._coordinator is None:
            raise InvalidTxnStateError(
                f"{call}() needs a producer created with transactional_id=..."
            )
        if self.state is TransactionState.FATAL_ERROR:
            raise ProducerFencedError(
                f"transactional_id={self.transactional_id!r} was fenced by a newer "
                "producer: close this one"
            )
        if self.state not in states:
            hint = ""
            if self.state is TransactionState.UNINITIALIZED:
                hint = " (call init_transactions() first)"
            elif self.state is TransactionState.ABORTABLE_ERROR:
                hint = " (call abort_transaction())"
            elif self.state is TransactionState.READY and call in ("send", "commit_transaction"):
                hint = " (call begin_transaction() first)"
            raise InvalidTxnStateError(
                f"{call}() is not allowed in transaction state {self.state.value!r}{hint}: "
                f"transactional_id={self.transactional_id!r}"
            )
        return self._coordinator

    def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """A coordinator call; its fencing or timeout moves the state."""
        try:
            return fn(*args)
        except ProducerFencedError as exc:
            self._fail(TransactionState.FATAL_ERROR, exc)
            raise
        except TransactionAbortedError as exc:
            self._fail(TransactionState.ABORTABLE_ERROR, exc)
            raise

    def init_transactions(self) -> None:
        """Take the transactional id: fence every older producer that used it, and finish
        the transaction it left (commit one it had decided to commit, abort any other)."""
        with self.lock:
            coordinator = self._require("init_transactions", TransactionState.UNINITIALIZED)
            state = self._call(coordinator.init)
            self._set_identity(state.producer_id, state.epoch)
            self.state = TransactionState.READY

    def begin_transaction(self) -> None:
        with self.lock:
            self._require("begin_transaction", TransactionState.READY)
            self._partitions.clear()
            self._offsets.clear()
            self.state = TransactionState.IN_TRANSACTION

    def before_send(self, tp: TopicPartition) -> None:
        """A record to ``tp``: allowed, and ``tp`` joins the open transaction first (a
        coordinator write, once per partition and transaction)."""
        if self._coordinator is None:
            return
        with self.lock:
            coordinator = self._require("send", TransactionState.IN_TRANSACTION)
            if tp not in self._partitions:
                self._call(coordinator.add_partitions, [tp])
                self._partitions.add(tp)

    def send_offsets(self, offsets: Any, group_id: Any) -> None:
        """Commit these consumer offsets with the transaction (see Producer)."""
        group = getattr(group_id, "group_id", group_id)
        if not isinstance(group, str) or not group:
            raise ConfigError(f"group_id must be a consumer group id: group_id={group_id!r}")
        if not isinstance(offsets, Mapping):
            offsets = {TopicPartition(o.topic, o.partition): o.offset for o in offsets}
        checked = validate_offsets(offsets)
        with self.lock:
            self._require("send_offsets_to_transaction", TransactionState.IN_TRANSACTION)
            self._offsets.setdefault(group, {}).update(checked)

    def commit(self, deliver: Callable[[], None]) -> None:
        """Wait until every record of the transaction is delivered (``deliver``: the
        producer's flush, which raises when records failed), then decide to commit."""
        with self.lock:
            coordinator = self._require("commit_transaction", TransactionState.IN_TRANSACTION)
            if len(self._offsets) > 1:
                raise InvalidTxnStateError(
                    "one transaction commits the offsets of one consumer group: "
                    f"groups={sorted(self._offsets)}"
                )
            self.state = TransactionState.COMMITTING
        try:
            deliver()
        except Exception as exc:
            with self.lock:
                self._fail(TransactionState.ABORTABLE_ERROR, exc)
            if isinstance(exc, TransactionError):
                raise
            raise TransactionError(
                f"records of the transaction were not delivered: abort_transaction() and "
                f"start again (transactional_id={self.transactional_id!r}): {exc}"
            ) from exc
        with self.lock:
            if self.state is not TransactionState.COMMITTING:  # a batch failed meanwhile
                raise TransactionError(
                    f"a record of the transaction failed: abort_transaction() and start "
                    f"again (transactional_id={self.transactional_id!r})"
                ) from self._error
            group, offsets = next(iter(self._offsets.items()), (None, {}))
            try:
                self._call(coordinator.commit, group, offsets)
            except BaseException:
                if self.state is TransactionState.COMMITTING:
                    self.state = TransactionState.IN_TRANSACTION  # commit may be called again
                raise
            self.state = TransactionState.READY

    def abort(self, deliver: Callable[[], None]) -> None:
        """Wait for what was sent (its failures no longer matter), then decide to abort.
        After a transaction timeout, this also takes a new epoch, so the producer goes
        on."""
        with self.lock:
            coordinator = self._require(
                "abort_transaction",
                TransactionState.IN_TRANSACTION,
                TransactionState.ABORTABLE_ERROR,
                TransactionState.COMMITTING,
            )
            self.state = TransactionState.ABORTING
        with contextlib.suppress(Exception):  # failed sends do not matter to an abort
            deliver()
        with self.lock:
            try:
                coordinator.abort()
            except TransactionAbortedError:
                state = coordinator.init()  # aborted by the timeout: a new epoch, go on
                self._set_identity(state.producer_id, state.epoch)
            except ProducerFencedError as exc:
                self._fail(TransactionState.FATAL_ERROR, exc)
                raise
            self.state = TransactionState.READY

    def check_fenced(self) -> None:
        """Raise ProducerFencedError if a ring said this producer's epoch is stale: say
        whether a newer instance or the transaction timeout did it."""
        if self._coordinator is None:
            raise ProducerFencedError(f"producer_id={self.producer_id} was fenced")
        with self.lock:
            self._call(self._coordinator.check_current)
        raise ProducerFencedError(f"transactional_id={self.transactional_id!r} was fenced")
