"""Redis Streams: a redis-server started by the suite on 127.0.0.1, with and without AOF.

The server is Debian's ``redis-server``, started in the suite's temporary directory on a
free port with RDB snapshots off; ``redis-streams-aof`` adds ``appendonly yes`` with
``appendfsync everysec``. It is stopped in ``close()``, which the suite always calls.

The topic is ``spec.partitions`` streams; a record goes to the stream of its key's hash.
Producers pipeline XADD (one round trip per ``PIPELINE`` records; latency runs flush after
every record); a batch is one stream entry holding the batch's bytes. Consumer ``i`` reads
the streams ``i, i + C, ...`` with XREAD BLOCK.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from multiprocessing.context import BaseContext
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from bench.transports.base import (
    Consumer,
    Producer,
    RunSpec,
    Transport,
    register,
    requires_executable,
    requires_module,
)

#: Records per pipelined round trip.
PIPELINE = 256
#: Batches per pipelined round trip.
PIPELINE_BATCHES = 8
#: Entries per XREAD.
READ_COUNT = 1000
START_TIMEOUT_S = 10.0
BIND_ATTEMPTS = 5


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _client(port: int) -> Any:
    import redis

    return redis.Redis(host="127.0.0.1", port=port)


class StreamProducer(Producer):
    def __init__(self, port: int, streams: list[str], index: int) -> None:
        self.client = _client(port)
        self.pipe = self.client.pipeline(transaction=False)
        self.streams = streams
        self.pending = 0
        self.next_stream = index

    def send(self, value: bytes, key: bytes) -> None:
        self.pipe.xadd(self.streams[hash(key) % len(self.streams)], {b"v": value})
        self.pending += 1
        if self.pending >= PIPELINE:
            self.flush()

    def send_batch(self, values: np.ndarray, keys: np.ndarray) -> None:
        stream = self.streams[self.next_stream % len(self.streams)]
        self.next_stream += 1
        self.pipe.xadd(stream, {b"b": values.tobytes()})
        self.pending += 1
        if self.pending >= PIPELINE_BATCHES:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            self.pipe.execute()
            self.pending = 0

    def close(self) -> None:
        self.client.close()


class StreamConsumer(Consumer):
    def __init__(self, port: int, streams: list[str], dtype: np.dtype[Any]) -> None:
        self.client = _client(port)
        self.positions: dict[str, bytes | str] = dict.fromkeys(streams, "0-0")
        self.dtype = dtype

    def poll(self, timeout_s: float) -> list[Any]:
        reply = self.client.xread(
            self.positions, count=READ_COUNT, block=max(1, int(timeout_s * 1000))
        )
        items: list[Any] = []
        for stream, entries in reply or ():
            name = stream.decode() if isinstance(stream, bytes) else stream
            self.positions[name] = entries[-1][0]
            for _, fields in entries:
                value = fields.get(b"v")
                if value is not None:
                    items.append(value)
                else:
                    items.append(np.frombuffer(fields[b"b"], dtype=self.dtype))
        return items

    def close(self) -> None:
        self.client.close()


@register
class RedisStreams(Transport):
    name = "redis-streams"
    description = "redis-server on 127.0.0.1, no persistence; XADD pipelined, XREAD BLOCK"
    order = 50
    parent_only = ("server", "admin")
    appendonly: ClassVar[bool] = False

    @classmethod
    def missing(cls) -> str | None:
        return requires_module("redis", "pip install redis") or requires_executable(
            "redis-server", "apt-get install redis-server"
        )

    def open(self, workdir: Path) -> None:
        directory = workdir / self.name
        directory.mkdir()
        # The port is picked by binding and closing it: another process may bind it
        # before redis-server does, which then exits; it gets another port then.
        for attempt in range(BIND_ATTEMPTS):
            self.port = _free_port()
            try:
                self._start(directory)
                return
            except RuntimeError as error:
                if "Address already in use" not in str(error) or attempt == BIND_ATTEMPTS - 1:
                    raise

    def _start(self, directory: Path) -> None:
        command = [
            "redis-server",
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(directory),
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", "everysec",
            "--logfile", str(directory / "redis.log"),
            "--daemonize", "no",
        ]  # fmt: skip
        self.server = subprocess.Popen(command, stdin=subprocess.DEVNULL)
        # Ready when its log says so, not when something answers on the port: whoever
        # holds the port when this one fails to bind it may answer, or never.
        log = directory / "redis.log"
        deadline = time.monotonic() + START_TIMEOUT_S
        while "Ready to accept connections" not in (log.read_text() if log.exists() else ""):
            if self.server.poll() is not None or time.monotonic() > deadline:
                tail = log.read_text()[-2000:] if log.exists() else ""
                raise RuntimeError(f"redis-server did not start:\n{tail}")
            time.sleep(0.02)
        self.admin = _client(self.port)
        self.admin.ping()

    def close(self) -> None:
        admin = getattr(self, "admin", None)
        if admin is not None:
            with contextlib.suppress(Exception):
                admin.close()
        server = getattr(self, "server", None)
        if server is not None and server.poll() is None:
            server.terminate()
            try:
                server.wait(5.0)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(5.0)

    def prepare(self, spec: RunSpec, ctx: BaseContext) -> None:
        self.admin.flushall()
        self.streams = [f"iot-{spec.run_id}-{p}" for p in range(spec.partitions)]

    def finish(self) -> None:
        with contextlib.suppress(Exception):
            self.admin.flushall()

    def producer(self, spec: RunSpec, index: int) -> Producer:
        return StreamProducer(self.port, self.streams, index)

    def consumer(self, spec: RunSpec, index: int) -> Consumer:
        mine = self.streams[index :: spec.consumers]
        return StreamConsumer(self.port, mine, spec.dtype)


@register
class RedisStreamsAof(RedisStreams):
    name = "redis-streams-aof"
    description = "as redis-streams, with appendonly yes, appendfsync everysec"
    order = 51
    appendonly = True
