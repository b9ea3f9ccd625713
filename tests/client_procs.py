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
