"""Child-process bodies for the client tests (spawned, so importable)."""

from __future__ import annotations

import struct

from engine import Producer


def produce_numbered(data_dir: str, topic: str, producer: int, count: int) -> None:
    with Producer(data_dir, acks=1) as p:
        for seq in range(count):
            p.send(topic, struct.pack("<II", producer, seq), partition=0)
