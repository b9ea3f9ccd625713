"""Kafka's error codes as engine errors: one table, one function that raises by it.

Every failure that confluent-kafka reports (a KafkaException, a KafkaError in a
delivery report, a message or a per-partition result) becomes the engine.errors class
that the same failure raises on the engine's own cluster, by its code in
:data:`ERRORS`. A code not in the table becomes KafkaClusterError (with Kafka's code
and name); within a transaction call, TransactionAbortedError when librdkafka says the
transaction must be aborted, TransactionError otherwise. The message says what was
being done and Kafka's own words and code name; the KafkaException is the cause.
"""

from __future__ import annotations

from typing import Any

from confluent_kafka import KafkaError, KafkaException

from engine.errors import (
    AuthorizationError,
    BufferFullError,
    ClosedError,
    CommitFailedError,
    ConfigError,
    CoordinatorUnavailableError,
    CorruptRecordError,
    EngineError,
    EngineTimeoutError,
    FencedError,
    GroupNotEmptyError,
    GroupProtocolError,
    InvalidRecordError,
    InvalidTopicError,
    InvalidTxnStateError,
    KafkaClusterError,
    NotEnoughReplicasError,
    NotLeaderError,
    OffsetOutOfRangeError,
    PartitionCountError,
    PartitionOutOfRangeError,
    ProducerFencedError,
    RecordTooLargeError,
    ReplicaAssignmentError,
    ReplicationFactorError,
    TopicExistsError,
    TransactionAbortedError,
    TransactionError,
    UnknownGroupError,
    UnknownTopicError,
)

_K = KafkaError

#: KafkaError code -> the engine's class for the same failure.
ERRORS: dict[int, type[EngineError]] = {
    _K._MSG_TIMED_OUT: EngineTimeoutError,
    _K._TIMED_OUT: EngineTimeoutError,
    _K._TIMED_OUT_QUEUE: EngineTimeoutError,
    _K.REQUEST_TIMED_OUT: EngineTimeoutError,
    _K._QUEUE_FULL: BufferFullError,
    _K.UNKNOWN_TOPIC_OR_PART: UnknownTopicError,
    _K._UNKNOWN_TOPIC: UnknownTopicError,
    _K.UNKNOWN_TOPIC_ID: UnknownTopicError,
    _K._UNKNOWN_PARTITION: PartitionOutOfRangeError,
    _K.TOPIC_ALREADY_EXISTS: TopicExistsError,
    _K.MSG_SIZE_TOO_LARGE: RecordTooLargeError,
    _K.RECORD_LIST_TOO_LARGE: RecordTooLargeError,
    _K.TOPIC_EXCEPTION: InvalidTopicError,
    _K.OFFSET_OUT_OF_RANGE: OffsetOutOfRangeError,
    _K.NOT_ENOUGH_REPLICAS: NotEnoughReplicasError,
    _K.NOT_ENOUGH_REPLICAS_AFTER_APPEND: NotEnoughReplicasError,
    _K.NOT_LEADER_FOR_PARTITION: NotLeaderError,
    _K.LEADER_NOT_AVAILABLE: NotLeaderError,
    _K.FENCED_LEADER_EPOCH: NotLeaderError,
    _K.UNKNOWN_LEADER_EPOCH: NotLeaderError,
    _K.INVALID_MSG: CorruptRecordError,
    _K._BAD_MSG: CorruptRecordError,
    _K.INVALID_RECORD: InvalidRecordError,
    _K.INVALID_PRODUCER_EPOCH: FencedError,
    _K._FENCED: ProducerFencedError,
    _K.PRODUCER_FENCED: ProducerFencedError,
    _K.INVALID_TXN_STATE: InvalidTxnStateError,
    _K._STATE: InvalidTxnStateError,
    _K.UNKNOWN_MEMBER_ID: CommitFailedError,
    _K.ILLEGAL_GENERATION: CommitFailedError,
    _K.REBALANCE_IN_PROGRESS: CommitFailedError,
    _K.FENCED_INSTANCE_ID: CommitFailedError,
    _K._ASSIGNMENT_LOST: CommitFailedError,
    _K.GROUP_ID_NOT_FOUND: UnknownGroupError,
    _K.NON_EMPTY_GROUP: GroupNotEmptyError,
    _K.INCONSISTENT_GROUP_PROTOCOL: GroupProtocolError,
    _K.COORDINATOR_NOT_AVAILABLE: CoordinatorUnavailableError,
    _K.NOT_COORDINATOR: CoordinatorUnavailableError,
    _K.COORDINATOR_LOAD_IN_PROGRESS: CoordinatorUnavailableError,
    _K.TOPIC_AUTHORIZATION_FAILED: AuthorizationError,
    _K.GROUP_AUTHORIZATION_FAILED: AuthorizationError,
    _K.CLUSTER_AUTHORIZATION_FAILED: AuthorizationError,
    _K.TRANSACTIONAL_ID_AUTHORIZATION_FAILED: AuthorizationError,
    _K.SASL_AUTHENTICATION_FAILED: AuthorizationError,
    _K._AUTHENTICATION: AuthorizationError,
    _K.INVALID_CONFIG: ConfigError,
    _K.INVALID_PARTITIONS: PartitionCountError,
    _K.INVALID_REPLICATION_FACTOR: ReplicationFactorError,
    _K.INVALID_REPLICA_ASSIGNMENT: ReplicaAssignmentError,
    _K.POLICY_VIOLATION: ConfigError,
    _K.INVALID_REQUIRED_ACKS: ConfigError,
    _K.INVALID_SESSION_TIMEOUT: ConfigError,
    _K._INVALID_ARG: ConfigError,
    _K._NOT_CONFIGURED: InvalidTxnStateError,
    _K._PURGE_QUEUE: ClosedError,
    _K._PURGE_INFLIGHT: ClosedError,
}


def kafka_error(failure: Any) -> KafkaError | None:
    """The KafkaError of a KafkaException (or the KafkaError itself; None otherwise)."""
    if isinstance(failure, KafkaError):
        return failure
    if isinstance(failure, KafkaException) and failure.args:
        first = failure.args[0]
        return first if isinstance(first, KafkaError) else None
    return None


#: Failures to reach the cluster that a failed login explains (ClientHealth.auth_error).
_UNREACHABLE = frozenset({_K._TRANSPORT, _K._ALL_BROKERS_DOWN, _K._TIMED_OUT})


def engine_error(
    failure: Any, what: str, transactional: bool = False, health: Any = None
) -> EngineError:
    """The engine error for ``failure`` (a KafkaError or KafkaException) met while
    doing ``what``. ``transactional``: it came from a transaction call. ``health``:
    the client's ClientHealth, whose failed login explains an unreachable cluster."""
    err = kafka_error(failure)
    if err is None:
        return KafkaClusterError(f"{what}: {failure}", code=-1, name="UNKNOWN")
    if err.code() in _UNREACHABLE and health is not None and health.auth_error is not None:
        err = health.auth_error
    code, name = err.code(), err.name()
    message = f"{what}: {err.str()} (Kafka error {name})"
    kind = ERRORS.get(code)
    if kind is None and transactional:
        kind = TransactionAbortedError if err.txn_requires_abort() else TransactionError
    if kind is None:
        return KafkaClusterError(message, code=code, name=name, retriable=err.retriable())
    if kind is ConfigError and code == _K.INVALID_SESSION_TIMEOUT:
        message += " (session_timeout_ms is outside the cluster's group.min.session.timeout.ms"
        message += " and group.max.session.timeout.ms)"
    return kind(message)


def raise_engine_error(
    failure: Any, what: str, transactional: bool = False, health: Any = None
) -> None:
    """Raise engine_error(...) from ``failure``."""
    error = engine_error(failure, what, transactional, health)
    raise error from (failure if isinstance(failure, BaseException) else None)
