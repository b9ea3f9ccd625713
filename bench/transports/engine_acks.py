"""The engine itself, once per acknowledgement mode.

The three modes share one daemon (coordinator + 3 brokers): the first mode's open
starts it, the last one's close stops it (the suite opens the next transport before it
closes the previous one). Each workload gets a fresh topic with ``spec.partitions``
partitions, deleted after its runs. Its segments are as large as a segment can be
(2 GiB), so that no segment rolls within a workload: a rolled segment is written back
and fsynced, and a workload's runs would then be timed against the disk (about
300 MB/s on the reference VM) instead of the page cache, which the brokers write
every record into. (What a sustained rate beyond the page cache gets is in the
README: the disk's.) Producers use ``Producer.send`` per record and ``send_batch``
with the numpy batch (keyed by device id, so records land where Kafka would put
them); consumers split the partitions between them and read with ``Consumer.poll``,
as an application does, taking each Record's value. The ``-numpy`` rows read with
``Consumer.poll_values`` instead, the special path for fixed-size records that hands
back numpy arrays of them, no Python object per record.
"""

from __future__ import annotations

import time
from multiprocessing.context import BaseContext
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from bench.transports.base import Consumer, Producer, RunSpec, Transport, register

RING_BYTES = 64 << 20
#: The largest segment.bytes: no segment rolls (and fsyncs) within a workload.
SEGMENT_BYTES = (1 << 31) - 1
#: How long a deleted topic's data may take to disappear between workloads.
DELETE_WAIT_S = 60.0


class EngineProducer(Producer):
    def __init__(self, producer: Any, topic: str) -> None:
        self.producer = producer
        self.topic = topic
        self._send = producer.send

    def send(self, value: bytes, key: bytes) -> None:
        self._send(self.topic, value, key=key)

    def send_batch(self, values: np.ndarray, keys: np.ndarray) -> None:
        self.producer.send_batch(self.topic, values, keys=keys)

    def push(self) -> None:
        # acks 0 and 1 appended the record in send(); acks="all" hands it to the
        # producer's sender at once when its partition has nothing waiting for the ISR
        # (else it joins the next batch). Waiting for the ISR here would make a paced
        # acks="all" run one replication round trip per record instead of measuring its
        # latency.
        return

    def flush(self) -> None:
        self.producer.flush()

    def close(self) -> None:
        self.producer.close()


class EngineConsumer(Consumer):
    """Reads as an application does: Consumer.poll(), each Record's value."""

    def __init__(self, consumer: Any, spec: RunSpec) -> None:
        self.consumer = consumer

    def poll(self, timeout_s: float) -> list[Any]:
        return [r.value for r in self.consumer.poll(timeout=timeout_s, max_records=65536)]


class EngineValuesConsumer(EngineConsumer):
    """The special path for fixed-size records: Consumer.poll_values, numpy arrays."""

    def __init__(self, consumer: Any, spec: RunSpec) -> None:
        self.consumer = consumer
        self.size = spec.record_size
        self.dtype = spec.dtype

    def poll(self, timeout_s: float) -> list[Any]:
        chunks = self.consumer.poll_values(self.size, timeout=timeout_s, max_records=65536)
        return [chunk.view(self.dtype).reshape(-1) for chunk in chunks]

    def close(self) -> None:
        self.consumer.close()


class _SharedDaemon:
    """The daemon of the engine modes: started by the first acquire, stopped by the
    last release."""

    def __init__(self) -> None:
        self.data_dir: str | None = None
        self.users = 0

    def acquire(self, workdir: Path) -> str:
        from engine import daemon
        from engine.datadir import DataDir

        if self.data_dir is None:
            data_dir = str(workdir / "engine")
            daemon.start_background(DataDir.resolve(data_dir), brokers=3, coordinator=None)
            self.data_dir = data_dir
        self.users += 1
        return self.data_dir

    def release(self) -> None:
        from engine import daemon
        from engine.datadir import DataDir

        self.users -= 1
        if self.users == 0 and self.data_dir is not None:
            data_dir, self.data_dir = self.data_dir, None
            daemon.stop(DataDir.resolve(data_dir))


_DAEMON = _SharedDaemon()


class _Engine(Transport):
    """A daemon with 3 brokers (shared by the modes); subclasses choose the
    acknowledgement mode."""

    acks: ClassVar[int | str] = 1
    replication: ClassVar[int] = 1
    #: How consumers read (EngineConsumer: poll(); EngineValuesConsumer: poll_values()).
    reader: ClassVar[type[EngineConsumer]] = EngineConsumer
    order = 1
    parent_only = ("_admin",)

    def open(self, workdir: Path) -> None:
        # The clients too: every producer and consumer process inherits them (fork)
        # instead of importing them at each workload's start.
        from engine import Consumer, Producer  # noqa: F401

        self._admin: Any = None
        self.data_dir = _DAEMON.acquire(workdir)

    def close(self) -> None:
        admin = getattr(self, "_admin", None)
        if admin is not None:
            self._admin = None
            admin.close()
        if hasattr(self, "data_dir"):
            del self.data_dir
            _DAEMON.release()

    def _admin_client(self) -> Any:
        from engine import Admin

        if getattr(self, "_admin", None) is None:
            self._admin = Admin(self.data_dir)
        return self._admin

    def prepare(self, spec: RunSpec, ctx: BaseContext) -> None:
        self.topic = f"bench-{spec.run_id}"
        config: dict[str, Any] = {
            "ring.bytes": RING_BYTES,
            "max.message.bytes": 1 << 20,
            "segment.bytes": SEGMENT_BYTES,
        }
        if self.replication > 1:
            config["min.insync.replicas"] = 2
        self._admin_client().create_topic(
            self.topic, partitions=spec.partitions, replication=self.replication, config=config
        )

    def finish(self) -> None:
        topic = getattr(self, "topic", None)
        if topic is not None:
            self._admin_client().delete_topic(topic)
            self.topic = None
            self._wait_data_removed(topic)

    def _wait_data_removed(self, topic: str) -> None:
        """Wait until the brokers have unlinked the topic's rings and removed its segments.

        Deletion is asynchronous in the brokers (as in Kafka); without this wait the
        next workload would be timed while the brokers free this one's rings and page
        cache.
        """
        deadline = time.monotonic() + DELETE_WAIT_S
        while any(Path(self.data_dir).glob(f"broker-*/{topic}-*")):
            if time.monotonic() > deadline:
                raise RuntimeError(f"topic {topic!r}: data not removed in {DELETE_WAIT_S:.0f} s")
            time.sleep(0.01)

    def producer(self, spec: RunSpec, index: int) -> Producer:
        from engine import Producer as EngineProducerClient

        producer = EngineProducerClient(self.data_dir, acks=self.acks)
        producer.partitions_for(self.topic)  # map the rings now, not inside the timed run
        return EngineProducer(producer, self.topic)

    def consumer(self, spec: RunSpec, index: int) -> Consumer:
        from engine import Consumer as EngineConsumerClient
        from engine import TopicPartition

        c = EngineConsumerClient(data_dir=self.data_dir, auto_offset_reset="earliest")
        c.assign(
            [TopicPartition(self.topic, p) for p in range(spec.partitions)
             if p % spec.consumers == index]
        )
        return self.reader(c, spec)


@register
class EngineAcks0(_Engine):
    name = "engine-acks0"
    description = "engine, acks=0: appended into the leader's ring, waited for by nobody; poll()"
    acks = 0
    order = 0


@register
class EngineAcks1(_Engine):
    name = "engine-acks1"
    description = "engine, acks=1: appended into the leader's shared-memory ring; read by poll()"
    acks = 1
    order = 1


@register
class EngineAcksAll(_Engine):
    name = "engine-acks-all-r3"
    description = (
        "engine, acks='all' (idempotent, the default), replication 3, min.insync.replicas 2; "
        "read by poll()"
    )
    acks = "all"
    replication = 3
    order = 2


@register
class EngineAcks1Numpy(_Engine):
    name = "engine-acks1-numpy"
    description = "engine, acks=1, read by poll_values() (numpy arrays: fixed-size records only)"
    acks = 1
    reader = EngineValuesConsumer
    order = 3


@register
class EngineAcksAllNumpy(_Engine):
    name = "engine-acks-all-r3-numpy"
    description = "engine, acks='all', replication 3, read by poll_values() (numpy arrays)"
    acks = "all"
    replication = 3
    reader = EngineValuesConsumer
    order = 4
