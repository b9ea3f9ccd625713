"""Exactly-once: the idempotent producer, transactions, fencing, read_committed, and a
consume-transform-produce pipeline SIGKILLed at random points."""

from __future__ import annotations

import multiprocessing as mp
import os
import random
import signal
import struct
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import client_procs
import pytest
from engine_harness import Daemon, join_ok, running_daemon, started, wait_for

from engine import Admin, Consumer, Producer, TopicPartition
from engine import transaction as txn
from engine.datadir import DataDir, pid_alive
from engine.errors import (
    ConfigError,
    InvalidTxnStateError,
    ProducerFencedError,
    TransactionAbortedError,
)
from engine.ring import Ring

SPAWN = mp.get_context("spawn")
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def read_all(data_dir: Path, topic: str, partitions: int, isolation: str) -> list:
    """Everything of the topic up to its end offsets, as a consumer of that isolation sees it."""
    with Consumer(data_dir=data_dir, auto_offset_reset="earliest", isolation_level=isolation) as c:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        c.assign(tps)
        end = c.end_offsets(tps)
        out: list = []

        def done() -> bool:
            out.extend(c.poll(timeout=0.1, max_records=10_000))
            return all(c.position(tp) >= end[tp] for tp in tps)

        wait_for(done, timeout=30, what=f"{topic} read to its end offsets {end}")
        return out


@pytest.fixture
def tx_topic(admin: Admin) -> Iterator[str]:
    name = f"tx-{uuid.uuid4().hex[:8]}"
    admin.create_topic(name, partitions=2)
    yield name
    admin.delete_topic(name)


def test_read_committed_sees_committed_transactions_only(
    shared_daemon: Daemon, tx_topic: str
) -> None:
    data_dir = shared_daemon.data_dir
    with Producer(data_dir, transactional_id=f"t-{tx_topic}") as p:
        p.init_transactions()
        p.begin_transaction()
        for i in range(20):
            p.send(tx_topic, b"committed-%d" % i, key=b"k%d" % i)
        p.commit_transaction()
        p.begin_transaction()
        for i in range(20):
            p.send(tx_topic, b"aborted-%d" % i, key=b"k%d" % i)
        p.abort_transaction()
        with Producer(data_dir) as plain:  # a plain record after the aborted ones
            plain.send(tx_topic, b"plain", partition=0)
        committed = read_all(data_dir, tx_topic, 2, "read_committed")
        assert sorted(r.value for r in committed if r.value.startswith(b"committed")) == sorted(
            b"committed-%d" % i for i in range(20)
        )
        values = [r.value for r in committed]
        assert b"plain" in values
        assert not [v for v in values if v.startswith(b"aborted")]
        p.begin_transaction()
        p.send(tx_topic, b"open", partition=0)  # an open transaction holds back what follows
        with Producer(data_dir) as plain:
            plain.send(tx_topic, b"behind-open", partition=0)
        # A read_committed consumer stops at the open transaction: its own records and
        # the plain record behind it wait for its end.
        with Consumer(
            data_dir=data_dir, auto_offset_reset="earliest", isolation_level="read_committed"
        ) as c:
            c.assign([TopicPartition(tx_topic, 0)])
            got: list = []
            wait_for(
                lambda: got.extend(c.poll(0.1)) or b"plain" in [r.value for r in got],
                what="the records before the open transaction",
            )
            assert not [r for r in c.poll(0.5) if r.value in (b"open", b"behind-open")]
            p.commit_transaction()
            wait_for(
                lambda: got.extend(c.poll(0.1)) or b"behind-open" in [r.value for r in got],
                what="the records of the committed transaction and behind it",
            )
            order = [r.value for r in got]
            assert order.index(b"open") < order.index(b"behind-open")
    uncommitted = read_all(data_dir, tx_topic, 2, "read_uncommitted")
    assert len([r for r in uncommitted if r.value.startswith(b"aborted")]) == 20  # markers: none


def test_a_new_instance_fences_its_older_self_and_aborts_what_it_left(
    shared_daemon: Daemon, tx_topic: str
) -> None:
    data_dir = shared_daemon.data_dir
    tid = f"f-{tx_topic}"
    first, second, third = (Producer(data_dir, transactional_id=tid) for _ in range(3))
    try:
        first.init_transactions()
        first.begin_transaction()
        first.send(tx_topic, b"zombie-1", partition=0)
        second.init_transactions()  # fences first, aborts its open transaction
        with pytest.raises(ProducerFencedError):
            first.send(tx_topic, b"zombie-2", partition=1)  # the coordinator refuses it
        with pytest.raises(ProducerFencedError):
            first.commit_transaction()
        second.begin_transaction()
        second.send(tx_topic, b"zombie-3", partition=0)
        third.init_transactions()  # fences second
        with pytest.raises(ProducerFencedError):  # the ring refuses its epoch
            second.send(tx_topic, b"zombie-4", partition=0).get(timeout=10)
        with pytest.raises(ProducerFencedError):  # and it knows from then on
            second.send(tx_topic, b"zombie-5", partition=0)
        third.begin_transaction()
        third.send(tx_topic, b"new", partition=0)
        third.commit_transaction()
        state, _ = txn.load(third._metadata.cluster.zk, tid) or (None, 0)
        assert state is not None and state.epoch == 2 and state.state == txn.EMPTY
    finally:
        for p in (first, second, third):
            p.close()
    values = [r.value for r in read_all(data_dir, tx_topic, 2, "read_committed")]
    assert values == [b"new"]
    raw = [r.value for r in read_all(data_dir, tx_topic, 2, "read_uncommitted")]
    assert sorted(raw) == [b"new", b"zombie-1", b"zombie-3"]  # the refused ones never landed


def test_transaction_calls_out_of_order_get_clear_errors(
    shared_daemon: Daemon, tx_topic: str
) -> None:
    data_dir = shared_daemon.data_dir
    with pytest.raises(ConfigError, match="acks='all'"):
        Producer(data_dir, transactional_id="x", acks=1)
    with pytest.raises(ConfigError, match="transactional_id"):
        Producer(data_dir, transactional_id="bad id!")
    with Producer(data_dir) as plain, pytest.raises(InvalidTxnStateError, match="transactional_id"):
        plain.begin_transaction()
    with Producer(data_dir, transactional_id=f"o-{tx_topic}") as p:
        with pytest.raises(InvalidTxnStateError, match="init_transactions"):
            p.begin_transaction()
        p.init_transactions()
        with pytest.raises(InvalidTxnStateError, match="begin_transaction"):
            p.send(tx_topic, b"outside", partition=0)
        with pytest.raises(InvalidTxnStateError):
            p.commit_transaction()
        p.begin_transaction()
        with pytest.raises(InvalidTxnStateError):
            p.begin_transaction()
        with pytest.raises(ConfigError):
            p.send_offsets_to_transaction({TopicPartition(tx_topic, 0): -5}, "g")
        p.send(tx_topic, b"kept", partition=0)  # the bad calls lost nothing
        p.commit_transaction()
    assert [r.value for r in read_all(data_dir, tx_topic, 2, "read_committed")] == [b"kept"]


def test_offsets_sent_to_a_transaction_count_only_when_it_commits(
    shared_daemon: Daemon, tx_topic: str
) -> None:
    data_dir = shared_daemon.data_dir
    group = f"g-{tx_topic}"
    tp = TopicPartition(tx_topic, 0)
    with Producer(data_dir, transactional_id=f"s-{tx_topic}") as p:
        p.init_transactions()
        p.begin_transaction()
        p.send(tx_topic, b"a", partition=1)
        p.send_offsets_to_transaction({tp: 7}, group)
        p.abort_transaction()
        with Consumer(data_dir=data_dir, group_id=group) as c:
            assert c.committed(tp) is None
        p.begin_transaction()
        p.send(tx_topic, b"b", partition=1)
        p.send_offsets_to_transaction({tp: 9}, group)
        p.commit_transaction()
        with Consumer(data_dir=data_dir, group_id=group) as c:
            assert c.committed(tp) == 9


def test_transactional_producers_in_several_processes_interleave_all_or_nothing(
    shared_daemon: Daemon, tx_topic: str
) -> None:
    """3 processes, each with its own transactional id, run transactions on one partition
    at once, each transaction's records interleaved with the others' (a barrier mid-way),
    in every round one of them aborting while the others commit: read_committed delivers
    exactly the committed transactions, whole, each producer's in order; the log shows
    the transactions interleaved."""
    producers, rounds = 3, 6
    barrier = SPAWN.Barrier(producers)
    procs = [
        SPAWN.Process(target=client_procs.transact,
                      args=(str(shared_daemon.data_dir), tx_topic, p, rounds, barrier))
        for p in range(producers)
    ]  # fmt: skip
    with started(procs):
        join_ok(procs, 120)

    def parsed(records: list) -> list[tuple[int, int, int]]:
        return [tuple(int(x) for x in r.value.split(b":")) for r in records if r.partition == 0]

    committed = parsed(read_all(shared_daemon.data_dir, tx_topic, 2, "read_committed"))
    for p in range(producers):
        assert [(r, k) for q, r, k in committed if q == p] == [
            (r, k) for r in range(rounds) if (r + p) % 3 != 2 for k in range(10)
        ], f"producer {p}: committed transactions whole and in order, aborted ones absent"
    log = parsed(read_all(shared_daemon.data_dir, tx_topic, 2, "read_uncommitted"))
    assert len(log) == producers * rounds * 10
    for r in range(rounds):  # within each round some transaction spans another's records
        spans = {p: [i for i, (q, rr, _) in enumerate(log) if (q, rr) == (p, r)]
                 for p in range(producers)}  # fmt: skip
        assert any(
            any(spans[p][0] < i < spans[p][-1] for o in spans if o != p for i in spans[o])
            for p in spans
        ), f"round {r}: the transactions did not interleave"


def test_a_transaction_left_open_is_aborted_after_its_timeout(
    shared_daemon: Daemon, tx_topic: str
) -> None:
    """The producer stops (as if hung) mid-transaction: the controller aborts it after
    transaction_timeout_ms, read_committed consumers move on, and the producer is told
    TransactionAbortedError, aborts, and carries on with a new epoch."""
    data_dir = shared_daemon.data_dir
    with Producer(data_dir, transactional_id=f"to-{tx_topic}", transaction_timeout_ms=1000) as p:
        p.init_transactions()
        p.begin_transaction()
        p.send(tx_topic, b"abandoned", partition=0)
        with Producer(data_dir) as plain:
            plain.send(tx_topic, b"after", partition=0)
        with Consumer(
            data_dir=data_dir, auto_offset_reset="earliest", isolation_level="read_committed"
        ) as c:
            c.assign([TopicPartition(tx_topic, 0)])
            got: list = []
            wait_for(
                lambda: got.extend(c.poll(0.1)) or got,
                timeout=30,
                what="the controller to abort the transaction",
            )
            assert [r.value for r in got] == [b"after"]
        with pytest.raises(TransactionAbortedError):
            p.send(tx_topic, b"late", partition=1)  # a new partition: the CAS says why
        p.abort_transaction()
        p.begin_transaction()
        p.send(tx_topic, b"again", partition=0)
        p.commit_transaction()
    values = [r.value for r in read_all(data_dir, tx_topic, 2, "read_committed")]
    assert values == [b"after", b"again"]


def log_ends(data_dir: Path, topic_id: str, brokers: list[int]) -> dict[int, int]:
    """Each broker's log end offset of partition 0 as its ring publishes it (a leader's
    tail: what producers appended; a follower's: what it copied)."""
    names = DataDir.resolve(data_dir)
    ends = {}
    for broker in brokers:
        with Ring.open(names.ring_name(topic_id, 0, broker), populate=False) as ring:
            ends[broker] = ring.status().tail_offset
    return ends


def test_an_idempotent_producer_writes_each_record_once_across_a_leader_failover(
    tmp_path: Path,
) -> None:
    """Records sent asynchronously while the leader is SIGKILLed, some of them held by
    the leader alone: the followers are frozen until the leader's ring holds records
    beyond every follower's log, then the leader dies and the followers go on. The
    producer finds out which ones the new leader holds and appends only the others;
    every future succeeds and the log holds every record once, in order, without the
    caller retrying."""
    with running_daemon(tmp_path / "engine", brokers=3) as cluster:
        with Admin(cluster.data_dir) as admin:
            described = admin.create_topic(
                "idem", partitions=1, replication=3, config={"min.insync.replicas": 2}
            )
            leader, topic_id = described.partitions[0].leader, described.topic_id
        followers = [b for b in (1, 2, 3) if b != leader]
        total = 6000
        futures = []
        with Producer(cluster.data_dir, enable_idempotence=True, delivery_timeout_ms=60_000) as p:
            sent = threading.Event()

            def send_all() -> None:
                for i in range(total):
                    futures.append(p.send("idem", struct.pack("<I", i)))
                    if i == total // 3:
                        sent.set()
                    if i % 20 == 0:
                        time.sleep(0.01)  # keep sending (for ~3 s) while the leader dies

            sender = threading.Thread(target=send_all)
            sender.start()
            try:
                assert sent.wait(60)
                daemon_pid = cluster.runtime()["pid"]
                pid = cluster.runtime()["processes"][f"broker-{leader}"]
                frozen = [cluster.runtime()["processes"][f"broker-{b}"] for b in followers]
                os.kill(daemon_pid, signal.SIGSTOP)  # no restart before the failover
                try:
                    for f in frozen:  # well within their sessions
                        os.kill(f, signal.SIGSTOP)
                    # The followers copy nothing now: wait until the leader's ring holds
                    # records beyond what either of them has.
                    ends = wait_for(
                        lambda: (lambda e: e if e[leader] >= max(e[b] for b in followers) + 100
                                 else None)(log_ends(cluster.data_dir, topic_id, [1, 2, 3])),
                        timeout=30, what="the leader to take records no follower has",
                    )  # fmt: skip
                    sent_before_kill = len(futures)
                    os.kill(pid, signal.SIGKILL)
                    wait_for(lambda: not pid_alive(pid), what="the leader to die")
                    for f in frozen:
                        os.kill(f, signal.SIGCONT)
                    with Admin(cluster.data_dir) as admin:
                        new_leader = wait_for(
                            lambda: (lambda q: q if q not in (leader, None, -1) else None)(
                                admin.describe_topic("idem").partitions[0].leader),
                            timeout=30, what="a new leader",
                        )  # fmt: skip
                finally:
                    os.kill(daemon_pid, signal.SIGCONT)
            finally:
                sender.join(120)
            p.flush(120)
            offsets = [f.get(0).offset for f in futures]
        records = read_all(cluster.data_dir, "idem", 1, "read_uncommitted")
    # What was arranged did happen: when the leader died its log held records the new
    # leader's did not, and the producer was still sending.
    assert ends[new_leader] < ends[leader], ends
    assert sent_before_kill < total
    values = [struct.unpack("<I", r.value)[0] for r in records]
    assert len(values) == len(set(values)), "a record was written twice"
    assert values == list(range(total)), "a record is missing or out of order"
    assert offsets == [r.offset for r in records]


class Pipeline:
    """examples/exactly_once.py from ``source`` to ``sink`` under one transactional id and
    one group: its input, fed as the test goes, and what the test sees of its progress
    (the group's committed offsets, the transaction's state in the coordinator)."""

    def __init__(self, daemon: Daemon, admin: Admin, suffix: str) -> None:
        self.daemon = daemon
        self.source, self.sink = f"in-{suffix}", f"out-{suffix}"
        self.group, self.tid = f"pipe-{suffix}", f"tx-{suffix}"
        self.zk = admin._cluster.zk
        self.fed = 0
        self.tps = [TopicPartition(self.source, p) for p in range(3)]
        self.args = [
            sys.executable, str(EXAMPLES / "exactly_once.py"), self.source, self.sink,
            "--group", self.group, "--transactional-id", self.tid,
            "--data-dir", str(daemon.data_dir),
        ]  # fmt: skip
        self._offsets = Consumer(data_dir=daemon.data_dir, group_id=self.group)

    def feed(self, count: int) -> None:
        with Producer(self.daemon.data_dir) as p:
            for i in range(self.fed, self.fed + count):
                p.send(self.source, b"%d" % i, key=b"k%d" % (i % 11))
        self.fed += count

    def processed(self) -> int:
        """Input records whose transaction committed (the group's committed offsets)."""
        return sum(self._offsets.committed(tp) or 0 for tp in self.tps)

    def state(self) -> txn.TxnState | None:
        loaded = txn.load(self.zk, self.tid)
        return None if loaded is None else loaded[0]

    def start(self, idle_s: float) -> subprocess.Popen[bytes]:
        """A new instance, returned once it has fenced the one before (the epoch moved)."""
        before = self.state()
        proc = subprocess.Popen(
            [*self.args, "--idle", str(idle_s)], env=self.daemon.env,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            wait_for(
                lambda: (lambda now: now is not None and (before is None or (
                    now.producer_id, now.epoch) != (before.producer_id, before.epoch)))(
                    self.state()),
                timeout=60, what="the pipeline to initialise",
            )  # fmt: skip
        except BaseException:
            proc.kill()
            proc.wait(30)
            raise
        return proc

    def kill_in_open_transaction(self, proc: subprocess.Popen[bytes]) -> txn.TxnState:
        """SIGKILL ``proc`` while its transaction is open: freeze it, read the state, and
        kill it if Ongoing with partitions added; else let it run a moment and look again
        (feeding it more input when it has caught up). Returns the state it died in."""
        rng = random.Random(proc.pid)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            os.kill(proc.pid, signal.SIGSTOP)
            state = self.state()
            if state is not None and state.state == txn.ONGOING and state.partitions:
                proc.kill()  # frozen: it dies in the state just read
                proc.wait(30)
                return state
            os.kill(proc.pid, signal.SIGCONT)
            if self.processed() >= self.fed:
                self.feed(200)
            time.sleep(rng.uniform(0.0005, 0.005))
        raise AssertionError(f"{self.tid} had no open transaction within 60 s")

    def close(self) -> None:
        self._offsets.close()


@pytest.mark.slow
def test_a_pipeline_killed_at_random_points_outputs_each_record_exactly_once(
    shared_daemon: Daemon, admin: Admin
) -> None:
    """examples/exactly_once.py, SIGKILLed 8 times at random points of its work, each
    time inside an open transaction, and restarted: the output topic, read_committed,
    holds each input record transformed exactly once."""
    pipe = Pipeline(shared_daemon, admin, uuid.uuid4().hex[:8])
    admin.create_topic(pipe.source, partitions=3)
    admin.create_topic(pipe.sink, partitions=3)
    rng = random.Random(int(os.environ.get("ENGINE_TEST_SEED", "5")))
    try:
        hits = []  # the state each kill hit, and that state read again after the kill
        for _ in range(8):
            pipe.feed(2_000)
            proc = pipe.start(idle_s=30)
            try:
                # A random point of its work: part of what is left is processed.
                start, left = pipe.processed(), pipe.fed - pipe.processed()
                target = start + int(rng.uniform(0.05, 0.5) * left)
                wait_for(lambda t=target: pipe.processed() >= t, timeout=60,
                         what=f"the pipeline to process up to {target}")  # fmt: skip
                killed_in = pipe.kill_in_open_transaction(proc)
            finally:
                proc.kill()
                proc.wait(30)
            hits.append((killed_in, pipe.state()))
        # Every kill hit a transaction with partitions added and nothing decided; the
        # state stayed there until the next instance fenced it.
        assert all(
            before.state == txn.ONGOING and before.partitions and after == before
            for before, after in hits
        ), hits
        final = subprocess.run(
            [*pipe.args, "--idle", "4"], env=shared_daemon.env, capture_output=True, timeout=300
        )
        assert final.returncode == 0, final.stderr.decode()[-2000:]
        out = read_all(shared_daemon.data_dir, pipe.sink, 3, "read_committed")
        counts = Counter(r.value for r in out)
        expected = {b"processed:%d" % i for i in range(pipe.fed)}
        assert set(counts) == expected, f"missing {len(expected - set(counts))} records"
        assert max(counts.values()) == 1, "a record was output twice"
        raw = read_all(shared_daemon.data_dir, pipe.sink, 3, "read_uncommitted")
        aborted = len(raw) - len(out)
        print(f"{len(hits)} kills in open transactions: {aborted} aborted records never seen "
              f"by read_committed, {pipe.fed} input records")  # fmt: skip
        assert aborted > 0, "no killed transaction had appended a record"
    finally:
        pipe.close()
        admin.delete_topic(pipe.source)
        admin.delete_topic(pipe.sink)


def test_a_transaction_over_a_deleted_topic_does_not_wedge_its_id(
    shared_daemon: Daemon, admin: Admin
) -> None:
    """The topic of an open transaction is deleted; a new instance of the id still
    initialises (nothing is left to decide there) and works."""
    doomed, kept = (f"d-{uuid.uuid4().hex[:8]}" for _ in range(2))
    admin.create_topic(doomed, partitions=1)
    admin.create_topic(kept, partitions=1)
    tid = f"del-{doomed}"
    try:
        with Producer(shared_daemon.data_dir, transactional_id=tid) as old:
            old.init_transactions()
            old.begin_transaction()
            old.send(doomed, b"lost with its topic")
            old.send(kept, b"aborted")
            admin.delete_topic(doomed)
            with Producer(shared_daemon.data_dir, transactional_id=tid) as new:
                new.init_transactions()
                new.begin_transaction()
                new.send(kept, b"committed")
                new.commit_transaction()
        assert not admin.list_topics().count(doomed)
        values = [r.value for r in read_all(shared_daemon.data_dir, kept, 1, "read_committed")]
        assert values == [b"committed"]
    finally:
        admin.delete_topic(kept)


def test_a_position_passes_the_marker_read_with_the_records(
    shared_daemon: Daemon, tx_topic: str
) -> None:
    """A read_uncommitted consumer that gets a committed transaction's records and its
    marker in one chunk stands after the marker, at the end offset (Kafka's position)."""
    data_dir = shared_daemon.data_dir
    tp = TopicPartition(tx_topic, 0)
    with Producer(data_dir, transactional_id=f"m-{tx_topic}") as p:
        p.init_transactions()
        p.begin_transaction()
        for i in range(5):
            p.send(tx_topic, b"v%d" % i, partition=0)
        p.commit_transaction()
    with Consumer(data_dir=data_dir, auto_offset_reset="earliest") as c:
        c.assign([tp])
        end = c.end_offsets([tp])[tp]
        assert end == 6  # five records and the commit marker
        got: list = []
        wait_for(lambda: got.extend(c.poll(0.1)) or len(got) == 5, what="the five records")
        assert [r.offset for r in got] == [0, 1, 2, 3, 4]
        assert c.position(tp) == end
