"""The producer's batch builder (engine._send.BatchBuilder, native/send.c): records encoded
in Kafka's format as they are sent, appended to a ring as one batch."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator

import pytest

from engine._send import BatchBuilder
from engine.record import RecordDecoder, encode_headers
from engine.record_batch import scan_batches
from engine.ring import NO_LIMIT, OK, Cursor, Ring, producer_fields, unlink


@pytest.fixture
def ring() -> Iterator[Ring]:
    name = f"/engine-test-builder-{uuid.uuid4().hex[:8]}"
    r = Ring.create(name, 1 << 16)
    try:
        yield r
    finally:
        r.close()
        with contextlib.suppress(FileNotFoundError):
            unlink(name)


def read_back(ring: Ring) -> bytes:
    buf = bytearray(1 << 16)
    code, n = ring.read(Cursor(), buf, NO_LIMIT)
    assert code == OK
    return bytes(buf[:n])


def test_a_builder_appends_the_batch_the_ring_would_have_encoded(ring: Ring) -> None:
    """Keys, values (nulls too), headers and timestamps go into the builder as they come;
    appended as one batch, they decode to what was added, with offsets from the claim."""
    h, hc = encode_headers([("trace", b"abc"), ("n", b"")])
    records = [(b"k0", b"v0", None, 0, 1000), (None, b"v1", h, hc, 1003),
               (b"k2", None, None, 0, 999), (b"", b"", None, 0, 1010)]  # fmt: skip
    b = BatchBuilder(1 << 16)
    assert [b.add(*r) for r in records] == [0, 1, 2, 3]
    assert (b.count, b.base_timestamp, b.max_timestamp) == (4, 1000, 1010)
    ring.append(producer_fields(), b"before")  # the batch's offsets follow the claim
    assert ring.append_encoded(producer_fields(), b, 1000) == 1
    data = read_back(ring)
    infos, scanned, _ = scan_batches(data, verify_crc=True)
    assert scanned == len(data) and [int(i["base_offset"]) for i in infos] == [0, 1]
    got, _ = RecordDecoder().decode(data, "t", 0, 1, 10)
    assert [(r.offset, r.key, r.value, r.timestamp) for r in got] == [
        (1, b"k0", b"v0", 1000), (2, None, b"v1", 1003), (3, b"k2", None, 999), (4, b"", b"", 1010)
    ]  # fmt: skip
    assert got[1].headers == [("trace", b"abc"), ("n", b"")]


def test_a_builder_stops_at_its_limit_and_its_tail_sends_the_rest_again(ring: Ring) -> None:
    b = BatchBuilder(100)
    assert b.add(None, b"x" * 500, None, 0, 5) == 0  # the first record is always taken
    assert b.add(None, b"y", None, 0, 6) == -1 and b.count == 1
    b = BatchBuilder(1000)
    for i in range(5):
        assert b.add(b"k%d" % i, b"v%d" % i, None, 0, 100 + i) == i
    tail = b.tail(3)  # records 3 and 4, deltas counted anew
    assert (tail.count, tail.base_timestamp) == (2, 103)
    assert ring.append_encoded(producer_fields(), tail, 1000) == 0
    got, _ = RecordDecoder().decode(read_back(ring), "t", 0, 0, 10)
    assert [(r.offset, r.key, r.timestamp) for r in got] == [(0, b"k3", 103), (1, b"k4", 104)]
    with pytest.raises(ValueError, match="k=5 of 5"):
        b.tail(5)


def test_a_sealed_builder_or_one_whose_buffer_is_held_takes_no_record() -> None:
    """The sender appends a closed batch while the C send path may be adding to another:
    a sealed builder, or one whose buffer a reader holds, refuses (the buffer must not
    move under the ring's copy)."""
    b = BatchBuilder(1000)
    b.add(None, b"a", None, 0, 1)
    view = memoryview(b)
    assert bytes(view) and len(view) == b.size
    with pytest.raises(BufferError):
        b.add(None, b"b", None, 0, 2)
    view.release()
    assert b.add(None, b"b", None, 0, 2) == 1
    b.seal()
    with pytest.raises(BufferError):
        b.add(None, b"c", None, 0, 3)
