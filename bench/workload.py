"""IoT records for the benchmark: fixed-size numpy structured records, keyed by device id.

Every record, whatever its size, starts with the same two fields::

    offset 0   ts_ns   int64   send time, time.perf_counter_ns() (CLOCK_MONOTONIC)
    offset 8   ...     per size (below)

The IoT reading (the default, 100 bytes) is one sensor reading of one device::

    ts_ns int64 | device_id S16 | seq uint64 | producer uint32 | status uint32 |
    temperature, humidity, pressure, battery, latitude, longitude float64 | firmware S12

Other sizes (the record-size sweep, 16 B to 64 KiB) are ``ts_ns | seq | payload``. Each
producer simulates ``DEVICES_PER_PRODUCER`` devices; the key of a record is its device id.

Producers do not generate records while they are being timed: they cycle through a pool
made by ``record_pool`` beforehand. Only latency runs write the send time into each record.
"""

from __future__ import annotations

import functools
import struct
from typing import Any

import numpy as np

__all__ = [
    "DEVICES_PER_PRODUCER",
    "IOT_DTYPE",
    "IOT_RECORD_SIZE",
    "KEY_DTYPE",
    "MIN_RECORD_SIZE",
    "TIMESTAMP",
    "record_dtype",
    "record_pool",
    "sweep_sizes",
]

IOT_DTYPE = np.dtype(
    [
        ("ts_ns", "<i8"),
        ("device_id", "S16"),
        ("seq", "<u8"),
        ("producer", "<u4"),
        ("status", "<u4"),
        ("temperature", "<f8"),
        ("humidity", "<f8"),
        ("pressure", "<f8"),
        ("battery", "<f8"),
        ("latitude", "<f8"),
        ("longitude", "<f8"),
        ("firmware", "S12"),
    ]
)
IOT_RECORD_SIZE = IOT_DTYPE.itemsize
assert IOT_RECORD_SIZE == 100, IOT_RECORD_SIZE

#: Keys are device ids, at most 16 bytes.
KEY_DTYPE = np.dtype("S16")
MIN_RECORD_SIZE = 16
DEVICES_PER_PRODUCER = 1000
#: Packs and unpacks the send time at offset 0 of a record.
TIMESTAMP = struct.Struct("<q")


@functools.lru_cache(maxsize=64)
def record_dtype(size: int) -> np.dtype[Any]:
    """The structured dtype of a record of ``size`` bytes (the IoT reading for 100)."""
    if size == IOT_RECORD_SIZE:
        return IOT_DTYPE
    if size < MIN_RECORD_SIZE:
        raise ValueError(f"record size below the minimum: size={size} minimum={MIN_RECORD_SIZE}")
    fields: list[tuple[str, str]] = [("ts_ns", "<i8"), ("seq", "<u8")]
    if size > MIN_RECORD_SIZE:
        fields.append(("payload", f"V{size - MIN_RECORD_SIZE}"))
    return np.dtype(fields)


def sweep_sizes(quick: bool) -> list[int]:
    """Record sizes for the sweep: 16 B to 64 KiB (quick: 1 KiB, the size of the
    memory-copy target, and 64 KiB)."""
    if quick:
        return [1024, 65536]
    return [16, 64, 256, 1024, 4096, 16384, 65536]


@functools.lru_cache(maxsize=64)
def device_keys(producer: int) -> np.ndarray:
    """The device ids of producer ``producer``'s fleet, in device order (read-only)."""
    device = np.arange(DEVICES_PER_PRODUCER)
    keys = np.char.add(f"dev-{producer:03d}-".encode(), np.char.zfill(device.astype("S5"), 5))
    keys = keys.astype(KEY_DTYPE)
    keys.flags.writeable = False
    return keys


def record_pool(
    size: int, count: int, producer: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """``count`` records of ``size`` bytes from producer ``producer``, and their keys.

    Returns ``(records, keys)``: a structured array of ``record_dtype(size)`` and an array of
    ``KEY_DTYPE`` device ids. Records cycle through the producer's devices in order, so a
    pool of at least ``DEVICES_PER_PRODUCER`` records covers the whole fleet.
    """
    rng = np.random.default_rng([seed, producer])
    dtype = record_dtype(size)
    records = np.zeros(count, dtype=dtype)
    keys = device_keys(producer)[np.arange(count) % DEVICES_PER_PRODUCER]
    records["seq"] = np.arange(count, dtype=np.uint64)
    if dtype is IOT_DTYPE:
        records["device_id"] = keys
        records["producer"] = producer
        records["status"] = rng.integers(0, 4, count)
        records["temperature"] = rng.normal(21.0, 4.0, count)
        records["humidity"] = rng.uniform(20.0, 80.0, count)
        records["pressure"] = rng.normal(1013.25, 8.0, count)
        records["battery"] = rng.uniform(3.3, 4.2, count)
        records["latitude"] = rng.uniform(-90.0, 90.0, count)
        records["longitude"] = rng.uniform(-180.0, 180.0, count)
        records["firmware"] = b"fw-2.4.1"
    elif size > MIN_RECORD_SIZE:
        payload = np.frombuffer(rng.bytes(count * (size - MIN_RECORD_SIZE)), np.uint8)
        payload = payload.reshape(count, size - MIN_RECORD_SIZE)
        records.view(np.uint8).reshape(count, size)[:, MIN_RECORD_SIZE:] = payload
    return records, keys
