"""Child-process bodies for the consumer-group and delivery tests (spawned, so importable)."""

from __future__ import annotations

import os
import time

from engine import Consumer


def consume_to_file(
    data_dir: str,
    topic: str,
    group: str,
    out_path: str,
    session_timeout_ms: int = 2000,
    strategy: str = "cooperative-sticky",
    seconds: float = 60.0,
) -> None:
    """A group member that appends "partition offset value" lines, committing after each
    poll (at-least-once), until ``seconds`` pass or it is killed."""
    with Consumer(
        topic,
        data_dir=data_dir,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        session_timeout_ms=session_timeout_ms,
        heartbeat_interval_ms=session_timeout_ms // 4,
        partition_assignment_strategy=strategy,
    ) as c, open(out_path, "a", buffering=1) as out:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            records = c.poll(timeout=0.1)
            for r in records:
                out.write(f"{r.partition} {r.offset} {r.value.decode()}\n")
            out.flush()
            os.fsync(out.fileno())
            if records:
                c.commit()
