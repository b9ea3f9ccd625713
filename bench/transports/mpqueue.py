"""multiprocessing.Queue: the standard library's answer (pickle, a pipe and a feeder thread)."""

from __future__ import annotations

import queue
from multiprocessing.context import BaseContext
from typing import Any

import numpy as np

from bench.transports.base import Consumer, Producer, RunSpec, Transport, register

#: A poll takes at most this many items (records, or batches) from the queue.
DRAIN = 256


class QueueProducer(Producer):
    """Puts each record (bytes) or each batch (a numpy array, pickled) on the queue."""

    def __init__(self, q: Any) -> None:
        self.queue = q

    def send(self, value: bytes, key: bytes) -> None:
        self.queue.put(value)

    def send_batch(self, values: np.ndarray, keys: np.ndarray) -> None:
        self.queue.put(values)

    def close(self) -> None:
        self.queue.close()
        self.queue.join_thread()


class QueueConsumer(Consumer):
    def __init__(self, q: Any) -> None:
        self.queue = q

    def poll(self, timeout_s: float) -> list[Any]:
        try:
            items = [self.queue.get(timeout=timeout_s)]
        except queue.Empty:
            return []
        get_nowait = self.queue.get_nowait
        try:
            for _ in range(DRAIN - 1):
                items.append(get_nowait())
        except queue.Empty:
            pass
        return items


@register
class MultiprocessingQueue(Transport):
    name = "mp-queue"
    description = "multiprocessing.Queue, unbounded; batches are pickled numpy arrays"
    order = 10

    def prepare(self, spec: RunSpec, ctx: BaseContext) -> None:
        self.queue = ctx.Queue()

    def finish(self) -> None:
        self.queue.close()
        self.queue.cancel_join_thread()
        del self.queue

    def producer(self, spec: RunSpec, index: int) -> Producer:
        return QueueProducer(self.queue)

    def consumer(self, spec: RunSpec, index: int) -> Consumer:
        return QueueConsumer(self.queue)
