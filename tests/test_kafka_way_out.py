"""The way out: the engine's own Producer, Consumer and Admin on a Kafka cluster.

Given ``bootstrap_servers=`` (and the login), they run through confluent-kafka with the
same methods, futures, records and errors (engine.kafka_client). The Kafka clusters here:
the engine's own Kafka listener (one daemon, SASL SCRAM, shared by the module; records
go both ways between the two doors), and a real Kafka (tests/kafka_harness.py, one KRaft
node, shared by the module; skipped with the reason where it cannot run).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import confluent_kafka
import pytest
from engine_harness import Daemon, running_daemon, wait_for
from kafka_harness import require_kafka, running_kafka
from test_kafka_listener import SMALL_RING, kafka_settings

from engine import (
    Admin,
    AuthorizationError,
    CommitFailedError,
    ConfigError,
    Consumer,
    EngineTimeoutError,
    KafkaClusterError,
    OffsetAndTimestamp,
    PartitionOutOfRangeError,
    Producer,
    ProducerFencedError,
    Record,
    RecordFuture,
    TopicExistsError,
    TopicPartition,
    UnknownGroupError,
    UnknownTopicError,
    UnsupportedOnKafkaError,
)
from engine.kafka_client import errors as kerrors
from engine.partitioner import key_partition

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

@pytest.fixture(scope="module")
def kd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    with running_daemon(tmp_path_factory.mktemp("way-out"), brokers=1) as d:
        yield d


@pytest.fixture(scope="module")
def conn(kd: Daemon) -> dict[str, Any]:
    """The keyword arguments that put a Producer, Consumer or Admin on the listener."""
    k = kafka_settings(kd)
    return {
        "bootstrap_servers": k["bootstrap_servers"],
        "security_protocol": k["security_protocol"],
        "sasl_mechanism": k["sasl_mechanism"],
        "sasl_username": k["sasl_username"],
        "sasl_password": k["sasl_password"],
    }


def new_topic(d: Daemon, partitions: int = 2) -> str:
    name = f"w-{uuid.uuid4().hex[:8]}"
    with Admin(d.data_dir) as admin:
        admin.create_topic(name, partitions=partitions, config=SMALL_RING)
    return name


def read_all(consumer: Consumer, expect: int, timeout: float = 30) -> list[Record]:
    out: list[Record] = []
    wait_for(
        lambda: out.extend(consumer.poll(timeout=0.2, max_records=10_000)) or len(out) >= expect,
        timeout=timeout,
        what=f"{expect} records",
    )
    return out


# -- the producer --------------------------------------------------------------------


@pytest.mark.parametrize("acks", [0, 1, "all"])
def test_producer_with_bootstrap_servers_delivers_with_each_acks_where_the_engine_reads(
    kd: Daemon, conn: dict[str, Any], acks: Any
) -> None:
    topic = new_topic(kd, partitions=3)
    keys = [f"key-{i % 7}".encode() for i in range(30)]
    with Producer(acks=acks, **conn) as producer:
        assert isinstance(producer, Producer) and type(producer).__name__ == "KafkaProducer"
        assert producer.acks == (-1 if acks == "all" else acks)
        assert producer.enable_idempotence == (acks == "all")  # Kafka's default rule
        futures = [
            producer.send(topic, f"v{i}".encode(), key=k, headers=[("h", b"x")])
            for i, k in enumerate(keys)
        ]
        producer.flush(30)
    assert all(isinstance(f, RecordFuture) and f.succeeded() for f in futures)
    # Keyed records land where Kafka's Java client (and the engine) puts them.
    assert [f.partition for f in futures] == [key_partition(k, 3) for k in keys]
    metas = [f.get(5) for f in futures]
    if acks == 0:
        assert {m.offset for m in metas} == {-1}  # no answer, no offset
    else:
        for p in range(3):
            offsets = [m.offset for m in metas if m.partition == p]
            assert offsets == list(range(len(offsets)))
    with Consumer(data_dir=kd.data_dir, auto_offset_reset="earliest") as consumer:
        consumer.assign([TopicPartition(topic, p) for p in range(3)])
        records = read_all(consumer, 30)
    assert sorted(r.value for r in records) == sorted(f"v{i}".encode() for i in range(30))
    assert all(r.headers == [("h", b"x")] for r in records)
    for r in records:
        assert r.partition == futures[int(r.value[1:])].partition
        if acks != 0:
            assert r.offset == futures[int(r.value[1:])].offset


def test_producer_with_bootstrap_servers_futures_callbacks_and_send_batch(
    kd: Daemon, conn: dict[str, Any]
) -> None:
    topic = new_topic(kd, partitions=1)
    delivered: list[Any] = []
    with Producer(acks=1, linger_ms=0, **conn) as producer:
        future = producer.send(topic, b"first", timestamp_ms=1_700_000_000_000)
        future.add_callback(delivered.append)
        meta = future.get(10)
        assert (meta.topic, meta.partition, meta.offset) == (topic, 0, 0)
        assert meta.timestamp == 1_700_000_000_000
        assert delivered == [meta]
        result = producer.send_batch(topic, [b"a", b"b", b"c"], offsets=True)
        assert result.offsets.tolist() == [1, 2, 3]
        assert result.partitions == 0
        assert producer.partitions_for(topic) == {0}


# -- the consumer --------------------------------------------------------------------


def test_consumer_with_bootstrap_servers_reads_back_engine_records_and_keeps_positions(
    kd: Daemon, conn: dict[str, Any]
) -> None:
    topic = new_topic(kd, partitions=2)
    start_ms = int(time.time() * 1000)
    with Producer(kd.data_dir, acks=1) as producer:
        for i in range(20):
            producer.send(topic, f"v{i}".encode(), key=f"k{i}".encode(), partition=i % 2,
                          headers=[("n", str(i).encode())])  # fmt: skip
    tp0, tp1 = TopicPartition(topic, 0), TopicPartition(topic, 1)
    with Consumer(auto_offset_reset="earliest", **conn) as consumer:
        assert isinstance(consumer, Consumer) and type(consumer).__name__ == "KafkaConsumer"
        consumer.assign([tp0, tp1])
        assert consumer.assignment() == {tp0, tp1}
        records = read_all(consumer, 20)
        assert all(type(r) is Record for r in records)
        by_value = {r.value: r for r in records}
        r7 = by_value[b"v7"]
        assert (r7.topic, r7.partition, r7.offset, r7.key) == (topic, 1, 3, b"k7")
        assert r7.headers == [("n", b"7")] and r7.timestamp >= start_ms
        assert consumer.position(tp0) == 10
        assert consumer.beginning_offsets([tp0]) == {tp0: 0}
        assert consumer.end_offsets([tp0, tp1]) == {tp0: 10, tp1: 10}
        consumer.seek(tp0, 4)
        assert consumer.position(tp0) == 4
        again = read_all(consumer, 6)
        assert [r.offset for r in again] == [4, 5, 6, 7, 8, 9]
        found = consumer.offsets_for_times({tp1: start_ms, tp0: 4_000_000_000_000})
        assert found[tp0] is None
        assert isinstance(found[tp1], OffsetAndTimestamp) and found[tp1].offset == 0
        consumer.pause(tp0)
        assert consumer.paused() == {tp0}
        consumer.resume(tp0)
        assert consumer.paused() == set()
    with Consumer(topic, auto_offset_reset="earliest", **conn) as whole:  # no group: all
        assert len(read_all(whole, 20)) == 20
        assert whole.assignment() == {tp0, tp1}


# -- errors --------------------------------------------------------------------------


def test_kafka_error_codes_map_to_the_engines_classes_through_one_table() -> None:
    K = confluent_kafka.KafkaError
    assert isinstance(kerrors.engine_error(K(K.UNKNOWN_TOPIC_OR_PART), "x"), UnknownTopicError)
    assert isinstance(kerrors.engine_error(K(K._MSG_TIMED_OUT), "x"), EngineTimeoutError)
    assert isinstance(kerrors.engine_error(K(K.PRODUCER_FENCED), "x"), ProducerFencedError)
    assert isinstance(kerrors.engine_error(K(K.UNKNOWN_MEMBER_ID), "x"), CommitFailedError)
    assert isinstance(kerrors.engine_error(K(K.GROUP_ID_NOT_FOUND), "x"), UnknownGroupError)
    assert isinstance(kerrors.engine_error(K(K.SASL_AUTHENTICATION_FAILED), "x"),
                      AuthorizationError)  # fmt: skip
    other = kerrors.engine_error(K(K.UNSUPPORTED_COMPRESSION_TYPE), "sending")
    assert isinstance(other, KafkaClusterError) and other.name == "UNSUPPORTED_COMPRESSION_TYPE"
    assert "sending" in str(other) and other.code == K.UNSUPPORTED_COMPRESSION_TYPE
    for code, kind in kerrors.ERRORS.items():
        assert type(kerrors.engine_error(K(code), "x")) is kind


def test_failures_on_a_kafka_cluster_raise_the_errors_the_engine_raises(
    kd: Daemon, conn: dict[str, Any]
) -> None:
    topic = new_topic(kd, partitions=2)
    missing = f"missing-{uuid.uuid4().hex[:6]}"
    with Producer(acks=1, **conn) as producer:
        with pytest.raises(UnknownTopicError, match=missing):
            producer.send(missing, b"x")
        with pytest.raises(PartitionOutOfRangeError, match="partitions=2"):
            producer.send(topic, b"x", partition=5)
    with pytest.raises(UnknownTopicError, match=missing):
        Consumer(missing, **conn)
    with Consumer(**conn) as consumer:
        with pytest.raises(PartitionOutOfRangeError):
            consumer.assign([TopicPartition(topic, 2)])
        with pytest.raises(ConfigError, match="needs a group_id"):
            consumer.commit()
        with pytest.raises(ConfigError, match="not assigned"):
            consumer.seek(TopicPartition(topic, 0), 0)
    with pytest.raises(ConfigError, match="not both"):
        Producer(kd.data_dir, **conn)
    with pytest.raises(ConfigError, match="security_protocol"):
        Producer(bootstrap_servers=conn["bootstrap_servers"], security_protocol="TLS")
    with pytest.raises(ConfigError, match="unknown producer option"):
        Producer(ring_bytes=1, **conn)
    wrong = conn | {"sasl_password": "not-the-password"}
    with Producer(acks=1, max_block_ms=1000, **wrong) as producer, pytest.raises(
        AuthorizationError, match="SASL authentication error"
    ):
        producer.send(topic, b"x")


def test_what_only_the_engines_rings_give_is_refused_on_a_kafka_cluster_naming_it(
    kd: Daemon, conn: dict[str, Any]
) -> None:
    topic = new_topic(kd, partitions=1)
    with Consumer(**conn) as consumer:
        consumer.assign([TopicPartition(topic, 0)])
        with pytest.raises(UnsupportedOnKafkaError, match=r"poll_values\(\)"):
            consumer.poll_values(8)
    with pytest.raises(UnsupportedOnKafkaError, match="poll_spin_us=5"):
        Consumer(poll_spin_us=5, **conn)
    with Admin(**conn) as admin:
        with pytest.raises(UnsupportedOnKafkaError, match=r"ring\.bytes=65536"):
            admin.create_topic("never", config={"ring.bytes": 65536})
        with pytest.raises(UnsupportedOnKafkaError, match="data_dir"):
            _ = admin.data_dir
        with pytest.raises(UnsupportedOnKafkaError, match="alter_partition_reassignments"):
            admin.alter_partition_reassignments({TopicPartition(topic, 0): [1]})


def test_the_kafka_classes_give_every_public_method_of_the_engines() -> None:
    from engine.kafka_client.admin import KafkaAdmin
    from engine.kafka_client.consumer import KafkaConsumer
    from engine.kafka_client.producer import KafkaProducer

    for base, kafka in ((Producer, KafkaProducer), (Consumer, KafkaConsumer), (Admin, KafkaAdmin)):
        public = {n for n, v in vars(base).items() if not n.startswith("_") and callable(v)}
        assert public and public <= set(vars(kafka)), (kafka, public - set(vars(kafka)))


# -- admin ---------------------------------------------------------------------------


def test_admin_with_bootstrap_servers_lists_topics_and_describes_the_cluster(
    kd: Daemon, conn: dict[str, Any]
) -> None:
    topic = new_topic(kd, partitions=2)
    with Admin(**conn) as admin:
        assert type(admin).__name__ == "KafkaAdmin"
        assert topic in admin.list_topics()
        cluster = admin.describe_cluster()
        host, _, port = conn["bootstrap_servers"].partition(",")[0].rpartition(":")
        assert [(b["host"], b["port"]) for b in cluster["brokers"]] == [(host, int(port))]
        assert cluster["controller_id"] == cluster["brokers"][0]["node_id"]


def test_admin_with_bootstrap_servers_creates_describes_and_deletes_a_topic(
    kd: Daemon, conn: dict[str, Any]
) -> None:
    name = f"w-{uuid.uuid4().hex[:8]}"
    with Admin(**conn) as admin:
        desc = admin.create_topic(name, partitions=2, config={"retention.ms": 60_000})
        assert [p.partition for p in desc.partitions] == [0, 1]
        assert all(p.leader is not None and p.high_watermark == 0 for p in desc.partitions)
        assert desc.config["retention.ms"] == 60_000
        assert name in admin.list_topics()
        admin.delete_topic(name)
        wait_for(lambda: name not in admin.list_topics(), timeout=20, what="topic deleted")
        with pytest.raises(UnknownTopicError):
            admin.describe_topic(name)


# -- groups and transactions (when the listener serves them) -------------------------


def test_a_group_on_a_kafka_cluster_assigns_commits_and_resumes(
    kd: Daemon, conn: dict[str, Any]
) -> None:
    topic = new_topic(kd, partitions=2)
    group = f"g-{uuid.uuid4().hex[:6]}"
    with Producer(kd.data_dir, acks=1) as producer:
        for i in range(10):
            producer.send(topic, f"v{i}".encode(), partition=i % 2)
    assigned: list[set[TopicPartition]] = []
    revoked: list[set[TopicPartition]] = []
    options = dict(group_id=group, auto_offset_reset="earliest", enable_auto_commit=False,
                   session_timeout_ms=6000, heartbeat_interval_ms=1000)  # fmt: skip
    with Consumer(topic, on_assign=assigned.append, on_revoke=revoked.append,
                  **options, **conn) as consumer:  # fmt: skip
        assert len(read_all(consumer, 10)) == 10
        assert assigned == [{TopicPartition(topic, 0), TopicPartition(topic, 1)}]
        consumer.commit({TopicPartition(topic, 0): 3})
        assert consumer.committed(TopicPartition(topic, 0)) == 3
        consumer.commit()
        assert consumer.committed(TopicPartition(topic, 1)) == 5
    assert revoked == [{TopicPartition(topic, 0), TopicPartition(topic, 1)}]
    with Consumer(topic, **options, **conn) as again:
        consumer_records = []
        with Producer(kd.data_dir, acks=1) as producer:
            producer.send(topic, b"late", partition=0)
        consumer_records = read_all(again, 1)
        assert [r.value for r in consumer_records] == [b"late"]


def test_a_transaction_on_a_kafka_cluster_is_seen_by_read_committed_only_when_committed(
    kd: Daemon, conn: dict[str, Any]
) -> None:
    topic = new_topic(kd, partitions=1)
    with Producer(transactional_id=f"tx-{uuid.uuid4().hex[:6]}", **conn) as producer:
        producer.init_transactions()
        producer.begin_transaction()
        producer.send(topic, b"aborted")
        producer.abort_transaction()
        producer.begin_transaction()
        producer.send(topic, b"committed")
        producer.send_offsets_to_transaction({TopicPartition(topic, 0): 1}, "tx-group")
        producer.commit_transaction()
    with Consumer(isolation_level="read_committed", auto_offset_reset="earliest",
                  **conn) as consumer:  # fmt: skip
        consumer.assign([TopicPartition(topic, 0)])
        assert [r.value for r in read_all(consumer, 1)] == [b"committed"]


# -- the examples, unchanged, through bootstrap_servers -------------------------------


def example(kd: Daemon | None, conn: dict[str, Any], script: str, *args: str) -> Any:
    """An example started through ``conn``'s cluster (the password in its environment)."""
    env = dict(os.environ if kd is None else kd.env, ENGINE_SASL_PASSWORD=conn["sasl_password"])
    env.pop("ENGINE_DATA_DIR", None)  # the cluster is named by bootstrap_servers alone
    return subprocess.Popen(
        [sys.executable, str(EXAMPLES / script), *args,
         "--bootstrap-servers", conn["bootstrap_servers"],
         "--security-protocol", conn["security_protocol"],
         "--sasl-mechanism", conn["sasl_mechanism"],
         "--sasl-username", conn["sasl_username"]],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
    )  # fmt: skip


def finished(proc: Any) -> str:
    """The example's output once it exited 0 (killed after 120 s)."""
    try:
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, out.decode() + err.decode()
    return str(out.decode())


def exactly_once_input(producer: Producer, source: str) -> None:
    for i in range(20):
        producer.send(source, f"r{i}".encode(), partition=i % 2)


def read_exactly_once_output(consumer: Consumer, sink: str) -> None:
    consumer.assign([TopicPartition(sink, p) for p in range(2)])
    values = sorted(r.value for r in read_all(consumer, 20))
    assert values == sorted(f"processed:r{i}".encode() for i in range(20))


def test_delivery_and_exactly_once_examples_run_unchanged_through_bootstrap_servers(
    kd: Daemon, conn: dict[str, Any], tmp_path: Path
) -> None:
    topics = {script: new_topic(kd, partitions=2) for script in ("at_most_once.py",
              "at_least_once.py", "exactly_once.py")}  # fmt: skip
    sink = new_topic(kd, partitions=2)
    with Producer(kd.data_dir, acks=1) as producer:
        for script in ("at_most_once.py", "at_least_once.py"):
            for i in range(30):
                producer.send(topics[script], f"r{i}".encode(), partition=i % 2)
        exactly_once_input(producer, topics["exactly_once.py"])
    running = [  # the three at once (each waits for its group and its idle time)
        example(kd, conn, script, topics[script], "--out", str(tmp_path / script),
                "--group", f"g-{uuid.uuid4().hex[:6]}", "--idle", "2")
        for script in ("at_most_once.py", "at_least_once.py")
    ] + [
        example(kd, conn, "exactly_once.py", topics["exactly_once.py"], sink, "--group",
                f"g-{uuid.uuid4().hex[:6]}", "--transactional-id",
                f"t-{uuid.uuid4().hex[:6]}", "--idle", "2")
    ]  # fmt: skip
    for proc in running:
        finished(proc)
    for script in ("at_most_once.py", "at_least_once.py"):
        lines = (tmp_path / script).read_text().splitlines()
        assert sorted(line.split()[2] for line in lines) == sorted(f"r{i}" for i in range(30))
    with Consumer(data_dir=kd.data_dir, auto_offset_reset="earliest",
                  isolation_level="read_committed") as consumer:  # fmt: skip
        read_exactly_once_output(consumer, sink)


def test_orders_example_runs_unchanged_through_bootstrap_servers(
    kd: Daemon, conn: dict[str, Any]
) -> None:
    topic = f"orders-{uuid.uuid4().hex[:6]}"
    text = finished(example(kd, conn, "orders.py", "--topic", topic, "--orders", "150",
                            "--customers", "10"))  # fmt: skip
    assert text.splitlines()[-1] == "OK", text



# -- a real Kafka ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The keyword arguments that put a Producer, Consumer or Admin on a real Kafka."""
    require_kafka()
    with running_kafka(tmp_path_factory.mktemp("real-kafka"), nodes=1) as k:
        yield {name: k.settings[name] for name in (
            "bootstrap_servers", "security_protocol", "sasl_mechanism", "sasl_username",
            "sasl_password")}  # fmt: skip


def test_the_way_out_on_a_real_kafka_admin_producers_and_the_exactly_once_example(
    real: dict[str, Any],
) -> None:
    topic, sink = f"w-{uuid.uuid4().hex[:8]}", f"w-{uuid.uuid4().hex[:8]}"
    with Admin(**real) as admin:
        desc = admin.create_topic(topic, partitions=2, config={"retention.ms": 60_000})
        assert [p.partition for p in desc.partitions] == [0, 1]
        assert all(p.leader is not None and p.high_watermark == 0 for p in desc.partitions)
        assert desc.config["retention.ms"] == 60_000 and topic in admin.list_topics()
        admin.create_topic(sink, partitions=2)
        with pytest.raises(TopicExistsError):
            admin.create_topic(topic)
    keys = [f"key-{i}".encode() for i in range(20)]
    with Producer(**real) as producer:  # acks="all", idempotent
        futures = [producer.send(topic, b"v" + k, key=k) for k in keys]
        producer.flush(30)
        with pytest.raises(UnknownTopicError):
            producer.send(f"missing-{uuid.uuid4().hex[:6]}", b"x")
    assert [f.partition for f in futures] == [key_partition(k, 2) for k in keys]
    for p in range(2):
        assert [f.offset for f in futures if f.partition == p] == list(
            range(sum(f.partition == p for f in futures))
        )
    with Producer(transactional_id=f"tx-{uuid.uuid4().hex[:6]}", **real) as producer:
        producer.init_transactions()
        producer.begin_transaction()
        producer.send(topic, b"aborted", partition=0)
        producer.abort_transaction()
    source = f"w-{uuid.uuid4().hex[:8]}"
    with Admin(**real) as admin:
        admin.create_topic(source, partitions=2)
    with Producer(acks=1, **real) as producer:
        exactly_once_input(producer, source)
    # The example: a group (its 1 s session clamped to Kafka's minimum), transactions
    # with send_offsets_to_transaction, read_committed.
    group = f"g-{uuid.uuid4().hex[:6]}"
    with Consumer(group_id=group, **real) as first:  # a new Kafka makes its offsets topic
        assert first.committed(TopicPartition(source, 0)) is None  # now, not in the example
    finished(example(None, real, "exactly_once.py", source, sink, "--group", group,
                     "--transactional-id", f"t-{uuid.uuid4().hex[:6]}", "--idle", "2"))  # fmt: skip
    with Consumer(group_id=group, auto_offset_reset="earliest",
                  isolation_level="read_committed", **real) as consumer:  # fmt: skip
        both = [TopicPartition(source, 0), TopicPartition(source, 1)]
        # (the offsets of the last transaction count once its markers are written,
        # a moment after commit_transaction returned)
        wait_for(lambda: all(consumer.committed(tp) == 10 for tp in both), timeout=20,
                 what="the example's offsets committed with its transactions")  # fmt: skip
        read_exactly_once_output(consumer, sink)
        consumer.assign([TopicPartition(topic, 0)])  # the aborted record is not seen
        consumer.seek(TopicPartition(topic, 0), 0)
        first = sum(f.partition == 0 for f in futures)
        seen = read_all(consumer, first) + consumer.poll(1.0)
        assert sorted(r.value for r in seen) == sorted(
            b"v" + k for k, f in zip(keys, futures, strict=True) if f.partition == 0
        )
    with Admin(**real) as admin:
        with pytest.raises(UnknownGroupError):
            admin.delete_consumer_groups([f"none-{uuid.uuid4().hex[:6]}"])
        admin.delete_topic(topic)
        with pytest.raises(UnknownTopicError):
            admin.describe_topic(topic)
