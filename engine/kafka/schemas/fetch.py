"""Fetch and ListOffsets: reading (FetchRequest.json, FetchResponse.json,
ListOffsetsRequest.json, ListOffsetsResponse.json). Fetch sessions (KIP-227) are
declined: a response's session id is 0, so every fetch is a full one."""

from __future__ import annotations

from engine.kafka.codec import F, Type, message

T = Type

FETCH_REQUEST = message("FetchRequest", 1, "4-12", "12+", [
    F("cluster_id", T.STRING, "12+", nullable="12+", tag=0, tagged="12+"),
    F("replica_id", T.INT32, "0-14", default=-1),
    F("max_wait_ms", T.INT32),
    F("min_bytes", T.INT32),
    F("max_bytes", T.INT32, "3+", default=0x7FFFFFFF),
    F("isolation_level", T.INT8, "4+"),
    F("session_id", T.INT32, "7+"),
    F("session_epoch", T.INT32, "7+", default=-1),
    F("topics", [
        F("topic", T.STRING, "0-12"),
        F("partitions", [
            F("partition", T.INT32),
            F("current_leader_epoch", T.INT32, "9+", default=-1),
            F("fetch_offset", T.INT64),
            F("last_fetched_epoch", T.INT32, "12+", default=-1),
            F("log_start_offset", T.INT64, "5+", default=-1),
            F("partition_max_bytes", T.INT32),
        ]),
    ]),
    F("forgotten_topics_data", [
        F("topic", T.STRING, "7-12"),
        F("partitions", T.INT32, "7+", array=True),
    ], "7+"),
    F("rack_id", T.STRING, "11+"),
])  # fmt: skip

FETCH_RESPONSE = message("FetchResponse", 1, "4-12", "12+", [
    F("throttle_time_ms", T.INT32, "1+"),
    F("error_code", T.INT16, "7+"),
    F("session_id", T.INT32, "7+"),
    F("responses", [
        F("topic", T.STRING, "0-12"),
        F("partitions", [
            F("partition_index", T.INT32),
            F("error_code", T.INT16),
            F("high_watermark", T.INT64),
            F("last_stable_offset", T.INT64, "4+", default=-1),
            F("log_start_offset", T.INT64, "5+", default=-1),
            F("current_leader", [
                F("leader_id", T.INT32, "12+", default=-1),
                F("leader_epoch", T.INT32, "12+", default=-1),
            ], "12+", struct=True, tag=1, tagged="12+"),
            F("aborted_transactions", [
                F("producer_id", T.INT64, "4+"),
                F("first_offset", T.INT64, "4+"),
            ], "4+", nullable="4+"),
            F("preferred_read_replica", T.INT32, "11+", default=-1),
            F("records", T.RECORDS, nullable="0+"),
        ]),
    ]),
])  # fmt: skip

LIST_OFFSETS_REQUEST = message("ListOffsetsRequest", 2, "1-7", "6+", [
    F("replica_id", T.INT32),
    F("isolation_level", T.INT8, "2+"),
    F("topics", [
        F("name", T.STRING),
        F("partitions", [
            F("partition_index", T.INT32),
            F("current_leader_epoch", T.INT32, "4+", default=-1),
            F("timestamp", T.INT64),
        ]),
    ]),
])  # fmt: skip

LIST_OFFSETS_RESPONSE = message("ListOffsetsResponse", 2, "1-7", "6+", [
    F("throttle_time_ms", T.INT32, "2+"),
    F("topics", [
        F("name", T.STRING),
        F("partitions", [
            F("partition_index", T.INT32),
            F("error_code", T.INT16),
            F("timestamp", T.INT64, "1+", default=-1),
            F("offset", T.INT64, "1+", default=-1),
            F("leader_epoch", T.INT32, "4+", default=-1),
        ]),
    ]),
])  # fmt: skip
