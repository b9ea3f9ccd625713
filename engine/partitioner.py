"""Which partition a record goes to: Kafka's built-in partitioner.

- A record with a partition given goes there.
- A keyed record goes to ``murmur2(key) % partitions`` (positive), exactly as Kafka's
  Java client places it, so that keyed records land where a Kafka producer would
  put them.
- Keyless records stick to one partition until ``batch_size`` bytes of values went
  there, then move to another one picked at random (Kafka's sticky partitioner,
  KIP-480): batches fill up instead of every record opening its own.

The sticky state lives in the route's C struct (engine_route_t), which the C send
path (native/send.c) moves the same way, so that both paths agree.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np

from engine._native import ffi, lib
from engine.errors import PartitionOutOfRangeError
from engine.producer_metadata import Route

_murmur2 = lib.engine_murmur2


def partition_for(
    route: Route, key: bytes | None, value_length: int, partition: int | None
) -> int:
    """The partition of one record (``value_length`` counts toward the sticky bytes)."""
    if partition is not None:
        if type(partition) is not int or not 0 <= partition < route.count:
            raise PartitionOutOfRangeError(
                f"partition out of range: topic={route.topic!r} partition={partition!r} "
                f"partitions={route.count}"
            )
        return partition
    if key is not None:
        return key_partition(key, route.count)
    c = route.c
    chosen = int(c.sticky_partition)
    c.sticky_bytes += max(value_length, 0)
    if c.sticky_bytes >= c.batch_bytes:
        next_sticky(route)
    return chosen


def key_partition(key: bytes, count: int) -> int:
    """The partition of a keyed record among ``count``: Kafka's murmur2, positive."""
    return int(_murmur2(key, len(key)) & 0x7FFFFFFF) % count


def next_sticky(route: Route) -> int:
    """Move the keyless records of ``route`` to another partition; returns it."""
    c = route.c
    if route.count > 1:
        c.sticky_partition = (c.sticky_partition + 1 + random.randrange(route.count - 1)) % (
            route.count
        )
    c.sticky_bytes = 0
    return int(c.sticky_partition)


def partitions_for_keys(kblob: Any, klengths: Any, kstride: int, count: int, n: int) -> Any:
    """Kafka's partition of every key (an int32 array), computed in one C call."""
    out = np.empty(count, dtype=np.int32)
    if count:
        lib.engine_partition_many(
            ffi.from_buffer(kblob),
            ffi.NULL if klengths is None else ffi.from_buffer("int32_t[]", klengths),
            kstride,
            count,
            n,
            ffi.from_buffer("int32_t[]", out),
        )
    return out


def group_by_partition(
    blob: Any,
    lengths: Any,
    stride: int,
    kblob: Any,
    klengths: Any,
    kstride: int,
    parts: Any,
    partitions: int,
) -> list[tuple[int, Any, Any, Any, Any, Any]]:
    """Records grouped by partition: (partition, indexes, values, lengths, keys, key lengths).

    Fixed-size records are grouped in one C pass (a counting sort); others in numpy.
    """
    count = len(parts)
    groups: list[tuple[int, Any, Any, Any, Any, Any]] = []
    if lengths is None and klengths is None:
        values = np.empty(count * stride, dtype=np.uint8)
        keys = np.empty(count * kstride, dtype=np.uint8) if kblob is not None else None
        counts = np.empty(partitions, dtype=np.int32)
        index = np.empty(count, dtype=np.int32)
        lib.engine_scatter_by_partition(
            ffi.from_buffer(blob), stride,
            ffi.NULL if kblob is None else ffi.from_buffer(kblob), kstride,
            ffi.from_buffer("int32_t[]", parts), count, partitions,
            ffi.from_buffer(values), ffi.NULL if keys is None else ffi.from_buffer(keys),
            ffi.from_buffer("int32_t[]", counts), ffi.from_buffer("int32_t[]", index),
        )  # fmt: skip
        start = 0
        for p in range(partitions):
            n = int(counts[p])
            if n:
                groups.append((
                    p, index[start : start + n], values[start * stride : (start + n) * stride],
                    None,
                    None if keys is None else keys[start * kstride : (start + n) * kstride],
                    None,
                ))  # fmt: skip
            start += n
        return groups
    order = np.argsort(parts, kind="stable")
    bounds = np.searchsorted(parts[order], np.arange(partitions + 1))
    for p in range(partitions):
        idx = order[bounds[p] : bounds[p + 1]]
        if len(idx):
            vb, vl = _select(blob, lengths, stride, idx)
            kb, kl = _select(kblob, klengths, kstride, idx)
            groups.append((p, idx, vb, vl, kb, kl))
    return groups


def _select(blob: Any, lengths: Any, stride: int, idx: Any) -> tuple[Any, Any]:
    """The values at idx, packed back to back with their lengths."""
    if blob is None:
        return None, None
    if lengths is None:
        rows = np.frombuffer(memoryview(blob).cast("B"), dtype=np.uint8).reshape(-1, stride)
        return rows[idx].reshape(-1), None
    starts = np.concatenate(([0], np.cumsum(np.maximum(lengths[:-1], 0), dtype=np.int64)))
    data = bytes(blob)
    parts = [
        b"" if int(lengths[i]) < 0 else data[int(starts[i]) : int(starts[i]) + int(lengths[i])]
        for i in idx
    ]
    return b"".join(parts), lengths[idx].astype(np.int32)
