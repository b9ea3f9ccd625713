"""engine.coordination on a real ZooKeeper (`engine start --coordinator`): the same
recipes, the TTL nodes of LeaseLock included (the harness starts ZooKeeper with
zookeeper.extendedTypesEnabled=true and znode.container.checkIntervalMs=100)."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

import pytest
from coordination_harness import Child, children, granted_session_timeout_s, unique
from engine_harness import Daemon, wait_for
from zkharness import RealZooKeeper, require_zookeeper

from engine import ConfigStore, Election, LeaseExpiredError, LeaseLock, Lock, VersionConflictError

pytestmark = pytest.mark.zookeeper


@pytest.fixture(scope="module")
def zk_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """A daemon of one broker on a real ZooKeeper, for this module's tests."""
    require_zookeeper()  # skipped with the reason; in CI (CI=true) a failure
    base = tmp_path_factory.mktemp("coordination-zk")
    zk = RealZooKeeper(base / "zk")
    d = Daemon(base / "engine", brokers=1)
    try:
        zk.start()
        d.cli("start", "--data-dir", str(d.data_dir), "--brokers", "1",
              "--coordinator", zk.hosts)  # fmt: skip
        yield d
    finally:
        d.stop()
        d.kill_everything()
        zk.stop()


def test_a_lease_ends_ttl_after_its_last_renew_on_a_real_zookeeper(zk_daemon: Daemon) -> None:
    dd, name, ttl = zk_daemon.data_dir, unique("lease"), 1.0
    with contextlib.closing(LeaseLock(name, ttl, dd, "holder")) as lease, \
            contextlib.closing(LeaseLock(name, ttl, dd, "next")) as other:  # fmt: skip
        assert lease.acquire(timeout=5)
        assert other.acquire(timeout=0) is False
        last_renew = time.monotonic()
        lease.renew()
        got: list[float] = []
        waiter = threading.Thread(target=lambda: other.acquire(10 * ttl) and
                                  got.append(time.monotonic()))  # fmt: skip
        waiter.start()
        waiter.join(15 * ttl)
        assert got, "the lease never ended"
        ended = got[0] - last_renew
        assert ttl <= ended <= ttl + 0.5, f"the lease ended {ended:.3f} s after its renew"
        with pytest.raises(LeaseExpiredError):
            lease.renew()
        assert lease.holder() == "next"
        other.release()


def test_lock_and_config_store_on_a_real_zookeeper(zk_daemon: Daemon) -> None:
    dd, name = zk_daemon.data_dir, unique("zk")
    with contextlib.closing(Lock(name, dd, "a")) as a, contextlib.closing(Lock(name, dd, "b")) as b:
        assert a.acquire(timeout=5)
        assert b.acquire(timeout=0.2) is False
        a.release()
        assert b.acquire(timeout=5) and b.holder() == "b"
        b.release()
    with ConfigStore(name, dd) as store:
        assert store.compare_and_set("k", [1, 2], None) == 0
        with pytest.raises(VersionConflictError):
            store.compare_and_set("k", [3], 5)
        seen: list[object] = []
        store.watch("k", lambda value, version: seen.append((value, version)))
        store.set("k", {"x": 1})
        wait_for(lambda: seen[-1] == ({"x": 1}, 1), what="the watch")


def test_a_new_leader_leads_within_the_session_timeout_on_a_real_zookeeper(
    zk_daemon: Daemon,
) -> None:
    dd, name = str(zk_daemon.data_dir), unique("election")
    bound = granted_session_timeout_s(zk_daemon) + 0.5
    with children() as procs, contextlib.closing(Election(name, dd)) as observer:
        procs.append(first := Child("election", dd, name, "first"))
        first.expect("candidate")
        first.expect("won")
        procs.append(second := Child("election", dd, name, "second"))
        second.expect("candidate")
        wait_for(lambda: observer.candidates() == ["first", "second"], what="two candidates")
        killed = first.kill()
        failover = second.expect("won", timeout=bound + 5)["t"] - killed
        assert failover <= bound, f"a new leader led {failover:.2f} s after the kill"
        assert observer.leader() == "second"


def test_paths_are_the_same_on_a_real_zookeeper(zk_daemon: Daemon) -> None:
    listing = zk_daemon.cli("coord", "ls", "/engine/coordination").stdout.decode().split()
    assert listing == ["config", "elections", "leases", "locks", "services"]
