"""Clients and the daemon across `engine stop` / `engine start` and crashes of the whole daemon."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest
from engine_harness import Daemon, wait_for

from engine import Admin, Consumer, EngineTimeoutError, Producer, TopicPartition
from engine import metadata as md
from engine.cluster import ClusterView
from engine.datadir import DataDir, pid_alive

#: How much longer than its timeout a blocking call may take on this loaded 2-core machine.
SLACK_S = 3.0


def rings_of(data_dir: Path) -> list[str]:
    prefix = DataDir.resolve(data_dir).ring_prefix()
    return sorted(name for name in os.listdir("/dev/shm") if name.startswith(prefix))


def kill_the_whole_daemon(daemon: Daemon) -> list[int]:
    """SIGKILL the daemon and every process it started (its process group)."""
    info = daemon.runtime()
    pids = [int(info["pid"]), *(int(p) for p in info["processes"].values())]
    os.killpg(int(info["pid"]), signal.SIGKILL)
    wait_for(lambda: not any(pid_alive(p) for p in pids), timeout=10, what="the kill")
    return pids


def drain(consumer: Consumer, expect: int, timeout: float = 30) -> list[bytes]:
    out: list[bytes] = []
    wait_for(lambda: out.extend(r.value for r in consumer.poll(timeout=0.2)) or len(out) >= expect,
             timeout=timeout, what=f"{expect} records")
    return out


def test_open_clients_keep_their_timeouts_while_the_daemon_is_down_then_follow_it_back(
    daemon: Daemon,
) -> None:
    with Admin(daemon.data_dir) as admin:
        admin.create_topic("follow", partitions=1)
    tp = TopicPartition("follow", 0)
    with (
        Producer(daemon.data_dir, acks=1, max_block_ms=2000, delivery_timeout_ms=5000) as p,
        Consumer(data_dir=daemon.data_dir, auto_offset_reset="earliest") as c,
    ):
        c.assign([tp])
        p.send("follow", b"before").get(timeout=5)
        assert drain(c, 1) == [b"before"]
        daemon.stop()

        t0 = time.monotonic()  # its leader's ring is sealed: it waits for another one
        with pytest.raises(EngineTimeoutError):
            p.send("follow", b"while down").get(timeout=10)
        assert time.monotonic() - t0 < 5.0 + SLACK_S  # delivery_timeout_ms
        t0 = time.monotonic()
        assert c.poll(timeout=2) == []
        assert time.monotonic() - t0 < 2.0 + SLACK_S

        daemon.start()

        def sent() -> bool:
            try:
                p.send("follow", b"after").get(timeout=5)
            except EngineTimeoutError:
                return False
            return True

        wait_for(sent, timeout=30, what="a send to the restarted daemon")
        assert drain(c, 1) == [b"after"]
        assert c.position(tp) == 2


def test_start_after_a_crash_of_the_whole_daemon_waits_for_its_new_brokers(
    daemon: Daemon,
) -> None:
    """The restored coordinator sessions keep the dead brokers' registrations for a while:
    start must wait for the brokers it started, not take those for them."""
    with Admin(daemon.data_dir) as admin:
        admin.create_topic("crash", partitions=4)
    with Producer(daemon.data_dir, acks=1) as p:
        for i in range(2000):
            p.send("crash", b"%d" % i, partition=i % 4)
    old = kill_the_whole_daemon(daemon)
    daemon.start()
    info = daemon.runtime()
    new = {int(pid) for name, pid in info["processes"].items() if name.startswith("broker-")}
    assert not new & set(old)
    with ClusterView(daemon.data_dir) as view:
        registered = {int(b["pid"]) for b in md.live_brokers(view.zk).values()}
    assert registered == new
    with Consumer(data_dir=daemon.data_dir, auto_offset_reset="earliest") as c:
        c.assign([TopicPartition("crash", p) for p in range(4)])
        got = drain(c, 2000)
    assert sorted(int(v) for v in got) == list(range(2000))


def test_stop_of_a_crashed_daemon_drains_its_rings_into_the_logs_and_removes_them(
    daemon: Daemon,
) -> None:
    with Admin(daemon.data_dir) as admin:
        admin.create_topic("leftover", partitions=3)
    with Producer(daemon.data_dir, acks=1) as p:
        for i in range(3000):
            p.send("leftover", b"%d" % i, partition=i % 3)
    kill_the_whole_daemon(daemon)
    assert rings_of(daemon.data_dir)
    out = daemon.cli("stop")
    assert b"not running" in out.stdout and b"3 rings" in out.stdout, out.stdout
    assert rings_of(daemon.data_dir) == []
    daemon.start()
    with Consumer(data_dir=daemon.data_dir, auto_offset_reset="earliest") as c:
        c.assign([TopicPartition("leftover", p) for p in range(3)])
        got = drain(c, 3000)
    assert sorted(int(v) for v in got) == list(range(3000))


def test_a_broker_that_comes_back_to_an_offline_partition_keeps_its_undrained_ring(
    daemon: Daemon,
) -> None:
    """acks=1 records sit in a frozen leader's ring (nothing drains it); the controller
    takes the partition offline when the leader's session expires; the leader is killed
    and comes back. Its first pass finds the partition without a leader: the ring is
    still its replica's, holding acknowledged records, and must not be removed as
    stale (it was, and the records were lost), but resumed when it leads again."""
    with Admin(daemon.data_dir) as admin:
        admin.create_topic("offline", partitions=1)
        leader = admin.describe_topic("offline").partitions[0].leader
        pid = int(daemon.runtime()["processes"][f"broker-{leader}"])
        os.kill(pid, signal.SIGSTOP)
        try:
            with Producer(daemon.data_dir, acks=1) as p:
                for i in range(500):
                    p.send("offline", b"%d" % i).get(timeout=5)
            wait_for(lambda: admin.describe_topic("offline").partitions[0].leader is None,
                     timeout=30, what="the partition to go offline")
        finally:
            os.kill(pid, signal.SIGKILL)
        wait_for(lambda: admin.describe_topic("offline").partitions[0].leader == leader,
                 timeout=30, what="the restarted broker to lead again")
    with Consumer(data_dir=daemon.data_dir, auto_offset_reset="earliest") as c:
        c.assign([TopicPartition("offline", 0)])
        got = drain(c, 500)
    assert sorted(int(v) for v in got) == list(range(500))


def test_a_group_commit_cut_off_by_a_coordinator_kill_is_made_again_not_a_kazoo_error(
    daemon: Daemon,
) -> None:
    """A commit whose request is on its way when the coordinator is killed gets
    ConnectionLoss from kazoo; the member commits again once the daemon has restarted
    the coordinator (the same offsets: harmless) instead of raising a kazoo exception
    the application does not know (the soak saw it)."""
    with Admin(daemon.data_dir) as admin:
        admin.create_topic("cut", partitions=1)
    with Producer(daemon.data_dir) as p:
        for i in range(10):
            p.send("cut", b"%d" % i)
        p.flush()
    tp = TopicPartition("cut", 0)
    with Consumer("cut", data_dir=daemon.data_dir, group_id="g", enable_auto_commit=False,
                  auto_offset_reset="earliest") as c:
        assert len(drain(c, 10)) == 10
        coordinator = int(daemon.runtime()["processes"]["coordinator"])
        os.kill(coordinator, signal.SIGSTOP)
        outcome: list[BaseException | None] = []
        committer = threading.Thread(target=lambda: outcome.append(_commit(c)))
        committer.start()
        try:
            zk = c._group.zk  # type: ignore[union-attr]
            wait_for(lambda: len(zk._pending) > 0, what="the commit on its way")
        finally:
            os.kill(coordinator, signal.SIGKILL)  # the daemon starts another one
        committer.join(60)
        assert outcome == [None], outcome
        assert c.committed(tp) == 10


def _commit(c: Consumer) -> BaseException | None:
    try:
        c.commit()
    except BaseException as exc:  # noqa: BLE001 - the test looks at it
        return exc
    return None
