"""The producer's options: Kafka's names and defaults, checked once, in one object.

:class:`ProducerConfig` is built from the keyword arguments of ``Producer(...)``;
anything wrong raises ConfigError naming the option and its value, before the
producer connects. The defaults are Kafka 3.0's and later: ``acks="all"`` with
idempotence on. As in Kafka, an application that asks for ``acks`` 0 or 1 without
saying anything of idempotence gets a producer without it (idempotence needs
acks="all"); asking for both is an error.
"""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass
from typing import Any

from engine import transaction as txn
from engine.compression import Codec
from engine.errors import ConfigError


class Acks(enum.IntEnum):
    """When a send counts as done (Kafka's ``acks``)."""

    NONE = 0
    """Once the record is in the leader's ring; nothing waits for the log or replicas
    (the future carries the offset it got)."""
    LEADER = 1
    """Once the leader's ring holds it: the leader's log will (its broker drains the
    ring, also after a crash of the broker)."""
    ALL = -1
    """Once every in-sync replica holds it (the leader's high watermark passed it), and
    only while the ISR has at least ``min.insync.replicas`` members."""


_ACKS = {0: Acks.NONE, 1: Acks.LEADER, -1: Acks.ALL, "all": Acks.ALL, "0": Acks.NONE,
         "1": Acks.LEADER, "-1": Acks.ALL}  # fmt: skip
#: Kafka's limit for an idempotent producer: the batches of one partition that may be
#: appended and not yet committed at once.
MAX_IN_FLIGHT_IDEMPOTENT = 5


@dataclass(frozen=True)
class ProducerConfig:
    """Every option of a Producer, checked. Times are milliseconds, sizes bytes."""

    acks: Acks = Acks.ALL
    enable_idempotence: bool = True
    transactional_id: str | None = None
    transaction_timeout_ms: int = 60_000
    #: How long a batch may wait for more records while the partition has batches in
    #: flight (a partition with none sends at once: see engine.accumulator).
    linger_ms: int = 5
    #: Kafka's Java client takes 16 KiB; librdkafka 1 MB. A batch costs the sender one
    #: pass (a ring append, a wait for the ISR, its futures) whatever its size: at
    #: 100-byte records, 16 KiB is a pass every 130 records, and per-record acks="all"
    #: ran at half the rate it reaches with 128 KiB (README, Benchmarks). A batch only
    #: grows this large while earlier ones wait for the ISR, so a quiet stream's
    #: latency is the same.
    batch_size: int = 128 << 10
    buffer_memory: int = 32 << 20
    max_block_ms: int = 60_000
    delivery_timeout_ms: int = 120_000
    retry_backoff_ms: int = 100
    max_in_flight_requests_per_connection: int = 5
    client_id: str = ""
    #: Kafka's compression.type: none, gzip, snappy, lz4 or zstd (engine.compression).
    compression_type: str = "none"

    @classmethod
    def from_options(cls, **options: Any) -> ProducerConfig:
        """The config of ``Producer(**options)``; ConfigError for an unknown option or a
        bad value (one line naming it)."""
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(options) - known)
        if unknown:
            raise ConfigError(f"unknown producer option: {unknown[0]!r}")
        acks_given = options.get("acks")
        idempotence = options.get("enable_idempotence")
        tid = options.get("transactional_id")
        if idempotence is not None and not isinstance(idempotence, bool):
            raise ConfigError(
                f"enable_idempotence must be a bool: enable_idempotence={idempotence!r}"
            )
        if tid is not None:
            txn.validate_transactional_id(tid)
        if acks_given is not None and acks_given not in _ACKS:
            raise ConfigError(f"acks must be 0, 1 or 'all': acks={acks_given!r}")
        acks = Acks.ALL if acks_given is None else _ACKS[acks_given]
        if idempotence is None:
            # Kafka's rule: idempotence is on by default unless the application chose a
            # setting it cannot have (acks 0 or 1) without asking for it.
            idempotence = tid is not None or acks == Acks.ALL
        if tid is not None and not idempotence:
            raise ConfigError(
                "a transactional producer is idempotent: enable_idempotence=False with "
                f"transactional_id={tid!r}"
            )
        if idempotence and acks != Acks.ALL:
            raise ConfigError(
                "an idempotent or transactional producer needs acks='all' (Kafka's rule: "
                f"a retry must know what the ISR holds): acks={acks_given!r}"
            )
        values: dict[str, Any] = {"acks": acks, "enable_idempotence": idempotence}
        for name in ("transaction_timeout_ms", "linger_ms", "batch_size", "buffer_memory",
                     "max_block_ms", "delivery_timeout_ms", "retry_backoff_ms",
                     "max_in_flight_requests_per_connection"):  # fmt: skip
            if name not in options:
                continue
            value = options[name]
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"{name} must be a non-negative int: {name}={value!r}")
            values[name] = value
        if values.get("batch_size", cls.batch_size) < 1:
            raise ConfigError(f"batch_size must be >= 1: batch_size={values['batch_size']}")
        in_flight = values.get(
            "max_in_flight_requests_per_connection", cls.max_in_flight_requests_per_connection
        )
        if in_flight < 1 or (idempotence and in_flight > MAX_IN_FLIGHT_IDEMPOTENT):
            limit = MAX_IN_FLIGHT_IDEMPOTENT if idempotence else "any"
            raise ConfigError(
                "max_in_flight_requests_per_connection must be >= 1 (at most "
                f"{MAX_IN_FLIGHT_IDEMPOTENT} for an idempotent producer): "
                f"max_in_flight_requests_per_connection={in_flight} (limit {limit})"
            )
        linger = values.get("linger_ms", cls.linger_ms)
        delivery = values.get("delivery_timeout_ms", cls.delivery_timeout_ms)
        if delivery < linger:
            raise ConfigError(
                "delivery_timeout_ms must be at least linger_ms: "
                f"delivery_timeout_ms={delivery} linger_ms={linger}"
            )
        client_id = options.get("client_id")
        if client_id is not None and (not isinstance(client_id, str) or not client_id):
            raise ConfigError(f"client_id must be a non-empty str: client_id={client_id!r}")
        values["client_id"] = client_id or f"producer-{os.getpid()}"
        if "compression_type" in options:
            compression = options["compression_type"]
            values["compression_type"] = Codec.named(compression if compression else "none").label
        values["transactional_id"] = tid
        return cls(**values)

    @property
    def transactional(self) -> bool:
        return self.transactional_id is not None

    @property
    def codec(self) -> Codec:
        """The codec of ``compression_type``."""
        return Codec.named(self.compression_type)
