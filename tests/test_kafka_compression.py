"""Compressed batches from real Kafka clients, read by the engine.

confluent-kafka (librdkafka), kafka-python and aiokafka each compress their batches with
gzip, snappy, lz4 and zstd; the broker stores them as they came, and the engine's own
Consumer reads them (poll, iteration, poll_values, read_committed), out of the ring and
out of the segments; ListOffsets and offsets_for_times find records inside them, the
cleaner compacts them, and a batch that does not decompress is named, not skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import struct
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiokafka
import confluent_kafka
import pytest
from engine._native import lib
from engine_harness import Daemon, running_daemon, wait_for
from test_kafka_listener import Raw, kafka_settings, leader_address, produce_raw

from engine import Admin, Consumer, Producer, TopicPartition
from engine.cleaner import LogCleaner
from engine.cluster import ClusterView
from engine.compression import Codec, compress, compressed_batch, plain_batch
from engine.datadir import DataDir
from engine.errors import ConfigError, CorruptRecordError
from engine.kafka import schemas
from engine.log import Log
from engine.producer_config import ProducerConfig
from engine.record_batch import decode_record_infos, encode_batch, scan_batches
from engine.ring import Ring

with warnings.catch_warnings():
    # kafka-python 3.0 reads its schemas with importlib.resources.read_text (deprecated).
    warnings.simplefilter("ignore", DeprecationWarning)
    import kafka

CODECS = ["gzip", "snappy", "lz4", "zstd"]
#: A small ring, so that a little more data pushes the compressed batches out of it.
RING = {"ring.bytes": 1 << 16, "max.message.bytes": 16_384}
BATCH_BYTES = 12_000
VALUE_SIZE = 64
COUNT = 200  # records per client
BASE_TS = 1_700_000_000_000


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    with running_daemon(
        tmp_path_factory.mktemp("kafka-compression"),
        brokers=1,
        start_args=["--kafka-auth", "none"],
    ) as d:
        yield d


_BOOTSTRAP: dict[str, str] = {}


def bootstrap(d: Daemon) -> str:
    """The daemon's bootstrap servers (`engine status --json`, asked once: a process)."""
    key = str(d.data_dir)
    if key not in _BOOTSTRAP:
        _BOOTSTRAP[key] = kafka_settings(d)["bootstrap_servers"]
    return _BOOTSTRAP[key]


def new_topic(d: Daemon, **config: Any) -> str:
    name = f"z-{uuid.uuid4().hex[:8]}"
    with Admin(d.data_dir) as admin:
        admin.create_topic(name, partitions=1, config=RING | config)
    return name


def expected(client: str, index: int) -> tuple[bytes, bytes, list[tuple[str, bytes]], int]:
    """(key, value, headers, timestamp) of a client's record ``i``: values of VALUE_SIZE
    bytes that compress well, timestamps one ms apart."""
    key = f"{client}-{index}".encode()
    value = f"{client} value {index:06d} ".encode().ljust(VALUE_SIZE, b".")
    headers = [("client", client.encode()), ("i", str(index).encode())]
    return key, value, headers, BASE_TS + 10_000 * index // COUNT + len(client)


def produce_confluent(d: Daemon, topic: str, codec: str) -> None:
    producer = confluent_kafka.Producer({
        "bootstrap.servers": bootstrap(d),
        "compression.type": codec, "linger.ms": 20, "batch.size": BATCH_BYTES,
    })  # fmt: skip
    for i in range(COUNT):
        key, value, headers, ts = expected("confluent", i)
        producer.produce(topic, value=value, key=key, headers=headers, timestamp=ts, partition=0)
    assert producer.flush(30) == 0


def produce_kafka_python(d: Daemon, topic: str, codec: str) -> None:
    producer = kafka.KafkaProducer(
        bootstrap_servers=bootstrap(d),
        compression_type=codec, linger_ms=20, batch_size=BATCH_BYTES,
    )  # fmt: skip
    try:
        for i in range(COUNT):
            key, value, headers, ts = expected("kafka-python", i)
            producer.send(
                topic, value=value, key=key, headers=headers, timestamp_ms=ts, partition=0
            )
        producer.flush(30)
    finally:
        producer.close(timeout=5)


def produce_aiokafka(d: Daemon, topic: str, codec: str) -> None:
    async def run() -> None:
        producer = aiokafka.AIOKafkaProducer(
            bootstrap_servers=bootstrap(d),
            compression_type=codec, linger_ms=20, max_batch_size=BATCH_BYTES,
        )  # fmt: skip
        await producer.start()
        try:
            for i in range(COUNT):
                key, value, headers, ts = expected("aiokafka", i)
                await producer.send(
                    topic, value=value, key=key, headers=headers, timestamp_ms=ts, partition=0
                )
            await producer.flush()
        finally:
            await producer.stop()

    asyncio.run(run())


CLIENTS = {
    "confluent": produce_confluent,
    "kafka-python": produce_kafka_python,
    "aiokafka": produce_aiokafka,
}


def all_expected() -> list[tuple[bytes, bytes, list[tuple[str, bytes]], int]]:
    return [expected(client, i) for client in CLIENTS for i in range(COUNT)]


def stored_batches(d: Daemon, topic: str) -> Any:
    directory = Path(DataDir.resolve(d.data_dir).partition_dir(1, topic, 0))
    stored = b"".join(p.read_bytes() for p in sorted(directory.glob("*.log")))
    return scan_batches(stored)[0]


def drained_batches(d: Daemon, topic: str, count: int) -> Any:
    """The batches of the partition's segments, once they hold ``count`` records."""

    def drained() -> Any:
        infos = stored_batches(d, topic)
        return [infos] if int(infos["records_count"].sum()) == count else None

    return wait_for(drained, what=f"the drain of {count} records")[0]


def poll_records(c: Consumer, count: int) -> list:
    out: list = []
    wait_for(
        lambda: out.extend(c.poll(timeout=0.2, max_records=count - len(out))) or len(out) >= count,
        timeout=20, what=f"{count} records",
    )  # fmt: skip
    return out


def fields(records: list) -> list:
    return [(r.key, r.value, r.headers, r.timestamp) for r in records]


def ring_of(d: Daemon, topic: str) -> Ring:
    view = ClusterView(d.data_dir)
    try:
        return Ring.open(view.topic(topic).rings[0].name)
    finally:
        view.close()


def poll_values(c: Consumer, count: int) -> list[bytes]:
    arrays: list = []
    wait_for(
        lambda: arrays.extend(c.poll_values(VALUE_SIZE, timeout=0.2))
        or sum(map(len, arrays)) >= count,
        timeout=20, what=f"{count} values",
    )  # fmt: skip
    return [bytes(v) for array in arrays for v in array]


@pytest.mark.parametrize("codec", CODECS)
def test_every_client_s_compressed_batches_are_read_from_the_ring_and_the_segments(
    daemon: Daemon, codec: str
) -> None:
    topic = new_topic(daemon)
    tp = TopicPartition(topic, 0)
    want = all_expected()
    n = len(want)
    with contextlib.ExitStack() as stack:
        # Consumers waiting in the ring read what comes out of it (poll, iteration, values).
        polled, iterated, valued = (
            stack.enter_context(
                Consumer(data_dir=daemon.data_dir, auto_offset_reset="earliest",
                         consumer_timeout_ms=5_000)
            )
            for _ in range(3)
        )  # fmt: skip
        for c in (polled, iterated, valued):
            c.assign([tp])
            assert c.poll(timeout=0) == []
        for produce in CLIENTS.values():
            produce(daemon, topic, codec)
        got = poll_records(polled, n)
        assert fields(got) == want
        assert [r.offset for r in got] == list(range(n))
        assert fields(itertools.islice(iterated, n)) == want
        assert poll_values(valued, n) == [w[1] for w in want]
    ring = ring_of(daemon, topic)
    try:
        wait_for(lambda: ring.status().drain_offset == n, what="the drain")
        assert ring.seek(0) is None  # a new reader reads these from the segments
    finally:
        ring.close()
    # Every client compressed with the codec (a batch that does not shrink may go plain).
    infos = stored_batches(daemon, topic)
    codecs = [int(a) & 0x07 for a in infos["attributes"]]
    assert codecs.count(Codec.named(codec).value) >= len(CLIENTS), codecs
    with Consumer(data_dir=daemon.data_dir, auto_offset_reset="earliest") as c:
        c.assign([tp])
        assert fields(poll_records(c, n)) == want
        c.seek(tp, n - 5)  # into the middle of a batch
        assert fields(poll_records(c, 5)) == want[-5:]
        c.seek(tp, 0)
        assert poll_values(c, n) == [w[1] for w in want]


def with_crc(batch: bytearray) -> bytes:
    """``batch`` with its CRC32C made to match (over bytes 21 on)."""
    struct.pack_into(">I", batch, 17, lib.engine_crc32c(0, bytes(batch[21:]), len(batch) - 21))
    return bytes(batch)


def test_a_compressed_batch_that_does_not_decompress_is_named_and_nothing_else_is_lost(
    daemon: Daemon,
) -> None:
    topic = new_topic(daemon)
    tp = TopicPartition(topic, 0)
    records = [(b"k%d" % i, b"v%d" % i, [("h", b"x")], BASE_TS + i) for i in range(3)]
    good = compressed_batch(encode_batch(0, records), Codec.LZ4)
    # An lz4 batch whose frame is damaged after its magic number, its CRC made to match:
    # stored as it came (the broker does not open batches), refused by every reader.
    damaged = bytearray(good)
    damaged[61 + 4 :] = bytes(len(damaged) - 65)
    struct.pack_into(">q", damaged, 35, BASE_TS + 100)  # its max timestamp
    conn = Raw(leader_address(daemon, topic, 0))
    try:
        for batch in (good, with_crc(damaged), good):  # offsets 0-2, 3-5, 6-8
            assert produce_raw(conn, topic, 0, batch)["error_code"] == 0
    finally:
        conn.close()
    with Consumer(data_dir=daemon.data_dir, auto_offset_reset="earliest") as c:
        c.assign([tp])
        got = poll_records(c, 3)
        assert [r.offset for r in got] == [0, 1, 2]
        assert fields(got) == records
        for _ in range(2):  # and again at the next poll: nothing after it is skipped
            with pytest.raises(CorruptRecordError) as raised:
                c.poll(timeout=1)
            assert (raised.value.topic, raised.value.partition) == (topic, 0)
            assert raised.value.offset == 3
            assert "offset=3" in str(raised.value) and "codec=lz4" in str(raised.value)
        c.seek(tp, 6)
        assert [r.offset for r in poll_records(c, 3)] == [6, 7, 8]
    # read_committed reads the same batches through its filter, and stops at the same one.
    with Consumer(
        data_dir=daemon.data_dir, auto_offset_reset="earliest", isolation_level="read_committed"
    ) as c:
        c.assign([tp])
        assert fields(poll_records(c, 3)) == records
        with pytest.raises(CorruptRecordError, match="codec=lz4"):
            c.poll(timeout=1)
    # ListOffsets, whose answer has no room for the error, gives the batch's first offset
    # and max timestamp (and the broker logs a warning); offsets_for_times raises.
    assert list_offset(daemon, topic, BASE_TS + 50) == (0, 3, BASE_TS + 100)
    with Consumer(data_dir=daemon.data_dir) as c, pytest.raises(CorruptRecordError):
        c.offsets_for_times({tp: BASE_TS + 50})


def list_offset(d: Daemon, topic: str, timestamp: int) -> tuple[int, int, int]:
    """ListOffsets v6 for partition 0 of ``topic``: (error code, offset, timestamp)."""
    conn = Raw(leader_address(d, topic, 0))
    try:
        answer = conn.request(schemas.LIST_OFFSETS, 6, {
            "replica_id": -1, "isolation_level": 0,
            "topics": [{"name": topic, "partitions": [
                {"partition_index": 0, "current_leader_epoch": -1, "timestamp": timestamp},
            ]}],
        })  # fmt: skip
    finally:
        conn.close()
    assert answer is not None
    p = answer["topics"][0]["partitions"][0]
    return p["error_code"], p["offset"], p["timestamp"]


def test_offsets_for_times_find_the_record_inside_a_compressed_batch(daemon: Daemon) -> None:
    topic = new_topic(daemon)
    producer = confluent_kafka.Producer({
        "bootstrap.servers": bootstrap(daemon),
        "compression.type": "snappy", "linger.ms": 100,
    })  # fmt: skip
    for i in range(10):  # one batch: offsets 0-9, timestamps 1000 ms apart
        producer.produce(topic, value=b"v" * 50, timestamp=BASE_TS + 1000 * i, partition=0)
    assert producer.flush(30) == 0
    infos = drained_batches(daemon, topic, 10)
    assert [int(a) & 0x07 for a in infos["attributes"]] == [Codec.SNAPPY.value]
    tp = TopicPartition(topic, 0)
    with Consumer(data_dir=daemon.data_dir) as c:
        found = c.offsets_for_times({tp: BASE_TS + 4500})[tp]
        assert found is not None and tuple(found) == (5, BASE_TS + 5000)
    assert list_offset(daemon, topic, BASE_TS + 2500) == (0, 3, BASE_TS + 3000)


def test_compaction_reads_compressed_batches_and_keeps_their_codec(tmp_path: Path) -> None:
    config = {
        "cleanup.policy": "compact", "segment.bytes": 1_000, "min.cleanable.dirty.ratio": 0.01
    }  # fmt: skip
    rounds = [  # (offset, keys, codec)
        (0, [b"a", b"b", b"c", b"d"], Codec.ZSTD),
        (4, [b"a", b"b"], Codec.ZSTD),
        (6, [b"c"], Codec.GZIP),
    ]
    stored = {}
    with Log.open(tmp_path / "p", config) as log:
        for offset, keys, codec in rounds:
            rows = [(k, b"%s@%d" % (k, offset + i), [], BASE_TS) for i, k in enumerate(keys)]
            stored[offset] = compressed_batch(encode_batch(offset, rows), codec)
            log.append(stored[offset])
        for offset in range(7, 40):  # other keys, until the rounds' segment is sealed
            log.append(encode_batch(offset, [(b"f%d" % offset, b"x" * 50, [], BASE_TS)]))
        result = LogCleaner(log).clean(BASE_TS, force=True)
        assert result is not None and result.records_removed == 3
        data = log.read(0, 1 << 20)
    infos = scan_batches(data)[0]
    kept = {int(i["base_offset"]): data[int(i["position"]) : int(i["position"]) + int(i["length"])]
            for i in infos if int(i["records_count"])}  # fmt: skip
    # Kept whole: as stored. Kept in part (d of the first round): compressed again, zstd.
    assert kept[4] == stored[4] and kept[6] == stored[6]
    assert kept[0][22] & 0x07 == Codec.ZSTD.value
    plain = plain_batch(kept[0])
    rows = decode_record_infos(plain)
    assert rows["offset"].tolist() == [3]
    position, length = int(rows["value_position"][0]), int(rows["value_length"][0])
    assert plain[position : position + length] == b"d@3"


def consume_kafka_python(d: Daemon, topic: str, count: int) -> list:
    consumer = kafka.KafkaConsumer(
        bootstrap_servers=bootstrap(d), enable_auto_commit=False
    )
    try:
        tp = kafka.TopicPartition(topic, 0)
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        out: list = []
        wait_for(
            lambda: out.extend(r for rs in consumer.poll(200).values() for r in rs)
            or len(out) >= count,
            timeout=20, what=f"{count} records through kafka-python",
        )  # fmt: skip
        return [(r.key, r.value, [(k, bytes(v)) for k, v in r.headers], r.timestamp) for r in out]
    finally:
        consumer.close()


def consume_confluent(d: Daemon, topic: str, count: int) -> list:
    consumer = confluent_kafka.Consumer({
        "bootstrap.servers": bootstrap(d), "group.id": "z",
        "enable.auto.commit": False,
    })  # fmt: skip
    try:
        start = confluent_kafka.OFFSET_BEGINNING
        consumer.assign([confluent_kafka.TopicPartition(topic, 0, start)])
        out: list = []

        def more() -> bool:
            for msg in consumer.consume(1000, timeout=0.2):
                assert msg.error() is None, msg.error()
                out.append(msg)
            return len(out) >= count

        wait_for(more, timeout=20, what=f"{count} records through confluent-kafka")
        return [(m.key(), m.value(), m.headers() or [], m.timestamp()[1]) for m in out]
    finally:
        consumer.close()


@pytest.mark.parametrize("codec", CODECS)
def test_kafka_clients_read_the_engine_producer_s_compressed_batches(
    daemon: Daemon, codec: str
) -> None:
    topic = new_topic(daemon)
    want = [expected("engine", i) for i in range(COUNT)]
    with Producer(daemon.data_dir, compression_type=codec, linger_ms=20) as p:  # acks="all"
        futures = [
            p.send(topic, value=v, key=k, headers=h, timestamp_ms=ts, partition=0)
            for k, v, h, ts in want
        ]
        p.flush()
        assert [f.get(timeout=10).offset for f in futures] == list(range(COUNT))
        # send_batch's bulk path: fixed-size values, one timestamp
        result = p.send_batch(topic, [w[1] for w in want], partition=0, timestamp_ms=BASE_TS)
        result.futures[-1].get(timeout=10)
    with Producer(daemon.data_dir, compression_type=codec, acks=1) as p:
        p.send(topic, value=b"last" * 16, key=b"k", partition=0, timestamp_ms=BASE_TS)
        p.flush()
    want += [(None, w[1], [], BASE_TS) for w in want] + [(b"k", b"last" * 16, [], BASE_TS)]
    n = len(want)
    assert consume_confluent(daemon, topic, n) == want
    assert consume_kafka_python(daemon, topic, n) == want
    with Consumer(data_dir=daemon.data_dir, auto_offset_reset="earliest") as c:
        c.assign([TopicPartition(topic, 0)])
        assert fields(poll_records(c, n)) == want
    infos = drained_batches(daemon, topic, n)
    # Every batch compressed (one that would not shrink goes plain; none here).
    assert {int(a) & 0x07 for a in infos["attributes"]} == {Codec.named(codec).value}


def test_read_committed_reads_the_engine_producer_s_compressed_transactions(
    daemon: Daemon,
) -> None:
    topic = new_topic(daemon)
    with Producer(
        daemon.data_dir, transactional_id=f"t-{topic}", compression_type="lz4"
    ) as p:
        p.init_transactions()
        for commit, values in ((True, [b"a", b"b"]), (False, [b"x"]), (True, [b"c"])):
            p.begin_transaction()
            for value in values:
                p.send(topic, value=value * VALUE_SIZE, partition=0)
            if commit:
                p.commit_transaction()
            else:
                p.abort_transaction()
    with Consumer(
        data_dir=daemon.data_dir, auto_offset_reset="earliest", isolation_level="read_committed"
    ) as c:
        c.assign([TopicPartition(topic, 0)])
        got = poll_records(c, 3)
        assert [r.value for r in got] == [v * VALUE_SIZE for v in (b"a", b"b", b"c")]
        assert c.poll(timeout=0.5) == []  # the aborted one never comes
    infos = drained_batches(daemon, topic, 4 + 3)  # 4 records, 3 markers
    data = [int(a) for a in infos["attributes"] if not int(a) & 0x20]  # markers aside
    assert data and all(a & 0x07 == Codec.LZ4.value and a & 0x10 for a in data), data


def test_compression_type_takes_kafka_s_names_only() -> None:
    assert ProducerConfig.from_options().codec is Codec.NONE
    assert ProducerConfig.from_options(compression_type="zstd").codec is Codec.ZSTD
    assert ProducerConfig.from_options(compression_type=None).codec is Codec.NONE  # kafka-python
    with pytest.raises(ConfigError, match=r"compression_type='brotli'"):
        ProducerConfig.from_options(compression_type="brotli")


def test_lz4_frames_are_written_with_independent_blocks_as_kafka_s_java_client_reads_them() -> None:
    """Kafka's Java reader decompresses each block of a frame alone."""
    frame = compress(Codec.LZ4, bytes(range(256)) * 1000)  # several 64 KiB blocks
    assert frame[:4] == b"\x04\x22\x4d\x18"  # the LZ4 frame's magic number
    assert frame[4] & 0x20, f"FLG={frame[4]:#010b}: blocks linked"  # block independence


def test_the_c_decoder_refuses_a_compressed_batch_rather_than_misread_it() -> None:
    """Plain records under attributes that say gzip: read as records, they would be
    another batch's contents taken for this one's."""
    lying = bytearray(encode_batch(0, [(b"k", b"v", [], BASE_TS)]))
    lying[22] |= Codec.GZIP.value
    with pytest.raises(CorruptRecordError):
        decode_record_infos(with_crc(lying))
