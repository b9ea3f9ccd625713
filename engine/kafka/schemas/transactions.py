"""Transactions: AddPartitionsToTxn, AddOffsetsToTxn, EndTxn, TxnOffsetCommit
(AddPartitionsToTxnRequest.json, AddOffsetsToTxnRequest.json, EndTxnRequest.json,
TxnOffsetCommitRequest.json and their responses). InitProducerId is in produce.py.

Only the versions clients send are served: AddPartitionsToTxn v4+ is broker to broker
(KIP-890's verification), and v4+ of the others add TRANSACTION_ABORTABLE only."""

from __future__ import annotations

from engine.kafka.codec import F, Type, message

T = Type

ADD_PARTITIONS_TO_TXN_REQUEST = message("AddPartitionsToTxnRequest", 24, "0-3", "3+", [
    F("transactional_id", T.STRING),
    F("producer_id", T.INT64),
    F("producer_epoch", T.INT16),
    F("topics", [
        F("name", T.STRING),
        F("partitions", T.INT32, array=True),
    ]),
])  # fmt: skip

ADD_PARTITIONS_TO_TXN_RESPONSE = message("AddPartitionsToTxnResponse", 24, "0-3", "3+", [
    F("throttle_time_ms", T.INT32),
    F("results", [
        F("name", T.STRING),
        F("results", [
            F("partition_index", T.INT32),
            F("error_code", T.INT16),
        ]),
    ]),
])  # fmt: skip

ADD_OFFSETS_TO_TXN_REQUEST = message("AddOffsetsToTxnRequest", 25, "0-3", "3+", [
    F("transactional_id", T.STRING),
    F("producer_id", T.INT64),
    F("producer_epoch", T.INT16),
    F("group_id", T.STRING),
])  # fmt: skip

ADD_OFFSETS_TO_TXN_RESPONSE = message("AddOffsetsToTxnResponse", 25, "0-3", "3+", [
    F("throttle_time_ms", T.INT32),
    F("error_code", T.INT16),
])  # fmt: skip

END_TXN_REQUEST = message("EndTxnRequest", 26, "0-3", "3+", [
    F("transactional_id", T.STRING),
    F("producer_id", T.INT64),
    F("producer_epoch", T.INT16),
    F("committed", T.BOOL),
])  # fmt: skip

END_TXN_RESPONSE = message("EndTxnResponse", 26, "0-3", "3+", [
    F("throttle_time_ms", T.INT32),
    F("error_code", T.INT16),
])  # fmt: skip

TXN_OFFSET_COMMIT_REQUEST = message("TxnOffsetCommitRequest", 28, "0-3", "3+", [
    F("transactional_id", T.STRING),
    F("group_id", T.STRING),
    F("producer_id", T.INT64),
    F("producer_epoch", T.INT16),
    F("generation_id", T.INT32, "3+", default=-1),
    F("member_id", T.STRING, "3+", default=""),
    F("group_instance_id", T.STRING, "3+", nullable="3+"),
    F("topics", [
        F("name", T.STRING),
        F("partitions", [
            F("partition_index", T.INT32),
            F("committed_offset", T.INT64),
            F("committed_leader_epoch", T.INT32, "2+", default=-1),
            F("committed_metadata", T.STRING, nullable="0+"),
        ]),
    ]),
])  # fmt: skip

TXN_OFFSET_COMMIT_RESPONSE = message("TxnOffsetCommitResponse", 28, "0-3", "3+", [
    F("throttle_time_ms", T.INT32),
    F("topics", [
        F("name", T.STRING),
        F("partitions", [
            F("partition_index", T.INT32),
            F("error_code", T.INT16),
        ]),
    ]),
])  # fmt: skip
