"""What a send reports is what happened: retried within delivery_timeout_ms when Kafka's
producer would retry, failed (never reported a success) when the record was not written."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from engine_harness import Daemon, running_daemon, wait_for

from engine import (
    Admin,
    BufferFullError,
    ConfigError,
    Consumer,
    EngineTimeoutError,
    NotEnoughReplicasError,
    Producer,
    TopicPartition,
)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Daemon]:
    with running_daemon(tmp_path / "engine", brokers=3) as d:
        yield d


def consume(data_dir: Path, topic: str, partitions: int, expect: int) -> list:
    with Consumer(data_dir=data_dir, auto_offset_reset="earliest") as c:
        c.assign([TopicPartition(topic, p) for p in range(partitions)])
        out: list = []
        wait_for(lambda: out.extend(c.poll(timeout=0.2, max_records=100_000)) or len(out) >= expect,
                 timeout=60, what=f"{expect} records of {topic}")
        return out


def run_client(data_dir: Path, body: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run ``body`` in a fresh Python process (``data_dir`` bound); its output."""
    script = "import sys, time\nfrom engine import *\ndata_dir = sys.argv[1]\n"
    script += textwrap.dedent(body)
    return subprocess.run(
        [sys.executable, "-c", script, str(data_dir)], capture_output=True, text=True,
        timeout=timeout, env=dict(os.environ, PYTHONPATH=str(Path(__file__).parent)),
    )  # fmt: skip


def broker_pid(daemon: Daemon, broker: int) -> int:
    return int(daemon.runtime()["processes"][f"broker-{broker}"])


def test_the_defaults_are_kafkas_acks_all_and_idempotence(shared_daemon: Daemon) -> None:
    with Producer(shared_daemon.data_dir) as p:
        assert (p.acks, p.enable_idempotence) == (-1, True)
    with Producer(shared_daemon.data_dir, acks=1) as p:  # chosen acks: no idempotence
        assert (p.acks, p.enable_idempotence) == (1, False)
    with pytest.raises(ConfigError, match="idempotent or transactional producer needs acks"):
        Producer(shared_daemon.data_dir, acks=1, enable_idempotence=True)


def test_acks0_records_the_ring_could_not_take_fail_and_none_reports_success(
    daemon: Daemon,
) -> None:
    """The leader frozen, its ring full: a send that cannot append within max_block_ms
    raises (it was not written); every send that returned a future was written. Then a
    leader that stays away: what waits for it fails at delivery_timeout_ms, flush()
    raises, and the process prints nothing."""
    with Admin(daemon.data_dir) as admin:
        admin.create_topic("drop", partitions=1, config={
            "ring.bytes": 1 << 16, "max.message.bytes": 8192,
        })  # fmt: skip
        leader = admin.describe_topic("drop").partitions[0].leader
    pid = broker_pid(daemon, leader)
    os.kill(pid, signal.SIGSTOP)
    try:
        out = run_client(daemon.data_dir, """
            sent, refused = [], 0
            with Producer(data_dir, acks=0, max_block_ms=100) as p:
                for i in range(400):  # the 64 KiB ring takes about 340
                    try:
                        sent.append((i, p.send("drop", b"%05d" % i + b"x" * 95)))
                    except BufferFullError:
                        refused += 1
                print(sum(f.succeeded() for _, f in sent), refused,
                      ",".join(str(i) for i, f in sent if f.succeeded()))
        """)
    finally:
        os.kill(pid, signal.SIGCONT)
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""
    succeeded, refused, ids = out.stdout.split()
    assert 0 < int(succeeded) < 400 and int(succeeded) + int(refused) == 400
    acked = [int(i) for i in ids.split(",")]
    got = consume(daemon.data_dir, "drop", 1, len(acked))
    assert [int(r.value[:5]) for r in got] == acked

    # No leader comes back: what waits for one fails at delivery_timeout_ms.
    out = run_client(daemon.data_dir, """
        from engine.ring import seal_ring
        with Producer(data_dir, acks=0, delivery_timeout_ms=1500, max_block_ms=500) as p:
            p.send("drop", b"before").get(timeout=5)
            seal_ring(p._metadata.route("drop").view.rings[0].name)  # its leader went away
            futures = [p.send("drop", b"after") for _ in range(100)]
            try:
                p.flush(timeout=30)
            except EngineError as exc:
                print("flush raised", type(exc).__name__)
            print(sum(f.failed() for f in futures), sum(f.succeeded() for f in futures))
    """)
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""
    assert out.stdout.split("\n")[:2] == ["flush raised EngineTimeoutError", "100 0"]


def test_acks_all_retries_a_leader_failover_and_reports_every_record_once(
    cluster: Daemon,
) -> None:
    """The default producer (acks="all", idempotent) across a SIGKILL of the leader: no
    send fails (NotLeader is retried on the new leader within delivery_timeout_ms), and
    every acknowledged record is in the log exactly once, in order."""
    with Admin(cluster.data_dir) as admin:
        admin.create_topic("failover", partitions=1, replication=3,
                           config={"min.insync.replicas": 2})
        leader = admin.describe_topic("failover").partitions[0].leader
    acked: list[int] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def produce() -> None:
        with Producer(cluster.data_dir) as p:
            i = 0
            while not stop.is_set() or i < 2000:
                futures = [(i + j, p.send("failover", b"%d" % (i + j))) for j in range(50)]
                i += 50
                for n, f in futures:
                    try:
                        f.get(timeout=60)
                        acked.append(n)
                    except Exception as exc:  # noqa: BLE001 - collected: the test asserts none
                        errors.append(exc)

    sender = threading.Thread(target=produce)
    sender.start()
    daemon_pid = int(cluster.runtime()["pid"])
    try:
        wait_for(lambda: len(acked) > 500, what="records before the kill")
        os.kill(daemon_pid, signal.SIGSTOP)  # no restart of the killed broker meanwhile
        try:
            os.kill(broker_pid(cluster, leader), signal.SIGKILL)
            with Admin(cluster.data_dir) as admin:
                wait_for(lambda: admin.describe_topic("failover").partitions[0].leader
                         not in (None, leader), timeout=30, what="a new leader")
            killed_at = len(acked)
            wait_for(lambda: errors or len(acked) > killed_at + 1000, timeout=60,
                     what="records after the kill")
        finally:
            os.kill(daemon_pid, signal.SIGCONT)
    finally:
        stop.set()
        sender.join(timeout=120)
    assert not errors, f"{len(errors)} sends failed, the first: {errors[0]!r}"
    got = consume(cluster.data_dir, "failover", 1, len(acked))
    assert [int(r.value) for r in got] == acked  # each once, in the order sent


def topic_of_two_replicas(daemon: Daemon, topic: str) -> int:
    """A topic of one partition, replication 2 and min.insync.replicas 2, whose follower
    leaves the ISR 500 ms after it stops: its follower broker's pid."""
    with Admin(daemon.data_dir) as admin:
        admin.create_topic(topic, partitions=1, replication=2, config={
            "min.insync.replicas": 2, "replica.lag.time.max.ms": 500,
        })  # fmt: skip
        state = admin.describe_topic(topic).partitions[0]
    return broker_pid(daemon, next(b for b in state.replicas if b != state.leader))


def test_acks_all_waits_out_too_small_an_isr_within_the_delivery_timeout(
    cluster: Daemon,
) -> None:
    """NotEnoughReplicas is retriable: a send made while the ISR is below
    min.insync.replicas is delivered once the ISR grows back; one that waits longer than
    delivery_timeout_ms fails with NotEnoughReplicasError."""
    pid = topic_of_two_replicas(cluster, "small-isr")
    with Producer(cluster.data_dir, delivery_timeout_ms=60_000) as p:
        p.send("small-isr", b"first").get(timeout=10)
        ring = p._metadata.route("small-isr").view.rings[0]
        os.kill(pid, signal.SIGSTOP)  # the follower falls behind and leaves the ISR
        try:
            # The leader's ring says so (the coordinator may say it a moment earlier).
            wait_for(lambda: ring.status().isr_count == 1, timeout=20,
                     what="the ISR to shrink to the leader")
            waiting = [p.send("small-isr", b"while-small-%d" % i) for i in range(20)]
            batch = waiting[0][4]  # the batch the sender keeps trying
            wait_for(lambda: batch.attempts >= 3, what="the sender to retry the batch")
            assert not any(f.is_done() for f in waiting)  # retried, not failed
        finally:
            os.kill(pid, signal.SIGCONT)
        assert [f.get(timeout=60).offset for f in waiting] == list(range(1, 21))
    with Producer(cluster.data_dir, delivery_timeout_ms=1500) as p:
        ring = p._metadata.route("small-isr").view.rings[0]
        os.kill(pid, signal.SIGSTOP)
        try:
            wait_for(lambda: ring.status().isr_count == 1, timeout=20,
                     what="the ISR to shrink again")
            late = p.send("small-isr", b"too-late")
            with pytest.raises(EngineTimeoutError) as expired:
                late.get(timeout=30)
            assert isinstance(expired.value.__cause__, NotEnoughReplicasError)
            assert "min.insync.replicas=2" in str(expired.value)
        finally:
            os.kill(pid, signal.SIGCONT)


def test_a_batch_that_fits_never_overtakes_an_earlier_one_that_did_not(daemon: Daemon) -> None:
    """The leader frozen, its ring almost full: a big batch does not fit and is sent again
    and again; a small batch sent after it would fit. It must wait for the big one (it
    did not: the sender appended every batch it had taken, and a partition's order broke
    whenever an earlier batch had to be sent again; the soak saw it)."""
    with Admin(daemon.data_dir) as admin:
        admin.create_topic("order", partitions=1, config={
            "ring.bytes": 1 << 16, "max.message.bytes": 16384,
        })  # fmt: skip
        leader = admin.describe_topic("order").partitions[0].leader
    pid = broker_pid(daemon, leader)
    with Producer(daemon.data_dir, delivery_timeout_ms=60_000) as p:
        ring = p._metadata.route("order").view.rings[0]
        os.kill(pid, signal.SIGSTOP)
        try:
            def free() -> int:
                s = ring.status()
                return s.capacity - (s.tail_position - s.drain_position)

            while free() > 9000:  # fill it, 1 KiB records at a time, all delivered
                p.send_batch("order", [b"f" * 1000]).get(timeout=10)
            big = p.send_batch("order", [b"B" * 1000] * 9)  # ~9.3 KB: does not fit
            batch = big.futures[0][4]
            wait_for(lambda: batch.attempts >= 1, what="the big batch tried")
            small = p.send_batch("order", [b"s"])  # ~100 bytes: would fit
            wait_for(lambda: batch.attempts >= 5, what="the big batch tried again")
            assert not small.futures[0].is_done()
        finally:
            os.kill(pid, signal.SIGCONT)
        big.get(timeout=30)
        small.get(timeout=30)
    with Consumer(data_dir=daemon.data_dir, auto_offset_reset="earliest") as c:
        c.assign([TopicPartition("order", 0)])
        got: list = []
        wait_for(lambda: got.extend(c.poll(timeout=0.2)) or (got and got[-1].value == b"s")
                 or len(got) > 1000, what="the small record")  # fmt: skip
    tail = [r.value[:1] for r in got if r.value[:1] != b"f"]
    assert tail == [b"B"] * 9 + [b"s"]


def test_threads_sending_through_the_c_path_and_python_keep_each_ones_order(
    shared_daemon: Daemon, admin: Admin
) -> None:
    """The default producer adds records of bytes to their partition's open batch in C and
    anything else (here: records with headers) in Python, from several threads at once:
    every record lands once, and each thread's records of a partition in its order."""
    import uuid

    name = f"mixed-{uuid.uuid4().hex[:8]}"
    admin.create_topic(name, partitions=2)
    threads, per_thread = 4, 5000
    with Producer(shared_daemon.data_dir, batch_size=2048) as p:

        def send(t: int) -> None:
            for i in range(per_thread):
                value = b"%d:%d" % (t, i)
                if i % 7 == 0:
                    p.send(name, value, key=b"t%d" % t, headers=[("i", b"%d" % i)])
                else:
                    p.send(name, value, key=b"t%d" % t)

        workers = [threading.Thread(target=send, args=(t,)) for t in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        p.flush(timeout=60)
    got = consume(shared_daemon.data_dir, name, 2, threads * per_thread)
    seen: dict[int, list[int]] = {}
    for r in got:
        t, i = (int(x) for x in r.value.split(b":"))
        seen.setdefault(t, []).append(i)
    assert seen == {t: list(range(per_thread)) for t in range(threads)}
    admin.delete_topic(name)


@pytest.mark.parametrize("acks", [1, "all"])
def test_send_batch_sends_the_arrays_as_they_were_when_it_was_called(
    shared_daemon: Daemon, acks: int | str
) -> None:
    """A caller may reuse its arrays once send_batch returned: what is delivered is what
    they held at the call, keyed or not (with acks="all" the sender appends later)."""
    import numpy as np

    topic = f"reused-arrays-{acks}"
    with Admin(shared_daemon.data_dir) as admin:
        admin.create_topic(topic, partitions=2, replication=2, config={"min.insync.replicas": 2})
    keys = np.array([b"k%d" % i for i in range(500)], dtype="S8")
    with Producer(shared_daemon.data_dir, acks=acks) as p:
        for i in range(40):
            values = np.full((500, 64), i, dtype=np.uint8)
            p.send_batch(topic, values, partition=0)
            values[:] = 255
            values = np.full((500, 64), i, dtype=np.uint8)
            p.send_batch(topic, values, keys=keys)
            values[:] = 255
        p.flush()
    records = consume(shared_daemon.data_dir, topic, 2, 40_000)
    assert len(records) == 40_000
    assert not [r for r in records if r.value[0] == 255]
    firsts = sorted(r.value[0] for r in records)
    assert firsts == sorted(i for i in range(40) for _ in range(1000))


def test_send_batch_waits_for_room_in_buffer_memory_then_fails_losing_nothing_accepted(
    cluster: Daemon,
) -> None:
    """The records send_batch leaves to the sender count in buffer_memory: while the ISR
    is too small to take them, a send_batch that does not fit waits max_block_ms and
    raises BufferFullError; what was accepted before is delivered once the ISR is back."""
    import numpy as np

    pid = topic_of_two_replicas(cluster, "bounded")
    values = np.zeros((1000, 100), dtype=np.uint8)  # 124,000 bytes as the buffer counts them
    with Producer(cluster.data_dir, buffer_memory=256_000, max_block_ms=300,
                  delivery_timeout_ms=60_000) as p:  # fmt: skip
        p.send("bounded", b"first").get(timeout=10)
        ring = p._metadata.route("bounded").view.rings[0]
        os.kill(pid, signal.SIGSTOP)
        try:
            wait_for(lambda: ring.status().isr_count == 1, timeout=20,
                     what="the ISR to shrink to the leader")
            accepted = [p.send_batch("bounded", values, partition=0) for _ in range(2)]
            with pytest.raises(BufferFullError, match="buffer_memory=256000") as full:
                p.send_batch("bounded", values, partition=0)
            assert full.value.appended == 0  # none of that call's records was taken
        finally:
            os.kill(pid, signal.SIGCONT)
        p.flush(timeout=60)
        assert [r.futures[-1].get(timeout=1).offset for r in accepted] == [1000, 2000]
    assert len(consume(cluster.data_dir, "bounded", 1, 2001)) == 2001
