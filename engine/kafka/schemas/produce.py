"""Produce and InitProducerId: writing (ProduceRequest.json, ProduceResponse.json,
InitProducerIdRequest.json, InitProducerIdResponse.json)."""

from __future__ import annotations

from engine.kafka.codec import F, Type, message

T = Type

PRODUCE_REQUEST = message("ProduceRequest", 0, "3-9", "9+", [
    F("transactional_id", T.STRING, "3+", nullable="3+"),
    F("acks", T.INT16),
    F("timeout_ms", T.INT32),
    F("topic_data", [
        F("name", T.STRING),
        F("partition_data", [
            F("index", T.INT32),
            F("records", T.RECORDS, nullable="0+"),
        ]),
    ]),
])  # fmt: skip

PRODUCE_RESPONSE = message("ProduceResponse", 0, "3-9", "9+", [
    F("responses", [
        F("name", T.STRING),
        F("partition_responses", [
            F("index", T.INT32),
            F("error_code", T.INT16),
            F("base_offset", T.INT64),
            F("log_append_time_ms", T.INT64, "2+", default=-1),
            F("log_start_offset", T.INT64, "5+", default=-1),
            F("record_errors", [
                F("batch_index", T.INT32, "8+"),
                F("batch_index_error_message", T.STRING, "8+", nullable="8+"),
            ], "8+"),
            F("error_message", T.STRING, "8+", nullable="8+"),
        ]),
    ]),
    F("throttle_time_ms", T.INT32, "1+"),
])  # fmt: skip

INIT_PRODUCER_ID_REQUEST = message("InitProducerIdRequest", 22, "0-4", "2+", [
    F("transactional_id", T.STRING, nullable="0+"),
    F("transaction_timeout_ms", T.INT32),
    F("producer_id", T.INT64, "3+", default=-1),
    F("producer_epoch", T.INT16, "3+", default=-1),
])  # fmt: skip

INIT_PRODUCER_ID_RESPONSE = message("InitProducerIdResponse", 22, "0-4", "2+", [
    F("throttle_time_ms", T.INT32),
    F("error_code", T.INT16),
    F("producer_id", T.INT64, default=-1),
    F("producer_epoch", T.INT16),
])  # fmt: skip
