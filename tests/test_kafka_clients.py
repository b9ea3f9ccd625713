"""The cells of issue 19's client matrix that the other test files leave open:
kafka-python and aiokafka producing with acks 0, 1 and all and idempotently, read back
exactly once and in order by the engine's own Consumer; aiokafka's admin client
creating, describing and deleting topics; aiokafka's transactions, their aborts seen
correctly by aiokafka's and confluent-kafka's read_committed consumers.

(Groups and commit/resume for all three clients: tests/test_kafka_groups.py; codecs:
tests/test_kafka_compression.py; confluent-kafka's produce: tests/test_kafka_listener.py;
the other clients' admin and transactions: tests/test_kafka_admin.py and
tests/test_kafka_transactions.py.)

One daemon (two brokers, ``--kafka-auth none``) for the module; topics have two
replicas, so that acks=all waits for a follower.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiokafka
import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from engine_harness import Daemon, running_daemon, wait_for
from test_kafka_groups import bootstrap
from test_kafka_listener import SMALL_RING, kafka
from test_kafka_transactions import read_all

from engine import Admin, Consumer, TopicPartition
from engine.datadir import DataDir
from engine.kafka.error_codes import ErrorCode
from engine.record_batch import read_producer_fields, scan_batches

COUNT = 400  # records per produce test, over two partitions
#: A new topic's config as clients send it (strings), rings kept small.
RING_CONFIG = {k: str(v) for k, v in SMALL_RING.items()}
ACKS = {
    "acks0": {"acks": 0, "idempotent": False},
    "acks1": {"acks": 1, "idempotent": False},
    "acks-all": {"acks": "all", "idempotent": False},
    "idempotent": {"acks": "all", "idempotent": True},
}


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    with running_daemon(
        tmp_path_factory.mktemp("kafka-clients"), brokers=2, start_args=["--kafka-auth", "none"]
    ) as d:
        yield d


def new_topic(d: Daemon, partitions: int = 2) -> str:
    name = f"c-{uuid.uuid4().hex[:8]}"
    with Admin(d.data_dir) as admin:
        admin.create_topic(name, partitions=partitions, replication=2, config=SMALL_RING)
    return name


def sent(i: int) -> tuple[int, bytes, bytes]:
    """(partition, key, value) of record ``i``."""
    return i % 2, b"k%d" % i, b"v%d" % i


# -- produce -----------------------------------------------------------------------------


def produce_kafka_python(servers: str, topic: str, acks: Any, idempotent: bool) -> list:
    producer = kafka.KafkaProducer(
        bootstrap_servers=servers, acks=acks, enable_idempotence=idempotent, linger_ms=5
    )
    try:
        futures = [
            producer.send(topic, key=key, value=value, partition=p)
            for p, key, value in map(sent, range(COUNT))
        ]
        producer.flush(30)
        return [(m.partition, m.offset) for m in (f.get(timeout=30) for f in futures)]
    finally:
        producer.close(timeout=10)


def produce_aiokafka(servers: str, topic: str, acks: Any, idempotent: bool) -> list:
    async def run() -> list:
        producer = aiokafka.AIOKafkaProducer(
            bootstrap_servers=servers, acks=acks, enable_idempotence=idempotent, linger_ms=5
        )
        await producer.start()
        try:
            futures = [
                await producer.send(topic, key=key, value=value, partition=p)
                for p, key, value in map(sent, range(COUNT))
            ]
            await producer.flush()
            metas = await asyncio.gather(*futures)  # None each with acks=0
            return [None if m is None else (m.partition, m.offset) for m in metas]
        finally:
            await producer.stop()

    return asyncio.run(run())


#: Each client's producer of records ``sent(0..COUNT)``, one by one; the (partition, offset)
#: each was acknowledged at, in send order (meaningless with acks=0).
PRODUCERS = {"kafka-python": produce_kafka_python, "aiokafka": produce_aiokafka}


def read_engine(d: Daemon, topic: str, partitions: int, expect: int) -> list:
    """Every record of ``topic`` through the engine's Consumer: once it holds ``expect``,
    whatever else comes within 0.5 s as well (a duplicate would)."""
    with Consumer(data_dir=d.data_dir, auto_offset_reset="earliest") as c:
        c.assign([TopicPartition(topic, p) for p in range(partitions)])
        out: list = []
        wait_for(
            lambda: out.extend(c.poll(timeout=0.2)) or len(out) >= expect,
            timeout=30,
            what=f"{expect} records through the engine's Consumer",
        )
        out.extend(c.poll(timeout=0.5))
        return out


def stored_producer_fields(d: Daemon, topic: str, partition: int, count: int) -> list:
    """(base_offset, producer_id, base_sequence) of each batch in the partition leader's
    segments, once they hold ``count`` records."""
    with Admin(d.data_dir) as admin:
        leader = admin.describe_topic(topic).partitions[partition].leader
    directory = Path(DataDir.resolve(d.data_dir).partition_dir(leader, topic, partition))

    def drained() -> list | None:
        stored = b"".join(p.read_bytes() for p in sorted(directory.glob("*.log")))
        infos = scan_batches(stored)[0]
        if int(infos["records_count"].sum()) != count:
            return None
        fields = [read_producer_fields(stored, int(info["position"])) for info in infos]
        return [
            (int(info["base_offset"]), f.producer_id, f.base_sequence)
            for info, f in zip(infos, fields, strict=True)
        ]

    return wait_for(drained, what=f"{count} records in the segments of {topic}-{partition}")


@pytest.mark.parametrize("acks", ACKS.values(), ids=ACKS.keys())
@pytest.mark.parametrize("client", PRODUCERS)
def test_each_client_produces_with_each_acks_and_the_engine_reads_it_once_in_order(
    daemon: Daemon, client: str, acks: dict[str, Any]
) -> None:
    topic = new_topic(daemon)
    placed = PRODUCERS[client](bootstrap(daemon), topic, acks["acks"], acks["idempotent"])
    got = read_engine(daemon, topic, 2, COUNT)
    for partition in (0, 1):
        mine = [r for r in got if r.partition == partition]
        want = [sent(i) for i in range(COUNT) if sent(i)[0] == partition]
        assert [(r.key, r.value) for r in mine] == [(k, v) for _, k, v in want]
        assert [r.offset for r in mine] == list(range(len(want)))
    if acks["acks"] != 0:  # acks=0: the client never hears an offset
        by_place = {(r.partition, r.offset): r.key for r in got}
        assert [by_place[place] for place in placed] == [sent(i)[1] for i in range(COUNT)]
    # The batches' producer fields show the client produced as asked (kafka-python is
    # idempotent unless told not to): one producer id, sequences from 0, or none.
    for partition in (0, 1):
        batches = stored_producer_fields(daemon, topic, partition, COUNT // 2)
        if acks["idempotent"]:  # each batch's sequence is its offset on a fresh topic
            assert len({pid for _, pid, _ in batches}) == 1 and batches[0][1] >= 0
            assert all(sequence == base for base, _, sequence in batches)
        else:
            assert {pid for _, pid, _ in batches} == {-1}


# -- admin -------------------------------------------------------------------------------


def test_aiokafka_admin_creates_describes_and_deletes_a_topic(daemon: Daemon) -> None:
    name = f"c-{uuid.uuid4().hex[:8]}"
    config = RING_CONFIG | {"retention.ms": "3600000"}
    seen: dict[str, Any] = {}

    def led(topics: list) -> bool:
        """Every partition has a leader (elected after the creation is answered)."""
        partitions = topics[0]["partitions"] if topics else []
        return len(partitions) == 3 and all(p["leader"] >= 0 for p in partitions)

    async def run() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap(daemon))
        await admin.start()
        try:
            new = NewTopic(name, num_partitions=3, replication_factor=2, topic_configs=config)
            seen["created"] = (await admin.create_topics([new])).to_object()
            seen["again"] = (await admin.create_topics([new])).to_object()
            deadline = asyncio.get_running_loop().time() + 30
            while not led(seen.setdefault("topics", [])):
                assert asyncio.get_running_loop().time() < deadline, seen["topics"]
                seen["topics"] = await admin.describe_topics([name])
            with Admin(daemon.data_dir) as engine_admin:
                seen["engine"] = engine_admin.describe_topic(name)
            (configs,) = await admin.describe_configs(
                [ConfigResource(ConfigResourceType.TOPIC, name)]
            )
            seen["configs"] = configs.to_object()
            seen["deleted"] = (await admin.delete_topics([name])).to_object()
            with Admin(daemon.data_dir) as engine_admin:
                seen["engine_after"] = engine_admin.list_topics()
            seen["listed_after"] = await admin.list_topics()
            seen["gone"] = (await admin.delete_topics([name])).to_object()
        finally:
            await admin.close()

    asyncio.run(run())
    created = [(t["topic"], t["error_code"]) for t in seen["created"]["topic_errors"]]
    assert created == [(name, ErrorCode.NONE)]
    assert [(t["topic"], t["error_code"]) for t in seen["again"]["topic_errors"]] == [
        (name, ErrorCode.TOPIC_ALREADY_EXISTS)
    ]
    partitions = seen["engine"].partitions
    assert len(partitions) == 3 and all(len(p.replicas) == 2 for p in partitions)
    (topic,) = seen["topics"]
    assert (topic["topic"], topic["error_code"]) == (name, ErrorCode.NONE)
    assert sorted(
        (p["partition"], p["leader"], sorted(p["replicas"])) for p in topic["partitions"]
    ) == [(p.partition, p.leader, sorted(p.replicas)) for p in partitions]
    (resource,) = seen["configs"]["resources"]
    assert (resource["resource_name"], resource["error_code"]) == (name, ErrorCode.NONE)
    values = {e["config_names"]: e["config_value"] for e in resource["config_entries"]}
    assert {k: values[k] for k in config} == config
    deleted = [(t["topic"], t["error_code"]) for t in seen["deleted"]["topic_error_codes"]]
    assert deleted == [(name, ErrorCode.NONE)]
    assert name not in seen["engine_after"] and name not in seen["listed_after"]
    assert [(t["topic"], t["error_code"]) for t in seen["gone"]["topic_error_codes"]] == [
        (name, ErrorCode.UNKNOWN_TOPIC_OR_PARTITION)
    ]


# -- transactions ------------------------------------------------------------------------


def read_aiokafka(servers: str, topic: str, partitions: int, expect: int, isolation: str) -> list:
    """The values of ``topic`` through an assign()ed aiokafka consumer, once it holds
    ``expect`` and nothing more comes within 0.5 s."""

    async def run() -> list:
        consumer = aiokafka.AIOKafkaConsumer(
            bootstrap_servers=servers,
            isolation_level=isolation,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
        )
        await consumer.start()
        try:
            consumer.assign([aiokafka.TopicPartition(topic, p) for p in range(partitions)])
            out: list[bytes] = []
            deadline = asyncio.get_running_loop().time() + 30
            while len(out) < expect:
                assert asyncio.get_running_loop().time() < deadline, f"{out!r} of {expect}"
                for records in (await consumer.getmany(timeout_ms=200)).values():
                    out.extend(r.value for r in records)
            for records in (await consumer.getmany(timeout_ms=500)).values():
                out.extend(r.value for r in records)
            return sorted(out)
        finally:
            await consumer.stop()

    return asyncio.run(run())


def test_aiokafka_commits_and_aborts_transactions_read_committed_skips_the_aborted(
    daemon: Daemon,
) -> None:
    topic = new_topic(daemon)
    servers = bootstrap(daemon)

    async def run() -> None:
        producer = aiokafka.AIOKafkaProducer(
            bootstrap_servers=servers, transactional_id=f"t-{uuid.uuid4().hex[:8]}"
        )
        await producer.start()
        try:
            async with producer.transaction():
                for i in range(10):
                    await producer.send(topic, b"kept-%d" % i, partition=i % 2)
            await producer.begin_transaction()
            for i in range(10):  # in the log before the abort
                await producer.send_and_wait(topic, b"dropped-%d" % i, partition=i % 2)
            await producer.abort_transaction()
            async with producer.transaction():
                await producer.send(topic, b"last", partition=0)
        finally:
            await producer.stop()

    asyncio.run(run())
    kept = sorted([b"kept-%d" % i for i in range(10)] + [b"last"])
    assert read_aiokafka(servers, topic, 2, len(kept), "read_committed") == kept
    assert read_all(daemon, topic, 2, len(kept)) == kept  # confluent-kafka, read_committed
    everything = read_aiokafka(servers, topic, 2, 21, "read_uncommitted")
    assert everything == sorted(kept + [b"dropped-%d" % i for i in range(10)])
