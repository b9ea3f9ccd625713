"""Exactly-once: consume, transform, produce, and commit the input offsets in one transaction.

The pipeline reads the input topic as a consumer group member and writes one output
record per input record. Each poll's output records and the group's new input
offsets go into one transaction: both count, or neither does. If the process dies
anywhere, even half way through a commit, the restarted pipeline (same
transactional id) fences its dead self: the transaction it left is aborted (or, if
it had already decided to commit, completed), and the group resumes at the offsets
of the last committed transaction. A read_committed consumer of the output topic
then sees every input record transformed exactly once.

    python examples/exactly_once.py IN OUT --out-group pipeline --transactional-id pipe-1

Run it, kill it (kill -9) whenever you like, run it again: the output never holds a
record twice and never misses one.
"""

from __future__ import annotations

import argparse
import sys
import time

import cluster

from engine import Consumer, Producer, TopicPartition


def transform(value: bytes | None) -> bytes:
    return b"processed:" + (value or b"")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("input")
    ap.add_argument("output")
    ap.add_argument("--group", default="exactly-once")
    ap.add_argument("--transactional-id", default="exactly-once-1")
    cluster.add_arguments(ap)  # --data-dir, or --bootstrap-servers (a Kafka cluster)
    ap.add_argument("--idle", type=float, default=5.0, help="exit after this many idle seconds")
    args = ap.parse_args(argv)

    with Producer(**cluster.where(args), transactional_id=args.transactional_id) as producer:
        producer.init_transactions()  # fences an older instance, finishes its transaction
        with Consumer(
            args.input,
            **cluster.where(args),
            group_id=args.group,
            auto_offset_reset="earliest",
            enable_auto_commit=False,  # offsets are committed by the transactions
            isolation_level="read_committed",
            session_timeout_ms=1000,
            heartbeat_interval_ms=300,
            max_poll_records=50,
        ) as consumer:
            idle_since = time.monotonic()
            while time.monotonic() - idle_since < args.idle:
                records = consumer.poll(timeout=0.2)
                if not records:
                    continue
                idle_since = time.monotonic()
                producer.begin_transaction()
                positions: dict[TopicPartition, int] = {}
                for r in records:
                    producer.send(args.output, transform(r.value), key=r.key)
                    positions[TopicPartition(r.topic, r.partition)] = r.offset + 1
                producer.send_offsets_to_transaction(positions, args.group)
                producer.commit_transaction()
    return 0


if __name__ == "__main__":
    sys.exit(main())
