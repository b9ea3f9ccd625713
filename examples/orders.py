"""Orders, three services, three consumer groups: each group gets every order once, in order.

An order service publishes every order to the topic ``orders`` (3 partitions, keyed by
customer, so one customer's orders share a partition and keep their order). Three
services consume it, each as its own consumer group, each at its own pace:

    notification   3 processes   one partition each
    invoice        4 processes   one sits idle: there are only 3 partitions
    analytics      2 processes   one takes two partitions

Each process commits after it has handled what a poll returned (at-least-once; with
no crash that is exactly once), so a partition that moves during a rebalance is
picked up where its previous owner stopped. The example checks, per group, that
every order arrived exactly once and that every process saw each customer's orders
in the order they were placed.

    engine start
    python examples/orders.py [--orders 600] [--customers 20] [--data-dir DIR]
    python examples/orders.py --bootstrap-servers HOST:PORT   (a Kafka cluster: cluster.py)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import queue
import sys
import time
from collections import Counter, defaultdict
from typing import Any

import cluster

from engine import Admin, Consumer, Producer, UnknownGroupError, UnknownTopicError
from engine.group import reset_offsets

GROUPS = {"notification": 3, "invoice": 4, "analytics": 2}


def service(
    place: dict[str, Any], topic: str, group: str, out: Any, stop: Any, slow_ms: float
) -> None:
    """One process of one service: handle orders until told to stop."""
    with Consumer(
        topic,
        **place,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        partition_assignment_strategy="cooperative-sticky",
        session_timeout_ms=3000,
        heartbeat_interval_ms=1000,
        max_poll_records=50,
    ) as consumer:
        pid = os.getpid()
        while not stop.is_set():
            records = consumer.poll(timeout=0.2)
            handled = []
            for r in records:
                order = json.loads(r.value or b"{}")
                handled.append((group, pid, order["customer"], order["seq"], r.partition, r.offset))
                if slow_ms:
                    time.sleep(slow_ms / 1000)  # each service works at its own pace
            if handled:
                out.put(handled)
                consumer.commit()  # handled, then committed: at-least-once
            out.put([("alive", group, pid, sorted(tp.partition for tp in consumer.assignment()))])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    cluster.add_arguments(ap)  # --data-dir, or --bootstrap-servers (a Kafka cluster)
    ap.add_argument("--topic", default="orders")
    ap.add_argument("--orders", type=int, default=600)
    ap.add_argument("--customers", type=int, default=20)
    ap.add_argument("--timeout", type=float, default=60.0)
    args = ap.parse_args(argv)
    place = cluster.where(args)

    with Admin(**place) as admin:
        with contextlib.suppress(UnknownTopicError):
            admin.delete_topic(args.topic)  # a fresh run: a fresh topic ...
        admin.create_topic(args.topic, partitions=3)
        for group in GROUPS:  # ... and the groups start from its beginning (a new
            with contextlib.suppress(UnknownGroupError):  # group does: "earliest")
                reset_offsets(admin, group, args.topic, "earliest")

    ctx = mp.get_context("spawn")
    out, stop = ctx.Queue(), ctx.Event()
    pace = {"notification": 0.0, "invoice": 0.5, "analytics": 1.0}
    procs = [
        ctx.Process(target=service, args=(place, args.topic, g, out, stop, pace[g]))
        for g, n in GROUPS.items()
        for _ in range(n)
    ]
    for p in procs:
        p.start()

    received: dict[str, list[tuple[Any, ...]]] = defaultdict(list)
    assignment: dict[str, dict[int, list[int]]] = defaultdict(dict)

    def collect(wait: float) -> None:
        try:
            batch = out.get(timeout=wait)
        except queue.Empty:
            return
        for item in batch:
            if item[0] == "alive":
                assignment[item[1]][item[2]] = item[3]
            else:
                received[item[0]].append(item)

    try:
        with Producer(**place, acks=1) as producer:
            seqs: Counter[str] = Counter()
            for i in range(args.orders):
                customer = f"customer-{i % args.customers}"
                order = {"order_id": i, "customer": customer, "seq": seqs[customer]}
                seqs[customer] += 1
                producer.send(args.topic, json.dumps(order).encode(), key=customer.encode())
                if i % 50 == 0:
                    collect(0.001)
        deadline = time.monotonic() + args.timeout
        while any(len(received[g]) < args.orders for g in GROUPS):
            if time.monotonic() > deadline:
                print("timed out:", {g: len(received[g]) for g in GROUPS}, file=sys.stderr)
                return 1
            collect(0.2)
        settle = time.monotonic() + 1.0  # a duplicate would arrive now, if there were one
        while time.monotonic() < settle:
            collect(0.1)
    finally:
        stop.set()
        for p in procs:
            p.join(15)
            if p.is_alive():
                p.kill()

    ok = True
    for group, n in GROUPS.items():
        got = received[group]
        orders = Counter((c, s) for _, _, c, s, _, _ in got)
        duplicates = sum(v - 1 for v in orders.values())
        in_order = True
        last: dict[tuple[int, str], int] = {}
        for _, pid, customer, seq, _, _ in got:
            if last.get((pid, customer), -1) >= seq:
                in_order = False
            last[(pid, customer)] = seq
        every_once = len(orders) == args.orders and duplicates == 0
        ok &= every_once and in_order
        shares = ", ".join(
            f"pid {pid}: {parts or 'idle'}" for pid, parts in sorted(assignment[group].items())
        )
        print(
            f"{group:<13} {n} processes  {len(got)} orders  duplicates {duplicates}  "
            f"every order once: {every_once}  per-customer order: {in_order}  [{shares}]"
        )
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
