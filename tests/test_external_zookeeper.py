"""`engine start --coordinator HOST:PORT`: the engine on a real ZooKeeper instead of its own."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest
from engine_harness import Daemon

from engine import (
    Admin,
    Consumer,
    CoordinatorUnavailableError,
    DaemonNotRunningError,
    EngineTimeoutError,
    Producer,
    TopicPartition,
    metadata,
)

sys.path.insert(0, str(Path(__file__).parent / "coordinator"))
from zkharness import RealZooKeeper, require_zookeeper

pytestmark = pytest.mark.zookeeper


def test_the_engine_runs_on_a_real_zookeeper(tmp_path: Path) -> None:
    require_zookeeper()  # skipped with the reason; in CI (CI=true) a failure
    zk = RealZooKeeper(tmp_path / "zk")
    d = Daemon(tmp_path / "engine", brokers=2)
    try:
        zk.start()
        d.cli("start", "--data-dir", str(d.data_dir), "--brokers", "2",
              "--coordinator", zk.hosts)
        assert d.runtime()["coordinator"] == zk.hosts
        with Admin(d.data_dir) as admin:
            admin.create_topic("on-zk", partitions=2)
            assert admin.describe_cluster()["controller"] in (1, 2)
        with Producer(d.data_dir) as p:
            md = p.send("on-zk", b"hello", partition=1).get()
        with Consumer(data_dir=d.data_dir, auto_offset_reset="earliest") as c:
            c.assign([TopicPartition("on-zk", 1)])
            records = c.poll(timeout=10)
        assert [(r.offset, r.value) for r in records] == [(md.offset, b"hello")]
    finally:
        d.stop()
        d.kill_everything()
        zk.stop()


def test_a_client_made_while_the_zookeeper_is_down_names_it(tmp_path: Path) -> None:
    """The daemon runs; its ZooKeeper does not answer: a new client's error says that, not
    that the daemon is not running (it is: `engine start` would refuse)."""
    require_zookeeper()
    zk = RealZooKeeper(tmp_path / "zk")
    d = Daemon(tmp_path / "engine", brokers=1)
    try:
        zk.start()
        d.cli("start", "--data-dir", str(d.data_dir), "--brokers", "1", "--coordinator", zk.hosts)
        zk.kill()
        with pytest.raises(CoordinatorUnavailableError) as raised:
            Admin(d.data_dir)
        assert not isinstance(raised.value, DaemonNotRunningError)
        assert zk.hosts in str(raised.value)
        assert "ZooKeeper" in str(raised.value)
    finally:
        d.stop()
        d.kill_everything()
        zk.stop()


def test_create_topic_gives_up_within_its_timeout_when_the_zookeeper_is_down(
    tmp_path: Path,
) -> None:
    """Admin.create_topic(timeout=...) bounds the whole call, the coordinator's requests
    included, and its error names the ZooKeeper that does not answer."""
    require_zookeeper()
    zk = RealZooKeeper(tmp_path / "zk")
    d = Daemon(tmp_path / "engine", brokers=1)
    try:
        zk.start()
        d.cli("start", "--data-dir", str(d.data_dir), "--brokers", "1", "--coordinator", zk.hosts)
        with Admin(d.data_dir) as admin:
            zk.kill()
            t0 = time.monotonic()
            with pytest.raises((CoordinatorUnavailableError, EngineTimeoutError)) as raised:
                admin.create_topic("never", timeout=2)
            took = time.monotonic() - t0
            # kazoo answers a request with ConnectionLoss at once or queues it until it
            # reconnects; either way the call ends at its timeout, not the 30 s a
            # coordinator request waits by default.
            assert took < metadata.REQUEST_TIMEOUT_S / 2, took
            assert zk.hosts in str(raised.value)
            zk.start()  # the same port
            admin.create_topic("after", timeout=30)
            assert "after" in admin.list_topics()
    finally:
        d.stop()
        d.kill_everything()
        zk.stop()
