"""Device state: a compacted topic holds the latest reading of every device.

Devices report readings to the topic ``device-state``, keyed by device id. The topic is
compacted (``cleanup.policy=compact``): the brokers' cleaners keep the last record of
each key, so the topic does not grow with the readings, only with the devices. A
decommissioned device is deleted with a tombstone (a record with a null value). A
service that starts reads the topic from its beginning and rebuilds the table of
every device's latest reading, however many readings were sent before.

    engine start
    python examples/device_state.py [--devices 200] [--rounds 50] [--data-dir DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections.abc import Iterable

from engine import Admin, Consumer, EngineError, Producer, TopicPartition, UnknownTopicError

TOPIC = "device-state"
#: Small segments, so that the cleaner has sealed segments to clean within seconds.
TOPIC_CONFIG = {
    "cleanup.policy": "compact",
    "segment.bytes": 16384,
    "min.cleanable.dirty.ratio": 0.1,
    "delete.retention.ms": 3_600_000,
    # A small ring (a reading is a few dozen bytes): 1 MiB, batches up to 64 KiB.
    "ring.bytes": 1 << 20,
    "max.message.bytes": 1 << 16,
}


def reading(device: str, round_: int) -> bytes:
    """The reading a device sends in one round (a fixed function: tests recompute it)."""
    return json.dumps({"device": device, "round": round_, "celsius": 20 + round_ % 7}).encode()


def device_ids(count: int) -> list[str]:
    return [f"sensor-{i:04d}" for i in range(count)]


def send_with_retry(producer: Producer, topic: str, key: str, value: bytes | None) -> None:
    """Send and wait for the acknowledgement, again while a leader changes (a record
    sent twice is harmless here: the second is the same reading, later)."""
    for _attempt in range(100):
        try:
            producer.send(topic, value, key=key.encode()).get(timeout=30)
            return
        except EngineError:
            time.sleep(0.1)
    raise RuntimeError(f"no acknowledgement for {key} after 100 attempts")


def write_rounds(producer: Producer, topic: str, devices: Iterable[str], rounds: range) -> None:
    """Every device sends one reading per round."""
    for round_ in rounds:
        for device in devices:
            send_with_retry(producer, topic, device, reading(device, round_))


def decommission(producer: Producer, topic: str, devices: Iterable[str]) -> None:
    """Delete devices from the table: a tombstone per device."""
    for device in devices:
        send_with_retry(producer, topic, device, None)


def rebuild_table(data_dir: str | None, topic: str, partitions: int = 1) -> dict[str, bytes]:
    """Read the topic from its beginning to its end: each device's latest reading
    (a device whose last record is a tombstone is not in the table)."""
    table: dict[str, bytes] = {}
    with Consumer(data_dir=data_dir, auto_offset_reset="earliest") as consumer:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        end = consumer.end_offsets(tps)
        while any(consumer.position(tp) < end[tp] for tp in tps):
            for record in consumer.poll(timeout=0.5, max_records=10_000):
                key = record.key.decode()
                if record.value is None:
                    table.pop(key, None)
                else:
                    table[key] = record.value
    return table


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--devices", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=50)
    args = ap.parse_args(argv)
    devices = device_ids(args.devices)
    retired = devices[: args.devices // 10]

    with Admin(args.data_dir) as admin:
        with contextlib.suppress(UnknownTopicError):
            admin.delete_topic(TOPIC)  # a fresh run: a fresh topic
        admin.create_topic(TOPIC, partitions=1, config=TOPIC_CONFIG)
    with Producer(args.data_dir, acks="all") as producer:
        write_rounds(producer, TOPIC, devices, range(args.rounds))
        decommission(producer, TOPIC, retired)

    table = rebuild_table(args.data_dir, TOPIC)
    expected = {d: reading(d, args.rounds - 1) for d in devices if d not in retired}
    sent = args.devices * args.rounds + len(retired)
    print(f"sent {sent} records; the table holds {len(table)} devices")
    if table != expected:
        print("the table is not every device's latest reading", file=sys.stderr)
        return 1
    print("every device's latest reading, none of the decommissioned ones")
    return 0


if __name__ == "__main__":
    sys.exit(main())
