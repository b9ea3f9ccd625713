"""Topic names and topic configs: Kafka's names, the engine's defaults, one validator.

A topic config is a flat mapping of Kafka config names to ints (or strings where
Kafka uses strings). Unknown keys and bad values raise ConfigError naming the key.
The validator checks everything the brokers' rings and logs check when they make a
partition's replica, so a config they would refuse never reaches the coordinator.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from engine._native import lib
from engine.errors import ConfigError, InvalidTopicError
from engine.log import CLEANUP_POLICIES, LogConfig

MAX_TOPIC_NAME_LENGTH = 249
_TOPIC_NAME = re.compile(r"^[a-zA-Z0-9._-]+$")

# Defaults of the engine (Kafka's where Kafka has one; commented where they differ).
TOPIC_DEFAULTS: dict[str, int | float | str] = {
    "retention.ms": 7 * 24 * 3600 * 1000,
    "retention.bytes": -1,
    "segment.bytes": 1 << 30,
    "segment.ms": 7 * 24 * 3600 * 1000,
    "index.interval.bytes": 4096,
    "max.message.bytes": 1 << 20,  # Kafka: ~1 MB as well
    # Kafka leaves fsync to the OS (flush.messages = Long.MAX). So do we by default:
    # data written to segments is in the page cache and survives a process crash
    # (kill -9), but not a power loss, until the OS writes it back.
    "flush.messages": (1 << 63) - 1,
    "flush.ms": (1 << 63) - 1,
    "min.insync.replicas": 1,
    "unclean.leader.election.enable": 0,
    # A broker setting in Kafka; per topic here. A follower further behind than this
    # leaves the ISR.
    "replica.lag.time.max.ms": 30_000,
    # "delete", "compact" or "compact,delete" (engine/cleaner.py compacts).
    "cleanup.policy": "delete",
    "min.cleanable.dirty.ratio": 0.5,
    "delete.retention.ms": 24 * 3600 * 1000,
    "min.compaction.lag.ms": 0,
    "max.compaction.lag.ms": (1 << 63) - 1,
    # How far from now a Kafka client's record timestamps may lie (the Kafka listener
    # refuses a batch outside with INVALID_TIMESTAMP; the engine's own Producer stamps
    # records itself).
    "message.timestamp.before.max.ms": (1 << 63) - 1,
    "message.timestamp.after.max.ms": 3600 * 1000,  # Kafka 4's default
    # Engine-specific: the size of each partition's shared-memory ring, bytes.
    "ring.bytes": 16 << 20,
}

#: A ring's own limits (native/ring.h): its data area, and the bytes a frame adds to
#: the record batch it holds.
RING_HEADER_BYTES: int = lib.ENGINE_RING_HEADER_LENGTH
MIN_RING_BYTES: int = lib.ENGINE_RING_MIN_CAPACITY
RING_MAX_CAPACITY: int = lib.ENGINE_RING_MAX_CAPACITY
FRAME_HEADER_BYTES: int = lib.ENGINE_FRAME_HEADER_LENGTH
BATCH_HEADER_BYTES: int = lib.ENGINE_BATCH_HEADER_LENGTH
#: The largest ring.bytes of a new topic. A ring holds only what its broker has not
#: drained into the segment files yet (the drain looks every 5-50 ms), yet it is
#: resident memory for each replica, and every process that maps it faults it in
#: whole (0.14 s for 1 GiB here; 0.7 s for the broker that makes it). 1 GiB holds a
#: second of the fastest producer's records; more would only take memory.
MAX_RING_BYTES = 1 << 30
#: The smallest max.message.bytes of a new topic: a batch of one record with up to 32
#: bytes of key, value and headers (the 61-byte batch header and the record's own
#: fields take the rest; the producer counts 96 bytes of overhead per record).
MIN_MAX_MESSAGE_BYTES = 128
#: The smallest batch a ring accepts as its largest (engine_ring_init): a batch header
#: and 16 bytes of one record.
RING_MIN_MESSAGE_BYTES = BATCH_HEADER_BYTES + 16

#: Topic configs an existing topic cannot change (alter refuses them): each partition's
#: ring is made with them (its capacity, its largest frame), and every producer, consumer
#: and follower maps that ring. Every other key applies to running replicas at once.
FIXED_AT_CREATION: tuple[str, ...] = ("ring.bytes", "max.message.bytes")

_STRING_CHOICES: dict[str, tuple[str, ...]] = {"cleanup.policy": CLEANUP_POLICIES}
#: Keys whose values are fractions in [0, 1] (Kafka's doubles).
_RATIO_KEYS = {"min.cleanable.dirty.ratio"}
_BOOLEAN_KEYS = {"unclean.leader.election.enable"}
_MINIMUMS: dict[str, int] = {
    "retention.ms": -1,
    "retention.bytes": -1,
    "segment.bytes": 14,
    "segment.ms": 1,
    "index.interval.bytes": 0,
    "max.compaction.lag.ms": 1,
    "flush.messages": 1,
    "flush.ms": 0,
    "min.insync.replicas": 1,
    "replica.lag.time.max.ms": 1,
    "message.timestamp.before.max.ms": 0,
    "message.timestamp.after.max.ms": 0,
    "ring.bytes": 1 << 16,
}


def is_compacted(config: Mapping[str, Any]) -> bool:
    """A topic config's cleanup.policy has "compact" (LogConfig.compact's rule): every
    record needs a key."""
    return "compact" in str(config.get("cleanup.policy", "")).split(",")


def validate_topic_name(name: object) -> str:
    """Kafka's topic naming rule; returns the name or raises InvalidTopicError."""
    if not isinstance(name, str):
        raise InvalidTopicError(f"topic name must be a str, not {type(name).__name__}")
    if not name or name in (".", ".."):
        raise InvalidTopicError(f"topic name is empty or '.' or '..': name={name!r}")
    if len(name) > MAX_TOPIC_NAME_LENGTH:
        raise InvalidTopicError(
            f"topic name longer than {MAX_TOPIC_NAME_LENGTH} characters: length={len(name)}"
        )
    if not _TOPIC_NAME.match(name):
        raise InvalidTopicError(
            f"topic name may only use ASCII letters, digits, '.', '_' and '-': name={name!r}"
        )
    return name


def validate_topic_config(
    config: Mapping[str, Any] | None, *, existing: bool = False
) -> dict[str, int | float | str]:
    """Check a user's topic config; returns the full config with defaults filled in.

    ``existing``: the config of a topic made already, read back from the coordinator
    (perhaps made by an older version, with wider limits): only what the ring and the
    log themselves need is checked, so that such a topic still opens. A new topic's
    config also keeps within MAX_RING_BYTES and MIN_MAX_MESSAGE_BYTES."""
    out: dict[str, int | float | str] = dict(TOPIC_DEFAULTS)
    for key, value in (config or {}).items():
        if key not in TOPIC_DEFAULTS:
            raise ConfigError(f"unknown topic config: key={key!r}")
        if key in _STRING_CHOICES:
            # Kafka's cleanup.policy is a list: "delete,compact" is "compact,delete".
            if key == "cleanup.policy" and isinstance(value, str):
                value = ",".join(sorted(part.strip() for part in value.split(",")))
            if value not in _STRING_CHOICES[key]:
                raise ConfigError(
                    f"topic config must be one of {_STRING_CHOICES[key]}: key={key!r} "
                    f"value={value!r}"
                )
            out[key] = value
            continue
        if key in _RATIO_KEYS:
            out[key] = _ratio(key, value)
            continue
        if key in _BOOLEAN_KEYS and isinstance(value, (bool, str)):
            if isinstance(value, str) and value.lower() not in ("true", "false"):
                raise ConfigError(f"topic config must be a boolean: key={key!r} value={value!r}")
            value = value is True or (isinstance(value, str) and value.lower() == "true")
        try:
            number = int(value)
        except (TypeError, ValueError):
            raise ConfigError(
                f"topic config must be an integer: key={key!r} value={value!r}"
            ) from None
        if isinstance(value, float) and value != number:
            raise ConfigError(f"topic config must be an integer: key={key!r} value={value!r}")
        if number < _MINIMUMS.get(key, 0):
            raise ConfigError(
                f"topic config below its minimum {_MINIMUMS.get(key, 0)}: key={key!r} "
                f"value={value!r}"
            )
        out[key] = number
    ring = int(out["ring.bytes"])
    largest_ring = RING_MAX_CAPACITY if existing else MAX_RING_BYTES
    if ring & (ring - 1) or not MIN_RING_BYTES <= ring <= largest_ring:
        raise ConfigError(
            f"topic config must be a power of two in [{MIN_RING_BYTES}, {largest_ring}]: "
            f"key='ring.bytes' value={ring}"
        )
    message = int(out["max.message.bytes"])
    smallest = RING_MIN_MESSAGE_BYTES if existing else MIN_MAX_MESSAGE_BYTES
    if message < smallest:
        raise ConfigError(
            f"topic config below its minimum {smallest} (a batch of one small record, its "
            f"{BATCH_HEADER_BYTES}-byte header included): key='max.message.bytes' "
            f"value={message}"
        )
    # A batch travels through the ring in a frame, and a frame may take at most half
    # of the ring: then the frame and the padding before it at the wrap (shorter than
    # the frame) always fit once the ring is drained (engine_ring_init's bound).
    largest = ring // 2 - FRAME_HEADER_BYTES
    if message > largest:
        raise ConfigError(
            f"topic config above its limit {largest} for ring.bytes={ring} (a batch of "
            f"max.message.bytes, its {BATCH_HEADER_BYTES}-byte header included, plus the "
            f"{FRAME_HEADER_BYTES}-byte frame header must fit in half the ring): "
            f"key='max.message.bytes' value={message}"
        )
    LogConfig.from_mapping(out)  # the log's own ranges (segment.bytes, ...)
    return out


def _ratio(key: str, value: object) -> float:
    """A fraction in [0, 1] (an int, a float, or a string of one); ConfigError if not."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ConfigError(f"topic config must be a number in [0, 1]: key={key!r} value={value!r}")
    try:
        number = float(value)
    except ValueError:
        raise ConfigError(
            f"topic config must be a number in [0, 1]: key={key!r} value={value!r}"
        ) from None
    if not 0.0 <= number <= 1.0:
        raise ConfigError(f"topic config must be a number in [0, 1]: key={key!r} value={value!r}")
    return number


def parse_config_pairs(pairs: list[str]) -> dict[str, str]:
    """Parse ``key=value`` strings from the command line."""
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"config must be written key=value: got {pair!r}")
        out[key.strip()] = value.strip()
    return out
