"""`engine demo`: a small IoT fleet against the running daemon.

P producer processes each simulate many devices sending ~100-byte sensor
readings keyed by device id to the topic ``iot-demo`` (4 partitions); one
consumer process reads them concurrently. Prints progress every second, then
a table: records sent and received, throughput, and end-to-end latency
percentiles (send time is carried in the record; CLOCK_MONOTONIC is
system-wide on Linux, so two processes can compare it).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import struct
import sys
import time
from typing import Any

import numpy as np

TOPIC = "iot-demo"
READING = struct.Struct("<qI4f")  # send time ns, device, temperature, humidity, pressure, battery
PAD = b"\0" * (100 - READING.size)


def _producer(
    data_dir: str | None, index: int, devices: int, seconds: float, out: Any, rate: float
) -> None:
    from engine import Producer

    rng = np.random.default_rng(index)
    keys = [b"dev-%05d" % d for d in range(index, devices, max(1, out[1]))]
    sent = 0
    with Producer(data_dir, acks=1) as p:
        start = time.monotonic()
        end = start + seconds
        send = p.send
        per_second = rate / out[1]  # this producer's share of the fleet's rate
        while time.monotonic() < end:
            temps = rng.normal(21.0, 2.0, size=len(keys))
            for i, (key, temp) in enumerate(zip(keys, temps, strict=True)):
                if i % 16 == 0:  # pace in small steps: no bursts for readers to queue behind
                    ahead = sent / per_second - (time.monotonic() - start)
                    if ahead > 0:
                        time.sleep(ahead)
                value = READING.pack(time.monotonic_ns(), int(key[4:]), temp, 45.0, 1013.0, 3.7)
                send(TOPIC, value + PAD, key=key)
                sent += 1
    out[0].put(sent)


def _consumer(data_dir: str | None, expected: Any, out: Any, seconds: float) -> None:
    from engine import Consumer

    latencies: list[int] = []
    received = 0
    with Consumer(TOPIC, data_dir=data_dir, auto_offset_reset="latest") as c:
        for tp in c.assignment():
            c.seek_to_end(tp)
        out.put(("ready", 0, []))
        deadline = time.monotonic() + seconds + 30
        while time.monotonic() < deadline:
            records = c.poll(timeout=0.2, max_records=5000)
            now = time.monotonic_ns()
            for r in records:
                latencies.append(now - READING.unpack_from(r.value or PAD)[0])
            received += len(records)
            if expected.value >= 0 and received >= expected.value:
                break
    sample = latencies[:: max(1, len(latencies) // 100_000)]
    out.put(("done", received, sample))


def run_demo(
    data_dir: str | None,
    devices: int = 1000,
    producers: int = 4,
    seconds: float = 5.0,
    rate: float = 50_000,
) -> int:
    from engine import Admin

    with Admin(data_dir) as admin:
        if TOPIC not in admin.list_topics():
            admin.create_topic(TOPIC, partitions=4)
    ctx = mp.get_context("spawn")
    results: Any = ctx.Queue()
    sent_q: Any = ctx.Queue()
    expected = ctx.Value("q", -1)
    consumer = ctx.Process(target=_consumer, args=(data_dir, expected, results, seconds))
    consumer.start()
    procs: list[Any] = []
    try:
        assert results.get(timeout=60)[0] == "ready"
        print(
            f"IoT demo: {producers} producer processes x {devices // producers} devices, "
            f"{rate:,.0f} readings/s for {seconds:.0f} s, topic {TOPIC!r} (4 partitions), "
            f"1 consumer",
            file=sys.stderr,
        )
        t0 = time.monotonic()
        procs = [
            ctx.Process(
                target=_producer, args=(data_dir, i, devices, seconds, (sent_q, producers), rate)
            )
            for i in range(producers)
        ]
        for p in procs:
            p.start()
        while any(p.is_alive() for p in procs):
            time.sleep(1.0)
            print(f"  {time.monotonic() - t0:5.1f} s ...", file=sys.stderr)
        total = sum(sent_q.get(timeout=30) for _ in procs)
        expected.value = total
        _, received, sample = results.get(timeout=60)
        wall = time.monotonic() - t0
    finally:
        for p in [*procs, consumer]:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
    lat = np.array(sample, dtype=np.int64) / 1000.0
    p50, p99, p999 = (np.percentile(lat, q) if len(lat) else float("nan") for q in (50, 99, 99.9))
    print()
    print(
        "| producers | records sent | records received | records/s | p50 µs | p99 µs | p99.9 µs |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|")
    print(
        f"| {producers} | {total:,} | {received:,} | {total / seconds:,.0f} | {p50:,.1f} | "
        f"{p99:,.1f} | {p999:,.1f} |"
    )
    print("\n(paced at the fleet rate asked for; run with --rate 1e9 for the unpaced maximum,")
    print(" where latency then measures queueing behind the consumer)")
    print(
        f"\n(end-to-end latency from send to consumer receipt; wall time {wall:.1f} s; "
        f"pid {os.getpid()})"
    )
    return 0 if received == total else 1
