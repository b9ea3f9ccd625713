"""pyzmq PUSH/PULL over ipc:// (Unix domain sockets) in the suite's temporary directory.

Each consumer binds one PULL socket; every producer connects one PUSH socket to all of
them (so PUSH spreads messages round-robin over the consumers). A batch is one message.
"""

from __future__ import annotations

from multiprocessing.context import BaseContext
from pathlib import Path
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

#: A poll takes at most this many messages.
DRAIN = 1000


class PushProducer(Producer):
    def __init__(self, endpoints: list[str]) -> None:
        import zmq

        self.context = zmq.Context()
        self.socket = self.context.socket(zmq.PUSH)
        for endpoint in endpoints:
            self.socket.connect(endpoint)

    def send(self, value: bytes, key: bytes) -> None:
        self.socket.send(value)

    def send_batch(self, values: np.ndarray, keys: np.ndarray) -> None:
        self.socket.send(values.data, 0, copy=values.nbytes < 65536)

    def close(self) -> None:
        self.socket.close(linger=-1)  # waits until every message has been handed over
        self.context.term()


class PullConsumer(Consumer):
    def __init__(self, endpoint: str, dtype: np.dtype[Any] | None) -> None:
        import zmq

        self.again = zmq.Again
        self.noblock = zmq.NOBLOCK
        self.context = zmq.Context()
        self.socket = self.context.socket(zmq.PULL)
        self.socket.bind(endpoint)
        self.dtype = dtype

    def poll(self, timeout_s: float) -> list[Any]:
        socket = self.socket
        if not socket.poll(int(timeout_s * 1000)):
            return []
        items: list[Any] = []
        recv = socket.recv
        noblock = self.noblock
        try:
            if self.dtype is None:
                for _ in range(DRAIN):
                    items.append(recv(noblock))
            else:
                for _ in range(DRAIN):
                    frame = recv(noblock, copy=False)
                    items.append(np.frombuffer(frame.buffer, dtype=self.dtype))
        except self.again:
            pass
        return items

    def close(self) -> None:
        self.socket.close(linger=0)
        self.context.term()


@register
class ZmqPushPull(Transport):
    name = "zmq-ipc"
    description = "pyzmq PUSH/PULL over ipc://, default high-water marks; a batch is one message"
    order = 30

    @classmethod
    def missing(cls) -> str | None:
        return requires_module("zmq", "pip install pyzmq")

    def open(self, workdir: Path) -> None:
        self.workdir = workdir

    def prepare(self, spec: RunSpec, ctx: BaseContext) -> None:
        self.endpoints = [
            f"ipc://{self.workdir}/zmq-{spec.run_id}-{i}.sock" for i in range(spec.consumers)
        ]

    def finish(self) -> None:
        for endpoint in self.endpoints:
            Path(endpoint.removeprefix("ipc://")).unlink(missing_ok=True)

    def producer(self, spec: RunSpec, index: int) -> Producer:
        return PushProducer(self.endpoints)

    def consumer(self, spec: RunSpec, index: int) -> Consumer:
        return PullConsumer(self.endpoints[index], spec.dtype if spec.batch > 1 else None)
