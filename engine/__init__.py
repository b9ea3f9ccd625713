"""engine: a single-host streaming engine (Kafka and ZooKeeper for one box of processes).

Producers append straight into shared-memory partition rings; consumers read
them directly; broker processes drain them into durable segment files; a
ZooKeeper-compatible coordinator holds the cluster's state.
"""

from engine.admin import Admin, PartitionDescription, TopicDescription
from engine.consumer import Consumer
from engine.errors import (
    BufferFullError,
    ClosedError,
    ConfigError,
    CorruptRecordError,
    DaemonAlreadyRunningError,
    DaemonNotRunningError,
    EngineError,
    EngineTimeoutError,
    FencedError,
    InvalidTopicError,
    NotEnoughReplicasError,
    NotLeaderError,
    OffsetOutOfRangeError,
    PartitionOutOfRangeError,
    RecordTooLargeError,
    RecordTypeError,
    TopicExistsError,
    UnknownTopicError,
)
from engine.producer import BatchResult, Producer, RecordFuture
from engine.record import Record, RecordMetadata, TopicPartition

__version__ = "0.1.0"

__all__ = [
    "Admin",
    "BatchResult",
    "BufferFullError",
    "ClosedError",
    "ConfigError",
    "Consumer",
    "CorruptRecordError",
    "DaemonAlreadyRunningError",
    "DaemonNotRunningError",
    "EngineError",
    "EngineTimeoutError",
    "FencedError",
    "InvalidTopicError",
    "NotEnoughReplicasError",
    "NotLeaderError",
    "OffsetOutOfRangeError",
    "PartitionDescription",
    "PartitionOutOfRangeError",
    "Producer",
    "Record",
    "RecordFuture",
    "RecordMetadata",
    "RecordTooLargeError",
    "RecordTypeError",
    "TopicDescription",
    "TopicExistsError",
    "TopicPartition",
    "UnknownTopicError",
    "__version__",
]
