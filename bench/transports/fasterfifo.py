"""faster-fifo: a shared-memory circular buffer queue with a process-shared mutex (C++)."""

from __future__ import annotations

import queue
from multiprocessing.context import BaseContext
from typing import Any

import numpy as np

from bench.transports.base import (
    Consumer,
    Producer,
    RunSpec,
    Transport,
    register,
    requires_module,
)

#: Size of the shared circular buffer. Not larger: get_many copies everything available
#: (up to the buffer's size) into a private buffer first, and with 64 MiB that copy falls
#: out of the caches (measured here: 100 KB batches, 17M records/s at 64 MiB, 30M at 8 MiB).
BUFFER_BYTES = 8 << 20
#: A poll takes at most this many items (records, or batches) from the queue.
DRAIN = 1000


class FifoProducer(Producer):
    """``put`` of each record (bytes), or of each batch as one numpy array ("pre-batched")."""

    def __init__(self, q: Any) -> None:
        self.queue = q

    def send(self, value: bytes, key: bytes) -> None:
        self.queue.put(value, timeout=60.0)

    def send_batch(self, values: np.ndarray, keys: np.ndarray) -> None:
        self.queue.put(values, timeout=60.0)


class FifoConsumer(Consumer):
    def __init__(self, q: Any) -> None:
        self.queue = q

    def poll(self, timeout_s: float) -> list[Any]:
        try:
            items: list[Any] = self.queue.get_many(timeout=timeout_s, max_messages_to_get=DRAIN)
        except queue.Empty:
            return []
        return items


@register
class FasterFifo(Transport):
    name = "faster-fifo"
    description = "faster_fifo.Queue (8 MiB buffer), get_many; batches are numpy arrays"
    order = 20

    @classmethod
    def missing(cls) -> str | None:
        return requires_module("faster_fifo", "pip install faster-fifo")

    def prepare(self, spec: RunSpec, ctx: BaseContext) -> None:
        import faster_fifo

        batch_bytes = spec.batch * spec.record_size
        self.queue = faster_fifo.Queue(max_size_bytes=max(BUFFER_BYTES, 8 * batch_bytes))

    def finish(self) -> None:
        self.queue.close()
        del self.queue

    def producer(self, spec: RunSpec, index: int) -> Producer:
        return FifoProducer(self.queue)

    def consumer(self, spec: RunSpec, index: int) -> Consumer:
        return FifoConsumer(self.queue)
