"""The ISR shrinks and heals by the leader's own writes, whatever else lives in the tree."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from engine_harness import Daemon, running_daemon, wait_for

from engine import Admin, Producer


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Daemon]:
    with running_daemon(tmp_path / "engine", brokers=3) as d:
        yield d


def isr(admin: Admin, topic: str) -> tuple[int, ...]:
    return tuple(sorted(admin.describe_topic(topic).partitions[0].isr))


def test_the_isr_shrinks_and_heals_after_a_transactional_id_was_initialised_again(
    cluster: Daemon,
) -> None:
    """A transactional id initialised three times has producer epoch 2; the leader's ISR
    writes must carry its leader epoch (0 here), not a producer epoch (they did: the
    update_isr closure read a name the fencing loop rebound, and every ISR change failed
    silently, so a follower that left the ISR never came back)."""
    for _ in range(3):
        with Producer(cluster.data_dir, transactional_id="t") as p:
            p.init_transactions()
    with Admin(cluster.data_dir) as admin:
        admin.create_topic("healing", partitions=1, replication=3, config={
            "min.insync.replicas": 2, "replica.lag.time.max.ms": 500,
        })  # fmt: skip
        state = admin.describe_topic("healing").partitions[0]
        assert state.leader_epoch == 0 and isr(admin, "healing") == (1, 2, 3)
        follower = next(b for b in state.replicas if b != state.leader)
        pid = cluster.runtime()["processes"][f"broker-{follower}"]
        stop = threading.Event()

        def produce() -> None:  # the follower lags only while records keep coming
            with Producer(cluster.data_dir, acks=1) as p:
                while not stop.is_set():
                    p.send("healing", b"x" * 100)
                    stop.wait(0.001)

        sender = threading.Thread(target=produce)
        sender.start()
        os.kill(pid, signal.SIGSTOP)
        try:
            # Within the follower's coordinator session (4 s: the brokers' own timeout,
            # md.SESSION_TIMEOUT_S), well past replica.lag.time.max.ms: the leader's write.
            wait_for(lambda: len(isr(admin, "healing")) == 2, timeout=3,
                     what="the leader to drop the frozen follower from the ISR")
        finally:
            os.kill(pid, signal.SIGCONT)
        try:
            wait_for(lambda: isr(admin, "healing") == (1, 2, 3), timeout=20,
                     what="the follower to rejoin the ISR")
        finally:
            stop.set()
            sender.join()
        assert admin.describe_topic("healing").partitions[0].leader_epoch == 0
    with Producer(cluster.data_dir, acks="all") as p:
        assert p.send("healing", b"after").get(timeout=10).offset > 0
