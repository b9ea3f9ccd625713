"""engine: a single-host streaming engine (Kafka and ZooKeeper for one box of processes).

Producers append straight into shared-memory partition rings; consumers read
them directly; broker processes drain them into durable segment files; a
ZooKeeper-compatible coordinator holds the cluster's state.
"""

import importlib
import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the imports below run lazily, on first use of a name (PEP 562)
    from engine.admin import Admin, PartitionDescription, TopicDescription
    from engine.consumer import Consumer
    from engine.coordination import (
        ConfigStore,
        Election,
        LeaseLock,
        Lock,
        ServiceChange,
        ServiceRegistry,
        Versioned,
    )
    from engine.errors import (
        AuthorizationError,
        BufferFullError,
        ClosedError,
        CommitFailedError,
        ConfigError,
        CoordinationError,
        CoordinatorUnavailableError,
        CorruptRecordError,
        DaemonAlreadyRunningError,
        DaemonNotRunningError,
        DataDirError,
        EngineError,
        EngineTimeoutError,
        FencedError,
        GroupNotEmptyError,
        InstanceExistsError,
        InvalidNameError,
        InvalidRecordError,
        InvalidTopicError,
        LeaseExpiredError,
        LockLostError,
        LockStateError,
        NotEnoughReplicasError,
        NotJsonError,
        NotLeaderError,
        OffsetOutOfRangeError,
        PartitionOutOfRangeError,
        RecordTooLargeError,
        RecordTypeError,
        RingPermissionError,
        TopicExistsError,
        TtlNodesDisabledError,
        UnknownGroupError,
        UnknownTopicError,
        VersionConflictError,
        ZnodeNotFoundError,
    )
    from engine.producer import BatchResult, Producer, RecordFuture
    from engine.record import OffsetAndTimestamp, Record, RecordMetadata, TopicPartition

__version__ = "0.1.0"

# A library is quiet unless the application configures logging. The engine logs under
# "engine.*" (kazoo's connection included, as "engine.kazoo"); a few kazoo modules log
# under their own "kazoo.*" names (the worker thread and watch recipes the engine's
# clients use). With a NullHandler there, Python's last-resort handler no longer prints
# their warnings on stderr; records still propagate to the handlers an application sets.
logging.getLogger("engine").addHandler(logging.NullHandler())
logging.getLogger("kazoo").addHandler(logging.NullHandler())

# Public name -> the module that defines it. Importing `engine` stays cheap, so that the
# coordinator and broker processes load only what they use.
_EXPORTS: dict[str, str] = {
    "Admin": "engine.admin",
    "AuthorizationError": "engine.errors",
    "BatchResult": "engine.producer",
    "BufferFullError": "engine.errors",
    "ClosedError": "engine.errors",
    "CommitFailedError": "engine.errors",
    "ConfigError": "engine.errors",
    "ConfigStore": "engine.coordination",
    "Consumer": "engine.consumer",
    "CoordinationError": "engine.errors",
    "CoordinatorUnavailableError": "engine.errors",
    "CorruptRecordError": "engine.errors",
    "DaemonAlreadyRunningError": "engine.errors",
    "DaemonNotRunningError": "engine.errors",
    "DataDirError": "engine.errors",
    "Election": "engine.coordination",
    "EngineError": "engine.errors",
    "EngineTimeoutError": "engine.errors",
    "FencedError": "engine.errors",
    "GroupNotEmptyError": "engine.errors",
    "InstanceExistsError": "engine.errors",
    "InvalidNameError": "engine.errors",
    "InvalidTopicError": "engine.errors",
    "InvalidTxnStateError": "engine.errors",
    "LeaseExpiredError": "engine.errors",
    "LeaseLock": "engine.coordination",
    "Lock": "engine.coordination",
    "LockLostError": "engine.errors",
    "LockStateError": "engine.errors",
    "NotEnoughReplicasError": "engine.errors",
    "NotJsonError": "engine.errors",
    "NotLeaderError": "engine.errors",
    "OffsetAndTimestamp": "engine.record",
    "OffsetOutOfRangeError": "engine.errors",
    "InvalidRecordError": "engine.errors",
    "PartitionDescription": "engine.admin",
    "PartitionOutOfRangeError": "engine.errors",
    "Producer": "engine.producer",
    "ProducerFencedError": "engine.errors",
    "Record": "engine.record",
    "RecordFuture": "engine.producer",
    "RecordMetadata": "engine.record",
    "RecordTooLargeError": "engine.errors",
    "RecordTypeError": "engine.errors",
    "RingPermissionError": "engine.errors",
    "ServiceChange": "engine.coordination",
    "ServiceRegistry": "engine.coordination",
    "TopicDescription": "engine.admin",
    "TopicExistsError": "engine.errors",
    "TopicPartition": "engine.record",
    "TransactionAbortedError": "engine.errors",
    "TransactionError": "engine.errors",
    "TtlNodesDisabledError": "engine.errors",
    "UnknownGroupError": "engine.errors",
    "UnknownTopicError": "engine.errors",
    "VersionConflictError": "engine.errors",
    "Versioned": "engine.coordination",
    "ZnodeNotFoundError": "engine.errors",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'engine' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [
    "Admin",
    "AuthorizationError",
    "BatchResult",
    "BufferFullError",
    "ClosedError",
    "CommitFailedError",
    "ConfigError",
    "ConfigStore",
    "Consumer",
    "CoordinationError",
    "CoordinatorUnavailableError",
    "CorruptRecordError",
    "DaemonAlreadyRunningError",
    "DaemonNotRunningError",
    "DataDirError",
    "Election",
    "EngineError",
    "EngineTimeoutError",
    "FencedError",
    "GroupNotEmptyError",
    "InstanceExistsError",
    "InvalidNameError",
    "InvalidRecordError",
    "InvalidTopicError",
    "InvalidTxnStateError",
    "LeaseExpiredError",
    "LeaseLock",
    "Lock",
    "LockLostError",
    "LockStateError",
    "NotEnoughReplicasError",
    "NotJsonError",
    "NotLeaderError",
    "OffsetAndTimestamp",
    "OffsetOutOfRangeError",
    "PartitionDescription",
    "PartitionOutOfRangeError",
    "Producer",
    "ProducerFencedError",
    "Record",
    "RecordFuture",
    "RecordMetadata",
    "RecordTooLargeError",
    "RecordTypeError",
    "RingPermissionError",
    "ServiceChange",
    "ServiceRegistry",
    "TopicDescription",
    "TopicExistsError",
    "TopicPartition",
    "TransactionAbortedError",
    "TransactionError",
    "TtlNodesDisabledError",
    "UnknownGroupError",
    "UnknownTopicError",
    "VersionConflictError",
    "Versioned",
    "ZnodeNotFoundError",
    "__version__",
]
