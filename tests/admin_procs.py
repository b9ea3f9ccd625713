"""Child-process bodies for the admin tests (spawned, so importable)."""

from __future__ import annotations

import os
import time

from engine import Producer


def produce_paced(data_dir: str, topic: str, acked_path: str, stop_path: str) -> None:
    """acks="all" records "<seq>" to partition 0, one after another (about 500/s), until
    ``stop_path`` exists; "seq offset" of each is written once it is acknowledged."""
    with Producer(data_dir, acks="all", delivery_timeout_ms=60_000) as p, open(
        acked_path, "a", buffering=1
    ) as out:
        seq = 0
        while not os.path.exists(stop_path):
            meta = p.send(topic, b"%d" % seq, partition=0).get(timeout=60)
            out.write(f"{seq} {meta.offset}\n")
            seq += 1
            time.sleep(0.002)
