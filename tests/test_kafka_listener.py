"""The brokers' Kafka listener against real Kafka clients: confluent-kafka (librdkafka),
kafka-python and kcat, and against raw protocol requests where a client would hide the
answer (unsupported versions, idempotent retries, a corrupt batch).

Every test runs against real daemons: one with SASL (the default), one started with
``--kafka-auth none``. Records go both ways between the Kafka clients and the engine's
own Producer and Consumer.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import stat
import struct
import subprocess
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import confluent_kafka
import pytest
from engine_harness import Daemon, listening_sockets, running_daemon, wait_for

from engine import Admin, Consumer, Producer, TopicPartition
from engine import metadata as md
from engine.datadir import DataDir
from engine.kafka import codec, schemas
from engine.kafka.error_codes import ErrorCode
from engine.record_batch import encode_batch, scan_batches

with warnings.catch_warnings():
    # kafka-python 3.0 reads its schemas with importlib.resources.read_text (deprecated).
    warnings.simplefilter("ignore", DeprecationWarning)
    import kafka
    import kafka.errors

SMALL_RING = {"ring.bytes": 1 << 20, "max.message.bytes": 500_000}
#: An ApiVersions v3+ body Kafka accepts (a name and version of its pattern, KIP-511).
SOFTWARE = {"client_software_name": "t", "client_software_version": "1"}
#: librdkafka makes batches of up to this (its default, 1 MB, exceeds max.message.bytes).
BATCH_BYTES = 256_000


# -- daemons and clients ---------------------------------------------------------------


def require_kcat() -> None:
    """Skipped with the reason without Debian's kcat, except in CI (CI=true): a failure."""
    if shutil.which("kcat") is not None:
        return
    reason = "Debian's kcat is not installed: scripts/servers installs it"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}; CI runs every kcat test", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def sasl_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    with running_daemon(tmp_path_factory.mktemp("kafka-sasl"), brokers=2) as d:
        yield d


@pytest.fixture(scope="module")
def open_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    with running_daemon(
        tmp_path_factory.mktemp("kafka-open"), brokers=1, start_args=["--kafka-auth", "none"]
    ) as d:
        yield d


def status(d: Daemon) -> dict[str, Any]:
    return json.loads(d.cli("status", "--json").stdout)


def kafka_settings(d: Daemon) -> dict[str, Any]:
    return status(d)["kafka"]


def librdkafka_config(d: Daemon, **extra: Any) -> dict[str, Any]:
    k = kafka_settings(d)
    config = {
        "bootstrap.servers": k["bootstrap_servers"],
        "security.protocol": k["security_protocol"],
    }
    if k["security_protocol"] == "SASL_PLAINTEXT":
        config |= {
            "sasl.mechanism": k["sasl_mechanism"],
            "sasl.username": k["sasl_username"],
            "sasl.password": k["sasl_password"],
        }
    return config | extra


def new_topic(d: Daemon, partitions: int = 2, replication: int = 1) -> str:
    name = f"k-{uuid.uuid4().hex[:8]}"
    with Admin(d.data_dir) as admin:
        admin.create_topic(name, partitions=partitions, replication=replication, config=SMALL_RING)
    return name


def produce_confluent(
    d: Daemon, topic: str, records: list[tuple[bytes, bytes]], **config: Any
) -> list:
    """Produce with confluent-kafka; every delivery report (error, partition, offset)."""
    producer = confluent_kafka.Producer(
        librdkafka_config(d, **{"batch.size": BATCH_BYTES} | config)
    )
    reports: list = []

    def report(err: Any, msg: Any) -> None:
        reports.append((err, msg.partition(), msg.offset(), msg.key(), msg.value()))

    for key, value in records:
        producer.produce(topic, value=value, key=key, headers=[("h", b"v")], on_delivery=report)
        producer.poll(0)
    assert producer.flush(30) == 0, "confluent-kafka did not deliver everything in 30 s"
    return reports


def consume_confluent(d: Daemon, topic: str, partitions: int, expect: int) -> list:
    consumer = confluent_kafka.Consumer(
        librdkafka_config(d, **{"group.id": "t", "enable.auto.commit": False})
    )
    try:
        consumer.assign(
            [
                confluent_kafka.TopicPartition(topic, p, confluent_kafka.OFFSET_BEGINNING)
                for p in range(partitions)
            ]
        )
        out: list = []

        def more() -> bool:
            for msg in consumer.consume(1000, timeout=0.2):
                assert msg.error() is None, msg.error()
                out.append(msg)
            return len(out) >= expect

        wait_for(more, timeout=30, what=f"{expect} records through confluent-kafka")
        return out
    finally:
        consumer.close()


def consume_engine(d: Daemon, topic: str, partitions: int, expect: int) -> list:
    with Consumer(data_dir=d.data_dir, auto_offset_reset="earliest") as c:
        c.assign([TopicPartition(topic, p) for p in range(partitions)])
        out: list = []
        wait_for(
            lambda: out.extend(c.poll(timeout=0.2, max_records=100_000)) or len(out) >= expect,
            timeout=30,
            what=f"{expect} records through the engine's Consumer",
        )
        return out


# -- raw protocol ------------------------------------------------------------------------


class Raw:
    """A bare Kafka-protocol connection: requests encoded with engine.kafka.codec."""

    def __init__(self, address: str) -> None:
        host, _, port = address.partition(",")[0].rpartition(":")
        self.sock = socket.create_connection((host, int(port)), timeout=10)
        self.correlation = 0

    def close(self) -> None:
        self.sock.close()

    def send_frame(self, payload: bytes) -> None:
        self.sock.sendall(struct.pack(">i", len(payload)) + payload)

    def read_frame(self) -> bytes | None:
        head = self._exactly(4)
        if head is None:
            return None
        return self._exactly(struct.unpack(">i", head)[0])

    def _exactly(self, n: int) -> bytes | None:
        out = b""
        while len(out) < n:
            try:
                chunk = self.sock.recv(n - len(out))
            except ConnectionResetError:  # closed with our bytes still unread
                return None
            if not chunk:
                return None
            out += chunk
        return out

    def request(self, api_key: int, version: int, body: dict[str, Any]) -> dict[str, Any] | None:
        api = schemas.APIS[api_key]
        self.correlation += 1
        flexible = api.request.is_flexible(version)
        header = struct.pack(">hhih", api_key, version, self.correlation, 4) + b"test"
        if flexible:
            header += b"\x00"
        self.send_frame(header + bytes(codec.encode(api.request, version, body)))
        if api_key == schemas.PRODUCE and body["acks"] == 0:
            return None
        frame = self.read_frame()
        assert frame is not None, "the listener closed the connection"
        (correlation,) = struct.unpack_from(">i", frame)
        assert correlation == self.correlation
        start = 5 if flexible and api_key != schemas.API_VERSIONS else 4
        return codec.decode(api.response, version, frame, start)


def produce_raw(conn: Raw, topic: str, partition: int, batch: bytes, acks: int = 1) -> Any:
    """The partition's Produce answer (None with acks=0)."""
    answer = conn.request(
        schemas.PRODUCE,
        8,
        {
            "transactional_id": None,
            "acks": acks,
            "timeout_ms": 10_000,
            "topic_data": [
                {"name": topic, "partition_data": [{"index": partition, "records": batch}]}
            ],
        },
    )
    if acks == 0:
        assert answer is None
        return None
    assert answer is not None
    return answer["responses"][0]["partition_responses"][0]


def leader_address(d: Daemon, topic: str, partition: int) -> str:
    with Admin(d.data_dir) as admin:
        leader = admin.describe_topic(topic).partitions[partition].leader
        registration = md.live_brokers(admin._cluster.zk)[leader]
    return registration["endpoints"][0].partition("://")[2]


# -- tests -------------------------------------------------------------------------------


def test_status_json_names_the_bootstrap_servers_and_a_private_credential(
    sasl_daemon: Daemon,
) -> None:
    k = kafka_settings(sasl_daemon)
    assert k["security_protocol"] == "SASL_PLAINTEXT"
    assert k["sasl_mechanism"] == "SCRAM-SHA-256"
    assert k["sasl_username"] == "engine" and len(k["sasl_password"]) >= 24
    servers = k["bootstrap_servers"].split(",")
    assert len(servers) == 2 and all(s.startswith("127.0.0.1:") for s in servers)
    credential = sasl_daemon.data_dir / "kafka.credentials"
    assert stat.S_IMODE(credential.stat().st_mode) == 0o600
    runtime = sasl_daemon.runtime()
    with Admin(sasl_daemon.data_dir) as admin:
        registrations = md.live_brokers(admin._cluster.zk)
    for broker_id, address in zip((1, 2), servers, strict=True):
        registration = registrations[broker_id]
        # Kafka's registration: endpoints by listener; host/port name PLAINTEXT only.
        assert registration["endpoints"] == [f"SASL_PLAINTEXT://{address}"]
        assert registration["listener_security_protocol_map"] == {
            "SASL_PLAINTEXT": "SASL_PLAINTEXT"
        }
        assert registration["port"] == -1
        pid = int(runtime["processes"][f"broker-{broker_id}"])
        assert ("127.0.0.1", int(address.rpartition(":")[2])) in listening_sockets(pid)


def test_kcat_lists_the_brokers_and_topics(sasl_daemon: Daemon) -> None:
    require_kcat()
    topic = new_topic(sasl_daemon, partitions=3)
    k = kafka_settings(sasl_daemon)
    out = subprocess.run(
        [
            "kcat",
            "-L",
            "-J",
            "-b",
            k["bootstrap_servers"],
            "-X",
            "security.protocol=SASL_PLAINTEXT",
            "-X",
            "sasl.mechanisms=SCRAM-SHA-256",
            "-X",
            f"sasl.username={k['sasl_username']}",
            "-X",
            f"sasl.password={k['sasl_password']}",
        ],
        capture_output=True,
        timeout=30,
        check=True,
    )
    listing = json.loads(out.stdout)
    assert sorted(b["id"] for b in listing["brokers"]) == [1, 2]
    topics = {t["topic"]: t for t in listing["topics"]}
    assert [p["partition"] for p in topics[topic]["partitions"]] == [0, 1, 2]
    assert all(p["leader"] in (1, 2) for p in topics[topic]["partitions"])


@pytest.mark.parametrize(
    "config",
    [{"acks": 0}, {"acks": 1}, {"acks": "all"}, {"acks": "all", "enable.idempotence": True}],
    ids=["acks0", "acks1", "acks-all", "idempotent"],
)
def test_confluent_kafka_produces_and_both_kinds_of_consumer_read_it(
    sasl_daemon: Daemon, config: dict[str, Any]
) -> None:
    topic = new_topic(sasl_daemon, partitions=2, replication=2)
    records = [(b"k%d" % i, b"value-%d" % i) for i in range(2000)]
    reports = produce_confluent(sasl_daemon, topic, records, **config)
    assert [r for r in reports if r[0] is not None] == []
    if config["acks"] != 0:  # acks=0: the client never hears an offset
        placed = {(r[1], r[2]): (r[3], r[4]) for r in reports}
        assert len(placed) == len(records) and sorted(placed.values()) == sorted(records)
    got = consume_confluent(sasl_daemon, topic, 2, len(records))
    assert sorted((m.key(), m.value()) for m in got) == sorted(records)
    assert all(m.headers() == [("h", b"v")] for m in got)
    mine = consume_engine(sasl_daemon, topic, 2, len(records))
    assert sorted((r.key, r.value) for r in mine) == sorted(records)
    assert sorted((r.partition, r.offset) for r in mine) == sorted(
        (m.partition(), m.offset()) for m in got
    )
    if config["acks"] != 0:
        assert {(r.partition, r.offset): (r.key, r.value) for r in mine} == placed


def test_records_of_the_engine_producer_are_read_by_confluent_kafka(sasl_daemon: Daemon) -> None:
    topic = new_topic(sasl_daemon, partitions=2)
    with Producer(sasl_daemon.data_dir) as p:
        sent = [
            p.send(topic, b"v%d" % i, key=b"k%d" % i, headers=[("n", b"%d" % i)]).get()
            for i in range(500)
        ]
    got = consume_confluent(sasl_daemon, topic, 2, 500)
    assert sorted(
        (m.partition(), m.offset(), m.key(), m.value(), tuple(m.headers())) for m in got
    ) == sorted(
        (s.partition, s.offset, b"k%d" % i, b"v%d" % i, (("n", b"%d" % i),))
        for i, s in enumerate(sent)
    )


def test_kafka_python_produces_and_consumes_with_sasl_plain(sasl_daemon: Daemon) -> None:
    topic = new_topic(sasl_daemon, partitions=2)
    k = kafka_settings(sasl_daemon)
    auth = {
        "bootstrap_servers": k["bootstrap_servers"].split(","),
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": "PLAIN",
        "sasl_plain_username": k["sasl_username"],
        "sasl_plain_password": k["sasl_password"],
    }
    producer = kafka.KafkaProducer(acks="all", **auth)
    try:
        metas = [
            producer.send(topic, key=b"k%d" % i, value=b"v%d" % i).get(timeout=30)
            for i in range(300)
        ]
    finally:
        producer.close()
    consumer = kafka.KafkaConsumer(auto_offset_reset="earliest", consumer_timeout_ms=20_000, **auth)
    try:
        consumer.assign([kafka.TopicPartition(topic, p) for p in range(2)])
        got = []
        for msg in consumer:
            got.append(msg)
            if len(got) == 300:
                break
    finally:
        consumer.close()
    assert sorted((m.partition, m.offset, m.key, m.value) for m in got) == sorted(
        (meta.partition, meta.offset, b"k%d" % i, b"v%d" % i) for i, meta in enumerate(metas)
    )


def test_kcat_produces_and_consumes(sasl_daemon: Daemon) -> None:
    require_kcat()
    topic = new_topic(sasl_daemon, partitions=1)
    k = kafka_settings(sasl_daemon)
    common = [
        "-b",
        k["bootstrap_servers"],
        "-X",
        "security.protocol=SASL_PLAINTEXT",
        "-X",
        "sasl.mechanisms=SCRAM-SHA-256",
        "-X",
        f"sasl.username={k['sasl_username']}",
        "-X",
        f"sasl.password={k['sasl_password']}",
        "-t",
        topic,
    ]
    lines = b"".join(b"line-%d\n" % i for i in range(100))
    subprocess.run(["kcat", "-P", *common], input=lines, timeout=30, check=True)
    out = subprocess.run(
        ["kcat", "-C", "-e", "-o", "beginning", "-f", "%o %s\n", *common],
        capture_output=True,
        timeout=30,
        check=True,
    )
    assert out.stdout.decode().splitlines() == [f"{i} line-{i}" for i in range(100)]
    assert [r.value for r in consume_engine(sasl_daemon, topic, 1, 100)] == [
        b"line-%d" % i for i in range(100)
    ]


def test_a_wrong_password_is_refused(sasl_daemon: Daemon) -> None:
    for mechanism in ("SCRAM-SHA-256", "PLAIN"):
        errors: list = []
        config = librdkafka_config(
            sasl_daemon,
            **{"sasl.mechanism": mechanism, "sasl.password": "wrong", "error_cb": errors.append},
        )
        producer = confluent_kafka.Producer(config)
        with pytest.raises(confluent_kafka.KafkaException):
            producer.list_topics(timeout=3)
        producer.poll(0.5)
        assert any(e.code() == confluent_kafka.KafkaError._AUTHENTICATION for e in errors), (
            mechanism,
            errors,
        )
        del producer
    # The same on the wire: the SaslAuthenticate answer says so, then the connection closes.
    k = kafka_settings(sasl_daemon)
    conn = Raw(k["bootstrap_servers"])
    try:
        shake = conn.request(schemas.SASL_HANDSHAKE, 1, {"mechanism": "PLAIN"})
        assert shake == {"error_code": 0, "mechanisms": ["SCRAM-SHA-256", "PLAIN"]}
        answer = conn.request(schemas.SASL_AUTHENTICATE, 2, {"auth_bytes": b"\0engine\0wrong"})
        assert answer is not None
        assert answer["error_code"] == ErrorCode.SASL_AUTHENTICATION_FAILED
        assert "invalid credentials" in answer["error_message"]
        assert conn.read_frame() is None
    finally:
        conn.close()


def test_before_authentication_only_api_versions_and_sasl_are_served(sasl_daemon: Daemon) -> None:
    conn = Raw(kafka_settings(sasl_daemon)["bootstrap_servers"])
    try:
        versions = conn.request(schemas.API_VERSIONS, 3, SOFTWARE)
        assert versions is not None and versions["error_code"] == 0
        conn.send_frame(struct.pack(">hhih", schemas.METADATA, 1, 99, -1) + struct.pack(">i", -1))
        assert conn.read_frame() is None  # closed, as Kafka closes it
    finally:
        conn.close()


def test_kafka_auth_none_serves_plaintext_without_credentials(open_daemon: Daemon) -> None:
    k = kafka_settings(open_daemon)
    assert k["security_protocol"] == "PLAINTEXT" and "sasl_password" not in k
    topic = new_topic(open_daemon, partitions=1)
    producer = confluent_kafka.Producer(
        {"bootstrap.servers": k["bootstrap_servers"], "batch.size": BATCH_BYTES}
    )
    producer.produce(topic, b"open")
    assert producer.flush(30) == 0
    assert [r.value for r in consume_engine(open_daemon, topic, 1, 1)] == [b"open"]
    with Admin(open_daemon.data_dir) as admin:
        registration = md.live_brokers(admin._cluster.zk)[1]
    assert registration["host"] == "127.0.0.1"
    assert registration["port"] == int(k["bootstrap_servers"].rpartition(":")[2])


def test_unsupported_versions_and_apis_are_answered_not_dropped(open_daemon: Daemon) -> None:
    conn = Raw(kafka_settings(open_daemon)["bootstrap_servers"])
    try:
        # ApiVersions at a version not served: its v0 error response, with the APIs served.
        conn.send_frame(struct.pack(">hhih", schemas.API_VERSIONS, 99, 7, -1))
        frame = conn.read_frame()
        assert frame is not None and struct.unpack_from(">i", frame)[0] == 7
        answer = codec.decode(schemas.APIS[schemas.API_VERSIONS].response, 0, frame, 4)
        assert answer["error_code"] == ErrorCode.UNSUPPORTED_VERSION
        served = {a["api_key"]: (a["min_version"], a["max_version"]) for a in answer["api_keys"]}
        assert served[schemas.PRODUCE] == (3, 9) and served[schemas.FETCH] == (4, 12)
        # An API not served (DescribeAcls, key 29): its correlation id and the error.
        assert 29 not in schemas.APIS
        conn.send_frame(struct.pack(">hhih", 29, 0, 8, -1) + b"\x00\x00")
        frame = conn.read_frame()
        assert frame is not None
        assert struct.unpack_from(">ih", frame) == (8, ErrorCode.UNSUPPORTED_VERSION)
        # The connection still serves.
        versions = conn.request(schemas.API_VERSIONS, 3, SOFTWARE)
        assert versions is not None and versions["error_code"] == 0
    finally:
        conn.close()


def test_find_coordinator_names_a_live_broker_for_groups_and_transactions(
    open_daemon: Daemon,
) -> None:
    address = kafka_settings(open_daemon)["bootstrap_servers"]
    host, _, port = address.rpartition(":")
    conn = Raw(address)
    try:
        for key_type in (0, 1):  # a group, a transactional id
            old = conn.request(schemas.FIND_COORDINATOR, 3, {"key": "g", "key_type": key_type})
            assert old is not None and old["error_code"] == 0
            assert (old["node_id"], old["host"], old["port"]) == (1, host, int(port))
            batched = conn.request(
                schemas.FIND_COORDINATOR, 4, {"key_type": key_type, "coordinator_keys": ["a", "b"]}
            )
            assert batched is not None
            assert [(c["key"], c["error_code"], c["node_id"]) for c in batched["coordinators"]] == [
                ("a", 0, 1),
                ("b", 0, 1),
            ]
        unknown = conn.request(schemas.FIND_COORDINATOR, 3, {"key": "g", "key_type": 7})
        assert unknown is not None and unknown["error_code"] == ErrorCode.INVALID_REQUEST
    finally:
        conn.close()


def test_an_idempotent_retry_is_answered_with_its_first_offset_and_not_written_again(
    open_daemon: Daemon,
) -> None:
    topic = new_topic(open_daemon, partitions=1)
    conn = Raw(leader_address(open_daemon, topic, 0))
    try:
        ident = conn.request(
            schemas.INIT_PRODUCER_ID,
            4,
            {"transactional_id": None, "transaction_timeout_ms": 60_000},
        )
        assert ident is not None and ident["error_code"] == 0
        pid, epoch = ident["producer_id"], ident["producer_epoch"]

        def batch(sequence: int, n: int) -> bytes:
            records = [(None, b"s%d" % (sequence + i), [], 1_700_000_000_000) for i in range(n)]
            return encode_batch(
                0, records, producer_id=pid, producer_epoch=epoch, base_sequence=sequence
            )

        first = produce_raw(conn, topic, 0, batch(0, 3))
        assert (first["error_code"], first["base_offset"]) == (0, 0)
        second = produce_raw(conn, topic, 0, batch(3, 2))
        assert (second["error_code"], second["base_offset"]) == (0, 3)
        retry = produce_raw(conn, topic, 0, batch(0, 3))  # the first again: a retry
        assert (retry["error_code"], retry["base_offset"]) == (0, 0)
        gap = produce_raw(conn, topic, 0, batch(9, 1))
        assert gap["error_code"] == ErrorCode.OUT_OF_ORDER_SEQUENCE_NUMBER
        third = produce_raw(conn, topic, 0, batch(5, 1))
        assert (third["error_code"], third["base_offset"]) == (0, 5)
    finally:
        conn.close()
    got = consume_engine(open_daemon, topic, 1, 6)
    assert [(r.offset, r.value) for r in got] == [(i, b"s%d" % i) for i in range(6)]


def test_a_batch_that_fails_its_crc_is_refused_and_not_written(open_daemon: Daemon) -> None:
    topic = new_topic(open_daemon, partitions=1)
    conn = Raw(leader_address(open_daemon, topic, 0))
    try:
        good = encode_batch(0, [(b"k", b"v", [], 1_700_000_000_000)])
        bad = good[:-1] + bytes([good[-1] ^ 0xFF])
        assert produce_raw(conn, topic, 0, bad)["error_code"] == ErrorCode.CORRUPT_MESSAGE
        assert produce_raw(conn, topic, 0, good + good)["error_code"] == ErrorCode.INVALID_RECORD
        answer = produce_raw(conn, topic, 0, good)
        assert (answer["error_code"], answer["base_offset"]) == (0, 0)
    finally:
        conn.close()


@pytest.mark.parametrize("codec_id", [1, 2, 3, 4], ids=["gzip", "snappy", "lz4", "zstd"])
def test_compressed_batches_are_stored_as_they_came_and_read_back(
    open_daemon: Daemon, codec_id: int
) -> None:
    topic = new_topic(open_daemon, partitions=1)
    records = [(b"k%d" % i, b"compressible value %d " % i * 4) for i in range(1000)]
    compression = {1: "gzip", 2: "snappy", 3: "lz4", 4: "zstd"}[codec_id]
    produce_confluent(
        open_daemon, topic, records, **{"compression.type": compression, "linger.ms": 50}
    )
    got = consume_confluent(open_daemon, topic, 1, len(records))
    assert [(m.key(), m.value()) for m in got] == records
    directory = Path(DataDir.resolve(open_daemon.data_dir).partition_dir(1, topic, 0))

    def drained() -> Any:
        stored = b"".join(p.read_bytes() for p in sorted(directory.glob("*.log")))
        infos, _, _ = scan_batches(stored)
        return infos if int(infos["records_count"].sum()) == len(records) else None

    infos = wait_for(drained, what="the drain of every batch into the log")
    # librdkafka sends a batch that does not shrink (a small last one) uncompressed.
    codecs = [int(a) & 0x07 for a in infos["attributes"]]
    assert codec_id in codecs and set(codecs) <= {0, codec_id}, codecs
    # The engine's Consumer reads them too (tests/test_kafka_compression.py: every client).
    got = consume_engine(open_daemon, topic, 1, len(records))
    assert [(r.key, r.value, r.headers) for r in got] == [(k, v, [("h", b"v")]) for k, v in records]
    assert [r.offset for r in got] == list(range(len(records)))


def list_offset(conn: Raw, topic: str, timestamp: int) -> tuple[int, int, int]:
    """ListOffsets v6 of partition 0 at ``timestamp``: (error code, offset, timestamp)."""
    answer = conn.request(schemas.LIST_OFFSETS, 6, {
        "replica_id": -1, "isolation_level": 0,
        "topics": [{"name": topic, "partitions": [
            {"partition_index": 0, "current_leader_epoch": -1, "timestamp": timestamp},
        ]}],
    })  # fmt: skip
    assert answer is not None
    p = answer["topics"][0]["partitions"][0]
    return p["error_code"], p["offset"], p["timestamp"]


def test_list_offsets_finds_the_earliest_the_latest_and_by_timestamp(open_daemon: Daemon) -> None:
    topic = new_topic(open_daemon, partitions=1)
    conn = Raw(leader_address(open_daemon, topic, 0))
    try:
        for ts in (1_000, 2_000, 3_000):  # offsets 0-1, 2-3, 4-5
            batch = encode_batch(0, [(None, b"a", [], ts), (None, b"b", [], ts + 10)])
            assert produce_raw(conn, topic, 0, batch)["error_code"] == 0

        def offset_for(timestamp: int) -> tuple[int, int, int]:
            return list_offset(conn, topic, timestamp)

        assert offset_for(-2) == (0, 0, -1)
        assert offset_for(-1) == (0, 6, -1)
        assert offset_for(1_500) == (0, 2, 2_000)
        assert offset_for(2_005) == (0, 3, 2_010)
        assert offset_for(9_000) == (0, -1, -1)
    finally:
        conn.close()


def test_a_read_racing_the_drain_finds_the_batch_the_ring_just_gave_up(open_daemon: Daemon) -> None:
    """Each batch is looked up by its timestamp right after it is produced, while the
    broker drains it from the ring into the segment. (A read that took the ring's state
    before the drain moved, then found the batch gone from the ring, read the segment
    only up to the old drain offset: nothing, below the high watermark.)"""
    topic = new_topic(open_daemon, partitions=1)
    conn = Raw(leader_address(open_daemon, topic, 0))
    try:
        wrong = []
        for i in range(300):
            ts = 100_000 + i
            batch = encode_batch(0, [(None, b"x", [], ts)])
            assert produce_raw(conn, topic, 0, batch)["error_code"] == 0
            found = list_offset(conn, topic, ts)
            if found != (0, i, ts):
                wrong.append((i, *found))
        assert wrong == []
    finally:
        conn.close()


def test_an_idempotent_retry_after_a_broker_restart_is_not_written_again(tmp_path: Path) -> None:
    """The producer state of a new leadership comes from the log's tail: a retry of a batch
    written before the restart is answered with its first offset (Kafka rebuilds it
    from its snapshots)."""
    with running_daemon(tmp_path / "e", brokers=1, start_args=["--kafka-auth", "none"]) as d:
        topic = new_topic(d, partitions=1)
        conn = Raw(leader_address(d, topic, 0))
        try:
            ident = conn.request(
                schemas.INIT_PRODUCER_ID, 4,
                {"transactional_id": None, "transaction_timeout_ms": 60_000},
            )  # fmt: skip
            assert ident is not None
            pid, epoch = ident["producer_id"], ident["producer_epoch"]
            batches = [
                encode_batch(0, [(None, b"s%d" % (s + i), [], 1_700_000_000_000) for i in range(2)],
                             producer_id=pid, producer_epoch=epoch, base_sequence=s)
                for s in (0, 2, 4)
            ]  # fmt: skip
            assert [produce_raw(conn, topic, 0, b)["base_offset"] for b in batches] == [0, 2, 4]
        finally:
            conn.close()
        d.stop()
        d.start()
        conn = Raw(leader_address(d, topic, 0))
        try:
            retry = produce_raw(conn, topic, 0, batches[2])
            assert (retry["error_code"], retry["base_offset"]) == (0, 4)
            older = produce_raw(conn, topic, 0, batches[1])
            assert (older["error_code"], older["base_offset"]) == (0, 2)
            follow = encode_batch(0, [(None, b"s6", [], 1_700_000_000_000)], producer_id=pid,
                                  producer_epoch=epoch, base_sequence=6)  # fmt: skip
            assert produce_raw(conn, topic, 0, follow)["base_offset"] == 6
        finally:
            conn.close()
        got = consume_engine(d, topic, 1, 7)
        assert [(r.offset, r.value) for r in got] == [(i, b"s%d" % i) for i in range(7)]


def test_an_idempotent_confluent_producer_loses_and_duplicates_nothing_across_a_leader_kill(
    tmp_path: Path,
) -> None:
    """acks=all, idempotent, replication 3 with min.insync.replicas 2: the leader broker is
    SIGKILLed while records flow; every record the client says was delivered is in the
    log exactly once."""
    with running_daemon(tmp_path / "e", brokers=3, start_args=["--kafka-auth", "none"]) as d:
        topic = f"k-{uuid.uuid4().hex[:8]}"
        with Admin(d.data_dir) as admin:
            admin.create_topic(topic, partitions=1, replication=3,
                               config=SMALL_RING | {"min.insync.replicas": 2})  # fmt: skip
            leader = admin.describe_topic(topic).partitions[0].leader
        producer = confluent_kafka.Producer({
            "bootstrap.servers": kafka_settings(d)["bootstrap_servers"], "acks": "all",
            "enable.idempotence": True, "batch.size": BATCH_BYTES, "linger.ms": 5,
            "message.timeout.ms": 60_000,
        })  # fmt: skip
        delivered: list[bytes] = []
        failed: list = []

        def report(err: Any, msg: Any) -> None:
            (failed if err is not None else delivered).append(err or msg.value())

        sent = 0
        killed = False
        while sent < 20_000:
            producer.produce(topic, b"r%d" % sent, on_delivery=report)
            sent += 1
            producer.poll(0)
            if sent % 100 == 0:
                producer.poll(0.005)  # about 20k records/s
            if not killed and len(delivered) >= 5_000:
                pid = int(d.runtime()["processes"][f"broker-{leader}"])
                os.kill(pid, signal.SIGKILL)
                killed = True
        assert producer.flush(90) == 0
        assert killed and failed == []
        got = consume_engine(d, topic, 1, len(delivered))
        values = [r.value for r in got]
        assert len(values) == len(set(values)), "a record was written twice"
        assert set(delivered) <= set(values)
        assert len(delivered) == sent


def test_a_large_frame_before_authentication_closes_the_connection(sasl_daemon: Daemon) -> None:
    """Before authentication a client may send 512 KiB at most (Kafka's
    sasl.server.max.receive.size): a local user without the password cannot make a broker
    allocate more."""
    conn = Raw(kafka_settings(sasl_daemon)["bootstrap_servers"])
    try:
        conn.sock.sendall(struct.pack(">i", 600_000) + b"\x00" * 16)
        assert conn.read_frame() is None
    finally:
        conn.close()


def test_a_failed_acks_0_produce_closes_the_connection_and_a_good_one_does_not(
    open_daemon: Daemon,
) -> None:
    topic = new_topic(open_daemon, partitions=1)
    conn = Raw(leader_address(open_daemon, topic, 0))
    try:
        good = encode_batch(0, [(b"k", b"v", [], 1_700_000_000_000)])
        assert produce_raw(conn, topic, 0, good, acks=0) is None
        versions = conn.request(schemas.API_VERSIONS, 3, SOFTWARE)
        assert versions is not None and versions["error_code"] == 0
        bad = good[:-1] + bytes([good[-1] ^ 0xFF])
        assert produce_raw(conn, topic, 0, bad, acks=0) is None
        assert conn.read_frame() is None  # closed: the client looks again
    finally:
        conn.close()
    assert [r.value for r in consume_engine(open_daemon, topic, 1, 1)] == [b"v"]


def test_a_connection_unmaps_the_ring_of_a_deleted_topic(open_daemon: Daemon) -> None:
    """A connection that read a topic since deleted closes its mapping of the topic's ring
    at its next request after SWEEP_S (5 s), so the shared memory goes back."""
    gone, kept = new_topic(open_daemon, partitions=1), new_topic(open_daemon, partitions=1)
    with Admin(open_daemon.data_dir) as admin:
        ring_id = admin.describe_topic(gone).topic_id[:16]
    broker = int(open_daemon.runtime()["processes"]["broker-1"])

    def mapped() -> bool:
        with open(f"/proc/{broker}/maps") as f:
            return f"-{ring_id}-0-1" in f.read()

    conn = Raw(leader_address(open_daemon, gone, 0))
    try:
        batch = encode_batch(0, [(None, b"v", [], 1_700_000_000_000)])
        assert produce_raw(conn, gone, 0, batch)["error_code"] == 0
        assert mapped()
        with Admin(open_daemon.data_dir) as admin:
            admin.delete_topic(gone)

        def unmapped_after_a_request() -> bool:
            assert produce_raw(conn, kept, 0, batch)["error_code"] == 0
            return not mapped()

        wait_for(unmapped_after_a_request, timeout=20, interval=0.5, what="the ring's unmapping")
    finally:
        conn.close()


def test_a_compacted_topic_refuses_a_batch_with_a_keyless_record(open_daemon: Daemon) -> None:
    """Kafka's INVALID_RECORD with its words, for plain and compressed batches; nothing
    of the refused batch is written; keyed batches go; a topic made compacted later
    refuses them too."""
    name = f"k-{uuid.uuid4().hex[:8]}"
    with Admin(open_daemon.data_dir) as admin:
        admin.create_topic(name, partitions=1, config=SMALL_RING | {"cleanup.policy": "compact"})
    conn = Raw(leader_address(open_daemon, name, 0))
    ts = 1_700_000_000_000
    try:
        keyed = encode_batch(0, [(b"k", b"v", [], ts)])
        assert produce_raw(conn, name, 0, keyed)["error_code"] == 0
        mixed = encode_batch(0, [(b"k", b"v", [], ts), (None, b"no key", [], ts)])
        answer = produce_raw(conn, name, 0, mixed)
        assert answer["error_code"] == ErrorCode.INVALID_RECORD
        assert answer["error_message"] == (
            f"Compacted topic cannot accept message without key in topic partition {name}-0."
        )
    finally:
        conn.close()
    reports = produce_confluent(
        open_daemon, name, [(None, b"compressed, no key")], **{"compression.type": "gzip"}
    )
    assert [r[0].code() for r in reports] == [confluent_kafka.KafkaError.INVALID_RECORD]
    got = consume_engine(open_daemon, name, 1, 1)
    assert [(r.key, r.value) for r in got] == [(b"k", b"v")]
    with Consumer(data_dir=open_daemon.data_dir) as c:  # and nothing after it
        c.assign([TopicPartition(name, 0)])
        assert c.end_offsets([TopicPartition(name, 0)]) == {TopicPartition(name, 0): 1}
    later = new_topic(open_daemon, partitions=1)
    with Admin(open_daemon.data_dir) as admin:
        admin.incremental_alter_configs(later, {"cleanup.policy": "compact"})
    conn = Raw(leader_address(open_daemon, later, 0))
    try:
        wait_for(
            lambda: produce_raw(conn, later, 0, encode_batch(0, [(None, b"x", [], ts)]))[
                "error_code"
            ]
            == ErrorCode.INVALID_RECORD,
            what="a keyless batch refused once the topic is compacted",
        )
    finally:
        conn.close()
