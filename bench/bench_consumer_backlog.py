"""A consumer draining a backlog of 100-byte records: what the read path's checks cost.

    python bench/bench_consumer_backlog.py [--rounds 5] [--records 500000]

One daemon; one-partition topics. A backlog of ``--records`` records is read once
from the segment files (written, then the daemon restarted: every record is in a
segment) and once from the ring (the consumer takes its place in the ring, then the
backlog is written: it copies the records out of the ring). Each backlog is written
in batches of 1,000 records (``send_batch``) and of one record (``send``), and read
by ``poll()`` and by ``poll_values()``, with ``check_crcs`` on and off, rounds
interleaved. Each figure is records/s, the median of ``--rounds`` rounds.
"""

from __future__ import annotations

import argparse
import inspect
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_engine import Engine

RECORD = 100
RING_BYTES = 512 << 20  # holds a whole backlog of one-record batches


def _create(engine: Engine, topic: str) -> None:
    from engine import Admin

    with Admin(engine.data_dir) as admin:
        admin.create_topic(topic, partitions=1, config={"ring.bytes": RING_BYTES})


def _fill(engine: Engine, topic: str, records: int, per_batch: int) -> None:
    from engine import Producer

    with Producer(engine.data_dir, acks=1) as p:
        if per_batch == 1:
            value = b"x" * RECORD
            for _ in range(records):
                p.send(topic, value, partition=0)
        else:
            values = np.zeros((per_batch, RECORD), dtype=np.uint8)
            for _ in range(records // per_batch):
                p.send_batch(topic, values, partition=0)
        p.flush()


def _consumer(engine: Engine, check_crcs: bool) -> Any:
    from engine import Consumer

    options = {"check_crcs": check_crcs}
    if "check_crcs" not in inspect.signature(Consumer.__init__).parameters:
        options = {}  # a build without the option (the figures before it)
    return Consumer(data_dir=engine.data_dir, auto_offset_reset="latest", **options)


def _drain(c: Any, records: int, values: bool) -> float:
    got = 0
    t0 = time.perf_counter()
    while got < records:
        if values:
            got += sum(len(a) for a in c.poll_values(RECORD, timeout=5.0, max_records=65536))
        else:
            got += len(c.poll(timeout=5.0, max_records=65536))
    return records / (time.perf_counter() - t0)


def from_segments(engine: Engine, topic: str, n: int, values: bool, check: bool) -> float:
    from engine import TopicPartition

    with _consumer(engine, check) as c:
        tp = TopicPartition(topic, 0)
        c.assign([tp])
        c.seek(tp, 0)
        return _drain(c, n, values)


def from_ring(engine: Engine, topic: str, n: int, per_batch: int, values: bool,
              check: bool) -> float:
    from engine import TopicPartition

    with _consumer(engine, check) as c:
        c.assign([TopicPartition(topic, 0)])
        c.poll(timeout=0)  # its place in the ring, at the end
        _fill(engine, topic, n, per_batch)
        return _drain(c, n, values)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--records", type=int, default=500_000)
    args = parser.parse_args(argv)
    n = args.records
    engine = Engine()
    rows = []
    try:
        engine.start()
        for per_batch in (1000, 1):
            _create(engine, f"segments-{per_batch}")
            _fill(engine, f"segments-{per_batch}", n, per_batch)
            _create(engine, f"ring-{per_batch}")
        engine.cli("stop")
        engine.cli("start")  # new rings: every record of the backlog is in a segment
        for where in ("segments", "ring"):
            for per_batch in (1000, 1):
                topic = f"{where}-{per_batch}"
                for values in (False, True):
                    rates: dict[bool, list[float]] = {True: [], False: []}
                    for i in range(args.rounds):
                        for check in (True, False):
                            if where == "segments":
                                rate = from_segments(engine, topic, n, values, check)
                            else:
                                rate = from_ring(engine, topic, n, per_batch, values, check)
                            rates[check].append(rate)
                        print(f"  {topic} {'poll_values' if values else 'poll'} round {i + 1}: "
                              f"{rates[True][-1] / 1e6:.2f} / {rates[False][-1] / 1e6:.2f} M/s",
                              file=sys.stderr)
                    rows.append((where, per_batch, "poll_values()" if values else "poll()",
                                 statistics.median(rates[True]), statistics.median(rates[False])))
    finally:
        engine.stop()
    print(f"\nMachine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"Linux {platform.release()}, Python {platform.python_version()}. {n:,} records of "
          f"{RECORD} bytes, one partition; median of {args.rounds} rounds.\n")
    print("| backlog in | records per batch | call | check_crcs=True | check_crcs=False |")
    print("|---|---:|---|---:|---:|")
    for where, per_batch, call, on, off in rows:
        print(f"| {where} | {per_batch} | {call} | {on:,.0f} | {off:,.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
