"""At-most-once: commit, then process. A crash may lose records; it never repeats one.

The consumer commits what a poll returned *before* handling it. If the process dies
between the commit and the end of the handling, the restarted consumer (or another
member of the group) resumes after the committed offsets: the unhandled records are
skipped, never handled twice.

    python examples/at_most_once.py TOPIC --out handled.txt [--crash-after-polls N]

``--crash-after-polls N`` kills the process with SIGKILL at the worst moment of the
N-th poll that returned records: right after the commit, before any handling.
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
    ap.add_argument("--group", default="at-most-once")
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
            consumer.commit()  # 1. commit: these records count as handled from now on
            if polls == args.crash_after_polls:
                os.kill(os.getpid(), signal.SIGKILL)  # the worst moment: committed, unhandled
            for r in records:  # 2. handle
                out.write(f"{r.partition} {r.offset} {(r.value or b'').decode()}\n")
            out.flush()
            os.fsync(out.fileno())
    return 0


if __name__ == "__main__":
    sys.exit(main())
