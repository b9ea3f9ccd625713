"""engine.record_batch: the pure-Python encoder against the C walker and decoder."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import engine._records as _records
from engine.errors import CorruptRecordError
from engine.record import Record, RecordDecoder, decode_headers
from engine.record_batch import (
    BATCH_HEADER_LENGTH,
    BatchCheck,
    BatchProblem,
    ScanStatus,
    check_chunk,
    decode_record_infos,
    empty_batches_before,
    encode_batch,
    encode_empty_batch,
    read_batch_header,
    scan_batches,
    scan_two_batches,
)

Header = tuple[str, bytes]


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    shift = z = 0
    while True:
        byte = buf[pos]
        pos += 1
        z |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return (z >> 1) ^ -(z & 1), pos


def _headers(buf: bytes, position: int, count: int) -> list[Header]:
    out = []
    for _ in range(count):
        key_length, position = _varint(buf, position)
        key = buf[position : position + key_length].decode()
        position += key_length
        value_length, position = _varint(buf, position)
        out.append((key, buf[position : position + value_length]))
        position += value_length
    return out


def _decode(buf: bytes) -> list[tuple[int, int, bytes | None, bytes | None, list[Header]]]:
    """(offset, timestamp, key, value, headers) of every record, through engine_batch_decode."""
    out = []
    for info in decode_record_infos(buf):
        key_length, value_length = int(info["key_length"]), int(info["value_length"])
        kp, vp = int(info["key_position"]), int(info["value_position"])
        out.append(
            (
                int(info["offset"]),
                int(info["timestamp"]),
                None if key_length < 0 else buf[kp : kp + key_length],
                None if value_length < 0 else buf[vp : vp + value_length],
                _headers(buf, int(info["headers_position"]), int(info["header_count"])),
            )
        )
    return out


def test_header_fields_sit_at_kafka_positions() -> None:
    batch = encode_batch(
        1000,
        [(b"k", b"value", [], 5_000), (None, b"v2", [], 7_000)],
        producer_id=42,
        producer_epoch=3,
        base_sequence=9,
        attributes=0x10,
        leader_epoch=7,
    )
    assert struct.unpack_from(">q", batch, 0)[0] == 1000
    assert struct.unpack_from(">i", batch, 8)[0] == len(batch) - 12
    assert struct.unpack_from(">i", batch, 12)[0] == 7  # partition leader epoch
    assert batch[16] == 2  # magic
    assert struct.unpack_from(">h", batch, 21)[0] == 0x10
    assert struct.unpack_from(">i", batch, 23)[0] == 1  # last offset delta
    assert struct.unpack_from(">qq", batch, 27) == (5_000, 7_000)
    assert struct.unpack_from(">qhii", batch, 43) == (42, 3, 9, 2)
    assert read_batch_header(batch) == (1000, 1001, len(batch), 7_000)


def test_encoded_batch_passes_crc_in_engine_batch_scan() -> None:
    batch = encode_batch(5, [(None, b"x" * 100, [("h", b"1")], 1_000), (b"k", None, [], 999)])
    infos, scanned, status = scan_batches(batch, verify_crc=True)
    assert status is ScanStatus.OK and scanned == len(batch)
    (info,) = infos.tolist()
    assert info[:7] == (0, 5, 6, 1_000, len(batch), 2, 0)


def test_scan_stops_at_torn_and_corrupt_batches() -> None:
    one = encode_batch(0, [(None, b"a" * 50, [], 1)])
    two = encode_batch(1, [(None, b"b" * 50, [], 2)])
    infos, scanned, status = scan_batches(one + two[:-1])
    assert (len(infos), scanned, status) == (1, len(one), ScanStatus.TRUNCATED)
    flipped = bytearray(two)
    flipped[-1] ^= 0x01
    infos, scanned, status = scan_batches(one + bytes(flipped))
    assert (len(infos), scanned, status) == (1, len(one), ScanStatus.CORRUPT)
    # Without CRC checks the flipped byte goes unnoticed.
    assert scan_batches(one + bytes(flipped), verify_crc=False)[2] is ScanStatus.OK
    assert scan_batches(b"")[1:] == (0, ScanStatus.OK)
    assert scan_batches(one[: BATCH_HEADER_LENGTH - 1])[2] is ScanStatus.TRUNCATED


def test_scan_accepts_memoryview_and_bytearray_and_limits_batches() -> None:
    data = b"".join(encode_batch(i, [(None, b"v", [], i)]) for i in range(10))
    for buf in (memoryview(data), bytearray(data)):
        infos, scanned, status = scan_batches(buf, max_batches=4)
        assert list(infos["base_offset"]) == [0, 1, 2, 3]
        assert status is ScanStatus.OK and scanned == int(infos["length"][:4].sum())


def test_scanning_two_batches_answers_as_the_numpy_scan_does() -> None:
    one = encode_batch(7, [(b"k", b"a" * 50, [], 1), (None, b"b", [], 3)])
    two = encode_batch(9, [(None, b"c" * 50, [], 2)])
    flipped = bytearray(one)
    flipped[-1] ^= 0x01
    cases = [one, one + two, one + two + one, one + two[:-1], bytes(flipped), b"", one[:30]]
    for buf in cases:
        infos, scanned, status = scan_batches(buf, verify_crc=True, max_batches=2)
        for view in (buf, memoryview(buf)):
            got_status, count, got_scanned, first = scan_two_batches(view)
            assert (got_status, count, got_scanned) == (status, len(infos), scanned)
            if count:
                assert (first.base_offset, first.last_offset, first.records_count,
                        first.attributes, first.length) == (
                    infos[0]["base_offset"], infos[0]["last_offset"],
                    infos[0]["records_count"], infos[0]["attributes"], infos[0]["length"],
                )  # fmt: skip


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one record"):
        encode_batch(0, [])
    with pytest.raises(ValueError, match="compressed"):
        encode_batch(0, [(None, b"v", [], 0)], attributes=1)


def test_decode_of_garbage_records_raises_corrupt() -> None:
    batch = bytearray(encode_batch(0, [(None, b"v" * 10, [], 0)]))
    batch[BATCH_HEADER_LENGTH] = 0x7F  # record length far past the batch
    with pytest.raises(CorruptRecordError):
        decode_record_infos(bytes(batch))


records_strategy = st.lists(
    st.tuples(
        st.none() | st.binary(max_size=40),
        st.none() | st.binary(max_size=300),
        st.lists(st.tuples(st.text(max_size=8), st.binary(max_size=20)), max_size=3),
        st.integers(min_value=0, max_value=2**42),
    ),
    min_size=1,
    max_size=8,
)


@settings(max_examples=150, deadline=None)
@given(base_offset=st.integers(min_value=0, max_value=2**40), records=records_strategy)
def test_encoded_batch_decodes_identically_in_c(
    base_offset: int, records: list[tuple[bytes | None, bytes | None, list[Header], int]]
) -> None:
    batch = encode_batch(base_offset, records)
    infos, scanned, status = scan_batches(batch)
    assert status is ScanStatus.OK and scanned == len(batch)
    assert int(infos["max_timestamp"][0]) == max(r[3] for r in records)
    assert int(infos["records_count"][0]) == len(records)
    assert _decode(batch) == [
        (base_offset + i, ts, key, value, list(headers))
        for i, (key, value, headers, ts) in enumerate(records)
    ]


@settings(max_examples=150, deadline=None)
@given(base_offset=st.integers(min_value=0, max_value=2**40), records=records_strategy,
       skip=st.integers(min_value=0, max_value=3))  # fmt: skip
def test_the_consumer_decoder_makes_the_records_that_were_encoded(
    base_offset: int,
    records: list[tuple[bytes | None, bytes | None, list[Header], int]],
    skip: int,
) -> None:
    """RecordDecoder.decode (Records made in C, engine._records) from min_offset on."""
    batch = encode_batch(base_offset, records)
    got, used = RecordDecoder().decode(b"??" + batch, "t", 3, base_offset + skip, 1000, start=2)
    expected = [
        Record("t", 3, base_offset + i, ts, key, value, list(headers))
        for i, (key, value, headers, ts) in enumerate(records)
    ][skip:]
    assert got == expected and all(type(r) is Record for r in got)
    assert [tuple(r) for r in got] == [tuple(r) for r in expected]
    assert used == 2 + len(batch)
    assert len({id(r.headers) for r in got}) == len(got)  # each record its own list


def test_the_record_builder_refuses_rows_outside_the_chunk() -> None:
    decoder = RecordDecoder()
    batch = encode_batch(0, [(b"key", b"value", [], 1)])
    assert decoder._decode(batch, 0, "t", 0, 0, 10) == 1
    address = decoder._infos_address
    with pytest.raises(ValueError, match="record field outside the chunk"):
        _records.build(batch[:-3], address, 1, "t", 0, decode_headers)
    with pytest.raises(TypeError, match="data: bytes"):
        _records.build(bytearray(batch), address, 1, "t", 0, decode_headers)
    with pytest.raises(ValueError, match="bad rows: count=-1"):
        _records.build(batch, address, -1, "t", 0, decode_headers)
    assert _records.build(batch, address, 1, "t", 0, decode_headers) == [
        Record("t", 0, 0, 1, b"key", b"value", [])
    ]


def test_the_decoder_says_where_the_batches_it_walked_end() -> None:
    """end_offset: past the last batch walked completely, trailing control batches
    (transaction markers) included: the consumer's position after the chunk."""
    data = (
        encode_batch(10, [(b"a", b"1", [], 1), (b"b", b"2", [], 1)])
        + encode_batch(12, [(b"c", b"3", [], 1)])
        + encode_batch(13, [(None, b"\x00\x00\x00\x00\x00\x00", [], 1)], attributes=0x30)
    )
    decoder = RecordDecoder()
    records, used = decoder.decode(data, "t", 0, 0, 100)
    assert [r.offset for r in records] == [10, 11, 12]
    assert (used, decoder.end_offset) == (len(data), 14)
    records, used = decoder.decode(data, "t", 0, 0, 1)  # stops inside the first batch
    assert [r.offset for r in records] == [10] and (used, decoder.end_offset) == (0, -1)
    records, used = decoder.decode(data, "t", 0, 0, 2)  # stops after it
    assert [r.offset for r in records] == [10, 11] and decoder.end_offset == 12
    records, used = decoder.decode(data, "t", 0, 13, 100)  # only the marker is left
    assert records == [] and (used, decoder.end_offset) == (len(data), 14)


# ---- what a reader checks before it delivers (check_chunk) ----------------------------


def _chunk(*bases_and_counts: tuple[int, int]) -> bytes:
    return b"".join(
        encode_batch(base, [(None, b"v%d" % (base + i), [], 1_000 + i) for i in range(count)])
        for base, count in bases_and_counts
    )


def test_batch_problem_codes_are_the_headers() -> None:
    from engine._native import lib

    assert {p.name: p.value for p in BatchProblem} == {
        "SHAPE": lib.ENGINE_BATCH_BAD_SHAPE,
        "CRC": lib.ENGINE_BATCH_BAD_CRC,
        "OFFSETS": lib.ENGINE_BATCH_BAD_OFFSETS,
    }
    assert (lib.ENGINE_BATCH_INTACT, lib.ENGINE_BATCH_BAD_SHAPE, lib.ENGINE_BATCH_BAD_CRC,
            lib.ENGINE_BATCH_BAD_OFFSETS) == (0, 1, 2, 3)  # fmt: skip


def test_check_chunk_finds_the_first_bad_batch_and_says_where() -> None:
    chunk = _chunk((10, 2), (12, 1), (13, 3))
    infos, _, _ = scan_batches(chunk)
    second, third = int(infos["position"][1]), int(infos["position"][2])
    assert check_chunk(chunk, 10, dense=True) is None
    assert check_chunk(chunk, 11, dense=True) is None  # inside the first batch
    damaged = bytearray(chunk)
    damaged[third - 3] ^= 0x40  # a byte of the second batch's record
    assert check_chunk(bytes(damaged), 10) == BatchCheck(BatchProblem.CRC, second, 12, 12, 12)
    assert check_chunk(bytes(damaged), 10, crc=False) is None
    damaged = bytearray(chunk)
    struct.pack_into(">q", damaged, third, 99)  # the third's base offset (no CRC covers it)
    assert check_chunk(bytes(damaged), 10, dense=True) == BatchCheck(
        BatchProblem.OFFSETS, third, 13, 99, 101
    )
    assert check_chunk(bytes(damaged), 10, dense=False) is None  # a gap, in a ring
    struct.pack_into(">q", damaged, third, 11)  # back below the one before it
    assert check_chunk(bytes(damaged), 10, dense=False).problem is BatchProblem.OFFSETS
    assert check_chunk(chunk[:-1], 10) == BatchCheck(BatchProblem.SHAPE, third, 13, 13, -1)
    damaged = bytearray(chunk)
    damaged[second + 16] = 1  # magic
    assert check_chunk(bytes(damaged), 10).problem is BatchProblem.SHAPE


def test_check_chunk_wants_the_offset_asked_for_in_the_first_batch() -> None:
    chunk = _chunk((10, 2), (12, 1))
    bad = check_chunk(chunk, 9, dense=True)  # 9 is in no batch: skipped in a dense log
    assert bad is not None and (bad.problem, bad.position, bad.expected_offset) == (
        BatchProblem.OFFSETS, 0, 9
    )
    assert check_chunk(chunk, 9, dense=False) is None  # a gap before it, in a ring
    assert check_chunk(chunk, 12, dense=False).problem is BatchProblem.OFFSETS  # behind
    assert check_chunk(b"", 5) is None


def test_an_empty_batch_covers_offsets_with_no_record() -> None:
    empty = encode_empty_batch(7, 3, leader_epoch=4, timestamp=1_234)
    assert len(empty) == BATCH_HEADER_LENGTH
    infos, scanned, status = scan_batches(empty)  # CRC checked
    assert status is ScanStatus.OK and scanned == len(empty)
    assert infos[["base_offset", "last_offset", "records_count", "max_timestamp"]].tolist() == [
        (7, 9, 0, 1_234)
    ]
    assert decode_record_infos(empty).tolist() == []
    assert check_chunk(empty + _chunk((10, 1)), 8, dense=True) is None
    follows = _chunk((20, 1))
    assert empty_batches_before(follows, 0, 20) == []
    assert empty_batches_before(follows, 0, 10) == [
        encode_empty_batch(10, 10, leader_epoch=0, timestamp=1_000)
    ]
    with pytest.raises(ValueError, match="offset_count=0"):
        encode_empty_batch(7, 0, leader_epoch=0, timestamp=0)


def test_a_record_is_its_seven_fields_made_on_first_read_and_then_lets_its_chunk_go() -> None:
    """The consumer's Record (C, engine._records): offset and timestamp are there at
    once; key, value and headers are made on the first read of any of them, after which
    the record no longer holds the chunk (a record kept after reading it does not keep
    fetch_max_bytes alive). It is also the 7-tuple of its fields."""
    import pickle
    import sys

    chunk = encode_batch(10, [(b"k%d" % i, b"v%d" % i, [("h", b"x")] if i == 1 else [], 5)
                              for i in range(3)])  # fmt: skip
    decoder = RecordDecoder()
    before = sys.getrefcount(chunk)
    got, _ = decoder.decode(chunk, "t", 2, 0, 100)
    assert sys.getrefcount(chunk) == before + 3  # each holds the chunk, nothing copied
    assert [r.offset for r in got] == [10, 11, 12] and got[0].timestamp == 5
    assert sys.getrefcount(chunk) == before + 3  # numbers are not fields to make
    assert got[1].value == b"v1" and got[1].headers == [("h", b"x")]
    assert sys.getrefcount(chunk) == before + 2  # read: it let the chunk go
    r = got[1]
    assert tuple(r) == ("t", 2, 11, 5, b"k1", b"v1", [("h", b"x")])
    assert r == ("t", 2, 11, 5, b"k1", b"v1", [("h", b"x")]) and r != got[0]
    assert (r[0], r[-1], r[4:6], len(r)) == ("t", [("h", b"x")], (b"k1", b"v1"), 7)
    topic, partition, offset, timestamp, key, value, headers = got[2]
    assert (key, value, headers) == (b"k2", b"v2", [])
    assert pickle.loads(pickle.dumps(r)) == r
    assert r._asdict()["value"] == b"v1"
    assert "offset=11" in repr(r) and "value=b'v1'" in repr(r)
    with pytest.raises(TypeError, match="unhashable"):  # headers are a list, as before
        hash(r)
    del got, r, topic, partition, offset, timestamp, key, value, headers
    assert sys.getrefcount(chunk) == before


def test_reading_values_makes_nothing_the_cyclic_gc_tracks() -> None:
    """A record without headers makes its empty headers list only when headers is read:
    a list is tracked by the cyclic GC, and one per record read made collections of the
    young generation (and of the older ones its survivors reach) a fifth of a poll.
    Each record still gets a list of its own."""
    import gc

    chunk = encode_batch(0, [(b"k", b"v%d" % i, [], 5) for i in range(1000)])
    got, _ = RecordDecoder().decode(chunk, "t", 0, 0, 1000)
    gc.disable()
    try:
        tracked_before = gc.get_count()[0]
        values = [r.value for r in got]
        made = gc.get_count()[0] - tracked_before
    finally:
        gc.enable()
    assert values[999] == b"v999" and made < 10
    first, second = got[0].headers, got[1].headers
    assert first == [] and second == [] and first is not second
    first.append(("h", b"x"))
    assert got[0].headers == [("h", b"x")] and got[1].headers == []
    assert tuple(got[2]) == ("t", 0, 2, 5, b"k", b"v2", [])
