"""Kafka's error codes (org.apache.kafka.common.protocol.Errors), those the listener answers.

Each member is the code a response carries and says what the client does with it.
"""

from __future__ import annotations

import enum


class ErrorCode(enum.IntEnum):
    """A Kafka error code as the wire carries it (int16)."""

    UNKNOWN_SERVER_ERROR = -1
    """Something failed that has no better code; the client may retry."""
    NONE = 0
    """Success."""
    OFFSET_OUT_OF_RANGE = 1
    """The fetch offset is below the log start or above the high watermark: the client
    resets its position (auto.offset.reset)."""
    CORRUPT_MESSAGE = 2
    """A produced batch failed its CRC32C or shape checks: nothing of it was written."""
    UNKNOWN_TOPIC_OR_PARTITION = 3
    """No such topic or partition (yet): the client refreshes its metadata and retries."""
    LEADER_NOT_AVAILABLE = 5
    """The partition has no leader right now (an election is under way): retry."""
    NOT_LEADER_OR_FOLLOWER = 6
    """This broker does not lead the partition (any more): refresh metadata, retry."""
    REQUEST_TIMED_OUT = 7
    """acks=all: the ISR did not hold the batch within the request's timeout (it is
    written and may still be committed)."""
    MESSAGE_TOO_LARGE = 10
    """The batch exceeds the topic's max.message.bytes: nothing was written."""
    COORDINATOR_NOT_AVAILABLE = 15
    """No group or transaction coordinator is served here (yet)."""
    INVALID_TOPIC_EXCEPTION = 17
    """The topic name breaks Kafka's naming rules."""
    NOT_ENOUGH_REPLICAS = 19
    """acks=all with fewer in-sync replicas than min.insync.replicas: nothing written."""
    NOT_ENOUGH_REPLICAS_AFTER_APPEND = 20
    """acks=all: written, but the ISR shrank below min.insync.replicas meanwhile."""
    INVALID_REQUIRED_ACKS = 21
    """acks other than 0, 1 or -1."""
    INVALID_GROUP_ID = 24
    """A group id the coordinator's tree cannot name (engine.offset_store)."""
    UNSUPPORTED_SASL_MECHANISM = 33
    """The SaslHandshake named a mechanism not enabled here (the response lists them)."""
    ILLEGAL_SASL_STATE = 34
    """A SASL request out of order (authenticate before handshake, or twice)."""
    UNSUPPORTED_VERSION = 35
    """An API or API version this listener does not serve (ApiVersions lists those it
    does)."""
    TOPIC_ALREADY_EXISTS = 36
    """CreateTopics: a topic of that name exists (or is being deleted)."""
    INVALID_PARTITIONS = 37
    """A partition count below 1, or CreatePartitions that would not add any."""
    INVALID_REPLICATION_FACTOR = 38
    """A replication factor below 1 or above the number of live brokers."""
    INVALID_REPLICA_ASSIGNMENT = 39
    """An explicit replica assignment that names no broker, a broker twice, a broker
    that is not live, or partitions not numbered 0..n-1."""
    INVALID_CONFIG = 40
    """A config the topic cannot take: an unknown key, a value out of range (the
    message names it)."""
    INVALID_REQUEST = 42
    """A request that decodes but makes no sense (several batches for one partition)."""
    POLICY_VIOLATION = 44
    """A topic or partitions that would take the daemon's rings past its shared-memory
    budget (`engine start --shm-budget`)."""
    OUT_OF_ORDER_SEQUENCE_NUMBER = 45
    """An idempotent producer's batch does not follow its last one in sequence."""
    INVALID_PRODUCER_EPOCH = 47
    """An idempotent producer's batch carries an older epoch than the partition saw."""
    INVALID_TXN_STATE = 48
    """A transaction call out of order (EndTxn commit of an aborting transaction), or a
    transactional batch to a partition not added to the transaction."""
    INVALID_PRODUCER_ID_MAPPING = 49
    """The producer id is not the transactional id's (it was never initialised)."""
    INVALID_TRANSACTION_TIMEOUT = 50
    """transaction_timeout_ms is not 1 ms to 15 min (Kafka's transaction.max.timeout.ms)."""
    CONCURRENT_TRANSACTIONS = 51
    """The transaction is being completed (its markers are being written): retry."""
    OPERATION_NOT_ATTEMPTED = 55
    """Another partition of the same request failed, so this one was not tried."""
    SASL_AUTHENTICATION_FAILED = 58
    """Wrong user name or password (or a malformed SASL token): the connection closes."""
    FENCED_LEADER_EPOCH = 74
    """The client's leader epoch is older than this leader's: refresh metadata."""
    UNKNOWN_LEADER_EPOCH = 75
    """The client's leader epoch is newer than this broker knows: retry."""
    INVALID_RECORD = 87
    """A produced batch that Kafka refuses from a client (a control batch, record count
    and offset delta that disagree, not magic 2)."""
    PRODUCER_FENCED = 90
    """A newer producer initialised the transactional id: this one must close (older
    request versions get INVALID_PRODUCER_EPOCH)."""
    UNKNOWN_TOPIC_ID = 100
    """DeleteTopics by topic id: no topic has that id."""
    MISMATCHED_ENDPOINT_TYPE = 114
    """DescribeCluster for controllers' endpoints, sent to a broker."""
