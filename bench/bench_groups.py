"""Consumer-group benchmark (issue 5): throughput with 1, 2 and 4 members over 4 partitions,
and the time from a member's SIGKILL to its partitions being consumed again.

    python bench/bench_groups.py [--records 400000] [--session-ms 2000] [--data-dir DIR]

Without ``--data-dir`` it starts a daemon of its own in a temporary directory and stops it.
Targets (from the issue): a group of 4 consumes at least twice as fast as 1 member where
the machine has the cores; reassignment within the session timeout plus one second.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from typing import Any

import numpy as np

from engine import Admin, Consumer, Producer

PARTITIONS = 4
VALUE = 100


def member(data_dir: str, topic: str, group: str, session_ms: int, out: Any, stop: Any) -> None:
    """Consume until stopped; report (pid, partitions, records, first/last receipt time)."""
    with Consumer(
        topic,
        data_dir=data_dir,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        session_timeout_ms=session_ms,
        heartbeat_interval_ms=session_ms // 4,
        partition_assignment_strategy="cooperative-sticky",
        max_poll_records=10_000,
    ) as c:
        n = 0
        first = last = 0.0
        reported = 0.0
        while not stop.is_set():
            chunks = c.poll_values(VALUE, timeout=0.05)
            got = sum(len(v) for v in chunks)
            now = time.monotonic()
            if got:
                first = first or now
                last = now
                n += got
            if got or now - reported > 0.05:
                parts = sorted(tp.partition for tp in c.assignment())
                out.put((os.getpid(), parts, n, first, last, now))
                reported = now


def run_group(
    data_dir: str, topic: str, members: int, records: int, session_ms: int
) -> float:
    ctx = mp.get_context("spawn")
    out, stop = ctx.Queue(), ctx.Event()
    group = f"bench-{members}-{uuid.uuid4().hex[:6]}"
    procs = [
        ctx.Process(target=member, args=(data_dir, topic, group, session_ms, out, stop))
        for _ in range(members)
    ]
    for p in procs:
        p.start()
    state: dict[int, tuple[Any, ...]] = {}
    try:
        while sum(s[1] for s in state.values()) < records:
            pid, *rest = out.get(timeout=60)  # (partitions, records, first, last, now)
            state[pid] = tuple(rest)
    finally:
        stop.set()
        for p in procs:
            p.join(10)
    first = min(s[2] for s in state.values() if s[1])
    last = max(s[3] for s in state.values() if s[1])
    return records / (last - first)


def run_kill(data_dir: str, topic: str, session_ms: int) -> float:
    """Two members on a live stream; SIGKILL one; seconds until the other reads its partitions."""
    ctx = mp.get_context("spawn")
    out, stop = ctx.Queue(), ctx.Event()
    group = f"bench-kill-{uuid.uuid4().hex[:6]}"
    procs = [
        ctx.Process(target=member, args=(data_dir, topic, group, session_ms, out, stop))
        for _ in range(2)
    ]
    for p in procs:
        p.start()
    state: dict[int, tuple[Any, ...]] = {}
    with Producer(data_dir) as producer:
        batch = np.zeros((400, VALUE), dtype=np.uint8)

        def pump(until: float) -> None:
            while time.monotonic() < until:
                for p in range(PARTITIONS):
                    producer.send_batch(topic, batch, partition=p)
                while not out.empty():
                    pid, *rest = out.get()
                    state[pid] = tuple(rest)
                time.sleep(0.005)

        while len([s for s in state.values() if s[0]]) < 2:
            pump(time.monotonic() + 0.1)
        victim = next(p for p in procs if p.pid in state and state[p.pid][0])
        survivor = next(pid for pid in state if pid != victim.pid)
        assert victim.pid is not None
        os.kill(victim.pid, signal.SIGKILL)
        killed = time.monotonic()
        while len(state[survivor][0]) < PARTITIONS:
            pump(time.monotonic() + 0.01)
        before = state[survivor][1]
        while state[survivor][1] <= before + 400 * PARTITIONS:  # records of every partition
            pump(time.monotonic() + 0.01)
        took = state[survivor][3] - killed
    stop.set()
    for p in procs:
        p.join(10)
    return took


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--records", type=int, default=400_000)
    ap.add_argument("--session-ms", type=int, default=2000)
    ap.add_argument("--data-dir", default=None)
    args = ap.parse_args(argv)
    own = args.data_dir is None
    data_dir = args.data_dir or tempfile.mkdtemp(prefix="engine-bench-groups-")
    engine = [sys.executable, "-m", "engine"]
    if own:
        subprocess.run([*engine, "start", "--data-dir", data_dir], check=True)
    try:
        topic = f"bench-groups-{uuid.uuid4().hex[:6]}"
        with Admin(data_dir) as admin:
            admin.create_topic(topic, partitions=PARTITIONS, config={"ring.bytes": 64 << 20})
        with Producer(data_dir) as producer:
            values = np.zeros((1000, VALUE), dtype=np.uint8)
            for i in range(args.records // 1000):
                producer.send_batch(topic, values, partition=i % PARTITIONS)
        records = args.records // 1000 * 1000
        print(f"cores {os.cpu_count()}, {records} records of {VALUE} B, {PARTITIONS} partitions")
        rates = {}
        for members in (1, 2, 4):
            rates[members] = run_group(data_dir, topic, members, records, args.session_ms)
            print(f"  {members} member(s): {rates[members] / 1e6:6.2f} M records/s "
                  f"({rates[members] / rates[1]:.2f}x)")
        took = run_kill(data_dir, topic, args.session_ms)
        target = args.session_ms / 1000 + 1
        print(f"  SIGKILL to its partitions consumed again: {took:.2f} s "
              f"(target: session {args.session_ms / 1000:.1f} s + 1 s = {target:.1f} s)")
    finally:
        if own:
            subprocess.run([*engine, "stop", "--data-dir", data_dir], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
