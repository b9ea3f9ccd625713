"""Kafka's protocol through confluent-kafka (librdkafka): into the engine's Kafka listener,
and into Kafka itself, with the same clients and the same settings.

- ``engine-kafka-*``: the engine's daemon (the one the engine modes share, 3 brokers,
  SASL as ``engine start`` sets it up) reached through its Kafka listener: the topic is
  made as for the engine modes (bench.transports.engine_acks), the producers and
  consumers are confluent-kafka's.
- ``kafka-*``: Kafka itself (KRaft), one node for acks=1, three nodes with replication 3
  for acks=all. The suite starts it with the project's ``scripts/kafka`` (in its working
  directory, stopped at the row's close) when that script is there, unless the
  environment names a running cluster: ``ENGINE_BENCH_KAFKA`` (one node),
  ``ENGINE_BENCH_KAFKA_R3`` (three), either ``host:port,...`` (PLAINTEXT) or the path of
  a ``kafka.json`` as ``scripts/kafka start`` writes it (the shape of ``engine status
  --json``'s "kafka" object). Without either the row says what is missing. The suite
  creates each workload's topic with confluent-kafka's AdminClient and deletes it
  afterwards.

The clients, as an application that wants throughput sets them up: producers keep
librdkafka's batching (``linger.ms`` 5, ``batch.size`` 1 MB), ask for delivery reports
of failures only (``delivery.report.only.error``: a report per record would be a Python
callback per record), and key each record by its device id (librdkafka's partitioner
places it); a latency run sets ``linger.ms`` 1 (LATENCY_LINGER_MS) and serves the
client's events after every send. Consumers are assigned their share of the partitions
from the beginning (as the other rows' consumers are: no group membership in the
measured path) and read with ``consume()``, taking each message's value;
``fetch.queue.backoff.ms`` is 5 ms (librdkafka's default of 1 s stops fetching for a
second whenever the consumer's local queue holds ``queued.min.messages``, which a fast
producer fills). Every row uses ``socket.nagle.disable``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
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
    Unsupported,
    register,
    requires_module,
)
from bench.transports.engine_acks import RING_BYTES, SEGMENT_BYTES, _Engine

#: linger.ms of a latency run's producer: at 20,000 records/s, 0 would make every record
#: a Produce request of its own (and a fetch answer), 20,000 requests a second that kept
#: the engine's broker busy most of a core and put its p99 at 30-530 ms here (Kafka's
#: too); 1 ms puts up to 20 records in a request and the p99 at about 2 ms.
LATENCY_LINGER_MS = 1
#: Messages per consume() call.
CONSUME_MESSAGES = 10_000
#: How long flush() may take before the producer reports records it could not deliver.
FLUSH_TIMEOUT_S = 60.0
#: How long topic creation and deletion on a Kafka cluster may take.
ADMIN_TIMEOUT_S = 60.0
#: Each Kafka node's JVM heap: 1 GiB (scripts/kafka's default, 512 MiB, is for the tests;
#: the 4 KiB batched rows hold more in flight).
KAFKA_HEAP = os.environ.get("ENGINE_BENCH_KAFKA_HEAP", "1g")
#: The environment variables that name a running Kafka cluster (PLAINTEXT).
KAFKA_ONE_NODE = "ENGINE_BENCH_KAFKA"
KAFKA_THREE_NODES = "ENGINE_BENCH_KAFKA_R3"

_INSTALL = "pip install -e .[test]"


def producer_config(acks: int | str, latency: bool) -> dict[str, Any]:
    """The producer settings of every Kafka-protocol row (module docstring)."""
    return {
        "acks": acks,
        "linger.ms": LATENCY_LINGER_MS if latency else 5,
        "delivery.report.only.error": True,
        "enable.idempotence": acks == "all",
        "socket.nagle.disable": True,
    }


def consumer_config(index: int) -> dict[str, Any]:
    return {
        "group.id": f"engine-bench-{index}",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "fetch.queue.backoff.ms": 5,
        "socket.nagle.disable": True,
    }


class KafkaProducer(Producer):
    """confluent-kafka's Producer: one ``produce`` per record."""

    def __init__(self, config: dict[str, Any], topic: str) -> None:
        from confluent_kafka import Producer as ClientProducer

        self.failures: list[str] = []
        self.client = ClientProducer(config | {"on_delivery": self._report})
        self.topic = topic
        self._produce = self.client.produce
        self._poll = self.client.poll

    def _report(self, error: Any, message: Any) -> None:
        if error is not None and len(self.failures) < 10:
            self.failures.append(str(error))

    def send(self, value: bytes, key: bytes) -> None:
        try:
            self._produce(self.topic, value, key)
        except BufferError:  # librdkafka's queue is full: wait for acknowledgements
            self._send_when_room(value, key)

    def _send_when_room(self, value: bytes, key: bytes) -> None:
        while True:
            self._poll(0.001)
            try:
                self._produce(self.topic, value, key)
                return
            except BufferError:
                continue

    def send_batch(self, values: np.ndarray, keys: np.ndarray) -> None:
        size = values.dtype.itemsize
        data = values.tobytes()
        send = self.send
        for i, key in enumerate(keys.tolist()):
            send(data[i * size : (i + 1) * size], key)

    def push(self) -> None:
        self._poll(0)

    def flush(self) -> None:
        left = self.client.flush(FLUSH_TIMEOUT_S)
        if left or self.failures:
            raise RuntimeError(
                f"records not delivered: undelivered={left} failures={self.failures[:3]}"
            )

    def close(self) -> None:
        self.client.flush(FLUSH_TIMEOUT_S)


class KafkaConsumer(Consumer):
    """confluent-kafka's Consumer, assigned its partitions from the beginning."""

    def __init__(self, config: dict[str, Any], topic: str, partitions: list[int]) -> None:
        from confluent_kafka import OFFSET_BEGINNING, TopicPartition
        from confluent_kafka import Consumer as ClientConsumer

        self.client = ClientConsumer(config)
        self.client.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        self._consume = self.client.consume
        self._poll = self.client.poll

    def poll(self, timeout_s: float) -> list[Any]:
        # consume(n, timeout) waits for n messages or the timeout, whichever comes
        # first: what is there is taken without waiting, else the first message to come.
        messages = self._consume(CONSUME_MESSAGES, 0)
        if not messages:
            first = self._poll(timeout_s)
            if first is None:
                return []
            messages = [first, *self._consume(CONSUME_MESSAGES - 1, 0)]
        values = [m.value() for m in messages if m.error() is None]
        if len(values) != len(messages):
            errors = [m.error() for m in messages if m.error() is not None]
            if any(e.fatal() or not e.retriable() for e in errors):
                raise RuntimeError(f"consumer error: {errors[0]}")
        return values

    def close(self) -> None:
        self.client.close()


def _share(spec: RunSpec, index: int) -> list[int]:
    return [p for p in range(spec.partitions) if p % spec.consumers == index]


class _KafkaClients:
    """What the engine-kafka and kafka rows have in common: confluent-kafka's clients on
    a bootstrap address (``self.connection``: the client settings that reach it)."""

    acks: ClassVar[int | str]
    #: The test suite's check: per record, and paced (tests/test_kafka_listener.py
    #: tests the listener itself).
    checked = ("fleet-p1-record", "latency-20000")
    connection: dict[str, Any]
    topic: str | None

    @classmethod
    def missing(cls) -> str | None:
        return requires_module("confluent_kafka", _INSTALL)

    def producer(self, spec: RunSpec, index: int) -> Producer:
        assert self.topic is not None
        config = self.connection | producer_config(self.acks, spec.rate is not None)
        producer = KafkaProducer(config, self.topic)
        # The partitions' leaders now, not inside the first timed run.
        producer.client.list_topics(self.topic, timeout=ADMIN_TIMEOUT_S)
        return producer

    def consumer(self, spec: RunSpec, index: int) -> Consumer:
        assert self.topic is not None
        config = self.connection | consumer_config(index)
        return KafkaConsumer(config, self.topic, _share(spec, index))


class _EngineKafka(_KafkaClients, _Engine):
    """The engine's shared daemon, through its Kafka listener."""

    parent_only = ("_admin",)
    #: Every partition led by broker 1 (replication 1 only), as Kafka's one node leads
    #: them all: a client then sends each broker's batches in one request, not three.
    one_broker: ClassVar[bool] = False

    def prepare(self, spec: RunSpec, ctx: BaseContext) -> None:
        if not self.one_broker:
            super().prepare(spec, ctx)
            return
        from engine import metadata as md

        self.topic = f"bench-{spec.run_id}"
        admin = self._admin_client()
        config = {
            "ring.bytes": RING_BYTES,
            "max.message.bytes": 1 << 20,
            "segment.bytes": SEGMENT_BYTES,
        }
        replicas = {p: [1] for p in range(spec.partitions)}
        md.create_topic(admin._cluster.zk, self.topic, spec.partitions, 1, config,
                        replicas=replicas)  # fmt: skip
        admin._cluster.forget(self.topic)
        admin._cluster.refresh(self.topic, wait_s=ADMIN_TIMEOUT_S)  # leaders and rings

    @classmethod
    def missing(cls) -> str | None:
        return _KafkaClients.missing()

    def open(self, workdir: Path) -> None:
        from engine.cli import status_report

        super().open(workdir)
        self.connection = connection_settings(status_report(self.data_dir)["kafka"])


@register
class EngineKafkaAcks1(_EngineKafka):
    name = "engine-kafka-acks1"
    description = (
        "engine through its Kafka listener (SASL), every partition led by one broker: "
        "confluent-kafka producer acks=1, confluent-kafka consumer"
    )
    acks = 1
    order = 5
    one_broker = True


@register
class EngineKafkaAcksAll(_EngineKafka):
    name = "engine-kafka-acks-all-r3"
    description = (
        "engine through its Kafka listener: confluent-kafka producer acks=all (idempotent), "
        "replication 3, min.insync.replicas 2"
    )
    acks = "all"
    replication = 3
    order = 6


def kafka_script() -> Path | None:
    """The project's scripts/kafka (it assembles and starts a real Kafka), if present."""
    script = Path(__file__).resolve().parents[2] / "scripts" / "kafka"
    return script if script.exists() else None


def connection_settings(kafka: dict[str, Any]) -> dict[str, Any]:
    """librdkafka's settings from a "kafka" object (engine status --json, kafka.json)."""
    settings = {
        "bootstrap.servers": kafka["bootstrap_servers"],
        "security.protocol": kafka.get("security_protocol") or "PLAINTEXT",
    }
    if kafka.get("sasl_mechanism"):
        settings |= {
            "sasl.mechanism": kafka["sasl_mechanism"],
            "sasl.username": kafka["sasl_username"],
            "sasl.password": kafka["sasl_password"],
        }
    return settings


class _Kafka(_KafkaClients, Transport):
    """Kafka itself: started by scripts/kafka, or a running cluster named by an
    environment variable (module docstring)."""

    variable: ClassVar[str] = KAFKA_ONE_NODE
    replication: ClassVar[int] = 1
    parent_only = ("_admin", "_started")
    external = True
    #: Starting Kafka takes 10-20 s a node: the test suite's check leaves these rows out
    #: (tests/test_kafka_oracle*.py run the clients against Kafka).
    checked = ()

    @classmethod
    def missing(cls) -> str | None:
        if os.environ.get(cls.variable) or kafka_script() is not None:
            return _KafkaClients.missing()
        nodes = "three nodes" if cls.replication > 1 else "one node"
        return (
            f"no Kafka: scripts/kafka is not here; or set {cls.variable} to host:port,... "
            f"or a kafka.json of a running cluster ({nodes})"
        )

    def open(self, workdir: Path) -> None:
        from confluent_kafka.admin import AdminClient

        self.topic = None
        self._started: Path | None = None
        named = os.environ.get(self.variable)
        if named and Path(named).is_file():
            self.connection = connection_settings(json.loads(Path(named).read_text()))
        elif named:
            self.connection = {"bootstrap.servers": named}
        else:
            self.connection = connection_settings(self._start(workdir / "kafka"))
        self._admin: Any = AdminClient(self.connection)
        brokers = self._admin.list_topics(timeout=ADMIN_TIMEOUT_S).brokers
        if len(brokers) < self.replication:
            raise RuntimeError(
                f"Kafka cluster too small: brokers={len(brokers)} replication={self.replication}"
            )

    def _start(self, directory: Path) -> dict[str, Any]:
        script = kafka_script()
        assert script is not None
        self._started = directory
        nodes = "3" if self.replication > 1 else "1"
        command = [sys.executable, str(script), "start", "--dir", str(directory), "--nodes", nodes,
                   "--heap", KAFKA_HEAP]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"scripts/kafka start failed: {done.stderr.strip()[-500:]}")
        kafka: dict[str, Any] = json.loads((directory / "kafka.json").read_text())
        return kafka

    def close(self) -> None:
        self._admin = None
        started, self._started = getattr(self, "_started", None), None
        script = kafka_script()
        if started is not None and script is not None:
            subprocess.run(
                [sys.executable, str(script), "stop", "--dir", str(started)],
                capture_output=True, check=False,
            )  # fmt: skip

    def prepare(self, spec: RunSpec, ctx: BaseContext) -> None:
        from confluent_kafka.admin import NewTopic

        topic = f"engine-bench-{os.getpid()}-{spec.run_id}"
        config = {"min.insync.replicas": "2"} if self.replication > 1 else {}
        config["max.message.bytes"] = str(1 << 20)
        new = NewTopic(topic, spec.partitions, self.replication, config=config)
        self._admin.create_topics([new])[topic].result(ADMIN_TIMEOUT_S)
        self.topic = topic
        self._wait_for_leaders(topic, spec.partitions)

    def _wait_for_leaders(self, topic: str, partitions: int) -> None:
        deadline = time.monotonic() + ADMIN_TIMEOUT_S
        while True:
            found = self._admin.list_topics(topic, timeout=ADMIN_TIMEOUT_S).topics.get(topic)
            led = [p for p in (found.partitions.values() if found else ()) if p.leader >= 0]
            if found is not None and found.error is None and len(led) == partitions:
                return
            if time.monotonic() > deadline:
                raise Unsupported(f"topic {topic}: no leader for every partition in time")
            time.sleep(0.05)

    def finish(self) -> None:
        topic, self.topic = self.topic, None
        if topic is not None:
            try:
                self._admin.delete_topics([topic])[topic].result(ADMIN_TIMEOUT_S)
            except Exception as error:
                raise RuntimeError(f"{error!r}; {self._nodes_state()}") from error

    def _nodes_state(self) -> str:
        """What scripts/kafka says of the nodes it started, and their last fatal log lines
        (a failed clean-up is most often a node that died)."""
        started, script = getattr(self, "_started", None), kafka_script()
        if started is None or script is None:
            return "a cluster not started here"
        status = subprocess.run(
            [sys.executable, str(script), "status", "--dir", str(started)],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        fatal = [
            f"{log.parent.name}: {line.strip()}"
            for log in sorted(started.glob("node-*/*.log"))
            for line in log.read_text(errors="replace").splitlines()[-2000:]
            if "FATAL" in line or "OutOfMemory" in line or "Exiting" in line
        ]
        return f"nodes: {status.stdout.strip()!r}; fatal log lines: {fatal[-3:]}"


@register
class KafkaAcks1(_Kafka):
    name = "kafka-acks1"
    description = (
        "Kafka (KRaft, one node): confluent-kafka producer acks=1, "
        "confluent-kafka consumer"
    )
    acks = 1
    order = 10


@register
class KafkaAcksAll(_Kafka):
    name = "kafka-acks-all-r3"
    description = (
        "Kafka (KRaft, three nodes): confluent-kafka producer acks=all "
        "(idempotent), replication 3, min.insync.replicas 2"
    )
    variable = KAFKA_THREE_NODES
    acks = "all"
    replication = 3
    order = 11
