"""POSIX message queues (posix_ipc.MessageQueue), at the kernel's default limits.

The queue is created with the system's ceilings, ``/proc/sys/fs/mqueue/msg_max`` messages
(10 by default) of at most ``msgsize_max`` bytes (8192 by default): an unprivileged process
cannot ask for more. A batch is sent as as many messages as it takes to fit that size; a
record larger than a message is unsupported.
"""

from __future__ import annotations

import contextlib
import os
from multiprocessing.context import BaseContext
from pathlib import Path
from typing import Any

import numpy as np

from bench.transports.base import (
    Consumer,
    Producer,
    RunSpec,
    Transport,
    Unsupported,
    register,
    requires_module,
)

#: A poll takes at most this many messages.
DRAIN = 256


def _limit(name: str, default: int) -> int:
    try:
        return int(Path("/proc/sys/fs/mqueue", name).read_text())
    except (OSError, ValueError):
        return default


class MqProducer(Producer):
    def __init__(self, name: str, message_bytes: int, record_size: int) -> None:
        import posix_ipc

        self.queue = posix_ipc.MessageQueue(name)
        self.per_message = max(1, message_bytes // record_size)

    def send(self, value: bytes, key: bytes) -> None:
        self.queue.send(value)

    def send_batch(self, values: np.ndarray, keys: np.ndarray) -> None:
        step = self.per_message
        for start in range(0, len(values), step):
            self.queue.send(values[start : start + step].tobytes())

    def close(self) -> None:
        self.queue.close()


class MqConsumer(Consumer):
    def __init__(self, name: str, dtype: np.dtype[Any] | None) -> None:
        import posix_ipc

        self.busy = posix_ipc.BusyError
        self.queue = posix_ipc.MessageQueue(name)
        self.dtype = dtype

    def poll(self, timeout_s: float) -> list[Any]:
        receive = self.queue.receive
        try:
            items = [receive(timeout_s)[0]]
        except self.busy:
            return []
        try:
            for _ in range(DRAIN - 1):
                items.append(receive(0)[0])
        except self.busy:
            pass
        if self.dtype is not None:
            return [np.frombuffer(item, dtype=self.dtype) for item in items]
        return items

    def close(self) -> None:
        self.queue.close()


@register
class PosixMessageQueue(Transport):
    name = "posix-mq"
    description = "posix_ipc.MessageQueue at the kernel's default limits (msg_max, msgsize_max)"
    order = 40

    @classmethod
    def missing(cls) -> str | None:
        return requires_module("posix_ipc", "pip install posix-ipc")

    def prepare(self, spec: RunSpec, ctx: BaseContext) -> None:
        import posix_ipc

        message_bytes = _limit("msgsize_max", 8192)
        if spec.record_size > message_bytes:
            raise Unsupported(
                f"record larger than a message: record_size={spec.record_size} "
                f"msgsize_max={message_bytes}"
            )
        if spec.batch == 1:
            message_bytes = spec.record_size
        self.message_bytes = message_bytes
        self.queue_name = f"/bench-{os.getpid()}-{spec.run_id}"
        queue = posix_ipc.MessageQueue(
            self.queue_name,
            posix_ipc.O_CREX,
            mode=0o600,
            max_messages=_limit("msg_max", 10),
            max_message_size=message_bytes,
        )
        queue.close()

    def finish(self) -> None:
        import posix_ipc

        with contextlib.suppress(posix_ipc.ExistentialError):
            posix_ipc.unlink_message_queue(self.queue_name)

    def producer(self, spec: RunSpec, index: int) -> Producer:
        return MqProducer(self.queue_name, self.message_bytes, spec.record_size)

    def consumer(self, spec: RunSpec, index: int) -> Consumer:
        return MqConsumer(self.queue_name, spec.dtype if spec.batch > 1 else None)
