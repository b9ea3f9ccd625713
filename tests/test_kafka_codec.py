"""The Kafka wire codec (engine.kafka.codec) against bytes written out by hand from Kafka's
protocol guide: classic and compact (flexible) forms, tagged fields, headers."""

from __future__ import annotations

import struct

import pytest

from engine.errors import KafkaProtocolError
from engine.kafka import codec, schemas
from engine.kafka.codec import F, Type, message

API_VERSIONS = schemas.APIS[schemas.API_VERSIONS]
FETCH = schemas.APIS[schemas.FETCH]
METADATA = schemas.APIS[schemas.METADATA]


def test_api_versions_v0_response_is_classic_and_v3_compact() -> None:
    body = {"error_code": 0, "api_keys": [{"api_key": 18, "min_version": 0, "max_version": 3}]}
    # v0: int16 error, int32 count, then (int16, int16, int16) per API.
    assert bytes(codec.encode(API_VERSIONS.response, 0, body)) == struct.pack(
        ">hihhh", 0, 1, 18, 0, 3
    )
    # v3: count as uvarint n+1, each struct then an empty tagged section, the
    # throttle time, and the message's own empty tagged section.
    assert bytes(codec.encode(API_VERSIONS.response, 3, body)) == (
        struct.pack(">h", 0) + b"\x02" + struct.pack(">hhh", 18, 0, 3) + b"\x00"
        + struct.pack(">i", 0) + b"\x00"
    )  # fmt: skip


def test_nullable_and_compact_strings() -> None:
    request = {"topics": [{"name": "ab"}], "allow_auto_topic_creation": True}
    # Metadata v1: int32 count, int16 length + bytes; a null array is -1.
    assert bytes(codec.encode(METADATA.request, 1, request)) == (
        struct.pack(">ih", 1, 2) + b"ab"
    )
    assert bytes(codec.encode(METADATA.request, 1, {"topics": None})) == struct.pack(">i", -1)
    # v9 (flexible): compact array and string (length + 1), tagged sections.
    assert bytes(codec.encode(METADATA.request, 9, request)) == (
        b"\x02" + b"\x03ab" + b"\x00" + b"\x01" + b"\x00\x00" + b"\x00"
    )
    assert codec.decode(METADATA.request, 9, b"\x00\x01\x00\x00\x00")["topics"] is None


def test_a_tagged_field_is_written_only_when_set_and_an_unknown_tag_is_skipped() -> None:
    msg = message("T", 99, "0-1", "1+", [
        F("a", Type.INT32),
        F("b", Type.INT64, "1+", default=-1, tag=5, tagged="1+"),
    ])  # fmt: skip
    assert bytes(codec.encode(msg, 1, {"a": 7})) == struct.pack(">i", 7) + b"\x00"
    assert bytes(codec.encode(msg, 1, {"a": 7, "b": 9})) == (
        struct.pack(">i", 7) + b"\x01\x05\x08" + struct.pack(">q", 9)
    )
    unknown = struct.pack(">i", 7) + b"\x02\x03\x01\xff\x05\x08" + struct.pack(">q", 9)
    assert codec.decode(msg, 1, unknown) == {"a": 7, "b": 9}


def test_fetch_v12_response_carries_current_leader_as_a_tagged_struct() -> None:
    response = {"responses": [{"topic": "t", "partitions": [{
        "partition_index": 0, "high_watermark": 3, "records": b"xyz",
        "current_leader": {"leader_id": 2, "leader_epoch": 4},
    }]}]}  # fmt: skip
    raw = codec.encode(FETCH.response, 12, response)
    back = codec.decode(FETCH.response, 12, raw)
    partition = back["responses"][0]["partitions"][0]
    assert partition["current_leader"] == {"leader_id": 2, "leader_epoch": 4}
    assert bytes(partition["records"]) == b"xyz"
    assert partition["aborted_transactions"] is None
    # The same at v11: no tagged fields, and the struct is not written.
    back = codec.decode(FETCH.response, 11, codec.encode(FETCH.response, 11, response))
    assert back["responses"][0]["partitions"][0]["current_leader"] is None


def test_request_header_v2_skips_its_tagged_fields() -> None:
    frame = struct.pack(">hhih", 3, 12, 42, 3) + b"cli" + b"\x01\x00\x01\x00" + b"rest"
    header = codec.read_request_header(frame, flexible=True)
    assert (header.api_key, header.api_version, header.correlation_id) == (3, 12, 42)
    assert header.client_id == "cli" and frame[header.body_position :] == b"rest"
    assert codec.response_header(42, flexible=True) == struct.pack(">i", 42) + b"\x00"


def test_truncated_or_impossible_input_raises_a_protocol_error() -> None:
    with pytest.raises(KafkaProtocolError, match="ends inside a field"):
        codec.decode(METADATA.request, 1, struct.pack(">ih", 1, 5) + b"ab")
    with pytest.raises(KafkaProtocolError, match="may not be null"):
        codec.decode(METADATA.request, 9, b"\x02\x00\x00\x01\x00\x00")  # a null name at v9
    with pytest.raises(KafkaProtocolError, match="shorter than its header"):
        codec.peek_request_ids(b"\x00\x03")


def test_every_served_api_round_trips_its_defaults_at_every_version() -> None:
    for api in schemas.APIS.values():
        for version in range(api.min_version, api.max_version + 1):
            for msg in (api.request, api.response):
                raw = codec.encode(msg, version, {})
                assert codec.encode(msg, version, codec.decode(msg, version, raw)) == raw, (
                    msg.name,
                    version,
                )
