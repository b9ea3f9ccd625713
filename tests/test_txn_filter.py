"""read_committed: the batch filter (engine.txn_filter) and the Consumer that uses it."""

from __future__ import annotations

import logging
import struct
import time
import uuid
from collections.abc import Iterator

import pytest
from engine_harness import Daemon
from hypothesis import given, settings
from hypothesis import strategies as st

import engine.consumer
from engine import Admin, ConfigError, Consumer, CorruptRecordError, Producer, TopicPartition
from engine.cluster import ClusterView
from engine.record_batch import encode_batch, read_batch_header
from engine.ring import Ring
from engine.txn_filter import ABORT, COMMIT, ReadCommitted

TXN, MARKER = 0x10, 0x30


def data(base: int, n: int = 1, pid: int = -1, epoch: int = -1, txn: bool = False) -> bytes:
    """A batch of ``n`` records at ``base``; transactional when ``txn``."""
    records = [(None, b"v%d" % (base + i), [], 1000 + base + i) for i in range(n)]
    return encode_batch(
        base, records, producer_id=pid, producer_epoch=epoch, attributes=TXN if txn else 0
    )


def marker(base: int, pid: int, epoch: int, kind: int) -> bytes:
    """A transaction marker: a control batch of one control record."""
    key = struct.pack(">hh", 0, kind)
    value = struct.pack(">hi", 0, 5)  # version, coordinator epoch
    return encode_batch(
        base, [(key, value, [], 2000)], producer_id=pid, producer_epoch=epoch, attributes=MARKER
    )


def bases(chunk: bytes) -> list[int]:
    """The base offsets of the batches in ``chunk``."""
    out, pos = [], 0
    while pos < len(chunk):
        header = read_batch_header(chunk, pos)
        out.append(header.base_offset)
        pos += header.length
    return out


def fed(*batches: bytes, start: int = 0) -> ReadCommitted:
    f = ReadCommitted(start)
    f.feed(b"".join(batches))
    return f


# -- the filter --------------------------------------------------------------


def test_non_transactional_batches_are_delivered_at_once_untouched() -> None:
    chunk = data(0, 3) + data(3) + data(4, 2)
    f = fed(chunk)
    out, end = f.take()
    assert out == chunk
    assert end == f.next_offset == 6
    assert f.take() == (b"", 6)
    assert f.buffered_bytes == 0


def test_committed_transaction_is_delivered_at_its_marker() -> None:
    f = fed(data(0, 2, pid=7, epoch=0, txn=True), data(2, pid=7, epoch=0, txn=True))
    assert f.take() == (b"", 0)
    assert f.next_offset == 3
    assert f.buffered_bytes > 0
    f.feed(marker(3, 7, 0, COMMIT))
    out, end = f.take()
    assert out == data(0, 2, pid=7, epoch=0, txn=True) + data(2, pid=7, epoch=0, txn=True)
    assert end == 4
    assert f.buffered_bytes == 0


def test_aborted_transaction_is_dropped_and_take_moves_past_it() -> None:
    f = fed(data(0, 2, pid=7, epoch=0, txn=True), marker(2, 7, 0, ABORT))
    assert f.take() == (b"", 3)
    f.feed(data(3))
    assert f.take() == (data(3), 4)


def test_interleaved_producers_are_decided_each_by_its_own_marker() -> None:
    f = fed(
        data(0, pid=1, epoch=0, txn=True),
        data(1, pid=2, epoch=0, txn=True),
        data(2, pid=1, epoch=0, txn=True),
        data(3, pid=2, epoch=0, txn=True),
        marker(4, 2, 0, ABORT),
    )
    assert f.take() == (b"", 0)  # producer 1's transaction, first, is still open
    f.feed(marker(5, 1, 0, COMMIT))
    out, end = f.take()
    assert bases(out) == [0, 2]
    assert end == 6


def test_non_transactional_batch_behind_an_open_transaction_is_held_back() -> None:
    f = fed(data(0), data(1, pid=7, epoch=0, txn=True), data(2), data(3))
    out, end = f.take()
    assert bases(out) == [0]
    assert end == 1  # the last stable offset: the open transaction's first offset
    assert f.next_offset == 4
    f.feed(marker(4, 7, 0, ABORT))
    out, end = f.take()
    assert bases(out) == [2, 3]
    assert end == 5


def test_zombie_batch_after_a_higher_epoch_marker_is_dropped_at_once() -> None:
    f = fed(marker(0, 7, 3, ABORT), data(1, pid=7, epoch=2, txn=True), data(2))
    out, end = f.take()
    assert bases(out) == [2]
    assert end == 3
    assert f.buffered_bytes == 0
    f.feed(data(3, pid=7, epoch=3, txn=True))  # the same epoch: a new transaction, open
    assert f.take() == (b"", 3)


def test_marker_of_a_lower_epoch_leaves_a_newer_batch_undecided() -> None:
    f = fed(data(0, pid=7, epoch=4, txn=True), marker(1, 7, 3, COMMIT))
    assert f.take() == (b"", 0)
    f.feed(marker(2, 7, 4, COMMIT))
    assert f.take() == (data(0, pid=7, epoch=4, txn=True), 3)


def test_marker_without_pending_batches_is_skipped() -> None:
    f = fed(data(0), marker(1, 9, 0, COMMIT), marker(2, 9, 0, ABORT), data(3))
    out, end = f.take()
    assert bases(out) == [0, 3]
    assert end == 4


def test_other_control_batches_are_dropped_and_decide_nothing() -> None:
    f = fed(data(0, pid=7, epoch=0, txn=True), marker(1, 7, 0, kind=5))
    assert f.take() == (b"", 0)
    f.feed(marker(2, 7, 0, COMMIT))
    assert bases(f.take()[0]) == [0]


def test_take_end_offset_moves_over_dropped_batches_and_markers() -> None:
    f = ReadCommitted(10)
    assert f.take() == (b"", 10)
    f.feed(data(10, 5, pid=1, epoch=0, txn=True) + marker(15, 1, 0, ABORT))
    assert f.take() == (b"", 16)
    f.feed(marker(16, 2, 0, COMMIT))
    assert f.take() == (b"", 17)
    f.skip_to(20)  # a gap in the log
    assert f.take() == (b"", 20)
    assert f.next_offset == 20


def test_a_fetch_from_inside_a_batch_keeps_the_start_offset() -> None:
    f = ReadCommitted(5)
    f.feed(data(3, 4, pid=1, epoch=0, txn=True))  # offsets 3-6: the one holding 5
    assert f.take() == (b"", 5)
    f.feed(data(0, 3) + marker(7, 1, 0, COMMIT))  # wholly below next_offset: ignored
    out, end = f.take()
    assert bases(out) == [3]
    assert end == 8


def test_a_truncated_or_foreign_chunk_is_corrupt() -> None:
    with pytest.raises(CorruptRecordError):
        ReadCommitted(0).feed(data(0)[:-1])
    bad = bytearray(data(0))
    bad[16] = 1  # magic 1
    with pytest.raises(CorruptRecordError):
        ReadCommitted(0).feed(bytes(bad))


# One event of a partition: ("data", pid or -1) or ("marker", pid, epoch, kind).
_event = st.one_of(
    st.tuples(st.just("data"), st.integers(-1, 2), st.integers(0, 2)),
    st.tuples(st.just("marker"), st.integers(0, 2), st.integers(0, 2), st.sampled_from([0, 1])),
)


def _expected(events: list[tuple]) -> tuple[list[int], int]:
    """The rules, applied by looking ahead: (delivered base offsets, stable end)."""
    delivered: list[int] = []
    for offset, event in enumerate(events):
        if event[0] == "marker":
            continue
        _, pid, epoch = event
        if pid < 0:
            fate = "deliver"
        elif any(e[0] == "marker" and e[1] == pid and e[2] > epoch for e in events[:offset]):
            fate = "drop"
        else:
            later = [
                e
                for e in events[offset + 1 :]
                if e[0] == "marker" and e[1] == pid and e[2] >= epoch
            ]
            fate = "open" if not later else ("deliver" if later[0][3] == COMMIT else "drop")
        if fate == "open":
            return delivered, offset
        if fate == "deliver":
            delivered.append(offset)
    return delivered, len(events)


def _encode(offset: int, event: tuple) -> bytes:
    if event[0] == "marker":
        return marker(offset, event[1], event[2], event[3])
    _, pid, epoch = event
    return data(offset) if pid < 0 else data(offset, pid=pid, epoch=epoch, txn=True)


@settings(max_examples=300, deadline=None)
@given(events=st.lists(_event, max_size=30), cuts=st.lists(st.integers(0, 30), max_size=6))
def test_any_chunking_delivers_what_the_rules_say(events: list[tuple], cuts: list[int]) -> None:
    batches = [_encode(offset, event) for offset, event in enumerate(events)]
    f = ReadCommitted(0)
    out = b""
    previous_end = 0
    for lo, hi in zip([0, *sorted(cuts)], [*sorted(cuts), len(batches)], strict=True):
        f.feed(b"".join(batches[lo:hi]))
        got, end = f.take()
        out += got
        assert end >= previous_end
        previous_end = end
    delivered, end = _expected(events)
    assert bases(out) == delivered
    assert out == b"".join(batches[i] for i in delivered)  # untouched bytes
    assert previous_end == end
    assert f.next_offset == len(events)


# -- the consumer, end to end ---------------------------------------------------
#
# The batches are appended as they are, offsets included, into the partition leader's
# ring with Ring.append_raw (a follower's fetcher uses it); the broker drains them into
# segments untouched, as it would a transactional producer's.


@pytest.fixture
def one_partition(admin: Admin) -> Iterator[str]:
    name = f"rc-{uuid.uuid4().hex[:8]}"
    admin.create_topic(name, partitions=1)
    yield name
    admin.delete_topic(name)


class Appender:
    """Appends hand-built batches at the leader ring's log end."""

    def __init__(self, data_dir: str, topic: str) -> None:
        self._cluster = ClusterView(data_dir)
        self.ring: Ring = self._cluster.topic(topic).rings[0]

    def end(self) -> int:
        return self.ring.status().tail_offset

    def data(self, n: int = 1, pid: int = -1, epoch: int = -1) -> list[int]:
        base = self.end()
        self.ring.append_raw(data(base, n, pid, epoch, txn=pid >= 0), timeout_ms=10_000)
        return list(range(base, base + n))

    def marker(self, pid: int, epoch: int, kind: int) -> None:
        self.ring.append_raw(marker(self.end(), pid, epoch, kind), timeout_ms=10_000)

    def close(self) -> None:
        self._cluster.close()


@pytest.fixture
def appender(shared_daemon: Daemon, one_partition: str) -> Iterator[Appender]:
    a = Appender(str(shared_daemon.data_dir), one_partition)
    yield a
    a.close()


def poll_until(c: Consumer, want: int, timeout: float = 10.0) -> list[int]:
    """Offsets polled until ``want`` records came (or the deadline passed)."""
    got: list[int] = []
    deadline = time.monotonic() + timeout
    while len(got) < want and time.monotonic() < deadline:
        got += [r.offset for r in c.poll(timeout=0.2)]
    return got


def test_read_committed_consumer_sees_committed_records_in_offset_order(
    shared_daemon: Daemon, one_partition: str, appender: Appender
) -> None:
    tp = TopicPartition(one_partition, 0)
    kw = {"data_dir": shared_daemon.data_dir, "auto_offset_reset": "earliest"}
    with Consumer(isolation_level="read_committed", **kw) as c, Consumer(**kw) as raw:
        c.assign([tp])
        raw.assign([tp])
        before = appender.data()
        open_txn = appender.data(2, pid=7, epoch=0)
        behind = appender.data()
        assert poll_until(c, 1) == before
        assert c.poll(timeout=0.3) == []  # the rest waits behind the open transaction
        assert c.position(tp) == open_txn[0]
        assert poll_until(raw, 4) == before + open_txn + behind  # read_uncommitted: all
        appender.marker(7, 0, COMMIT)
        assert raw.poll(timeout=0.3) == []
        assert raw.position(tp) == behind[-1] + 2  # read_uncommitted moves past markers too
        assert poll_until(c, 3) == open_txn + behind
        assert c.position(tp) == behind[-1] + 2  # past the marker
        aborted = appender.data(3, pid=8, epoch=0)
        appender.marker(8, 0, ABORT)
        assert c.poll(timeout=0.3) == []
        assert c.position(tp) == aborted[-1] + 2  # moved over what was dropped
        after = appender.data()
        assert poll_until(c, 1) == after
        assert poll_until(raw, 4) == aborted + after  # markers skipped


def test_read_committed_poll_values_filters_the_same_way(
    shared_daemon: Daemon, one_partition: str, appender: Appender
) -> None:
    tp = TopicPartition(one_partition, 0)
    with Consumer(
        data_dir=shared_daemon.data_dir,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
    ) as c:
        c.assign([tp])
        appender.data(2, pid=1, epoch=0)  # v0, v1: aborted
        appender.data(1, pid=2, epoch=0)  # v2: committed
        appender.marker(1, 0, ABORT)
        appender.marker(2, 0, COMMIT)
        values: list[bytes] = []
        deadline = time.monotonic() + 10
        while len(values) < 1 and time.monotonic() < deadline:
            for arr in c.poll_values(2, timeout=0.2):
                values += [row.tobytes() for row in arr]
        assert values == [b"v2"]
        assert c.position(tp) == 5


def test_committed_offset_stops_at_an_open_transaction_and_a_restart_rereads_it(
    shared_daemon: Daemon, one_partition: str, appender: Appender
) -> None:
    tp = TopicPartition(one_partition, 0)
    group = f"rc-{uuid.uuid4().hex[:8]}"
    kw = {
        "data_dir": shared_daemon.data_dir,
        "group_id": group,
        "auto_offset_reset": "earliest",
        "isolation_level": "read_committed",
    }
    appender.data()
    open_txn = appender.data(2, pid=3, epoch=0)
    appender.data()
    with Consumer(one_partition, **kw) as c:
        assert poll_until(c, 1) == [0]
        assert c.poll(timeout=0.3) == []
        c.commit()
        assert c.committed(tp) == open_txn[0]
    appender.marker(3, 0, COMMIT)
    with Consumer(one_partition, **kw) as c:  # resumes from the committed offset
        assert poll_until(c, 3) == [1, 2, 3]
        c.commit()
        assert c.committed(tp) == 5


def test_seek_restarts_the_filter_at_the_new_position(
    shared_daemon: Daemon, one_partition: str, appender: Appender
) -> None:
    tp = TopicPartition(one_partition, 0)
    appender.data(2, pid=4, epoch=0)
    appender.marker(4, 0, COMMIT)
    appender.data(2)
    with Consumer(data_dir=shared_daemon.data_dir, isolation_level="read_committed") as c:
        c.assign([tp])
        c.seek(tp, 1)
        assert poll_until(c, 3) == [1, 3, 4]
        c.seek(tp, 0)
        assert poll_until(c, 4) == [0, 1, 3, 4]


def test_a_partition_stops_fetching_when_undecided_batches_pass_the_bound(
    shared_daemon: Daemon,
    one_partition: str,
    appender: Appender,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(engine.consumer, "MAX_UNDECIDED_BYTES", 1000)
    tp = TopicPartition(one_partition, 0)
    for _ in range(20):
        appender.data(pid=5, epoch=0)
    with Consumer(
        data_dir=shared_daemon.data_dir,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
    ) as c:
        c.assign([tp])
        with caplog.at_level(logging.WARNING, logger="engine.consumer"):
            assert c.poll(timeout=0.3) == []
            appender.marker(5, 0, COMMIT)
            assert c.poll(timeout=0.3) == []  # the marker is not even read
        assert c.position(tp) == 0
        stops = [r for r in caplog.records if "stops fetching" in r.getMessage()]
        assert len(stops) == 1  # said once, not at every poll
        monkeypatch.setattr(engine.consumer, "MAX_UNDECIDED_BYTES", 1 << 20)
        c.seek(tp, 0)
        assert poll_until(c, 20) == list(range(20))


def test_read_committed_reads_segments_after_the_ring_wrapped(
    shared_daemon: Daemon, admin: Admin
) -> None:
    """A transaction longer than a 64 KiB ring: the consumer reads it back from segments."""
    name = f"rw-{uuid.uuid4().hex[:8]}"
    admin.create_topic(
        name, partitions=1, config={"ring.bytes": 1 << 16, "max.message.bytes": 8192}
    )
    appender = Appender(str(shared_daemon.data_dir), name)
    try:
        committed: list[int] = []
        for i in range(1000):
            committed += appender.data(4, pid=1, epoch=0)
            appender.data(4, pid=2, epoch=0)
            if i % 100 == 99:
                committed += appender.data()  # held back until both are decided
        appender.marker(2, 0, ABORT)
        appender.marker(1, 0, COMMIT)
        with Consumer(
            data_dir=shared_daemon.data_dir,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
        ) as c:
            c.assign([TopicPartition(name, 0)])
            assert poll_until(c, len(committed), timeout=30) == committed
            assert c.position(TopicPartition(name, 0)) == appender.end()
    finally:
        appender.close()
        admin.delete_topic(name)


def test_read_committed_with_a_transactional_producer(shared_daemon: Daemon, topic: str) -> None:
    tp = TopicPartition(topic, 0)
    with Producer(shared_daemon.data_dir, transactional_id="rc-e2e", acks="all") as p:
        p.init_transactions()
        p.begin_transaction()
        p.send(topic, b"committed", partition=0)
        p.commit_transaction()
        p.begin_transaction()
        p.send(topic, b"aborted", partition=0)
        p.abort_transaction()
        p.begin_transaction()
        p.send(topic, b"open", partition=0)
        p.flush()
        with Consumer(
            data_dir=shared_daemon.data_dir,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
        ) as c:
            c.assign([tp])
            got = [r.value for r in c.poll(timeout=2)]
            got += [r.value for r in c.poll(timeout=0.3)]
            assert got == [b"committed"]
            p.commit_transaction()
            deadline = time.monotonic() + 10
            while len(got) < 2 and time.monotonic() < deadline:
                got += [r.value for r in c.poll(timeout=0.2)]
            assert got == [b"committed", b"open"]


def test_isolation_level_is_checked() -> None:
    with pytest.raises(ConfigError, match="isolation_level"):
        Consumer(data_dir="/nonexistent", isolation_level="read_commited")
