"""Transactions through the Kafka listener, with real clients: confluent-kafka's
consume-transform-produce with read_committed, kafka-python's transactional producer,
fencing, a producer killed mid-transaction, and reads across the engine's own clients;
raw protocol requests for the errors a client hides.

One daemon of two brokers serves the module, so coordinator requests land on brokers
that lead nothing of the transaction as well as on those that do.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
import warnings
from collections.abc import Iterator
from typing import Any

import confluent_kafka
import pytest
from engine_harness import Daemon, running_daemon, wait_for
from test_kafka_groups import join_body
from test_kafka_listener import (
    Raw,
    kafka_settings,
    leader_address,
    librdkafka_config,
    new_topic,
)

from engine import Consumer, Producer, TopicPartition
from engine.kafka import schemas
from engine.kafka.error_codes import ErrorCode
from engine.kafka.txn_index import TxnIndex
from engine.record_batch import encode_batch
from engine.transaction import MARKER_VALUE, marker_key
from engine.txn_filter import ABORT, COMMIT

#: The records' timestamp: now, so that retention (7 days) never deletes them mid-test.
NOW_MS = int(time.time() * 1000)

with warnings.catch_warnings():
    # kafka-python 3.0 reads its schemas with importlib.resources.read_text (deprecated).
    warnings.simplefilter("ignore", DeprecationWarning)
    import kafka


@pytest.fixture(scope="module")
def daemon2(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    with running_daemon(
        tmp_path_factory.mktemp("kafka-txn"), brokers=2, start_args=["--kafka-auth", "none"]
    ) as d:
        yield d


def tid() -> str:
    return f"t-{uuid.uuid4().hex[:8]}"


def txn_producer(d: Daemon, transactional_id: str, **extra: Any) -> confluent_kafka.Producer:
    producer = confluent_kafka.Producer(
        librdkafka_config(d, **{"transactional.id": transactional_id} | extra)
    )
    producer.init_transactions(30)
    return producer


def read_all(
    d: Daemon, topic: str, partitions: int, expect: int, committed: bool = True
) -> list[bytes]:
    """The values of ``topic`` through an assign()ed confluent-kafka consumer, once it
    holds ``expect`` and nothing more comes within 0.3 s."""
    consumer = confluent_kafka.Consumer(
        librdkafka_config(
            d,
            **{
                "group.id": "reader",
                "enable.auto.commit": False,
                "isolation.level": "read_committed" if committed else "read_uncommitted",
            },
        )
    )
    out: list[bytes] = []
    try:
        consumer.assign(
            [
                confluent_kafka.TopicPartition(topic, p, confluent_kafka.OFFSET_BEGINNING)
                for p in range(partitions)
            ]
        )

        def more() -> bool:
            for msg in consumer.consume(1000, timeout=0.2):
                assert msg.error() is None, msg.error()
                out.append(msg.value())
            return len(out) >= expect

        wait_for(more, timeout=30, what=f"{expect} records of {topic}")
        for msg in consumer.consume(1000, timeout=0.3):
            out.append(msg.value())
    finally:
        consumer.close()
    return sorted(out)


def committed_offset(d: Daemon, group: str, tp: TopicPartition) -> int | None:
    """The group's committed offset as the engine's own Consumer of the group reads it."""
    with Consumer(data_dir=d.data_dir, group_id=group) as c:
        return c.committed(tp)


# -- consume-transform-produce ----------------------------------------------------------


def transform(
    d: Daemon,
    transactional_id: str,
    group: str,
    src: str,
    dst: str,
    chunks: range,
    abort_first: set[int],
    leave_open: bool = False,
) -> None:
    """confluent-kafka's consume-transform-produce over chunks of 10 input records:
    each chunk's upper-cased values to ``dst`` with the input offsets, in one
    transaction; the chunks in ``abort_first`` are first sent as ``aborted:<value>``
    and aborted, then done again. ``leave_open``: one more chunk is sent and left open."""
    consumer = confluent_kafka.Consumer(
        librdkafka_config(
            d,
            **{
                "group.id": group,
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
            },
        )
    )
    producer = txn_producer(d, transactional_id)
    try:
        start = chunks.start * 10
        consumer.assign([confluent_kafka.TopicPartition(src, 0, start)])
        wanted = (chunks.stop - chunks.start + (1 if leave_open else 0)) * 10
        got: list[Any] = []
        wait_for(
            lambda: got.extend(consumer.consume(100, timeout=0.2)) or len(got) >= wanted,
            timeout=30,
            what="the input records",
        )
        by_offset = {m.offset(): m.value() for m in got}

        def send_chunk(i: int, prefix: bytes, upper: bool) -> None:
            producer.begin_transaction()
            for offset in range(i * 10, i * 10 + 10):
                value = by_offset[offset]
                producer.produce(dst, key=value, value=prefix + (value.upper() if upper else value))
            producer.send_offsets_to_transaction(
                [confluent_kafka.TopicPartition(src, 0, i * 10 + 10)],
                consumer.consumer_group_metadata(),
            )

        for i in chunks:
            if i in abort_first:
                send_chunk(i, b"aborted:", False)
                assert producer.flush(30) == 0  # in the log (an abort purges what is queued)
                producer.abort_transaction(30)
            send_chunk(i, b"", True)
            producer.commit_transaction(30)
        if leave_open:
            send_chunk(chunks.stop, b"open:", False)
            assert producer.flush(30) == 0
    finally:
        consumer.close()


def test_consume_transform_produce_commits_records_and_offsets_together(daemon2: Daemon) -> None:
    src, dst = new_topic(daemon2, partitions=1), new_topic(daemon2, partitions=2)
    group, transactional_id = f"g-{uuid.uuid4().hex[:8]}", tid()
    values = [b"v%02d" % i for i in range(60)]
    plain = confluent_kafka.Producer(librdkafka_config(daemon2))
    for v in values:
        plain.produce(src, v, partition=0)
    assert plain.flush(30) == 0

    # The first run commits chunks 0-2 (chunk 1 aborted once) and dies with chunk 3 open.
    transform(daemon2, transactional_id, group, src, dst, range(0, 3), {1}, leave_open=True)
    resume = committed_offset(daemon2, group, TopicPartition(src, 0))
    assert resume == 30  # not the open transaction's 40
    # The restart resumes after the last committed transaction (the open one is aborted,
    # at the latest by the restart's init_transactions).
    transform(daemon2, transactional_id, group, src, dst, range(resume // 10, 6), {4})
    assert committed_offset(daemon2, group, TopicPartition(src, 0)) == 60

    expected = sorted(v.upper() for v in values)
    assert read_all(daemon2, dst, 2, len(expected)) == expected
    aborted = [b"aborted:" + v for v in values[10:20] + values[40:50]]
    unfinished = [b"open:" + v for v in values[30:40]]
    everything = read_all(daemon2, dst, 2, 90, committed=False)
    assert everything == sorted(expected + aborted + unfinished)
    # The engine's own read_committed Consumer sees the same.
    with Consumer(data_dir=daemon2.data_dir, isolation_level="read_committed",
                  auto_offset_reset="earliest") as c:  # fmt: skip
        c.assign([TopicPartition(dst, 0), TopicPartition(dst, 1)])
        mine: list[Any] = []
        wait_for(
            lambda: mine.extend(c.poll(timeout=0.2, max_records=1000)) or len(mine) >= 60,
            timeout=30,
            what="60 records through the engine's read_committed Consumer",
        )
        mine.extend(c.poll(timeout=0.3))
    assert sorted(r.value for r in mine) == expected


# -- fencing and dead producers ---------------------------------------------------------


def test_a_second_producer_with_the_same_transactional_id_fences_the_first(
    daemon2: Daemon,
) -> None:
    topic, transactional_id = new_topic(daemon2, partitions=1), tid()
    first = txn_producer(daemon2, transactional_id)
    first.begin_transaction()
    for i in range(5):
        first.produce(topic, b"zombie-%d" % i)
    assert first.flush(30) == 0
    second = txn_producer(daemon2, transactional_id)
    with pytest.raises(confluent_kafka.KafkaException) as failed:
        first.produce(topic, b"zombie-late")
        first.commit_transaction(30)
    error = failed.value.args[0]
    assert error.fatal() and error.code() == confluent_kafka.KafkaError._FENCED, error
    second.begin_transaction()
    for i in range(3):
        second.produce(topic, b"live-%d" % i)
    second.commit_transaction(30)
    assert read_all(daemon2, topic, 1, 3) == [b"live-0", b"live-1", b"live-2"]


_DIES_MID_TRANSACTION = textwrap.dedent(
    """
    import json, sys, time
    import confluent_kafka
    config = json.loads(sys.argv[1])
    producer = confluent_kafka.Producer(config)
    producer.init_transactions(30)
    producer.begin_transaction()
    for i in range(5):
        producer.produce(sys.argv[2], b"dead-%d" % i, partition=0)
    assert producer.flush(30) == 0
    print("sent", flush=True)
    time.sleep(120)
    """
)


@pytest.mark.parametrize("finisher", ["timeout", "next-init"])
def test_a_producer_killed_mid_transaction_is_aborted_and_readers_move_on(
    daemon2: Daemon, finisher: str
) -> None:
    import json

    topic, transactional_id = new_topic(daemon2, partitions=1), tid()
    timeout_ms = 2000 if finisher == "timeout" else 60_000
    config = librdkafka_config(
        daemon2, **{"transactional.id": transactional_id, "transaction.timeout.ms": timeout_ms}
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", _DIES_MID_TRANSACTION, json.dumps(config), topic],
        stdout=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"sent\n"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    plain = confluent_kafka.Producer(librdkafka_config(daemon2))
    plain.produce(topic, b"after", partition=0)
    assert plain.flush(30) == 0
    if finisher == "next-init":
        txn_producer(daemon2, transactional_id)  # its init aborts the dead one's transaction
    assert read_all(daemon2, topic, 1, 1) == [b"after"]
    assert len(read_all(daemon2, topic, 1, 6, committed=False)) == 6


# -- kafka-python and the engine's own clients --------------------------------------------


def test_kafka_python_commits_and_aborts_transactions(daemon2: Daemon) -> None:
    topic = new_topic(daemon2, partitions=2)
    servers = kafka_settings(daemon2)["bootstrap_servers"]
    producer = kafka.KafkaProducer(bootstrap_servers=servers, transactional_id=tid())
    try:
        producer.init_transactions()
        producer.begin_transaction()
        for i in range(10):
            producer.send(topic, b"kept-%d" % i)
        producer.commit_transaction()
        producer.begin_transaction()
        for i in range(10):
            producer.send(topic, b"dropped-%d" % i)
        producer.flush()  # in the log (an abort drops what is not sent yet)
        producer.abort_transaction()
        producer.begin_transaction()
        producer.send(topic, b"last")
        producer.commit_transaction()
    finally:
        producer.close(timeout=10)
    kept = sorted([b"kept-%d" % i for i in range(10)] + [b"last"])

    def consume(isolation: str, expect: int) -> list[bytes]:
        consumer = kafka.KafkaConsumer(
            bootstrap_servers=servers,
            isolation_level=isolation,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
        )
        try:
            consumer.assign([kafka.TopicPartition(topic, p) for p in range(2)])
            out: list[bytes] = []

            def more() -> bool:
                for records in consumer.poll(timeout_ms=200).values():
                    out.extend(r.value for r in records)
                return len(out) >= expect

            wait_for(more, timeout=30, what=f"{expect} records through kafka-python")
            return sorted(out)
        finally:
            consumer.close()

    assert consume("read_committed", len(kept)) == kept
    assert len(consume("read_uncommitted", 21)) == 21
    assert read_all(daemon2, topic, 2, len(kept)) == kept


def test_confluent_kafka_reads_the_engine_producers_transactions_committed_only(
    daemon2: Daemon,
) -> None:
    topic = new_topic(daemon2, partitions=2)
    with Producer(data_dir=daemon2.data_dir, transactional_id=tid()) as producer:
        producer.init_transactions()
        producer.begin_transaction()
        for i in range(10):
            producer.send(topic, b"kept-%d" % i)
        producer.commit_transaction()
        producer.begin_transaction()
        for i in range(10):
            producer.send(topic, b"dropped-%d" % i)
        producer.flush()
        producer.abort_transaction()
        producer.begin_transaction()
        producer.send(topic, b"last")
        producer.commit_transaction()
    kept = sorted([b"kept-%d" % i for i in range(10)] + [b"last"])
    assert read_all(daemon2, topic, 2, len(kept)) == kept
    assert len(read_all(daemon2, topic, 2, 21, committed=False)) == 21


# -- the protocol's answers ---------------------------------------------------------------


def test_the_index_holds_the_lso_at_the_earliest_open_transaction_and_lists_aborted_ones() -> None:
    ts = 1_700_000_000_000

    def data(offset: int, producer_id: int) -> bytes:
        transactional = 0x10 if producer_id >= 0 else 0
        return encode_batch(offset, [(None, b"x", [], ts)], producer_id=producer_id,
                            producer_epoch=0, attributes=transactional)  # fmt: skip

    def marker(offset: int, producer_id: int, kind: int) -> bytes:
        return encode_batch(offset, [(marker_key(kind), MARKER_VALUE, [], ts)],
                            producer_id=producer_id, producer_epoch=0, attributes=0x30)  # fmt: skip

    log = [
        data(0, -1),
        data(1, 7),  # 7's first transaction: aborted at 4
        data(2, 8),  # 8's: committed at 6
        data(3, 7),
        marker(4, 7, ABORT),
        data(5, 7),  # 7's second: still open
        marker(6, 8, COMMIT),
    ]
    whole = b"".join(log)
    index = TxnIndex()
    assert index.update(lambda offset, n: b"".join(log[offset:3]), 0, 3)
    assert index.last_stable_offset(3) == 1
    index.feed(3, b"".join(log[3:]))  # a Fetch's batches, continuing the index
    assert index.update(lambda offset, n: whole if offset < 7 else b"", 0, 7)
    assert index.last_stable_offset(7) == 5
    assert index.aborted_between(0, 5) == [{"producer_id": 7, "first_offset": 1}]
    assert index.aborted_between(5, 7) == []
    assert index.update(lambda offset, n: b"", 5, 7)  # retention passed the aborted one
    assert index.aborted == [] and index.last_stable_offset(7) == 5



def produce_txn(conn: Raw, transactional_id: str, topic: str, partition: int, batch: bytes) -> Any:
    answer = conn.request(
        schemas.PRODUCE,
        8,
        {
            "transactional_id": transactional_id,
            "acks": -1,
            "timeout_ms": 10_000,
            "topic_data": [
                {"name": topic, "partition_data": [{"index": partition, "records": batch}]}
            ],
        },
    )
    assert answer is not None
    return answer["responses"][0]["partition_responses"][0]


def test_transactional_produce_and_read_committed_offsets_answer_as_kafka(
    daemon2: Daemon,
) -> None:
    topic, transactional_id = new_topic(daemon2, partitions=2), tid()
    address = leader_address(daemon2, topic, 0)
    conn = Raw(address)
    other = Raw(leader_address(daemon2, topic, 1))
    try:

        def coordinated_here(here: bool) -> str:
            """A group id whose coordinator is (or is not) conn's broker."""
            for _ in range(200):  # each id picks either broker: 2**-200 to find none
                group = f"g-{uuid.uuid4().hex[:8]}"
                found = conn.request(schemas.FIND_COORDINATOR, 3, {"key": group, "key_type": 0})
                assert found is not None and found["error_code"] == 0
                if (f"{found['host']}:{found['port']}" == address) == here:
                    return group
            where = "at" if here else "away from"
            raise AssertionError(f"no group id coordinated {where} {address}")

        def init() -> tuple[int, int]:
            got = conn.request(
                schemas.INIT_PRODUCER_ID,
                4,
                {"transactional_id": transactional_id, "transaction_timeout_ms": 60_000},
            )
            assert got is not None and got["error_code"] == 0
            return got["producer_id"], got["producer_epoch"]

        pid, epoch = init()

        def batch(sequence: int, epoch: int = epoch) -> bytes:
            return encode_batch(
                0, [(None, b"t%d" % sequence, [], NOW_MS)], producer_id=pid,
                producer_epoch=epoch, base_sequence=sequence, attributes=0x10,
            )  # fmt: skip

        def add(version: int, topics: list[dict[str, Any]], epoch: int = epoch) -> Any:
            got = conn.request(
                schemas.ADD_PARTITIONS_TO_TXN, version,
                {"transactional_id": transactional_id, "producer_id": pid,
                 "producer_epoch": epoch, "topics": topics},
            )  # fmt: skip
            assert got is not None
            return {
                (t["name"], p["partition_index"]): p["error_code"]
                for t in got["results"]
                for p in t["results"]
            }

        assert add(
            3, [{"name": topic, "partitions": [0]}, {"name": "nope", "partitions": [0]}]
        ) == {
            (topic, 0): ErrorCode.OPERATION_NOT_ATTEMPTED,
            ("nope", 0): ErrorCode.UNKNOWN_TOPIC_OR_PARTITION,
        }
        assert add(3, [{"name": topic, "partitions": [0]}]) == {(topic, 0): 0}
        plain = produce_txn(conn, transactional_id, topic, 0, encode_batch(
            0, [(None, b"before", [], NOW_MS)]))  # fmt: skip
        assert plain["error_code"] == 0  # a non-transactional batch in between
        assert produce_txn(conn, transactional_id, topic, 0, batch(0))["base_offset"] == 1
        not_added = produce_txn(other, transactional_id, topic, 1, batch(0))
        assert not_added["error_code"] == ErrorCode.INVALID_TXN_STATE

        def latest(isolation: int) -> int:
            got = conn.request(
                schemas.LIST_OFFSETS, 7,
                {"replica_id": -1, "isolation_level": isolation, "topics": [
                    {"name": topic, "partitions": [
                        {"partition_index": 0, "timestamp": -1}]}]},
            )  # fmt: skip
            assert got is not None
            print("LATEST", got)
            return int(got["topics"][0]["partitions"][0]["offset"])

        assert (latest(0), latest(1)) == (2, 1)  # the open transaction holds the LSO at 1

        def offsets(group: str, epoch: int = epoch) -> Any:
            got = conn.request(
                schemas.TXN_OFFSET_COMMIT, 3,
                {"transactional_id": transactional_id, "group_id": group, "producer_id": pid,
                 "producer_epoch": epoch, "topics": [{"name": topic, "partitions": [
                     {"partition_index": 0, "committed_offset": 1}]}]},
            )  # fmt: skip
            assert got is not None
            return got["topics"][0]["partitions"][0]["error_code"]

        def add_offsets(group: str) -> Any:
            got = conn.request(
                schemas.ADD_OFFSETS_TO_TXN, 3,
                {"transactional_id": transactional_id, "producer_id": pid,
                 "producer_epoch": epoch, "group_id": group},
            )  # fmt: skip
            assert got is not None
            return got["error_code"]

        group = coordinated_here(True)  # TxnOffsetCommit goes to the group's coordinator
        assert offsets(group) == ErrorCode.INVALID_TXN_STATE  # before AddOffsetsToTxn
        assert add_offsets("no spaces") == ErrorCode.INVALID_GROUP_ID
        assert (add_offsets(group), offsets(group)) == (0, 0)
        elsewhere = coordinated_here(False)
        assert add_offsets(elsewhere) == 0
        assert offsets(elsewhere) == ErrorCode.NOT_COORDINATOR

        def member_offsets(member_id: str, generation: int) -> Any:
            got = conn.request(
                schemas.TXN_OFFSET_COMMIT, 3,
                {"transactional_id": transactional_id, "group_id": group, "producer_id": pid,
                 "producer_epoch": epoch, "generation_id": generation, "member_id": member_id,
                 "group_instance_id": None, "topics": [{"name": topic, "partitions": [
                     {"partition_index": 0, "committed_offset": 1}]}]},
            )  # fmt: skip
            assert got is not None
            return got["topics"][0]["partitions"][0]["error_code"]

        # KIP-447: a member named must be of the group's current generation, so a member
        # a rebalance dropped (a zombie) cannot commit offsets another member now reads.
        assert member_offsets("nobody-0000000001", 1) == ErrorCode.UNKNOWN_MEMBER_ID
        asked = conn.request(schemas.JOIN_GROUP, 9, join_body(group, topic))
        assert asked is not None and asked["error_code"] == ErrorCode.MEMBER_ID_REQUIRED
        joined = conn.request(schemas.JOIN_GROUP, 9, join_body(group, topic, asked["member_id"]))
        assert joined is not None and joined["error_code"] == 0
        member, generation = joined["member_id"], joined["generation_id"]
        assert member_offsets(member, generation + 1) == ErrorCode.ILLEGAL_GENERATION
        assert member_offsets(member, generation) == ErrorCode.NONE
        left = conn.request(schemas.LEAVE_GROUP, 1, {"group_id": group, "member_id": member})
        assert left is not None and left["error_code"] == 0
        assert member_offsets(member, generation) == ErrorCode.UNKNOWN_MEMBER_ID
        too_long = conn.request(
            schemas.INIT_PRODUCER_ID, 4,
            {"transactional_id": transactional_id, "transaction_timeout_ms": 3_600_000},
        )  # fmt: skip
        assert too_long is not None
        assert too_long["error_code"] == ErrorCode.INVALID_TRANSACTION_TIMEOUT

        new_pid, new_epoch = init()  # fences the first instance and aborts its transaction
        assert (new_pid, new_epoch) == (pid, epoch + 1)
        assert (latest(0), latest(1)) == (3, 3)  # its ABORT marker at 2
        late = produce_txn(conn, transactional_id, topic, 0, batch(1))
        assert late["error_code"] == ErrorCode.INVALID_PRODUCER_EPOCH
        assert offsets(group) == ErrorCode.INVALID_PRODUCER_EPOCH
        # The aborted transaction's offsets were never committed.
        assert committed_offset(daemon2, group, TopicPartition(topic, 0)) is None
        for version, code in (
            (1, ErrorCode.INVALID_PRODUCER_EPOCH),
            (3, ErrorCode.PRODUCER_FENCED),
        ):
            ended = conn.request(
                schemas.END_TXN, version,
                {"transactional_id": transactional_id, "producer_id": pid,
                 "producer_epoch": epoch, "committed": True},
            )  # fmt: skip
            assert ended is not None and ended["error_code"] == code
        assert add(1, [{"name": topic, "partitions": [1]}]) == {
            (topic, 1): ErrorCode.INVALID_PRODUCER_EPOCH
        }

        fetched = conn.request(
            schemas.FETCH, 11,
            {"max_wait_ms": 0, "min_bytes": 1, "isolation_level": 1, "session_id": 0,
             "topics": [{"topic": topic, "partitions": [
                 {"partition": 0, "fetch_offset": 0, "partition_max_bytes": 1 << 20}]}],
             "forgotten_topics_data": [], "rack_id": ""},
        )  # fmt: skip
        assert fetched is not None
        part = fetched["responses"][0]["partitions"][0]
        print("PART", part)
        assert (part["high_watermark"], part["last_stable_offset"]) == (3, 3)
        assert part["aborted_transactions"] == [{"producer_id": pid, "first_offset": 1}]
    finally:
        conn.close()
        other.close()


def test_a_producer_whose_transaction_timed_out_goes_on_with_its_epoch_and_others_are_fenced(
    daemon2: Daemon,
) -> None:
    topic, transactional_id = new_topic(daemon2, partitions=1), tid()
    conn = Raw(leader_address(daemon2, topic, 0))
    try:

        def init(version: int, producer_id: int = -1, epoch: int = -1) -> Any:
            got = conn.request(
                schemas.INIT_PRODUCER_ID, version,
                {"transactional_id": transactional_id, "transaction_timeout_ms": 1000,
                 "producer_id": producer_id, "producer_epoch": epoch},
            )  # fmt: skip
            assert got is not None
            return got["error_code"], got["producer_id"], got["producer_epoch"]

        _, pid, epoch = init(4)

        def add() -> Any:
            got = conn.request(
                schemas.ADD_PARTITIONS_TO_TXN, 3,
                {"transactional_id": transactional_id, "producer_id": pid,
                 "producer_epoch": epoch, "topics": [{"name": topic, "partitions": [0]}]},
            )  # fmt: skip
            assert got is not None
            return got["results"][0]["results"][0]["error_code"]

        assert add() == 0

        def ended() -> bool:
            return bool(add() == ErrorCode.PRODUCER_FENCED)  # the timeout bumped the epoch

        wait_for(ended, timeout=20, what="the transaction timeout to abort the transaction")
        assert init(4, pid, epoch - 1 if epoch else 99) == (ErrorCode.PRODUCER_FENCED, -1, -1)
        assert init(3, pid, 99)[0] == ErrorCode.INVALID_PRODUCER_EPOCH
        assert init(4, pid, epoch) == (0, pid, epoch + 2)  # KIP-360: it goes on
    finally:
        conn.close()
