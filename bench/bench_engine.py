"""The data plane's own benchmark (issue 2): one partition, 100-byte records, acks=1.

    python bench/bench_engine.py [--rounds 5]        # a markdown table of medians
    pytest bench/bench_engine.py --benchmark-only    # the same cases under pytest-benchmark

Cases: per-record ``send()`` from one process; ``send_batch`` of 1,000-record numpy
batches from one process; 4 producer processes at once (per-record); a consumer
draining concurrently with one producer; ``engine start`` until ready; an idle
daemon's CPU and resident memory (all its processes). Each figure is the median of
``--rounds`` rounds measured in one run, on one daemon (3 brokers).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

RECORD = 100
PER_ROUND = 200_000
BATCH = 1000
PRODUCERS = 4
SPAWN = mp.get_context("spawn")


class Engine:
    """A daemon in a temporary data dir, started with the CLI, always stopped."""

    def __init__(self) -> None:
        self.tmp = tempfile.TemporaryDirectory(prefix="bench-engine-")
        self.data_dir = str(Path(self.tmp.name) / "data")
        self.start_s = 0.0

    def cli(self, *args: str) -> None:
        subprocess.run([sys.executable, "-m", "engine", *args, "--data-dir", self.data_dir],
                       check=True, capture_output=True)

    def start(self) -> None:
        t0 = time.perf_counter()
        self.cli("start")
        self.start_s = time.perf_counter() - t0

    def stop(self) -> None:
        subprocess.run([sys.executable, "-m", "engine", "stop", "--data-dir", self.data_dir],
                       capture_output=True)
        self.tmp.cleanup()

    def topic(self, name: str, partitions: int = 1) -> str:
        from engine import Admin

        with Admin(self.data_dir) as admin:
            if name not in admin.list_topics():
                admin.create_topic(name, partitions=partitions,
                                   config={"ring.bytes": 256 << 20})
        return name

    def pids(self) -> list[int]:
        from engine.datadir import DataDir

        info = DataDir.resolve(self.data_dir).read_runtime()
        return [int(info["pid"]), *(int(p) for p in info["processes"].values())]


def _send_records(data_dir: str, topic: str, n: int, go: Any = None, done: Any = None) -> float:
    from engine import Producer

    value = b"x" * RECORD
    with Producer(data_dir, acks=1) as p:
        send = p.send
        if go is not None:
            go.wait()
        t0 = time.perf_counter()
        for _ in range(n):
            send(topic, value, partition=0)
        elapsed = time.perf_counter() - t0
    if done is not None:
        done.put(elapsed)
    return elapsed


def per_record_send(engine: Engine) -> float:
    """records/s of one process calling send() per record."""
    topic = engine.topic("bench-one")
    return PER_ROUND / _send_records(engine.data_dir, topic, PER_ROUND)


def batched_send(engine: Engine) -> float:
    from engine import Producer

    topic = engine.topic("bench-one")
    values = np.zeros((BATCH, RECORD), dtype=np.uint8)
    rounds = 5 * PER_ROUND // BATCH
    with Producer(engine.data_dir, acks=1) as p:
        t0 = time.perf_counter()
        for _ in range(rounds):
            p.send_batch(topic, values, partition=0)
        return rounds * BATCH / (time.perf_counter() - t0)


def four_producers(engine: Engine) -> float:
    topic = engine.topic("bench-one")
    go, done = SPAWN.Event(), SPAWN.Queue()
    procs = [SPAWN.Process(target=_send_records, args=(engine.data_dir, topic,
                                                      PER_ROUND // 2, go, done))
             for _ in range(PRODUCERS)]
    for proc in procs:
        proc.start()
    try:
        time.sleep(1.0)  # let every process connect before the common start
        t0 = time.perf_counter()
        go.set()
        for _ in procs:
            done.get(timeout=120)
        return PRODUCERS * (PER_ROUND // 2) / (time.perf_counter() - t0)
    finally:
        for proc in procs:
            proc.join(30)
            if proc.is_alive():
                proc.kill()


def consumer_keeps_up(engine: Engine) -> float:
    """records/s a consumer receives while one producer process sends (wall clock)."""
    from engine import Consumer, TopicPartition

    topic = engine.topic(f"bench-drain-{time.monotonic_ns()}")
    with Consumer(data_dir=engine.data_dir, auto_offset_reset="earliest") as c:
        c.assign([TopicPartition(topic, 0)])
        proc = SPAWN.Process(target=_send_records, args=(engine.data_dir, topic, PER_ROUND))
        proc.start()
        try:
            got = 0
            t0 = 0.0
            while got < PER_ROUND:
                for chunk in c.poll_values(RECORD, timeout=5.0, max_records=65536):
                    if not t0:
                        t0 = time.perf_counter()
                    got += len(chunk)
            return PER_ROUND / (time.perf_counter() - t0)
        finally:
            proc.join(60)
            if proc.is_alive():
                proc.kill()


def idle_footprint(engine: Engine, seconds: float = 10.0) -> tuple[float, float]:
    """(CPU % of one core, proportional resident MB) of all the daemon's processes, idle.

    Memory is PSS (each shared page divided among the processes mapping it), so the
    shared-memory rings count once, not once per process."""
    def ticks(pid: int) -> int:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])

    def rss(pid: int) -> int:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
        return 0

    time.sleep(1.0)
    pids = engine.pids()
    before = sum(ticks(p) for p in pids)
    time.sleep(seconds)
    used = (sum(ticks(p) for p in pids) - before) / os.sysconf("SC_CLK_TCK")
    return 100 * used / seconds, sum(rss(p) for p in pids) / 1e6


CASES: dict[str, Callable[[Engine], float]] = {
    "send() per record, 1 process": per_record_send,
    f"send_batch of {BATCH}, 1 process": batched_send,
    f"send() per record, {PRODUCERS} processes together": four_producers,
    "consumer draining while 1 producer sends": consumer_keeps_up,
}


# -- pytest-benchmark -----------------------------------------------------------


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    e = Engine()
    try:
        e.start()
        yield e
    finally:
        e.stop()


@pytest.mark.parametrize("case", list(CASES))
def test_engine_data_plane(benchmark: Any, engine: Engine, case: str) -> None:
    rates: list[float] = []
    benchmark.pedantic(lambda: rates.append(CASES[case](engine)), rounds=3, iterations=1)
    benchmark.extra_info["records_per_s_median"] = statistics.median(rates)


# -- script -----------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    engine = Engine()
    try:
        engine.start()
        print(f"engine start: ready in {engine.start_s:.2f} s", file=sys.stderr)
        rows = []
        for name, case in CASES.items():
            rates = []
            for i in range(args.rounds):
                rates.append(case(engine))
                print(f"  {name}: round {i + 1}/{args.rounds}: {rates[-1] / 1e6:.2f} M/s",
                      file=sys.stderr)
            rows.append((name, statistics.median(rates), min(rates), max(rates)))
    finally:
        engine.stop()
    idle = Engine()  # a fresh daemon with one 4-partition topic of default settings
    try:
        idle.start()
        from engine import Admin

        with Admin(idle.data_dir) as admin:
            admin.create_topic("idle", partitions=4)
        cpu, mb = idle_footprint(idle)
    finally:
        idle.stop()
    print(f"\nMachine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"Linux {platform.release()}, Python {platform.python_version()}. "
          f"{RECORD}-byte records, one partition, acks=1; median of {args.rounds} rounds.\n")
    print("| case | records/s (median) | min | max |")
    print("|---|---:|---:|---:|")
    for name, med, lo, hi in rows:
        print(f"| {name} | {med:,.0f} | {lo:,.0f} | {hi:,.0f} |")
    print(f"| `engine start` until ready | {engine.start_s:.2f} s | | |")
    print(f"| idle daemon (3 brokers, one 4-partition topic), all processes | "
          f"{cpu:.2f} % of a core, {mb:.0f} MB (PSS) | | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
