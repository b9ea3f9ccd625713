"""`engine start --coordinator HOST:PORT`: the engine on a real ZooKeeper instead of its own."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from engine_harness import Daemon

from engine import Admin, Consumer, Producer, TopicPartition

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
