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
    INVALID_TIMESTAMP = 32
    """A produced record's timestamp lies further from now than the topic allows
    (message.timestamp.before.max.ms, message.timestamp.after.max.ms): nothing written."""
    UNSUPPORTED_SASL_MECHANISM = 33
    """The SaslHandshake named a mechanism not enabled here (the response lists them)."""
    ILLEGAL_SASL_STATE = 34
    """A SASL request out of order (authenticate before handshake, or twice)."""
    UNSUPPORTED_VERSION = 35
    """An API or API version this listener does not serve (ApiVersions lists those it
    does)."""
    INVALID_REQUEST = 42
    """A request that decodes but makes no sense (an unknown FindCoordinator key type, an
    ApiVersions naming its client software outside Kafka's pattern)."""
    OUT_OF_ORDER_SEQUENCE_NUMBER = 45
    """An idempotent producer's batch does not follow its last one in sequence."""
    INVALID_PRODUCER_EPOCH = 47
    """An idempotent producer's batch carries an older epoch than the partition saw."""
    INVALID_TXN_STATE = 48
    """A transactional batch: transactions are not served on this listener yet."""
    SASL_AUTHENTICATION_FAILED = 58
    """Wrong user name or password (or a malformed SASL token): the connection closes."""
    FENCED_LEADER_EPOCH = 74
    """The client's leader epoch is older than this leader's: refresh metadata."""
    UNKNOWN_LEADER_EPOCH = 75
    """The client's leader epoch is newer than this broker knows: retry."""
    INVALID_RECORD = 87
    """A produced batch that Kafka refuses from a client (a control batch, record count
    and offset delta that disagree, not magic 2, several batches for one partition)."""
