"""The Kafka listener's produce and fetch paths, where they keep state between requests
of a connection to be fast: what they answer must not change with it."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from engine_harness import Daemon, running_daemon, wait_for
from test_kafka_listener import Raw, kafka_settings, new_topic, produce_raw

from engine import Admin, TopicPartition
from engine.datadir import DataDir
from engine.kafka import schemas
from engine.kafka.error_codes import ErrorCode
from engine.kafka.partitions import LISTING_FRESH_NS
from engine.record_batch import encode_batch


@pytest.fixture(scope="module")
def listener_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """One broker, no authentication."""
    with running_daemon(
        tmp_path_factory.mktemp("kafka-paths"), brokers=1, start_args=["--kafka-auth", "none"]
    ) as d:
        yield d


def fetch_raw(conn: Raw, topic: str, partition: int, offset: int) -> Any:
    """The partition's Fetch answer (v12, no wait)."""
    answer = conn.request(
        schemas.FETCH,
        12,
        {
            "replica_id": -1,
            "max_wait_ms": 0,
            "min_bytes": 1,
            "max_bytes": 1 << 20,
            "isolation_level": 0,
            "session_id": 0,
            "session_epoch": -1,
            "topics": [
                {
                    "topic": topic,
                    "partitions": [
                        {
                            "partition": partition,
                            "current_leader_epoch": -1,
                            "fetch_offset": offset,
                            "last_fetched_epoch": -1,
                            "log_start_offset": -1,
                            "partition_max_bytes": 1 << 20,
                        }
                    ],
                }
            ],
            "forgotten_topics_data": [],
            "rack_id": "",
        },
    )
    assert answer is not None
    return answer["responses"][0]["partitions"][0]


def test_a_fetch_sees_records_deleted_since_the_last_fetch_of_its_connection(
    listener_daemon: Daemon,
) -> None:
    topic = new_topic(listener_daemon, partitions=1)
    conn = Raw(kafka_settings(listener_daemon)["bootstrap_servers"])
    try:
        for i in range(3):
            batch = encode_batch(0, [(b"k", b"v%d" % i, [], 1_000 + i)])
            assert produce_raw(conn, topic, 0, batch)["base_offset"] == i
        first = fetch_raw(conn, topic, 0, 0)
        assert (first["error_code"], first["log_start_offset"]) == (ErrorCode.NONE, 0)
        # Until the partition's directory is no longer freshly changed, every fetch lists
        # it again; after, only a changed mtime does (the path under test).
        directory = Path(DataDir.resolve(listener_daemon.data_dir).partition_dir(1, topic, 0))
        wait_for(
            lambda: time.time_ns() - directory.stat().st_mtime_ns > LISTING_FRESH_NS,
            what="the partition's directory to be older than LISTING_FRESH_NS",
        )
        again = fetch_raw(conn, topic, 0, 0)
        assert (again["error_code"], again["log_start_offset"]) == (ErrorCode.NONE, 0)
        with Admin(listener_daemon.data_dir) as admin:
            admin.delete_records({TopicPartition(topic, 0): 2})
        after = fetch_raw(conn, topic, 0, 0)
        assert after["error_code"] == ErrorCode.OFFSET_OUT_OF_RANGE
        rest = fetch_raw(conn, topic, 0, 2)
        assert (rest["error_code"], rest["log_start_offset"]) == (ErrorCode.NONE, 2)
        assert rest["high_watermark"] == 3 and len(rest["records"]) > 0
    finally:
        conn.close()
