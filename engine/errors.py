"""Every error the engine raises.

One root, :class:`EngineError`, which is never raised itself. Where Python has a
built-in meaning for the failure (a wrong type, a bad value), the engine's class
derives from both, so ``except TypeError`` and ``except EngineError`` both work::

    EngineError
    ├── ConfigError (ValueError)             an option or topic config is invalid
    │   ├── PartitionCountError              a partition count below 1 (or that adds none)
    │   ├── ReplicationFactorError           more replicas than live brokers, or none
    │   ├── ReplicaAssignmentError           an explicit replica assignment that cannot be
    │   └── ShmBudgetError                   rings past the daemon's shared-memory budget
    ├── InvalidTopicError (ValueError)       a topic name breaks Kafka's naming rules
    ├── RecordTypeError (TypeError)          a value/key/header is not bytes-like
    ├── RecordTooLargeError (ValueError)     a record exceeds max.message.bytes
    ├── InvalidRecordError (ValueError)      a record its topic cannot take (keyless, compacted)
    ├── UnknownTopicError                    the topic does not exist
    ├── TopicExistsError                     create_topic of an existing topic
    ├── PartitionOutOfRangeError (ValueError) partition number >= partition count
    ├── OffsetOutOfRangeError                offset below log_start or above log_end
    ├── DaemonNotRunningError                no daemon for this data dir
    ├── DaemonAlreadyRunningError            a second daemon on the same data dir
    ├── DataDirError (OSError)               the data dir cannot be created or written
    ├── AuthorizationError (PermissionError) the data dir or its znodes are another user's
    ├── CoordinatorUnavailableError          the coordinator connection or session was lost
    ├── EngineTimeoutError (TimeoutError)    a bounded wait ran out
    │   └── BufferFullError                  the ring stayed full for max_block_ms
    ├── CorruptRecordError                   a frame or batch failed its CRC / shape / offset checks
    ├── FencedError                          a stale leader epoch or producer epoch
    │   └── ProducerFencedError              a newer instance of the transactional id exists
    ├── TransactionError                     a transaction could not go on
    │   ├── InvalidTxnStateError (RuntimeError) a transaction call out of order
    │   └── TransactionAbortedError          the transaction was aborted (timed out)
    ├── NotLeaderError                       the replica written to is no longer the leader
    ├── NotEnoughReplicasError               fewer in-sync replicas than min.insync.replicas
    ├── CommitFailedError                    a group member that was dropped tried to commit
    ├── GroupNotEmptyError                   an admin change that needs a group without members
    ├── UnknownGroupError                    the consumer group does not exist
    ├── GroupProtocolError                   the group's members are Kafka clients: no engine member
    ├── ClosedError                          the object was used after close()
    ├── RingPermissionError (PermissionError) a ring owned by another user or open to others
    ├── NativeError                          the C hot path reported an unexpected code
    ├── KafkaProtocolError                   a Kafka-protocol request that does not decode
    ├── UnsupportedOnKafkaError (NotImplementedError) an engine-only method or option on a
    │                                        Kafka cluster (bootstrap_servers=)
    ├── KafkaClusterError                    a Kafka cluster's error no other class describes
    └── CoordinationError                    a coordination recipe (engine.coordination) failed
        ├── InvalidNameError (ValueError)    a lock, election, service, config path or key name
        ├── NotJsonError (TypeError)         a config value or instance data JSON cannot hold
        ├── LockStateError (RuntimeError)    a lock call out of order (release of a lock not held)
        ├── LockLostError                    a held lock is gone: its session expired
        │   └── LeaseExpiredError            a lease ran out before its renew (maybe another's now)
        ├── VersionConflictError             compare-and-set found another version than expected
        ├── InstanceExistsError              a service instance id that is registered already
        ├── ZnodeNotFoundError (LookupError) `engine coord` on a path that does not exist
        └── TtlNodesDisabledError            the ZooKeeper in use refuses TTL nodes
"""

from __future__ import annotations


class EngineError(Exception):
    """Root of every engine error; never raised itself.

    ``appended``: a call that writes many records (``send_batch``) and failed part way
    says here how many of them it had appended (or, with acks="all", handed to the
    producer's sender, which delivers them as any record sent); they stay."""

    appended: int = 0


class ConfigError(EngineError, ValueError):
    """An option, a topic config key or its value is invalid."""


class PartitionCountError(ConfigError):
    """A new topic's partition count below 1, or a partition count that adds none."""


class ReplicationFactorError(ConfigError):
    """A replication factor below 1 or above the number of live brokers."""


class ReplicaAssignmentError(ConfigError):
    """An explicit replica assignment that names no broker, one twice, one not live, or
    partitions not numbered 0..n-1 with as many replicas each."""


class ShmBudgetError(ConfigError):
    """Rings that would take the daemon past its shared-memory budget
    (`engine start --shm-budget`); nothing was written."""


class InvalidTopicError(EngineError, ValueError):
    """A topic name is empty, too long or uses characters outside [a-zA-Z0-9._-]."""


class RecordTypeError(EngineError, TypeError):
    """A value, key or header is not bytes-like."""


class RecordTooLargeError(EngineError, ValueError):
    """A record (or batch) is larger than max.message.bytes; nothing was written."""


class InvalidRecordError(EngineError, ValueError):
    """A record its topic cannot take: a record without a key on a compacted topic
    (Kafka's InvalidRecordException); nothing was written."""


class UnknownTopicError(EngineError):
    """The topic does not exist (and auto-create is off)."""


class TopicExistsError(EngineError):
    """create_topic was called for a topic that already exists."""


class PartitionOutOfRangeError(EngineError, ValueError):
    """A partition number is negative or not below the topic's partition count."""


class OffsetOutOfRangeError(EngineError):
    """An offset lies below the log start offset or above the log end offset."""


class DaemonNotRunningError(EngineError):
    """No engine daemon runs for the data dir; the message names the command to start it."""


class DaemonAlreadyRunningError(EngineError):
    """Another daemon already holds the data dir's lock."""


class DataDirError(EngineError, OSError):
    """The data dir cannot be used: it cannot be created, it is not a directory, or it
    (or a file in it) cannot be written. The message names the path and the reason."""


class AuthorizationError(EngineError, PermissionError):
    """The caller may not use the data dir or the engine's znodes: the data dir belongs to
    another user (its secret cannot be read), or the coordinator's tree is locked with
    another secret than the data dir's."""


class CoordinatorUnavailableError(EngineError):
    """The connection to the coordinator was lost during a request, or its session
    expired (the daemon is down or restarting, or the ZooKeeper ensemble given to
    `engine start --coordinator` is down or has no quorum): the request may or may not
    have taken effect. The client reconnects by itself; the call may be made again.
    Also raised by a client made while that ensemble cannot be reached."""


class EngineTimeoutError(EngineError, TimeoutError):
    """A bounded wait (max_block_ms, a future's get(timeout), a start-up) ran out."""


class BufferFullError(EngineTimeoutError):
    """The partition's ring stayed full for max_block_ms; the record was not written."""


class CorruptRecordError(EngineError):
    """A frame or record batch failed its CRC32C, its shape or its offset checks.

    Raised by a consumer, it names where: ``topic``, ``partition`` and ``offset`` (the
    first offset not delivered: a seek past the bad batch goes on); None elsewhere.
    """

    def __init__(
        self,
        message: str,
        *,
        topic: str | None = None,
        partition: int | None = None,
        offset: int | None = None,
    ) -> None:
        super().__init__(message)
        self.topic = topic
        self.partition = partition
        self.offset = offset


class FencedError(EngineError):
    """An append carried a stale leader epoch, or a producer was fenced by a newer epoch."""


class ProducerFencedError(FencedError):
    """Another producer initialised the same transactional id (a newer epoch): this one
    is a zombie and must close. Nothing it writes from now on reaches the log."""


class TransactionError(EngineError):
    """A transaction could not go on; abort it (or, after ProducerFencedError, close)."""


class InvalidTxnStateError(TransactionError, RuntimeError):
    """A transaction call out of order: begin twice, send outside a transaction, commit
    without begin, a transactional call on a producer without transactional_id."""


class TransactionAbortedError(TransactionError):
    """The transaction was aborted under this producer (transaction_timeout_ms passed):
    call abort_transaction() and start again."""


class NotLeaderError(EngineError):
    """The partition replica written to is no longer its leader; refresh metadata and retry."""


class NotEnoughReplicasError(EngineError):
    """Fewer in-sync replicas than min.insync.replicas; the record was not acknowledged."""


class CommitFailedError(EngineError):
    """Offsets were not committed: this consumer is no longer a member of its group (its
    session expired or it did not poll within max_poll_interval_ms), or the partitions
    are not assigned to it."""


class GroupNotEmptyError(EngineError):
    """The group still has live members; the change (reset-offsets) needs it empty."""


class UnknownGroupError(EngineError):
    """No consumer group of that id has ever joined or committed."""


class GroupProtocolError(EngineError):
    """An engine Consumer cannot join the group: Kafka clients are its members (they
    joined through a broker's Kafka listener, whose group protocol cannot share the
    group's partitions with the engine's). The Kafka clients refuse likewise
    (INCONSISTENT_GROUP_PROTOCOL) while engine Consumers are its members."""


class ClosedError(EngineError):
    """The object was used after close()."""


class RingPermissionError(EngineError, PermissionError):
    """A partition ring's shared-memory object is owned by another user, or its mode
    grants group or others any access: the engine refuses to map it, since whoever
    made it could read every record and write into the partition."""


class NativeError(EngineError):
    """The C hot path returned a code the Python side did not expect."""


class KafkaProtocolError(EngineError):
    """A request on the Kafka listener does not decode (engine.kafka.codec): the
    connection it came on is closed, as Kafka closes it."""


class UnsupportedOnKafkaError(EngineError, NotImplementedError):
    """A Producer, Consumer or Admin made with ``bootstrap_servers=`` (a Kafka cluster,
    engine.kafka_client) was asked for what only the engine's rings and data dir give
    (``poll_values``, ``ring.bytes``, ``poll_spin_us``, ...): the message names it."""


class KafkaClusterError(EngineError):
    """A Kafka cluster (or its client library, librdkafka) reported an error that no
    other class here describes. ``code`` and ``name`` are Kafka's (librdkafka's
    negative codes for local errors, such as -195 _TRANSPORT); ``retriable`` says
    whether the call may be made again."""

    def __init__(self, message: str, *, code: int, name: str, retriable: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.name = name
        self.retriable = retriable


class CoordinationError(EngineError):
    """A coordination recipe (engine.coordination: locks, elections, the config store,
    the service registry) or an ``engine coord`` command could not do what was asked."""


class InvalidNameError(CoordinationError, ValueError):
    """A lock, election or service name, a config path or key, or a znode path is
    empty, too long, or uses characters outside what the recipe allows."""


class NotJsonError(CoordinationError, TypeError):
    """A config value or a service instance's data is not something JSON can hold
    (only dict, list, str, int, float, bool and None; no NaN or infinity)."""


class LockStateError(CoordinationError, RuntimeError):
    """A lock call out of order: acquire of a lock this object already holds, renew or
    release of one it does not hold."""


class LockLostError(CoordinationError):
    """The lock this object held is gone: its coordinator session expired (the daemon
    was away longer than the session timeout), so another may hold it now. Stop the
    work the lock guarded."""


class LeaseExpiredError(LockLostError):
    """The lease ran out before renew() or release() (no renew within ``ttl_s``): the
    coordinator deleted the lease's znode, and another may hold the lock now. The lease
    is not taken back; acquire() again."""


class VersionConflictError(CoordinationError):
    """compare_and_set found another version than the one given (a concurrent writer
    came first, or the key is absent, or present when it should not be). ``key``,
    ``expected`` and ``actual`` (None: absent) say which."""

    def __init__(
        self, message: str, *, key: str, expected: int | None, actual: int | None
    ) -> None:
        super().__init__(message)
        self.key = key
        self.expected = expected
        self.actual = actual


class InstanceExistsError(CoordinationError):
    """ServiceRegistry.register with an instance id that a live instance has."""


class ZnodeNotFoundError(CoordinationError, LookupError):
    """An ``engine coord`` command named a znode that does not exist."""


class TtlNodesDisabledError(CoordinationError):
    """The coordinator refused a TTL znode: a real ZooKeeper started without
    ``zookeeper.extendedTypesEnabled=true`` (TTL nodes are off by default there). The
    built-in coordinator always accepts them."""
