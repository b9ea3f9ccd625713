"""Consumer groups, transactions and the admin APIs of the engine's Kafka listener, against
a real Kafka as the oracle (as tests/test_kafka_oracle.py: each test runs against the
engine's listener, then a one-node Kafka 4, and asserts Kafka's answers).

Through confluent-kafka, as users meet them: a group shares partitions and rebalances,
committed offsets come back, groups are listed, described and deleted; read_committed
skips aborted records, offsets commit with their transaction, a newer producer fences an
older one; topics are created, deleted, grown, configured and trimmed.

An engine case whose APIs the listener does not list in ApiVersions skips, naming them
(these features are being built); once served, it runs.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import confluent_kafka
import pytest
from confluent_kafka import ConsumerGroupTopicPartitions, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import (
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewPartitions,
    NewTopic,
)
from engine_harness import Daemon, wait_for
from kafka_harness import Kafka, Target
from test_kafka_listener import SOFTWARE

from engine.kafka import schemas

#: Kafka's API keys of each feature (ApiKeys).
GROUP_APIS = {8: "OffsetCommit", 9: "OffsetFetch", 11: "JoinGroup", 12: "Heartbeat",
              13: "LeaveGroup", 14: "SyncGroup", 15: "DescribeGroups", 16: "ListGroups",
              42: "DeleteGroups"}  # fmt: skip
TXN_APIS = {24: "AddPartitionsToTxn", 25: "AddOffsetsToTxn", 26: "EndTxn",
            28: "TxnOffsetCommit"}  # fmt: skip
CREATE_TOPICS = {19: "CreateTopics"}
DELETE_TOPICS = {20: "DeleteTopics"}
DELETE_RECORDS = {21: "DeleteRecords"}
DESCRIBE_CONFIGS = {32: "DescribeConfigs"}
CREATE_PARTITIONS = {37: "CreatePartitions"}
INCREMENTAL_ALTER_CONFIGS = {44: "IncrementalAlterConfigs"}
DESCRIBE_CLUSTER = {60: "DescribeCluster"}

TIMEOUT_S = 30


@pytest.fixture(autouse=True)
def _show_logs_on_failure(request: pytest.FixtureRequest) -> Iterator[None]:
    """The tail of the side's logs when a test failed (shown with the failure)."""
    side: Kafka | Daemon | None = None
    if "target" in request.fixturenames:
        which = request.getfixturevalue("target").name
        side = request.getfixturevalue("real_kafka" if which == "kafka" else "oracle_daemon")
    yield
    report = getattr(request.node, "report_call", None)
    if side is not None and report is not None and report.failed:
        side.print_logs()


_served: dict[str, set[int]] = {}


def require_apis(target: Target, *apis: dict[int, str]) -> None:
    """Skip the engine's case while its listener does not serve these APIs (ApiVersions)."""
    if target.name not in _served:
        with target.raw() as conn:
            answer = conn.request(schemas.API_VERSIONS, 3, SOFTWARE)
            assert answer is not None and answer["error_code"] == 0
            _served[target.name] = {a["api_key"] for a in answer["api_keys"]}
    missing = [name for api in apis for key, name in api.items() if key not in _served[target.name]]
    if missing:
        pytest.skip(f"the {target.name}'s listener does not serve {', '.join(missing)} yet")


def error_code(future: Any) -> int | None:
    """The Kafka error code a confluent-kafka admin future ends with (None: success)."""
    try:
        future.result(TIMEOUT_S)
    except KafkaException as exc:
        return int(exc.args[0].code())
    return None


def produce(target: Target, topic: str, values: list[bytes], partition: int = 0) -> list[int]:
    producer = confluent_kafka.Producer(target.librdkafka_config(acks="all"))
    offsets: list[int] = []

    def report(err: Any, msg: Any) -> None:
        assert err is None, err
        offsets.append(msg.offset())

    for value in values:
        producer.produce(topic, value, partition=partition, on_delivery=report)
    assert producer.flush(TIMEOUT_S) == 0
    return offsets


def consumer(target: Target, group: str, **extra: Any) -> confluent_kafka.Consumer:
    return confluent_kafka.Consumer(target.librdkafka_config(**{
        "group.id": group, "enable.auto.commit": False, "auto.offset.reset": "earliest",
        "session.timeout.ms": 6000, "heartbeat.interval.ms": 500,
    } | extra))  # fmt: skip


def consume(c: confluent_kafka.Consumer, expect: int) -> list[Any]:
    out: list[Any] = []

    def more() -> bool:
        for msg in c.consume(100, timeout=0.2):
            if msg.error() is None:
                out.append(msg)
            elif msg.error().code() != KafkaError._PARTITION_EOF:
                raise KafkaException(msg.error())
        return len(out) >= expect

    wait_for(more, timeout=TIMEOUT_S, what=f"{expect} records")
    return out


# -- consumer groups ---------------------------------------------------------------------------


def test_a_group_of_two_shares_the_partitions_and_one_takes_all_when_the_other_leaves(
    target: Target,
) -> None:
    require_apis(target, GROUP_APIS)
    topic = target.create_topic(partitions=4)
    group = f"g-{uuid.uuid4().hex[:8]}"
    a, b = consumer(target, group), consumer(target, group)
    try:
        a.subscribe([topic])
        b.subscribe([topic])

        def shared() -> bool:
            a.poll(0.05)
            b.poll(0.05)
            mine = {p.partition for p in a.assignment()}
            theirs = {p.partition for p in b.assignment()}
            return len(mine) == len(theirs) == 2 and mine | theirs == {0, 1, 2, 3}

        wait_for(shared, timeout=60, what="two members with two partitions each")
        b.close()

        def all_to_one() -> bool:
            a.poll(0.05)
            return {p.partition for p in a.assignment()} == {0, 1, 2, 3}

        wait_for(all_to_one, timeout=60, what="the remaining member with every partition")
    finally:
        a.close()
        b.close()


def test_committed_offsets_are_read_back_and_a_new_member_resumes_there(target: Target) -> None:
    require_apis(target, GROUP_APIS)
    topic = target.create_topic()
    assert produce(target, topic, [b"r%d" % i for i in range(10)]) == list(range(10))
    group = f"g-{uuid.uuid4().hex[:8]}"
    first = consumer(target, group)
    try:
        first.subscribe([topic])
        got = consume(first, 4)
        assert [m.offset() for m in got[:4]] == [0, 1, 2, 3]
        first.commit(offsets=[TopicPartition(topic, 0, 4)], asynchronous=False)
        committed = first.committed([TopicPartition(topic, 0)], timeout=TIMEOUT_S)
        assert [(c.partition, c.offset) for c in committed] == [(0, 4)]
    finally:
        first.close()
    admin = target.admin_client()  # kept until its futures are done (its end cancels them)
    listed = admin.list_consumer_group_offsets(
        [ConsumerGroupTopicPartitions(group, [TopicPartition(topic, 0)])]
    )
    answer = listed[group].result(TIMEOUT_S)
    assert [(p.partition, p.offset) for p in answer.topic_partitions] == [(0, 4)]
    second = consumer(target, group)
    try:
        second.subscribe([topic])
        assert [(m.offset(), m.value()) for m in consume(second, 6)[:6]] == [
            (i, b"r%d" % i) for i in range(4, 10)
        ]
    finally:
        second.close()


def test_groups_are_listed_described_and_deleted_only_when_empty(target: Target) -> None:
    require_apis(target, GROUP_APIS)
    topic = target.create_topic(partitions=2)
    group = f"g-{uuid.uuid4().hex[:8]}"
    admin = target.admin_client()
    member = consumer(target, group)
    try:
        member.subscribe([topic])

        def assigned() -> bool:
            member.poll(0.05)
            return len(member.assignment()) == 2

        wait_for(assigned, timeout=60, what="the member's assignment")
        listed = admin.list_consumer_groups().result(TIMEOUT_S)
        assert group in [g.group_id for g in listed.valid]
        described = admin.describe_consumer_groups([group])[group].result(TIMEOUT_S)
        assert described.state == confluent_kafka.ConsumerGroupState.STABLE
        assert len(described.members) == 1
        assert sorted(
            (p.topic, p.partition) for p in described.members[0].assignment.topic_partitions
        ) == [(topic, 0), (topic, 1)]
        refused = admin.delete_consumer_groups([group])[group]
        assert error_code(refused) == KafkaError.NON_EMPTY_GROUP
    finally:
        member.close()
    assert error_code(admin.delete_consumer_groups([group])[group]) is None
    assert (
        error_code(admin.delete_consumer_groups([group])[group]) == KafkaError.GROUP_ID_NOT_FOUND
    )


# -- transactions ------------------------------------------------------------------------------


def transactional_producer(target: Target, transactional_id: str) -> confluent_kafka.Producer:
    producer = confluent_kafka.Producer(
        target.librdkafka_config(**{"transactional.id": transactional_id})
    )
    producer.init_transactions(TIMEOUT_S)
    return producer


def test_read_committed_skips_aborted_records_and_read_uncommitted_sees_them(
    target: Target,
) -> None:
    require_apis(target, TXN_APIS)
    topic = target.create_topic()
    producer = transactional_producer(target, f"tx-{uuid.uuid4().hex[:8]}")
    producer.begin_transaction()
    for i in range(3):
        producer.produce(topic, b"aborted-%d" % i, partition=0)
    assert producer.flush(TIMEOUT_S) == 0  # written, then aborted (not purged unsent)
    producer.abort_transaction(TIMEOUT_S)
    producer.begin_transaction()
    for i in range(2):
        producer.produce(topic, b"committed-%d" % i, partition=0)
    producer.commit_transaction(TIMEOUT_S)
    # Offsets 0-2 aborted, 3 the abort marker, 4-5 committed, 6 the commit marker.
    seen = {}
    for isolation in ("read_committed", "read_uncommitted"):
        c = consumer(target, f"g-{uuid.uuid4().hex[:8]}", **{"isolation.level": isolation})
        try:
            c.assign([TopicPartition(topic, 0, confluent_kafka.OFFSET_BEGINNING)])
            expect = 2 if isolation == "read_committed" else 5
            seen[isolation] = [(m.offset(), m.value()) for m in consume(c, expect)]
            assert c.get_watermark_offsets(TopicPartition(topic, 0), timeout=10) == (0, 7)
        finally:
            c.close()
    assert seen["read_committed"] == [(4, b"committed-0"), (5, b"committed-1")]
    assert seen["read_uncommitted"] == [(i, b"aborted-%d" % i) for i in range(3)] + [
        (4, b"committed-0"), (5, b"committed-1"),
    ]  # fmt: skip


def test_offsets_sent_in_a_transaction_commit_with_it_and_not_when_it_aborts(
    target: Target,
) -> None:
    require_apis(target, GROUP_APIS, TXN_APIS)
    source, sink = target.create_topic(), target.create_topic()
    produce(target, source, [b"in-%d" % i for i in range(6)])
    group = f"g-{uuid.uuid4().hex[:8]}"
    c = consumer(target, group)
    producer = transactional_producer(target, f"tx-{uuid.uuid4().hex[:8]}")
    try:
        c.subscribe([source])
        assert len(consume(c, 6)) >= 6
        for position, ending in ((3, "commit"), (6, "abort")):
            producer.begin_transaction()
            producer.produce(sink, b"out-%d" % position, partition=0)
            assert producer.flush(TIMEOUT_S) == 0
            producer.send_offsets_to_transaction(
                [TopicPartition(source, 0, position)], c.consumer_group_metadata(), TIMEOUT_S
            )
            if ending == "commit":
                producer.commit_transaction(TIMEOUT_S)
            else:
                producer.abort_transaction(TIMEOUT_S)
            committed = c.committed([TopicPartition(source, 0)], timeout=TIMEOUT_S)
            assert [t.offset for t in committed] == [3], ending
    finally:
        c.close()


def test_a_newer_producer_with_the_same_transactional_id_fences_the_older(
    target: Target,
) -> None:
    require_apis(target, TXN_APIS)
    topic = target.create_topic()
    transactional_id = f"tx-{uuid.uuid4().hex[:8]}"
    older = transactional_producer(target, transactional_id)
    older.begin_transaction()
    older.produce(topic, b"older", partition=0)
    assert older.flush(TIMEOUT_S) == 0
    newer = transactional_producer(target, transactional_id)  # aborts the older's
    with pytest.raises(KafkaException) as raised:
        older.commit_transaction(TIMEOUT_S)
    error = raised.value.args[0]
    assert error.fatal() and error.code() in (KafkaError._FENCED, KafkaError.PRODUCER_FENCED)
    newer.begin_transaction()
    newer.produce(topic, b"newer", partition=0)
    newer.commit_transaction(TIMEOUT_S)
    c = consumer(target, f"g-{uuid.uuid4().hex[:8]}", **{"isolation.level": "read_committed"})
    try:
        c.assign([TopicPartition(topic, 0, confluent_kafka.OFFSET_BEGINNING)])
        assert [m.value() for m in consume(c, 1)] == [b"newer"]
    finally:
        c.close()


# -- admin APIs --------------------------------------------------------------------------------


def test_create_topics_answers_kafkas_errors(target: Target) -> None:
    require_apis(target, CREATE_TOPICS)
    admin = target.admin_client()
    existing = target.create_topic()
    fresh = f"o-{uuid.uuid4().hex[:10]}"
    answers = admin.create_topics([
        NewTopic(existing, 1, 1),
        NewTopic("bad name!", 1, 1),
        NewTopic(fresh + "-r3", 1, 3),  # three replicas on one broker
    ])  # fmt: skip
    assert {name: error_code(f) for name, f in answers.items()} == {
        existing: KafkaError.TOPIC_ALREADY_EXISTS,
        "bad name!": KafkaError.TOPIC_EXCEPTION,
        fresh + "-r3": KafkaError.INVALID_REPLICATION_FACTOR,
    }
    checked = admin.create_topics([NewTopic(fresh, 2, 1)], validate_only=True)
    assert error_code(checked[fresh]) is None
    assert fresh not in admin.list_topics(timeout=10).topics  # validate_only creates nothing
    made = admin.create_topics([NewTopic(fresh, 2, 1, config={"max.message.bytes": "400000"})])
    assert error_code(made[fresh]) is None

    def listed() -> bool:
        topic = admin.list_topics(fresh, timeout=10).topics[fresh]
        return topic.error is None and len(topic.partitions) == 2

    wait_for(listed, timeout=TIMEOUT_S, what=f"{fresh} in Metadata")


def test_delete_topics_removes_a_topic_and_refuses_an_unknown_one(target: Target) -> None:
    require_apis(target, DELETE_TOPICS)
    admin = target.admin_client()
    topic = target.create_topic(partitions=2)
    missing = f"missing-{uuid.uuid4().hex[:8]}"
    answers = admin.delete_topics([topic, missing], operation_timeout=TIMEOUT_S)
    assert {name: error_code(f) for name, f in answers.items()} == {
        topic: None, missing: KafkaError.UNKNOWN_TOPIC_OR_PART,
    }  # fmt: skip

    def gone() -> bool:
        return admin.list_topics(topic, timeout=10).topics[topic].error is not None

    wait_for(gone, timeout=TIMEOUT_S, what=f"{topic} gone from Metadata")


def test_create_partitions_grows_a_topic_and_refuses_to_shrink_it(target: Target) -> None:
    require_apis(target, CREATE_PARTITIONS)
    admin = target.admin_client()
    topic = target.create_topic(partitions=1)
    assert error_code(admin.create_partitions([NewPartitions(topic, 3)])[topic]) is None

    def grown() -> bool:
        return len(admin.list_topics(topic, timeout=10).topics[topic].partitions) == 3

    wait_for(grown, timeout=TIMEOUT_S, what=f"{topic} with 3 partitions")
    assert error_code(admin.create_partitions([NewPartitions(topic, 2)])[topic]) == (
        KafkaError.INVALID_PARTITIONS
    )
    missing = f"missing-{uuid.uuid4().hex[:8]}"
    assert error_code(admin.create_partitions([NewPartitions(missing, 2)])[missing]) == (
        KafkaError.UNKNOWN_TOPIC_OR_PART
    )


def test_topic_configs_are_described_and_altered(target: Target) -> None:
    require_apis(target, DESCRIBE_CONFIGS, INCREMENTAL_ALTER_CONFIGS)
    admin = target.admin_client()
    topic = target.create_topic(config={"max.message.bytes": 300_000})
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic)

    def described() -> dict[str, Any]:
        entries: dict[str, Any] = admin.describe_configs([resource])[resource].result(TIMEOUT_S)
        return entries

    entry = described()["max.message.bytes"]
    assert entry.value == "300000"
    assert entry.source == confluent_kafka.admin.ConfigSource.DYNAMIC_TOPIC_CONFIG.value
    assert described()["cleanup.policy"].value == "delete"
    change = ConfigResource(ConfigResource.Type.TOPIC, topic, incremental_configs=[
        ConfigEntry("retention.ms", "3600000", incremental_operation=AlterConfigOpType.SET),
    ])  # fmt: skip
    assert error_code(admin.incremental_alter_configs([change])[change]) is None
    wait_for(lambda: described()["retention.ms"].value == "3600000", timeout=TIMEOUT_S,
             what="the altered retention.ms")  # fmt: skip
    missing = ConfigResource(ConfigResource.Type.TOPIC, f"missing-{uuid.uuid4().hex[:8]}")
    assert error_code(admin.describe_configs([missing])[missing]) == (
        KafkaError.UNKNOWN_TOPIC_OR_PART
    )


def test_delete_records_moves_the_log_start_offset(target: Target) -> None:
    require_apis(target, DELETE_RECORDS)
    admin = target.admin_client()
    topic = target.create_topic()
    produce(target, topic, [b"r%d" % i for i in range(10)])
    deleted = admin.delete_records([TopicPartition(topic, 0, 4)], operation_timeout=TIMEOUT_S)
    answer = next(iter(deleted.values())).result(TIMEOUT_S)
    assert answer.low_watermark == 4
    c = consumer(target, f"g-{uuid.uuid4().hex[:8]}")
    try:
        assert c.get_watermark_offsets(TopicPartition(topic, 0), timeout=10) == (4, 10)
        c.assign([TopicPartition(topic, 0, confluent_kafka.OFFSET_BEGINNING)])
        assert [m.offset() for m in consume(c, 6)] == list(range(4, 10))
    finally:
        c.close()


def test_describe_cluster_names_the_broker_and_the_controller(target: Target) -> None:
    require_apis(target, DESCRIBE_CLUSTER)
    admin = target.admin_client()
    cluster = admin.describe_cluster().result(TIMEOUT_S)
    port = int(target.bootstrap_servers.rpartition(":")[2])
    assert [(n.host, n.port) for n in cluster.nodes] == [("127.0.0.1", port)]
    assert cluster.controller is not None and cluster.controller.id == cluster.nodes[0].id
    assert cluster.cluster_id
