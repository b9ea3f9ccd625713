"""At-least-once: process, then commit. A crash may repeat records; it never loses one.

The consumer handles what a poll returned and commits only afterwards. If the process
dies between the handling and the commit, the restarted consumer (or another member
of the group) resumes at the last committed offsets and handles those records again:
nothing is lost, some records are handled twice. (Make the handling idempotent, or see
exactly-once.)

    python examples/at_least_once.py TOPIC --out handled.txt [--crash-after-polls N]

``--crash-after-polls N`` kills the process with SIGKILL at the worst moment of the
N-th poll that returned records: right after the handling, before the commit.
Handled records are appended to ``--out`` as "partition offset value" lines (fsynced).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time

import cluster

from engine import Consumer


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("topic")
    ap.add_argument("--out", required=True, help="append handled records here")
    ap.add_argument("--group", default="at-least-once")
    cluster.add_arguments(ap)  # --data-dir, or --bootstrap-servers (a Kafka cluster)
    ap.add_argument("--crash-after-polls", type=int, default=None, metavar="N")
    ap.add_argument("--idle", type=float, default=5.0, help="exit after this many idle seconds")
    args = ap.parse_args(argv)

    polls = 0
    with Consumer(
        args.topic,
        **cluster.where(args),
        group_id=args.group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        session_timeout_ms=2000,
        heartbeat_interval_ms=500,
        max_poll_records=10,
    ) as consumer, open(args.out, "a") as out:
        idle_since = time.monotonic()
        while time.monotonic() - idle_since < args.idle:
            records = consumer.poll(timeout=0.2)
            if not records:
                continue
            idle_since = time.monotonic()
            polls += 1
            for r in records:  # 1. handle
                out.write(f"{r.partition} {r.offset} {(r.value or b'').decode()}\n")
            out.flush()
            os.fsync(out.fileno())
            if polls == args.crash_after_polls:
                os.kill(os.getpid(), signal.SIGKILL)  # the worst moment: handled, uncommitted
            consumer.commit()  # 2. commit
    return 0


if __name__ == "__main__":
    sys.exit(main())
