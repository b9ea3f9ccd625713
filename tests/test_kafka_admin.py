"""The admin APIs and OffsetForLeaderEpoch through the brokers' Kafka listener, against
real clients: confluent-kafka's AdminClient, kafka-python's KafkaAdminClient, kcat, and
raw requests where a client hides the answer (AlterConfigs' whole replacement,
OffsetForLeaderEpoch). What the clients change is checked through the engine's own
Admin and ``engine topics describe``.

One daemon with two brokers and SASL (the default) serves the module.
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
import uuid
import warnings
from collections.abc import Callable, Iterator
from importlib import resources
from typing import Any

import confluent_kafka
import pytest
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    ConfigSource,
    NewPartitions,
    NewTopic,
)
from engine_harness import Daemon, running_daemon, wait_for
from test_kafka_listener import (
    SMALL_RING,
    Raw,
    kafka_settings,
    leader_address,
    librdkafka_config,
    new_topic,
    produce_confluent,
    require_kcat,
)

from engine import Admin, Producer, TopicPartition
from engine.kafka import codec, schemas
from engine.kafka.error_codes import ErrorCode
from engine.kafka.leader_epochs import end_offset_for

with warnings.catch_warnings():
    # kafka-python 3.0 reads its schemas with importlib.resources.read_text (deprecated).
    warnings.simplefilter("ignore", DeprecationWarning)
    import kafka
    import kafka.errors
    from kafka.admin import ConfigResource as KafkaPythonResource
    from kafka.admin import ConfigResourceType

#: A new topic's config as clients send it (strings), rings kept small.
RING_CONFIG = {k: str(v) for k, v in SMALL_RING.items()}


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    with running_daemon(tmp_path_factory.mktemp("kafka-admin"), brokers=2) as d:
        yield d


@pytest.fixture(scope="module")
def admin_client(daemon: Daemon) -> AdminClient:
    return AdminClient(librdkafka_config(daemon))


@pytest.fixture(scope="module")
def kp_admin(daemon: Daemon) -> Iterator[Any]:
    client = kafka.KafkaAdminClient(**kafka_python_auth(daemon))
    yield client
    client.close()


def kafka_python_auth(d: Daemon) -> dict[str, Any]:
    k = kafka_settings(d)
    return {
        "bootstrap_servers": k["bootstrap_servers"].split(","),
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": "SCRAM-SHA-256",
        "sasl_plain_username": k["sasl_username"],
        "sasl_plain_password": k["sasl_password"],
    }


def fresh_name() -> str:
    return f"a-{uuid.uuid4().hex[:8]}"


def create_error(
    client: AdminClient, topic: NewTopic, **options: Any
) -> confluent_kafka.KafkaError:
    """The KafkaError confluent-kafka's create_topics raised for ``topic``."""
    future = client.create_topics([topic], **options)[topic.topic]
    with pytest.raises(confluent_kafka.KafkaException) as caught:
        future.result(timeout=30)
    error: confluent_kafka.KafkaError = caught.value.args[0]
    return error


def raw(d: Daemon, address: str | None = None) -> Raw:
    """A raw connection to a broker (the first without ``address``), authenticated."""
    k = kafka_settings(d)
    conn = Raw(address or k["bootstrap_servers"])
    conn.request(schemas.SASL_HANDSHAKE, 1, {"mechanism": "PLAIN"})
    token = f"\0{k['sasl_username']}\0{k['sasl_password']}".encode()
    done = conn.request(schemas.SASL_AUTHENTICATE, 2, {"auth_bytes": token})
    assert done is not None and done["error_code"] == 0
    return conn


def engine_config(d: Daemon, topic: str) -> dict[str, Any]:
    """The topic's config as `engine topics describe --json` shows it."""
    return json.loads(d.cli("topics", "describe", topic, "--json").stdout)["config"]


# -- CreateTopics, DeleteTopics ---------------------------------------------------------


def test_confluent_admin_creates_a_topic_the_engine_and_kcat_then_see(
    daemon: Daemon, admin_client: AdminClient
) -> None:
    name = fresh_name()
    topic = NewTopic(name, 3, 2, config=RING_CONFIG | {"retention.ms": "60000"})
    assert admin_client.create_topics([topic])[name].result(timeout=30) is None
    with Admin(daemon.data_dir) as admin:
        described = admin.describe_topic(name)
    assert len(described.partitions) == 3
    assert all(len(p.replicas) == 2 and p.leader is not None for p in described.partitions)
    assert described.config["retention.ms"] == 60_000
    assert described.config["ring.bytes"] == SMALL_RING["ring.bytes"]
    require_kcat()
    k = kafka_settings(daemon)
    listing = json.loads(
        subprocess.run(
            ["kcat", "-L", "-J", "-b", k["bootstrap_servers"],
             "-X", "security.protocol=SASL_PLAINTEXT", "-X", "sasl.mechanisms=SCRAM-SHA-256",
             "-X", f"sasl.username={k['sasl_username']}",
             "-X", f"sasl.password={k['sasl_password']}"],
            capture_output=True, timeout=30, check=True,
        ).stdout
    )  # fmt: skip
    topics = {t["topic"]: t for t in listing["topics"]}
    assert [p["partition"] for p in topics[name]["partitions"]] == [0, 1, 2]


def test_create_topics_refuses_with_kafkas_codes_and_one_clear_message(
    daemon: Daemon, admin_client: AdminClient
) -> None:
    name = new_topic(daemon, partitions=1)
    again = create_error(admin_client, NewTopic(name, 1, 1, config=RING_CONFIG))
    assert again.code() == confluent_kafka.KafkaError.TOPIC_ALREADY_EXISTS
    assert again.str() == f"topic already exists: topic={name!r}"
    too_many = create_error(admin_client, NewTopic(fresh_name(), 1, 3, config=RING_CONFIG))
    assert too_many.code() == confluent_kafka.KafkaError.INVALID_REPLICATION_FACTOR
    assert "live brokers (2)" in too_many.str() and "replication=3" in too_many.str()
    bad = create_error(
        admin_client, NewTopic(fresh_name(), 1, 1, config=RING_CONFIG | {"retention.ms": "soon"})
    )
    assert bad.code() == confluent_kafka.KafkaError.INVALID_CONFIG
    assert bad.str() == "topic config must be an integer: key='retention.ms' value='soon'"
    unknown = create_error(
        admin_client, NewTopic(fresh_name(), 1, 1, config=RING_CONFIG | {"flavour": "mint"})
    )
    assert unknown.code() == confluent_kafka.KafkaError.INVALID_CONFIG
    assert unknown.str() == "unknown topic config: key='flavour'"
    invalid = create_error(admin_client, NewTopic("no/slashes", 1, 1, config=RING_CONFIG))
    assert invalid.code() == confluent_kafka.KafkaError.TOPIC_EXCEPTION
    # 1000 rings of 1 GiB: past any shared-memory budget (nothing is allocated).
    huge = create_error(
        admin_client, NewTopic(fresh_name(), 1000, 1, config={"ring.bytes": "1073741824"})
    )
    assert huge.code() == confluent_kafka.KafkaError.POLICY_VIOLATION
    assert "shared-memory budget" in huge.str()
    # validate_only checks and writes nothing.
    checked = fresh_name()
    future = admin_client.create_topics(
        [NewTopic(checked, 2, 1, config=RING_CONFIG)], validate_only=True
    )[checked]
    assert future.result(timeout=30) is None
    with Admin(daemon.data_dir) as admin:
        assert name in admin.list_topics() and checked not in admin.list_topics()


def test_create_topics_takes_defaults_and_an_explicit_assignment(
    daemon: Daemon, admin_client: AdminClient
) -> None:
    defaults, placed = fresh_name(), fresh_name()
    futures = admin_client.create_topics([
        NewTopic(defaults, config=RING_CONFIG),  # -1, -1: num.partitions, replication 1
        NewTopic(placed, 2, replica_assignment=[[2, 1], [1, 2]], config=RING_CONFIG),
    ])  # fmt: skip
    for future in futures.values():
        assert future.result(timeout=30) is None
    with Admin(daemon.data_dir) as admin:
        first = admin.describe_topic(defaults)
        second = admin.describe_topic(placed)
    assert [len(p.replicas) for p in first.partitions] == [1]
    assert [p.replicas for p in second.partitions] == [(2, 1), (1, 2)]
    assert [p.leader for p in second.partitions] == [2, 1]
    nowhere = create_error(
        admin_client, NewTopic(fresh_name(), 1, replica_assignment=[[3]], config=RING_CONFIG)
    )
    assert nowhere.code() == confluent_kafka.KafkaError.INVALID_REPLICA_ASSIGNMENT
    assert "not_live=[3]" in nowhere.str()


def test_kafka_python_creates_and_deletes_topics_gone_from_metadata_and_the_engine(
    daemon: Daemon, kp_admin: Any
) -> None:
    name = fresh_name()
    config = RING_CONFIG | {"unclean.leader.election.enable": "true"}
    created = kp_admin.create_topics(
        {name: {"num_partitions": 2, "replication_factor": 1, "configs": config}}
    )
    assert [(t["name"], t["error_code"]) for t in created["topics"]] == [(name, 0)]
    # CreateTopics v5+ answers with the topic's configs, as DescribeConfigs does.
    (answer,) = created["topics"]
    assert (answer["num_partitions"], answer["replication_factor"]) == (2, 1)
    assert answer["configs"]["unclean.leader.election.enable"]["value"] == "true"
    assert answer["configs"]["ring.bytes"]["read_only"]
    with pytest.raises(kafka.errors.TopicAlreadyExistsError):
        kp_admin.create_topics({name: {"num_partitions": 2, "configs": RING_CONFIG}})
    with pytest.raises(kafka.errors.InvalidPartitionsError, match="partitions=0"):
        kp_admin.create_topics({fresh_name(): {"num_partitions": 0, "configs": RING_CONFIG}})
    assert name in kp_admin.list_topics()
    deleted = kp_admin.delete_topics([name])
    assert [(t["name"], t["error_code"]) for t in deleted["topics"]] == [(name, 0)]
    with Admin(daemon.data_dir) as admin:
        assert name not in admin.list_topics()
    consumer = kafka.KafkaConsumer(**kafka_python_auth(daemon))
    try:
        assert name not in consumer.topics()  # a fresh Metadata request
    finally:
        consumer.close()
    with pytest.raises(kafka.errors.UnknownTopicOrPartitionError):
        kp_admin.delete_topics([name])


def test_topics_are_deleted_by_name_and_by_topic_id(
    daemon: Daemon, admin_client: AdminClient, kp_admin: Any
) -> None:
    by_name, by_id = new_topic(daemon, partitions=1), new_topic(daemon, partitions=1)
    assert admin_client.delete_topics([by_name])[by_name].result(timeout=30) is None
    with Admin(daemon.data_dir) as admin:
        topic_id = uuid.UUID(admin.describe_topic(by_id).topic_id)
    deleted = kp_admin.delete_topics([topic_id])  # DeleteTopics v6, by id
    assert [(t["name"], t["error_code"]) for t in deleted["topics"]] == [(by_id, 0)]
    with pytest.raises(kafka.errors.UnknownTopicIdError):
        kp_admin.delete_topics([uuid.uuid4()])
    with Admin(daemon.data_dir) as admin:
        assert {by_name, by_id}.isdisjoint(admin.list_topics())
    assert {by_name, by_id}.isdisjoint(admin_client.list_topics(timeout=10).topics)


# -- configs ----------------------------------------------------------------------------


def test_describe_configs_gives_values_sources_and_read_only(
    daemon: Daemon, admin_client: AdminClient, kp_admin: Any
) -> None:
    name = fresh_name()
    with Admin(daemon.data_dir) as admin:
        admin.create_topic(name, config=SMALL_RING | {"retention.ms": 60_000})
    resource = ConfigResource(ConfigResource.Type.TOPIC, name)
    entries = admin_client.describe_configs([resource])[resource].result(timeout=30)
    assert entries["retention.ms"].value == "60000"
    assert entries["retention.ms"].source == ConfigSource.DYNAMIC_TOPIC_CONFIG.value
    assert entries["cleanup.policy"].value == "delete"
    assert entries["cleanup.policy"].source == ConfigSource.DEFAULT_CONFIG.value
    assert entries["unclean.leader.election.enable"].value == "false"
    assert entries["ring.bytes"].is_read_only and not entries["retention.ms"].is_read_only
    assert not any(e.is_sensitive for e in entries.values())
    broker = ConfigResource(ConfigResource.Type.BROKER, "1")
    broker_entries = admin_client.describe_configs([broker])[broker].result(timeout=30)
    assert broker_entries["num.partitions"].value == "1"
    assert broker_entries["auto.create.topics.enable"].value == "false"
    assert broker_entries["broker.id"].value == "1"
    # kafka-python, at the newest version (4): only the keys asked for.
    found = kp_admin.describe_configs(
        [KafkaPythonResource(ConfigResourceType.TOPIC, name, ["retention.ms", "segment.ms"])],
        config_filter="all",
    )
    configs = found["topic"][name]
    assert set(configs) == {"retention.ms", "segment.ms"}
    assert configs["retention.ms"]["value"] == "60000"


def test_incremental_alter_configs_sets_and_deletes_and_the_engine_sees_it(
    daemon: Daemon, admin_client: AdminClient
) -> None:
    name = fresh_name()
    with Admin(daemon.data_dir) as admin:
        admin.create_topic(name, config=SMALL_RING | {"segment.ms": 3_600_000})

    def alter(*entries: ConfigEntry) -> None:
        resource = ConfigResource(ConfigResource.Type.TOPIC, name, incremental_configs=entries)
        admin_client.incremental_alter_configs([resource])[resource].result(timeout=30)

    alter(
        ConfigEntry("retention.ms", "120000", incremental_operation=AlterConfigOpType.SET),
        ConfigEntry("segment.ms", None, incremental_operation=AlterConfigOpType.DELETE),
        ConfigEntry("cleanup.policy", "compact", incremental_operation=AlterConfigOpType.APPEND),
    )
    config = engine_config(daemon, name)
    assert config["retention.ms"] == 120_000
    assert config["segment.ms"] == 7 * 24 * 3600 * 1000  # back to the default
    assert config["cleanup.policy"] == "compact,delete"
    alter(ConfigEntry("cleanup.policy", "delete", incremental_operation=AlterConfigOpType.SUBTRACT))
    assert engine_config(daemon, name)["cleanup.policy"] == "compact"
    with pytest.raises(confluent_kafka.KafkaException) as caught:
        alter(ConfigEntry("retention.ms", "1", incremental_operation=AlterConfigOpType.APPEND))
    assert caught.value.args[0].code() == confluent_kafka.KafkaError.INVALID_CONFIG
    assert "append is not allowed for config key: retention.ms" in caught.value.args[0].str()
    with pytest.raises(confluent_kafka.KafkaException) as caught:
        alter(ConfigEntry("ring.bytes", "2097152", incremental_operation=AlterConfigOpType.SET))
    assert caught.value.args[0].code() == confluent_kafka.KafkaError.INVALID_CONFIG
    assert "cannot change on an existing topic" in caught.value.args[0].str()
    assert "key='ring.bytes'" in caught.value.args[0].str()
    assert engine_config(daemon, name)["retention.ms"] == 120_000  # the refusals changed nothing
    broker = ConfigResource(
        ConfigResource.Type.BROKER,
        "1",
        incremental_configs=[
            ConfigEntry("num.partitions", "3", incremental_operation=AlterConfigOpType.SET)
        ],
    )
    with pytest.raises(confluent_kafka.KafkaException) as caught:
        admin_client.incremental_alter_configs([broker])[broker].result(timeout=30)
    assert caught.value.args[0].code() == confluent_kafka.KafkaError.INVALID_REQUEST
    assert "set at `engine start`" in caught.value.args[0].str()


def test_alter_configs_replaces_the_whole_config(daemon: Daemon, kp_admin: Any) -> None:
    name = fresh_name()
    with Admin(daemon.data_dir) as admin:
        admin.create_topic(name, config=SMALL_RING | {"segment.ms": 3_600_000})
    # kafka-python's AlterConfigs (it sends the other keys it found modified along).
    result = kp_admin.alter_configs(
        [KafkaPythonResource(ConfigResourceType.TOPIC, name, {"retention.ms": "90000"})],
        incremental=False,
    )
    assert result["topic"][name] == "OK"
    config = engine_config(daemon, name)
    assert (config["retention.ms"], config["segment.ms"]) == (90_000, 3_600_000)
    # A raw AlterConfigs: every key not given goes back to its default.
    conn = raw(daemon)
    try:
        keep = [{"name": key, "value": str(v)} for key, v in SMALL_RING.items()]
        answer = conn.request(
            schemas.ALTER_CONFIGS, 2,
            {"resources": [{"resource_type": 2, "resource_name": name,
                            "configs": [*keep, {"name": "retention.ms", "value": "80000"}]}],
             "validate_only": False},
        )  # fmt: skip
    finally:
        conn.close()
    assert answer is not None and answer["responses"][0]["error_code"] == ErrorCode.NONE
    config = engine_config(daemon, name)
    assert (config["retention.ms"], config["segment.ms"]) == (80_000, 7 * 24 * 3600 * 1000)


# -- partitions and records -------------------------------------------------------------


def test_create_partitions_through_both_clients(
    daemon: Daemon, admin_client: AdminClient, kp_admin: Any
) -> None:
    name = new_topic(daemon, partitions=1)
    future = admin_client.create_partitions([NewPartitions(name, 2)])[name]
    assert future.result(timeout=30) is None
    kp_admin.create_partitions({name: 3})
    with Admin(daemon.data_dir) as admin:
        assert [p.leader is not None for p in admin.describe_topic(name).partitions] == [True] * 3
    assert len(admin_client.list_topics(name, timeout=10).topics[name].partitions) == 3
    fewer = admin_client.create_partitions([NewPartitions(name, 2)])[name]
    with pytest.raises(confluent_kafka.KafkaException) as caught:
        fewer.result(timeout=30)
    assert caught.value.args[0].code() == confluent_kafka.KafkaError.INVALID_PARTITIONS


def test_delete_records_then_a_consumer_from_earliest_starts_at_the_new_log_start(
    daemon: Daemon, admin_client: AdminClient, kp_admin: Any
) -> None:
    name = new_topic(daemon, partitions=2, replication=2)
    with Producer(data_dir=daemon.data_dir, acks="all") as producer:
        for p in (0, 1):
            for i in range(10):
                producer.send(name, b"v%d" % i, partition=p)
        producer.flush()
    deleted = admin_client.delete_records([confluent_kafka.TopicPartition(name, 0, 4)])
    (future,) = deleted.values()
    assert future.result(timeout=30).low_watermark == 4
    answer = kp_admin.delete_records({kafka.TopicPartition(name, 1): 7})
    assert answer[kafka.TopicPartition(name, 1)]["low_watermark"] == 7
    consumer = confluent_kafka.Consumer(
        librdkafka_config(daemon, **{"group.id": "d", "enable.auto.commit": False})
    )
    try:
        consumer.assign([
            confluent_kafka.TopicPartition(name, p, confluent_kafka.OFFSET_BEGINNING)
            for p in (0, 1)
        ])  # fmt: skip
        got: list = []

        def all_read() -> bool:
            for msg in consumer.consume(100, timeout=0.2):
                assert msg.error() is None, msg.error()
                got.append((msg.partition(), msg.offset()))
            return len(got) >= 9

        wait_for(all_read, timeout=30, what="the records left")
    finally:
        consumer.close()
    assert sorted(got) == [(0, o) for o in range(4, 10)] + [(1, o) for o in range(7, 10)]
    with Admin(daemon.data_dir) as admin:
        starts = [p.log_start_offset for p in admin.describe_topic(name).partitions]
    assert starts == [4, 7]


# -- the cluster ------------------------------------------------------------------------


def test_describe_cluster_lists_the_brokers_the_controller_and_the_cluster_id(
    daemon: Daemon, admin_client: AdminClient, kp_admin: Any
) -> None:
    described = admin_client.describe_cluster().result(timeout=30)
    servers = kafka_settings(daemon)["bootstrap_servers"].split(",")
    assert sorted(f"{n.host}:{n.port}" for n in described.nodes) == sorted(servers)
    assert sorted(n.id for n in described.nodes) == [1, 2]
    assert described.controller.id in (1, 2)
    assert described.cluster_id == admin_client.list_topics(timeout=10).cluster_id
    found = kp_admin.describe_cluster()
    assert found["cluster_id"] == described.cluster_id
    assert sorted(b["broker_id"] for b in found["brokers"]) == [1, 2]
    assert found["controller_id"] == described.controller.id
    # Both clients fall back to Metadata where DescribeCluster is not served: ask it.
    conn = raw(daemon)
    try:
        brokers = conn.request(schemas.DESCRIBE_CLUSTER, 1, {"endpoint_type": 1})
        controllers = conn.request(schemas.DESCRIBE_CLUSTER, 1, {"endpoint_type": 2})
    finally:
        conn.close()
    assert brokers is not None and brokers["error_code"] == ErrorCode.NONE
    assert brokers["cluster_id"] == described.cluster_id
    with Admin(daemon.data_dir) as engine_admin:  # one cluster id, whichever door
        assert engine_admin.describe_cluster()["cluster_id"] == described.cluster_id
    assert brokers["controller_id"] == described.controller.id
    assert sorted(f"{b['host']}:{b['port']}" for b in brokers["brokers"]) == sorted(servers)
    assert controllers is not None
    assert controllers["error_code"] == ErrorCode.MISMATCHED_ENDPOINT_TYPE


# -- the schemas against Kafka's message JSON ------------------------------------------

ADMIN_APIS = (
    schemas.CREATE_TOPICS, schemas.DELETE_TOPICS, schemas.CREATE_PARTITIONS,
    schemas.DESCRIBE_CONFIGS, schemas.ALTER_CONFIGS, schemas.INCREMENTAL_ALTER_CONFIGS,
    schemas.DELETE_RECORDS, schemas.DESCRIBE_CLUSTER, schemas.OFFSET_FOR_LEADER_EPOCH,
)  # fmt: skip
_SIMPLE = {t.value: t for t in codec.Type}


def kafka_json(name: str) -> dict[str, Any]:
    """apache/kafka's message JSON, as kafka-python ships it (its comments removed)."""
    text = (resources.files("kafka.protocol.schemas") / "resources" / f"{name}.json").read_text()
    parsed: dict[str, Any] = json.loads(re.sub(r"^\s*//.*$", "", text, flags=re.M))
    return parsed


def json_fields(fields: list[dict[str, Any]], version: int) -> list[tuple[Any, ...]]:
    """(name, type, array, nullable, tag, children) of the fields present at ``version``."""
    out = []
    for f in fields:
        if version not in codec.VersionRange.parse(f["versions"]):
            continue
        kind = f["type"].removeprefix("[]")
        children = json_fields(f["fields"], version) if "fields" in f else None
        name = re.sub(r"(?<!^)(?=[A-Z])", "_", f["name"]).lower()
        nullable = version in codec.VersionRange.parse(f.get("nullableVersions", "none"))
        out.append((name, _SIMPLE.get(kind), f["type"].startswith("[]"), nullable,
                    f.get("tag"), children))  # fmt: skip
    return out


def our_fields(fields: tuple[codec.Field, ...], version: int) -> list[tuple[Any, ...]]:
    out = []
    for f in fields:
        if version not in f.versions:
            continue
        struct = isinstance(f.type, tuple)
        children = our_fields(f.type, version) if isinstance(f.type, tuple) else None
        out.append((f.name, None if struct else f.type, f.array, version in f.nullable,
                    f.tag, children))  # fmt: skip
    return out


@pytest.mark.parametrize("key", ADMIN_APIS)
def test_admin_schemas_match_kafkas_message_json_at_every_version_served(key: int) -> None:
    api = schemas.APIS[key]
    for message in (api.request, api.response):
        spec = kafka_json(message.name)
        assert spec["apiKey"] == key
        for version in range(api.min_version, api.max_version + 1):
            assert message.is_flexible(version) == (
                version in codec.VersionRange.parse(spec["flexibleVersions"])
            )
            assert our_fields(message.fields, version) == json_fields(spec["fields"], version), (
                f"{message.name} v{version}"
            )


# -- OffsetForLeaderEpoch ---------------------------------------------------------------


def test_end_offset_for_an_epoch_follows_kafkas_leader_epoch_cache() -> None:
    # Batches (base, last, epoch): epoch 0 at 0-9, epoch 2 at 10-14, epoch 5 at 15-19;
    # the leader is at epoch 6 and its log ends at 20.
    batches = [(0, 4, 0), (5, 9, 0), (10, 14, 2), (15, 16, 5), (17, 19, 5)]

    def batch_at(offset: int) -> tuple[int, int, int] | None:
        return next((b for b in batches if b[1] >= offset), None)

    def answer(epoch: int, start: int = 0) -> tuple[int, int] | None:
        return end_offset_for(epoch, 6, start, 20, batch_at)

    assert answer(6) == (6, 20)  # the current epoch: the log end
    assert answer(0) == (0, 10)
    assert answer(1) == (0, 10)  # no batch of epoch 1: epoch 0's end
    assert answer(2) == (2, 15)
    assert answer(4) == (2, 15)
    assert answer(5) == (5, 20)  # no batch of a later epoch: the log end
    assert answer(7) == (-1, -1) and answer(-1) == (-1, -1)
    assert answer(0, start=12) == (0, 12)  # epoch 0's records deleted: the log start
    assert answer(2, start=12) == (2, 15)


class Lines(logging.Handler):
    """The messages of the log records it is given."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def test_offset_for_leader_epoch_answers_the_end_of_each_epoch_after_a_leader_change(
    daemon: Daemon,
) -> None:
    name = new_topic(daemon, partitions=1, replication=2)
    tp = TopicPartition(name, 0)
    with Admin(daemon.data_dir) as admin:
        before = admin.describe_topic(name).partitions[0]
    produce_confluent(daemon, name, [(None, b"a%d" % i) for i in range(3)], acks="all")
    old_leader = leader_address(daemon, name, 0)
    old = before.leader_epoch
    # A confluent-kafka consumer reads on across the leader change: librdkafka checks its
    # position against the new leader with OffsetForLeaderEpoch (its debug log says so).
    lines = Lines()
    rdkafka_log = logging.getLogger(f"rdkafka.{name}")
    rdkafka_log.addHandler(lines)
    rdkafka_log.setLevel(logging.DEBUG)
    rdkafka_log.propagate = False
    consumer = confluent_kafka.Consumer(
        librdkafka_config(daemon, **{"group.id": "e", "enable.auto.commit": False,
                                     "topic.metadata.refresh.interval.ms": 500,
                                     "debug": "fetch", "logger": rdkafka_log})
    )  # fmt: skip
    try:
        consumer.assign([confluent_kafka.TopicPartition(name, 0, confluent_kafka.OFFSET_BEGINNING)])
        read: list[bytes] = []

        def reads(n: int) -> Callable[[], bool]:
            def more() -> bool:
                for msg in consumer.consume(10, timeout=0.1):
                    assert msg.error() is None, msg.error()
                    read.append(msg.value())
                return len(read) >= n

            return more

        wait_for(reads(3), timeout=30, what="the first epoch's records")
        with Admin(daemon.data_dir) as admin:
            other = next(b for b in before.replicas if b != before.leader)
            admin.alter_partition_reassignments({tp: [other, before.leader]})
            assert admin.perform_leader_election("preferred", [tp]) == {tp: other}
            after = admin.describe_topic(name).partitions[0]
        assert after.leader_epoch > before.leader_epoch
        produce_confluent(daemon, name, [(None, b"b%d" % i) for i in range(2)], acks="all")
        wait_for(reads(5), timeout=30, what="the second epoch's records")
        validated = f"validation succeeded: broker end offset 3 (offset leader epoch {old})"

        def checked() -> bool:
            consumer.poll(0.05)  # serves the log callbacks
            return any(validated in line for line in lines.lines)

        wait_for(checked, timeout=30, what="librdkafka's OffsetForLeaderEpoch check")
    finally:
        consumer.close()
        rdkafka_log.removeHandler(lines)
    assert read == [b"a0", b"a1", b"a2", b"b0", b"b1"]

    def ask(address: str, version: int, epochs: list[tuple[int, int]]) -> list[dict[str, Any]]:
        conn = raw(daemon, address)
        try:
            answer = conn.request(
                schemas.OFFSET_FOR_LEADER_EPOCH, version,
                {"replica_id": -1, "topics": [{"topic": name, "partitions": [
                    {"partition": 0, "current_leader_epoch": current, "leader_epoch": epoch}
                    for current, epoch in epochs]}]},
            )  # fmt: skip
        finally:
            conn.close()
        assert answer is not None
        return [
            {k: p[k] for k in ("error_code", "leader_epoch", "end_offset")}
            for p in answer["topics"][0]["partitions"]
        ]

    new = after.leader_epoch
    expected = [
        {"error_code": 0, "leader_epoch": old, "end_offset": 3},
        {"error_code": 0, "leader_epoch": new, "end_offset": 5},
        {"error_code": 0, "leader_epoch": -1, "end_offset": -1},
        {"error_code": ErrorCode.FENCED_LEADER_EPOCH, "leader_epoch": -1, "end_offset": -1},
    ]
    asked = [(new, old), (new, new), (new, new + 1), (old, old)]
    new_leader = leader_address(daemon, name, 0)
    for version in (2, 4):  # librdkafka's and kafka-python's
        assert ask(new_leader, version, asked) == expected
    assert ask(old_leader, 4, [(-1, old)])[0]["error_code"] == ErrorCode.NOT_LEADER_OR_FOLLOWER
