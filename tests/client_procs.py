"""Child-process bodies for the client tests (spawned, so importable)."""

from __future__ import annotations

import struct

from engine import Producer


def produce_numbered(data_dir: str, topic: str, producer: int, count: int) -> None:
    with Producer(data_dir, acks=1) as p:
        for seq in range(count):
            p.send(topic, struct.pack("<II", producer, seq), partition=0)


def produce_values(data_dir: str, topic: str, producer: int, count: int) -> None:
    """Fixed-size values (producer, seq, 4 pad bytes) in batches of 50 to partition 0."""
    import numpy as np

    dtype = np.dtype([("producer", "<u4"), ("seq", "<u4"), ("pad", "V4")])
    with Producer(data_dir, acks=1) as p:
        for start in range(0, count, 50):
            values = np.zeros(min(50, count - start), dtype=dtype)
            values["producer"] = producer
            values["seq"] = np.arange(start, start + len(values))
            p.send_batch(topic, values, partition=0)


def poll_inherited(consumer: object, out: object) -> None:
    """In a forked child: a consumer made by the parent refuses to poll."""
    from engine import ClosedError

    try:
        consumer.poll_values(8, timeout=0)  # type: ignore[attr-defined]
        out.put("polled")  # type: ignore[attr-defined]
    except ClosedError as e:
        out.put(str(e))  # type: ignore[attr-defined]


def create_topics(
    data_dir: str, prefix: str, count: int, config: dict, go: object, out: object
) -> None:
    """Once ``go`` is set, write ``count`` one-partition topics into the tree, one after
    the other (md.create_topic: what Admin.create_topic does before it waits for the
    leaders); put ("created", name) or ("refused", message) on ``out`` for each."""
    from engine import Admin, ConfigError
    from engine import metadata as md

    with Admin(data_dir) as admin:
        zk = admin._cluster.zk
        go.wait()  # type: ignore[attr-defined]
        for i in range(count):
            name = f"{prefix}-{i}"
            try:
                md.create_topic(zk, name, 1, 1, config)
                out.put(("created", name))  # type: ignore[attr-defined]
            except ConfigError as e:
                out.put(("refused", str(e)))  # type: ignore[attr-defined]


def produce_acks_all(data_dir: str, topic: str, producer: int, count: int, out_path: str) -> None:
    """acks="all" records (producer, seq) keyed by producer; once all are acknowledged,
    writes "seq partition offset" of each to ``out_path``. A failed future fails it."""
    with Producer(data_dir, acks="all", delivery_timeout_ms=60_000) as p:
        key = b"p%d" % producer
        futures = [
            p.send(topic, struct.pack("<II", producer, seq), key=key) for seq in range(count)
        ]
        p.flush(60)
        lines = [f"{seq} {f.get(0).partition} {f.get(0).offset}\n" for seq, f in enumerate(futures)]
    with open(out_path, "w") as out:
        out.writelines(lines)


def produce_until_killed(data_dir: str, topic: str, value_bytes: int, acked_path: str) -> None:
    """acks=1 records of ``value_bytes`` (seq first) to partition 0, one after another,
    until killed; "seq offset" of each acknowledged one is written as soon as it is."""
    import os

    body = b"v" * (value_bytes - 4)
    fd = os.open(acked_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with Producer(data_dir, acks=1) as p:
        seq = 0
        while True:
            offset = p.send(topic, struct.pack("<I", seq) + body, partition=0).get().offset
            os.write(fd, b"%d %d\n" % (seq, offset))
            seq += 1


def transact(
    data_dir: str, topic: str, producer: int, rounds: int, barrier: object
) -> None:
    """Transactions of 10 records "producer:round:k" to partition 0 under transactional id
    "mp-<topic>-<producer>"; those of rounds with (round + producer) % 3 == 2 aborted (in
    each round some producers commit while another aborts). Each transaction sends 5 records, waits
    at ``barrier`` for the other producers to have sent their first 5, then the rest: the
    transactions of the processes interleave in the log."""
    with Producer(data_dir, transactional_id=f"mp-{topic}-{producer}") as p:
        p.init_transactions()
        for r in range(rounds):
            p.begin_transaction()
            for k in range(10):
                if k == 5:
                    barrier.wait(60)  # type: ignore[attr-defined]
                p.send(topic, b"%d:%d:%d" % (producer, r, k), partition=0)
            if (r + producer) % 3 == 2:
                p.abort_transaction()
            else:
                p.commit_transaction()
