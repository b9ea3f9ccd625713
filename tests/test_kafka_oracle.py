"""The engine's Kafka listener against a real Kafka (KRaft, scripts/kafka) as the oracle.

Each test runs one client scenario against each :class:`kafka_harness.Target` in turn (the
engine's listener, then a one-node Kafka 4, both SASL_PLAINTEXT with one broker) and
asserts the answers Kafka gives: error codes, offsets, the shape of Metadata, ListOffsets.
The Kafka run proves the expected values are Kafka's; the engine run holds the listener to
them. Raw requests (engine.kafka.codec) are used where a client would hide the answer.

Not compared, on purpose: the log_start_offset of a Produce answer (Kafka names the log
start, the engine -1: the field is advisory and knowing it costs the engine a directory
listing per request); how many batches one Fetch carries (the engine may send fewer);
error messages (free text). Groups, transactions and the admin APIs are compared in
tests/test_kafka_oracle_features.py.

A difference found later is marked with known_difference (xfail, strict) until fixed;
none is marked now.
"""

from __future__ import annotations

import stat
import struct
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import confluent_kafka
import pytest
from engine_harness import Daemon, listening_sockets, wait_for
from kafka_harness import Kafka, Target, engine_target, kafka_target, require_kafka, running_kafka
from test_kafka_listener import SOFTWARE, Raw, produce_raw

from engine.datadir import pid_alive
from engine.kafka import codec, schemas
from engine.kafka.error_codes import ErrorCode
from engine.record_batch import encode_batch, scan_batches

E = ErrorCode
#: ListOffsets' special timestamps.
LATEST, EARLIEST, MAX_TIMESTAMP = -1, -2, -3
#: A code of Kafka's the listener does not answer.
COORDINATOR_LOAD_IN_PROGRESS = 14


def known_difference(request: pytest.FixtureRequest, target: Target, reason: str) -> None:
    """The engine's case is expected to fail (strictly: once it passes, drop this)."""
    if target.name == "engine":
        request.applymarker(pytest.mark.xfail(strict=True, reason=reason))


def now_ms() -> int:
    """A timestamp ten minutes back: inside Kafka's retention and its
    message.timestamp.after.max.ms, with room for later records."""
    return int(time.time() * 1000) - 600_000


def batch(values: list[bytes], timestamps: list[int], **producer: int) -> bytes:
    return encode_batch(
        0, [(None, v, [], ts) for v, ts in zip(values, timestamps, strict=True)], **producer
    )


def metadata(conn: Raw, names: list[str] | None, version: int = 12, **extra: Any) -> Any:
    topics = None if names is None else [{"topic_id": bytes(16), "name": n} for n in names]
    if version < 10 and topics is not None:
        topics = [{"name": n} for n in names or ()]
    answer = conn.request(schemas.METADATA, version, {
        "topics": topics, "allow_auto_topic_creation": False,
        "include_cluster_authorized_operations": False,
        "include_topic_authorized_operations": False,
    } | extra)  # fmt: skip
    assert answer is not None
    return answer


def list_offsets(
    conn: Raw, topic: str, partition: int, timestamp: int, version: int = 7
) -> tuple[int, int, int, int]:
    """(error code, offset, timestamp, leader epoch) of one partition's answer."""
    answer = conn.request(schemas.LIST_OFFSETS, version, {
        "replica_id": -1, "isolation_level": 0,
        "topics": [{"name": topic, "partitions": [
            {"partition_index": partition, "current_leader_epoch": -1, "timestamp": timestamp},
        ]}],
    })  # fmt: skip
    assert answer is not None
    p = answer["topics"][0]["partitions"][0]
    return p["error_code"], p["offset"], p["timestamp"], p["leader_epoch"]


def fetch(
    conn: Raw, topic: str, partition: int, offset: int = 0, version: int = 12
) -> dict[str, Any]:
    """One partition's Fetch answer (a full fetch, no session)."""
    answer = conn.request(schemas.FETCH, version, {
        "replica_id": -1, "max_wait_ms": 50, "min_bytes": 1, "max_bytes": 1 << 20,
        "isolation_level": 0, "session_id": 0, "session_epoch": -1,
        "topics": [{"topic": topic, "partitions": [
            {"partition": partition, "fetch_offset": offset, "partition_max_bytes": 1 << 20},
        ]}],
        "forgotten_topics_data": [], "rack_id": "",
    })  # fmt: skip
    assert answer is not None and answer["error_code"] == 0
    part: dict[str, Any] = answer["responses"][0]["partitions"][0]
    return part


def fetch_all(conn: Raw, topic: str, partition: int, end: int) -> list[tuple[int, int]]:
    """(base offset, record count) of every batch below ``end``, fetching from 0."""
    out: list[tuple[int, int]] = []
    offset = 0
    while offset < end:
        part = fetch(conn, topic, partition, offset)
        assert part["error_code"] == 0, part
        infos, _, _ = scan_batches(bytes(part["records"]))
        assert len(infos), f"no batch at offset {offset} below {end}"
        out += [(int(i["base_offset"]), int(i["records_count"])) for i in infos]
        offset = int(infos["last_offset"][-1]) + 1
    return out


def init_producer_id(conn: Raw) -> tuple[int, int]:
    """A new idempotent producer's (id, epoch); Kafka answers COORDINATOR_LOAD_IN_PROGRESS
    until its transaction state is loaded, a few seconds after it started."""

    def ask() -> tuple[int, int] | None:
        answer = conn.request(
            schemas.INIT_PRODUCER_ID,
            4,
            {"transactional_id": None, "transaction_timeout_ms": 60_000},
        )
        assert answer is not None
        if answer["error_code"] == COORDINATOR_LOAD_IN_PROGRESS:
            return None
        assert answer["error_code"] == 0, answer
        return answer["producer_id"], answer["producer_epoch"]

    found: tuple[int, int] = wait_for(ask, timeout=30, interval=0.2, what="a producer id")
    return found


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


# -- error codes -------------------------------------------------------------------------------


def test_produce_to_an_unknown_topic_is_unknown_topic_or_partition_and_creates_nothing(
    target: Target,
) -> None:
    name = f"missing-{uuid.uuid4().hex[:8]}"
    with target.raw() as conn:
        answer = produce_raw(conn, name, 0, batch([b"v"], [now_ms()]))
        assert (answer["error_code"], answer["base_offset"]) == (E.UNKNOWN_TOPIC_OR_PARTITION, -1)
        # Auto-creation is off on both sides: a Metadata that allows it does not create it.
        for _ in range(2):
            topic = metadata(conn, [name], allow_auto_topic_creation=True)["topics"][0]
            assert (topic["error_code"], topic["name"], topic["partitions"]) == (
                E.UNKNOWN_TOPIC_OR_PARTITION, name, [],
            )  # fmt: skip
        assert list_offsets(conn, name, 0, LATEST)[0] == E.UNKNOWN_TOPIC_OR_PARTITION
        assert fetch(conn, name, 0)["error_code"] == E.UNKNOWN_TOPIC_OR_PARTITION


def test_a_partition_that_does_not_exist_is_unknown_topic_or_partition(target: Target) -> None:
    topic = target.create_topic(partitions=2)
    with target.raw() as conn:
        answer = produce_raw(conn, topic, 2, batch([b"v"], [now_ms()]))
        assert (answer["error_code"], answer["base_offset"]) == (E.UNKNOWN_TOPIC_OR_PARTITION, -1)
        assert list_offsets(conn, topic, 2, LATEST) == (E.UNKNOWN_TOPIC_OR_PARTITION, -1, -1, -1)
        part = fetch(conn, topic, 2)
        assert (part["error_code"], part["high_watermark"]) == (E.UNKNOWN_TOPIC_OR_PARTITION, -1)
        # The partitions that exist still take records.
        assert produce_raw(conn, topic, 1, batch([b"v"], [now_ms()]))["error_code"] == E.NONE


def test_a_batch_over_max_message_bytes_is_message_too_large_and_not_written(
    target: Target,
) -> None:
    topic = target.create_topic(config={"max.message.bytes": 100_000})
    with target.raw() as conn:
        answer = produce_raw(conn, topic, 0, batch([b"x" * 150_000], [now_ms()]))
        assert (answer["error_code"], answer["base_offset"]) == (E.MESSAGE_TOO_LARGE, -1)
        answer = produce_raw(conn, topic, 0, batch([b"x" * 90_000], [now_ms()]))
        assert (answer["error_code"], answer["base_offset"]) == (E.NONE, 0)
    # Through a client: the delivery report carries the broker's error.
    producer = confluent_kafka.Producer(target.librdkafka_config(acks="all"))
    reports: list[Any] = []
    for value in (b"y" * 150_000, b"small"):  # one batch each
        producer.produce(topic, value, on_delivery=lambda err, msg: reports.append(err))
        assert producer.flush(30) == 0
    assert [r.code() if r is not None else None for r in reports] == [
        confluent_kafka.KafkaError.MSG_SIZE_TOO_LARGE, None,
    ]  # fmt: skip
    with target.raw() as conn:
        assert list_offsets(conn, topic, 0, LATEST)[:2] == (E.NONE, 2)


def test_malformed_produce_requests_get_kafkas_errors_and_write_nothing(target: Target) -> None:
    topic = target.create_topic()
    good = batch([b"v"], [now_ms()])
    with target.raw() as conn:
        assert produce_raw(conn, topic, 0, good, acks=2)["error_code"] == E.INVALID_REQUIRED_ACKS
        bad = good[:-1] + bytes([good[-1] ^ 0xFF])
        assert produce_raw(conn, topic, 0, bad)["error_code"] == E.CORRUPT_MESSAGE
        assert produce_raw(conn, topic, 0, good + good)["error_code"] == E.INVALID_RECORD
        answer = produce_raw(conn, topic, 0, good)
        assert (answer["error_code"], answer["base_offset"]) == (E.NONE, 0)
    # acks=0 has no answer: a failed produce closes the connection instead.
    with target.raw() as conn:
        assert produce_raw(conn, f"missing-{uuid.uuid4().hex[:8]}", 0, good, acks=0) is None
        assert conn.read_frame() is None


def test_a_record_more_than_an_hour_ahead_is_invalid_timestamp(target: Target) -> None:
    """Kafka 4's message.timestamp.after.max.ms is one hour by default, and
    message.timestamp.before.max.ms unbounded; a topic may set either."""
    topic = target.create_topic()
    strict = target.create_topic(config={"message.timestamp.before.max.ms": 86_400_000,
                                         "message.timestamp.after.max.ms": 60_000})  # fmt: skip
    now = int(time.time() * 1000)
    with target.raw() as conn:
        ahead = produce_raw(conn, topic, 0, batch([b"v", b"w"], [now, now + 7_200_000]))
        assert (ahead["error_code"], ahead["base_offset"]) == (E.INVALID_TIMESTAMP, -1)
        assert len(ahead["record_errors"]) == 1
        old = produce_raw(conn, topic, 0, batch([b"v"], [now - 10 * 365 * 86_400_000]))
        assert (old["error_code"], old["base_offset"]) == (E.NONE, 0)
        soon = produce_raw(conn, topic, 0, batch([b"v"], [now + 1_800_000]))
        assert (soon["error_code"], soon["base_offset"]) == (E.NONE, 1)
        for refused in (now + 1_800_000, now - 2 * 86_400_000):
            answer = produce_raw(conn, strict, 0, batch([b"v"], [refused]))
            assert answer["error_code"] == E.INVALID_TIMESTAMP, refused
        answer = produce_raw(conn, strict, 0, batch([b"v"], [now - 3_600_000]))
        assert (answer["error_code"], answer["base_offset"]) == (E.NONE, 0)


def test_a_compacted_topic_refuses_a_record_without_a_key(target: Target) -> None:
    topic = target.create_topic(config={"cleanup.policy": "compact"})
    with target.raw() as conn:
        keyless = produce_raw(conn, topic, 0, batch([b"v"], [now_ms()]))
        assert (keyless["error_code"], keyless["base_offset"]) == (E.INVALID_RECORD, -1)
        keyed = produce_raw(conn, topic, 0, encode_batch(0, [(b"k", b"v", [], now_ms())]))
        assert (keyed["error_code"], keyed["base_offset"]) == (E.NONE, 0)


def test_idempotent_retries_and_sequence_gaps_are_answered_as_kafka_does(
    target: Target,
) -> None:
    topic = target.create_topic()
    ts = now_ms()
    with target.raw() as conn:
        pid, epoch = init_producer_id(conn)

        def send(sequence: int, n: int, producer_epoch: int = epoch, producer_id: int = pid) -> Any:
            records = batch([b"s%d" % (sequence + i) for i in range(n)], [ts] * n,
                            producer_id=producer_id, producer_epoch=producer_epoch,
                            base_sequence=sequence)  # fmt: skip
            answer = produce_raw(conn, topic, 0, records)
            return E(answer["error_code"]).name, answer["base_offset"]

        assert send(0, 3) == ("NONE", 0)
        assert send(3, 2) == ("NONE", 3)
        assert send(0, 3) == ("NONE", 0)  # a retry of the first: its offset, not written again
        assert send(3, 2) == ("NONE", 3)
        assert send(9, 1) == ("OUT_OF_ORDER_SEQUENCE_NUMBER", -1)  # a gap
        assert send(5, 1) == ("NONE", 5)
        assert send(6, 1, producer_epoch=epoch + 1) == ("OUT_OF_ORDER_SEQUENCE_NUMBER", -1)
        assert send(0, 1, producer_epoch=epoch + 1) == ("NONE", 6)  # a new epoch starts at 0
        # A producer id this partition has not seen may start at any sequence.
        assert send(7, 1, producer_id=pid + 1000) == ("NONE", 7)
        assert fetch_all(conn, topic, 0, 8) == [(0, 3), (3, 2), (5, 1), (6, 1), (7, 1)]


def test_init_producer_id_without_a_transactional_id_always_starts_a_new_producer(
    target: Target,
) -> None:
    """An idempotent producer that names its producer id and epoch (as librdkafka does to
    bump its epoch after an unknown-producer error) gets a new id at epoch 0 from Kafka:
    only a transactional id keeps its producer id across InitProducerId."""
    with target.raw() as conn:
        pid, epoch = init_producer_id(conn)
        again = conn.request(schemas.INIT_PRODUCER_ID, 4, {
            "transactional_id": None, "transaction_timeout_ms": 60_000,
            "producer_id": pid, "producer_epoch": epoch,
        })  # fmt: skip
        assert again is not None and again["error_code"] == E.NONE
        assert again["producer_id"] != pid and again["producer_epoch"] == 0


# -- offsets -----------------------------------------------------------------------------------


def test_base_offsets_and_the_high_watermark_after_acks_all(target: Target) -> None:
    topic = target.create_topic(partitions=2)
    producer = confluent_kafka.Producer(target.librdkafka_config(acks="all", **{"linger.ms": 5}))
    reports: list[tuple[Any, int, int, bytes]] = []
    for i in range(400):
        producer.produce(
            topic, b"v%d" % i, partition=i % 2,
            on_delivery=lambda err, msg: reports.append(
                (err, msg.partition(), msg.offset(), msg.value())
            ),
        )  # fmt: skip
        if i == 199:
            assert producer.flush(30) == 0  # two rounds of batches
    assert producer.flush(30) == 0
    assert [r for r in reports if r[0] is not None] == []
    for partition in (0, 1):
        mine = [(offset, value) for _, p, offset, value in reports if p == partition]
        assert mine == [(n, b"v%d" % (2 * n + partition)) for n in range(200)]
    consumer = confluent_kafka.Consumer(
        target.librdkafka_config(**{"group.id": "oracle", "enable.auto.commit": False})
    )
    try:
        for partition in (0, 1):
            tp = confluent_kafka.TopicPartition(topic, partition)
            assert consumer.get_watermark_offsets(tp, timeout=10) == (0, 200)
    finally:
        consumer.close()
    with target.raw() as conn:
        part = fetch(conn, topic, 0)
        assert (part["error_code"], part["high_watermark"], part["last_stable_offset"],
                part["log_start_offset"]) == (E.NONE, 200, 200, 0)  # fmt: skip
        assert sum(count for _, count in fetch_all(conn, topic, 1, 200)) == 200
        at_end = fetch(conn, topic, 0, 200)
        assert (at_end["error_code"], at_end["high_watermark"]) == (E.NONE, 200)
        assert scan_batches(bytes(at_end["records"] or b""))[0].size == 0
        past = fetch(conn, topic, 0, 201)
        assert (past["error_code"], past["high_watermark"]) == (E.OFFSET_OUT_OF_RANGE, -1)


def test_list_offsets_earliest_latest_max_timestamp_and_by_timestamp(target: Target) -> None:
    topic = target.create_topic()
    t = now_ms()
    with target.raw() as conn:
        # An empty partition: earliest = latest = 0; no record for a time or a maximum.
        assert list_offsets(conn, topic, 0, EARLIEST) == (E.NONE, 0, -1, 0)
        assert list_offsets(conn, topic, 0, LATEST) == (E.NONE, 0, -1, 0)
        assert list_offsets(conn, topic, 0, MAX_TIMESTAMP) == (E.NONE, -1, -1, -1)
        assert list_offsets(conn, topic, 0, t) == (E.NONE, -1, -1, -1)
        # Offsets 0-1 at t, t+10; 2-3 at t+1000, t+1010; 4-8 out of order, largest at 6.
        for ts in ([t, t + 10], [t + 1000, t + 1010], [t + 2000, t + 2001, t + 5000, t + 2003,
                                                       t + 2004]):  # fmt: skip
            answer = produce_raw(conn, topic, 0, batch([b"r"] * len(ts), ts), acks=-1)
            assert answer["error_code"] == E.NONE
        assert list_offsets(conn, topic, 0, EARLIEST) == (E.NONE, 0, -1, 0)
        assert list_offsets(conn, topic, 0, LATEST) == (E.NONE, 9, -1, 0)
        assert list_offsets(conn, topic, 0, MAX_TIMESTAMP) == (E.NONE, 6, t + 5000, 0)
        assert list_offsets(conn, topic, 0, t + 5) == (E.NONE, 1, t + 10, 0)
        assert list_offsets(conn, topic, 0, t + 500) == (E.NONE, 2, t + 1000, 0)
        assert list_offsets(conn, topic, 0, t + 2002) == (E.NONE, 6, t + 5000, 0)
        assert list_offsets(conn, topic, 0, t + 9000) == (E.NONE, -1, -1, -1)
        # Other special timestamps (-4, -5 from v8, for tiered storage) are not served.
        assert list_offsets(conn, topic, 0, -4) == (E.UNSUPPORTED_VERSION, -1, -1, -1)
        assert list_offsets(conn, topic, 0, -7) == (E.UNSUPPORTED_VERSION, -1, -1, -1)
        assert list_offsets(conn, topic, 0, MAX_TIMESTAMP, version=6) == (
            E.UNSUPPORTED_VERSION, -1, -1, -1,
        )  # fmt: skip
        # v1 has no leader epoch (-1 by default), v5 has.
        assert list_offsets(conn, topic, 0, t + 500, version=1) == (E.NONE, 2, t + 1000, -1)
        assert list_offsets(conn, topic, 0, t + 500, version=5) == (E.NONE, 2, t + 1000, 0)


# -- Metadata, ApiVersions, SASL ---------------------------------------------------------------


def test_metadata_has_kafkas_shape(target: Target) -> None:
    topic = target.create_topic(partitions=3)
    missing = f"missing-{uuid.uuid4().hex[:8]}"
    port = int(target.bootstrap_servers.rpartition(":")[2])
    with target.raw() as conn:
        answer = metadata(conn, [topic, missing])
        assert [(b["host"], b["port"], b["rack"]) for b in answer["brokers"]] == [
            ("127.0.0.1", port, None)
        ]
        node = answer["brokers"][0]["node_id"]
        assert isinstance(answer["cluster_id"], str) and answer["cluster_id"]
        assert answer["controller_id"] == node
        found, unknown = answer["topics"]
        assert (found["error_code"], found["name"], found["is_internal"]) == (0, topic, False)
        assert len(found["topic_id"]) == 16 and found["topic_id"] != bytes(16)
        assert [
            (p["error_code"], p["partition_index"], p["leader_id"], p["replica_nodes"],
             p["isr_nodes"], p["offline_replicas"])
            for p in found["partitions"]
        ] == [(0, i, node, [node], [node], []) for i in range(3)]  # fmt: skip
        assert all(p["leader_epoch"] >= 0 for p in found["partitions"])
        assert (unknown["error_code"], unknown["name"], unknown["partitions"]) == (
            E.UNKNOWN_TOPIC_OR_PARTITION, missing, [],
        )  # fmt: skip
        assert unknown["topic_id"] == bytes(16)
        # By topic id (v10+): the same topic, named.
        by_id = conn.request(schemas.METADATA, 12, {
            "topics": [{"topic_id": found["topic_id"], "name": None}],
            "allow_auto_topic_creation": False, "include_topic_authorized_operations": False,
        })  # fmt: skip
        assert by_id is not None
        assert [(t["error_code"], t["name"]) for t in by_id["topics"]] == [(0, topic)]
        # All topics (null), and an old version (v1: no cluster id, no leader epoch).
        assert topic in [t["name"] for t in metadata(conn, None)["topics"]]
        old = metadata(conn, [topic], version=1)
        assert old["controller_id"] == node
        # Authorized operations: unknown unless asked; when asked, all (no authorizer).
        assert found["topic_authorized_operations"] == -(2**31)
        assert answer["cluster_authorized_operations"] == -(2**31)
        asked = metadata(conn, [topic, missing], version=10,
                         include_cluster_authorized_operations=True,
                         include_topic_authorized_operations=True)  # fmt: skip
        assert [t["topic_authorized_operations"] for t in asked["topics"]] == [3576, 3576]
        assert asked["cluster_authorized_operations"] == 8096
        assert [p["leader_epoch"] for p in old["topics"][0]["partitions"]] == [-1, -1, -1]


def test_api_versions_at_a_version_not_served_answers_v0_with_the_apis(target: Target) -> None:
    """Before authentication, as a client asks first: an unknown ApiVersions version gets
    UNSUPPORTED_VERSION in a v0 answer that lists ApiVersions' own versions at least
    (Kafka lists only those), then v3 is served."""
    with target.raw(authenticate=False) as conn:
        # The header of a version past the latest is taken as flexible: its tagged fields.
        conn.send_frame(struct.pack(">hhih", schemas.API_VERSIONS, 99, 7, -1) + b"\x00")
        frame = conn.read_frame()
        assert frame is not None and struct.unpack_from(">i", frame)[0] == 7
        answer = codec.decode(schemas.APIS[schemas.API_VERSIONS].response, 0, frame, 4)
        assert answer["error_code"] == E.UNSUPPORTED_VERSION
        own = [(a["min_version"], a["max_version"]) for a in answer["api_keys"]
               if a["api_key"] == schemas.API_VERSIONS]  # fmt: skip
        assert len(own) == 1 and own[0][0] == 0 and own[0][1] >= 3
        versions = conn.request(schemas.API_VERSIONS, 3, SOFTWARE)
        assert versions is not None and versions["error_code"] == 0


@pytest.mark.parametrize(
    "software",
    [("t", ""), ("-t", "1"), ("t", "1.0-"), ("", "1")],
    ids=["empty-version", "leading-dash", "trailing-dash", "empty-name"],
)
def test_api_versions_refuses_a_client_software_name_kafka_refuses(
    target: Target, software: tuple[str, str]
) -> None:
    """ApiVersions v3+ names the client's software (KIP-511): alphanumerics, dots and
    dashes, starting and ending alphanumeric; anything else is INVALID_REQUEST."""
    name, version = software
    with target.raw(authenticate=False) as conn:
        answer = conn.request(
            schemas.API_VERSIONS, 3,
            {"client_software_name": name, "client_software_version": version},
        )  # fmt: skip
        assert answer is not None
        assert (answer["error_code"], answer["api_keys"]) == (E.INVALID_REQUEST, [])
    with target.raw(authenticate=False) as conn:
        good = {"client_software_name": "confluent-kafka-python", "client_software_version":
                "2.6.0-rdkafka-2.6.0"}  # fmt: skip
        answer = conn.request(schemas.API_VERSIONS, 3, good)
        assert answer is not None and answer["error_code"] == E.NONE


def test_sasl_refuses_an_unknown_mechanism_and_a_wrong_password(target: Target) -> None:
    with target.raw(authenticate=False) as conn:
        shake = conn.request(schemas.SASL_HANDSHAKE, 1, {"mechanism": "GSSAPI"})
        assert shake is not None and shake["error_code"] == E.UNSUPPORTED_SASL_MECHANISM
        assert {"SCRAM-SHA-256", "PLAIN"} <= set(shake["mechanisms"])
    with target.raw(authenticate=False) as conn:
        shake = conn.request(schemas.SASL_HANDSHAKE, 1, {"mechanism": "PLAIN"})
        assert shake is not None and shake["error_code"] == 0
        token = b"\0" + target.settings["sasl_username"].encode() + b"\0wrong"
        answer = conn.request(schemas.SASL_AUTHENTICATE, 2, {"auth_bytes": token})
        assert answer is not None and answer["error_code"] == E.SASL_AUTHENTICATION_FAILED
        assert conn.read_frame() is None  # and the connection closes


def test_the_engine_serves_api_versions_within_kafkas(
    oracle_daemon: Daemon, real_kafka: Kafka
) -> None:
    """Every API the engine's listener serves, Kafka serves too, at every version the
    engine serves: a client that negotiates with one can negotiate with the other."""
    ranges = {}
    for side in (engine_target(oracle_daemon), kafka_target(real_kafka)):
        with side.raw() as conn:
            answer = conn.request(schemas.API_VERSIONS, 3, SOFTWARE)
            assert answer is not None and answer["error_code"] == 0
            ranges[side.name] = {
                a["api_key"]: (a["min_version"], a["max_version"]) for a in answer["api_keys"]
            }
    outside = {
        key: (low, high, ranges["kafka"].get(key))
        for key, (low, high) in ranges["engine"].items()
        if key not in ranges["kafka"]
        or not ranges["kafka"][key][0] <= low <= high <= ranges["kafka"][key][1]
    }
    assert outside == {}, f"engine (min, max, Kafka's) outside Kafka's ranges: {outside}"
    assert set(ranges["engine"]) == set(schemas.APIS)


def test_the_real_kafka_listens_on_loopback_only_with_a_private_credential(
    real_kafka: Kafka,
) -> None:
    """What scripts/kafka promises, as the engine's listener does: every socket a node
    listens on is bound to 127.0.0.1, and its password is readable by its owner only."""
    assert stat.S_IMODE((real_kafka.dir / "kafka.json").stat().st_mode) == 0o600
    assert stat.S_IMODE(real_kafka.dir.stat().st_mode) == 0o700
    for node in real_kafka.settings["nodes"]:
        sockets = listening_sockets(node["pid"])
        assert sockets == {("127.0.0.1", node["port"]), ("127.0.0.1", node["controller_port"])}
        properties = Path(node["dir"]) / "server.properties"
        assert stat.S_IMODE(properties.stat().st_mode) == 0o600  # it holds the password


def test_running_kafka_stops_its_nodes_when_the_block_fails(tmp_path: Path) -> None:
    require_kafka()
    pids: list[int] = []
    with pytest.raises(RuntimeError, match="the test failed"), running_kafka(tmp_path / "k") as k:
        pids = [node["pid"] for node in k.settings["nodes"]]
        assert all(pid_alive(pid) for pid in pids)
        raise RuntimeError("the test failed")
    assert pids and not any(pid_alive(pid) for pid in pids)


def fetched_batches(conn: Raw, topic: str, offset: int, version: int) -> Any:
    """A Fetch of partition 0 at ``offset``: (the answer without its records, the records,
    their batches, the bytes those take), or None for an answer with no batch (allowed by
    the protocol: a client asks again)."""
    part = fetch(conn, topic, 0, offset, version)
    records = bytes(part.pop("records"))
    infos, used, _ = scan_batches(records)
    return (part, records, infos, used) if len(infos) else None


def test_fetched_batches_and_their_answers_are_kafkas_byte_for_byte(
    oracle_daemon: Daemon, real_kafka: Kafka
) -> None:
    """The same three batches produced to each side come back from Fetch v4-v12 as the
    same bytes (base offsets and leader epochs set by the broker, the client's CRC kept),
    with the same partition answer (high watermark, last stable offset, log start...)."""
    ts = now_ms()
    batches = [
        encode_batch(0, [(b"k%d" % i, b"v" * (i + 1), [("h", b"x")], ts + i) for i in range(n)])
        for n in (1, 3, 2)
    ]  # fmt: skip
    answers: dict[str, dict[int, tuple[bytes, dict[str, Any]]]] = {}
    for side in (engine_target(oracle_daemon), kafka_target(real_kafka)):
        topic = side.create_topic()
        answers[side.name] = {}
        with side.raw() as conn:
            for b in batches:
                assert produce_raw(conn, topic, 0, b, acks=-1)["error_code"] == E.NONE
            for version in range(4, 13):
                data, offset, part = b"", 0, {}
                while offset < 6:  # the engine may answer fewer batches at a time
                    part, records, infos, used = wait_for(
                        lambda c=conn, t=topic, o=offset, v=version: fetched_batches(c, t, o, v),
                        timeout=10, interval=0.01,
                        what=f"{side.name}: Fetch v{version} at {offset} to answer a batch",
                    )  # fmt: skip
                    data += records[:used]
                    offset = int(infos["last_offset"][-1]) + 1
                answers[side.name][version] = (data, part)
    for version in range(4, 13):
        assert answers["engine"][version] == answers["kafka"][version], f"Fetch v{version}"
    assert len(answers["kafka"][12][0]) == sum(len(b) for b in batches)
