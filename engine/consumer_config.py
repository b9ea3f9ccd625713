"""The consumer's options: kafka-python's names and defaults, checked once, in one object.

:class:`ConsumerConfig` is built from the keyword arguments of ``Consumer(...)`` (the
engine's, and the Kafka cluster's in engine.kafka_client.consumer); anything wrong
raises ConfigError naming the option and its value, before the consumer connects.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

from engine import offset_store as store
from engine.assignor import strategy as find_strategy
from engine.errors import ConfigError
from engine.record import TopicPartition

#: auto_offset_reset's choices: where a partition without a valid position starts.
RESETS = ("earliest", "latest", "none")
#: isolation_level's choices.
ISOLATION_LEVELS = ("read_uncommitted", "read_committed")

#: on_assign / on_revoke: called with the partitions this consumer takes or gives up.
RebalanceCallback = Callable[[set[TopicPartition]], None]


@dataclass(frozen=True)
class ConsumerConfig:
    """Every option of a Consumer, checked (see Consumer.__init__ for their meaning)."""

    group_id: str | None = None
    auto_offset_reset: str = "latest"
    enable_auto_commit: bool = True
    auto_commit_interval_ms: int = 5000
    partition_assignment_strategy: str = "range"
    session_timeout_ms: int = 10_000
    heartbeat_interval_ms: int = 3000
    max_poll_interval_ms: int = 300_000
    on_assign: RebalanceCallback | None = None
    on_revoke: RebalanceCallback | None = None
    isolation_level: str = "read_uncommitted"
    max_poll_records: int = 500
    fetch_max_bytes: int = 1 << 20
    consumer_timeout_ms: float = float("inf")
    client_id: str = ""
    poll_spin_us: int = 100
    check_crcs: bool = True

    @classmethod
    def from_options(cls, **options: Any) -> ConsumerConfig:
        """The config of ``Consumer(**options)``; ConfigError for an unknown option or a
        bad value (one line naming it)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ConfigError(f"unknown consumer option: {unknown[0]!r}")
        c = cls(**options)
        if c.group_id is not None:
            store.validate_group_id(c.group_id)
            if options.get("client_id") is not None:
                store.validate_client_id(c.client_id)
        find_strategy(c.partition_assignment_strategy)
        for name in ("auto_commit_interval_ms", "session_timeout_ms", "heartbeat_interval_ms",
                     "max_poll_interval_ms"):  # fmt: skip
            value = getattr(c, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be an int >= 1: {name}={value!r}")
        if c.heartbeat_interval_ms >= c.session_timeout_ms:
            raise ConfigError(
                "heartbeat_interval_ms must be below session_timeout_ms: "
                f"heartbeat_interval_ms={c.heartbeat_interval_ms} "
                f"session_timeout_ms={c.session_timeout_ms}"
            )
        for name in ("enable_auto_commit", "check_crcs"):
            if not isinstance(getattr(c, name), bool):
                raise ConfigError(f"{name} must be a bool: {name}={getattr(c, name)!r}")
        for name in ("on_assign", "on_revoke"):
            cb = getattr(c, name)
            if cb is not None and not callable(cb):
                raise ConfigError(f"{name} must be callable: {name}={cb!r}")
        if c.isolation_level not in ISOLATION_LEVELS:
            raise ConfigError(
                f"isolation_level must be one of {ISOLATION_LEVELS}: "
                f"isolation_level={c.isolation_level!r}"
            )
        if c.auto_offset_reset not in RESETS:
            raise ConfigError(
                f"auto_offset_reset must be one of {RESETS}: "
                f"auto_offset_reset={c.auto_offset_reset!r}"
            )
        spin = c.poll_spin_us
        if isinstance(spin, bool) or not isinstance(spin, int) or spin < 0:
            raise ConfigError(f"poll_spin_us must be an int >= 0: poll_spin_us={spin!r}")
        if not isinstance(c.max_poll_records, int) or c.max_poll_records < 1:
            raise ConfigError(
                f"max_poll_records must be >= 1: max_poll_records={c.max_poll_records!r}"
            )
        if not c.client_id:
            object.__setattr__(c, "client_id", f"consumer-{os.getpid()}")
        return c
