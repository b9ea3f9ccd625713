"""The latency floor: a bare shared-memory ring between one producer and one spinning consumer.

Not a system anyone would deploy: the least any transport between two processes on this
host must do for one record, measured through the same harness (its paced producer, its
consumer loop, its clock). The producer copies each record into the next slot of an array
in shared memory, then stores the slot count; the consumer spins on that count, copies the
new slots out and stores how far it read (the producer waits on that only when the array is
full). No persistence, no broker, no system call on the way: whatever tail it shows at a
given rate is the machine's (the scheduler, other processes, the hypervisor), and a
transport cannot do better on the same run.

Ordering: the count is stored after the slot and loaded before it, which x86-64 keeps in
program order for plain stores and loads (TSO); elsewhere this row is not measured.
Latency workloads only (one producer, one consumer); memcopy and pagecache are the
throughput ceilings.
"""

from __future__ import annotations

import platform
import time
from multiprocessing.context import BaseContext
from typing import Any

import numpy as np

from bench.transports.base import Consumer, Producer, RunSpec, Transport, Unsupported, register

SLOTS = 1 << 16
#: int64 words per counter line: the producer's count and the consumer's position each
#: get their own 64-byte cache line.
LINE_WORDS = 8


class _Ring:
    """The shared array (``SLOTS`` records of ``record_size`` bytes) and its two counters,
    as numpy views of the RawArrays the transport made."""

    def __init__(self, slots: Any, counters: Any, record_size: int) -> None:
        self.slots = np.frombuffer(slots, dtype=np.uint8).reshape(SLOTS, record_size)
        words = np.frombuffer(counters, dtype=np.int64)
        self.written = words[0:1]  # records the producer has stored
        self.read = words[LINE_WORDS : LINE_WORDS + 1]  # records the consumer has taken


class FloorProducer(Producer):
    def __init__(self, ring: _Ring) -> None:
        self.ring = ring
        self.count = int(ring.written[0])

    def send(self, value: bytes, key: bytes) -> None:
        ring, count = self.ring, self.count
        while count - int(ring.read[0]) >= SLOTS:  # full: the consumer is a lap behind
            pass
        ring.slots[count % SLOTS] = np.frombuffer(value, dtype=np.uint8)
        self.count = count + 1
        ring.written[0] = count + 1  # after the slot: the consumer may now read it


class FloorConsumer(Consumer):
    def __init__(self, ring: _Ring, spec: RunSpec) -> None:
        self.ring = ring
        self.dtype = spec.dtype
        self.position = int(ring.read[0])

    def poll(self, timeout_s: float) -> list[Any]:
        ring, position = self.ring, self.position
        written = int(ring.written[0])
        if written == position:
            deadline = time.perf_counter() + timeout_s
            while written == position:
                if time.perf_counter() > deadline:
                    return []
                written = int(ring.written[0])
        first, last = position % SLOTS, (written - 1) % SLOTS + 1
        if first < last:
            chunks = [ring.slots[first:last].copy()]
        else:  # wrapped
            chunks = [ring.slots[first:].copy(), ring.slots[:last].copy()]
        self.position = written
        ring.read[0] = written
        return [chunk.view(self.dtype).reshape(-1) for chunk in chunks]


@register
class SpinFloor(Transport):
    name = "spin-floor"
    description = (
        "a shared-memory array between one producer and one spinning consumer, no broker, "
        "no persistence (the machine's latency floor)"
    )
    order = 92

    @classmethod
    def missing(cls) -> str | None:
        if platform.machine() not in ("x86_64", "AMD64"):
            return f"needs x86-64's store ordering: machine={platform.machine()}"
        return None

    def prepare(self, spec: RunSpec, ctx: BaseContext) -> None:
        if spec.rate is None:
            raise Unsupported("the latency floor only; memcopy and pagecache are the ceilings")
        if spec.producers != 1 or spec.consumers != 1:
            raise Unsupported(
                f"one producer and one consumer: producers={spec.producers} "
                f"consumers={spec.consumers}"
            )
        self.slots = ctx.RawArray("B", SLOTS * spec.record_size)
        self.counters = ctx.RawArray("q", 2 * LINE_WORDS)

    def finish(self) -> None:
        self.slots = self.counters = None

    def producer(self, spec: RunSpec, index: int) -> Producer:
        return FloorProducer(_Ring(self.slots, self.counters, spec.record_size))

    def consumer(self, spec: RunSpec, index: int) -> Consumer:
        return FloorConsumer(_Ring(self.slots, self.counters, spec.record_size), spec)
