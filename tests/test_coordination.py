"""engine.coordination against a real daemon: locks, leases, elections, config, registry.

Failover tests SIGKILL a real process and measure, on CLOCK_MONOTONIC (shared by the
processes of the machine), from the kill to the moment another process reports it
holds the lock, leads, or saw the instance leave. The bound is the contract's: the
session timeout the coordinator granted plus 0.5 s.
"""

from __future__ import annotations

import contextlib
import gc
import queue
import threading
import time
from typing import Any

import pytest
from coordination_harness import Child, children, granted_session_timeout_s, unique
from engine_harness import Daemon, wait_for
from kazoo.client import KazooClient
from kazoo.exceptions import NoAuthError

import engine
from engine import (
    ConfigStore,
    Election,
    InstanceExistsError,
    InvalidNameError,
    LeaseExpiredError,
    LeaseLock,
    Lock,
    LockLostError,
    LockStateError,
    NotJsonError,
    ServiceChange,
    ServiceRegistry,
    VersionConflictError,
)
from engine import metadata as md
from engine.coordination import paths
from engine.datadir import DataDir

# -- Lock ---------------------------------------------------------------------------------


def test_a_killed_lock_holder_frees_the_lock_within_its_session_timeout(
    shared_daemon: Daemon,
) -> None:
    dd, name = str(shared_daemon.data_dir), unique("lock")
    bound = granted_session_timeout_s(shared_daemon) + 0.5
    with children() as procs:
        procs.append(holder := Child("lock", dd, name, "holder"))
        holder.expect("acquired")
        procs.append(waiter := Child("lock", dd, name, "waiter"))
        with contextlib.closing(Lock(name, dd)) as observer:
            wait_for(lambda: observer.contenders() == ["holder", "waiter"], what="the waiter")
            assert observer.holder() == "holder"
            time.sleep(0.5)
            assert waiter.no_event()  # the lock stays the live holder's
            killed = holder.kill()
            got = waiter.expect("acquired", timeout=bound + 5)
            failover = got["t"] - killed
            assert failover <= bound, f"the lock passed {failover:.2f} s after the kill"
            assert observer.holder() == "waiter"


def test_the_lock_passes_in_the_order_it_was_asked_for(shared_daemon: Daemon) -> None:
    dd, name = str(shared_daemon.data_dir), unique("fair")
    order = ["first", "second", "third", "fourth"]
    with children() as procs, contextlib.closing(Lock(name, dd)) as observer:
        for i, ident in enumerate(order):
            procs.append(Child("lock", dd, name, ident))
            wait_for(lambda i=i: observer.contenders() == order[: i + 1],
                     what=f"{ident} to queue")  # fmt: skip
        procs[0].expect("acquired")
        released = 0.0
        for i, child in enumerate(procs):
            if i:  # the next in line, and only once the one before let go
                assert child.expect("acquired")["t"] >= released
            assert all(later.no_event() for later in procs[i + 1 :])
            assert observer.holder() == order[i]
            child.send("release")
            released = child.expect("released")["began"]
        wait_for(lambda: observer.holder() is None, what="the lock to be free")


def test_a_lock_is_not_reentrant_and_release_needs_the_lock(shared_daemon: Daemon) -> None:
    name = unique("state")
    with contextlib.closing(Lock(name, shared_daemon.data_dir, "me")) as lock:
        with pytest.raises(LockStateError, match="not held"):
            lock.release()
        assert lock.acquire(timeout=0)
        assert lock.is_held
        with pytest.raises(LockStateError, match="held by this object already"):
            lock.acquire(timeout=0)
        with contextlib.closing(Lock(name, shared_daemon.data_dir, "other")) as other:
            started = time.monotonic()
            assert other.acquire(timeout=0.3) is False
            assert time.monotonic() - started >= 0.3
            assert other.contenders() == ["me"]  # the timed-out waiter left the queue
        lock.release()
        assert not lock.is_held
        with lock:
            assert lock.holder() == "me"
        assert lock.holder() is None


def test_lock_threads_of_one_process_exclude_each_other(shared_daemon: Daemon) -> None:
    name, inside, overlaps = unique("threads"), [], []

    def work(i: int) -> None:
        with contextlib.closing(Lock(name, shared_daemon.data_dir, f"t{i}")) as lock:
            for _ in range(5):
                with lock:
                    inside.append(i)
                    if len(inside) > 1:
                        overlaps.append(list(inside))
                    time.sleep(0.005)
                    inside.remove(i)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert overlaps == []


# -- LeaseLock ------------------------------------------------------------------------------


def test_a_lease_ends_ttl_after_its_last_renew_while_its_holder_lives(
    shared_daemon: Daemon,
) -> None:
    dd, name, ttl = shared_daemon.data_dir, unique("lease"), 1.0
    with contextlib.closing(LeaseLock(name, ttl, dd, "holder")) as lease, \
            contextlib.closing(LeaseLock(name, ttl, dd, "next")) as other:  # fmt: skip
        assert lease.acquire(timeout=0)
        # Renewed, it outlives its TTL several times over.
        until = time.monotonic() + 3 * ttl
        while time.monotonic() < until:
            last_renew = time.monotonic()
            lease.renew()
            assert other.acquire(timeout=0) is False
            assert lease.holder() == "holder"
            time.sleep(ttl / 4)
        last_renew = time.monotonic()
        lease.renew()
        got: list[float] = []
        waiter = threading.Thread(target=lambda: other.acquire(10 * ttl) and
                                  got.append(time.monotonic()))  # fmt: skip
        waiter.start()
        waiter.join(15 * ttl)
        assert got, "the lease never ended"
        ended = got[0] - last_renew
        # Not a moment before ttl_s, and within the coordinator's sweep (a tick) after.
        assert ttl <= ended <= ttl + 0.5, f"the lease ended {ended:.3f} s after its renew"
        assert lease.remaining() == 0.0 and not lease.is_held
        # Its holder, alive all along, cannot take it back.
        with pytest.raises(LeaseExpiredError, match="ran out before its renew"):
            lease.renew()
        assert lease.holder() == "next"
        assert other.is_held
        other.renew()
        with pytest.raises(LockStateError):
            lease.release()
        other.release()
        assert lease.holder() is None


def test_a_lease_held_by_a_killed_process_is_free_after_its_ttl(shared_daemon: Daemon) -> None:
    dd, name, ttl = str(shared_daemon.data_dir), unique("lease-kill"), 1.5
    with children() as procs, contextlib.closing(LeaseLock(name, ttl, dd, "next")) as other:
        procs.append(holder := Child("lease", dd, name, "holder", str(ttl)))
        holder.expect("acquired")
        holder.send("renew")
        renewed = holder.expect("renewed")["t"]
        holder.kill()
        assert other.acquire(timeout=10 * ttl)
        ended = time.monotonic() - renewed
        assert ttl <= ended <= ttl + 0.5 + 0.2, f"free {ended:.3f} s after the last renew"


def test_release_of_an_expired_lease_says_so(shared_daemon: Daemon) -> None:
    with contextlib.closing(LeaseLock(unique("lease-rel"), 0.3, shared_daemon.data_dir)) as lease:
        assert lease.acquire(timeout=0)
        wait_for(lambda: lease.holder() is None, timeout=5, what="the lease to end")
        with pytest.raises(LeaseExpiredError, match="before its release"):
            lease.release()
        with lease:  # a new lease, released at the end of the block
            assert lease.is_held
        assert lease.holder() is None
        with lease:  # a loss reported in the block is not reported again at its end
            wait_for(lambda: lease.holder() is None, timeout=5, what="the lease to end")
            with pytest.raises(LeaseExpiredError):
                lease.renew()
        with pytest.raises(LeaseExpiredError, match="before its release"), lease:
            wait_for(lambda: lease.holder() is None, timeout=5, what="the lease to end")


# -- Election -------------------------------------------------------------------------------


def test_a_new_leader_leads_within_the_session_timeout_after_the_leader_is_killed(
    shared_daemon: Daemon,
) -> None:
    dd, name = str(shared_daemon.data_dir), unique("election")
    bound = granted_session_timeout_s(shared_daemon) + 0.5
    with children() as procs, contextlib.closing(Election(name, dd)) as observer:
        procs.append(first := Child("election", dd, name, "first"))
        first.expect("candidate")
        first.expect("won")
        for ident in ("second", "third"):
            procs.append(child := Child("election", dd, name, ident))
            child.expect("candidate")
        wait_for(lambda: observer.candidates() == ["first", "second", "third"],
                 what="three candidates")  # fmt: skip
        assert observer.leader() == "first"
        killed = first.kill()
        got = procs[1].expect("won", timeout=bound + 5)
        failover = got["t"] - killed
        assert failover <= bound, f"a new leader led {failover:.2f} s after the kill"
        assert observer.leader() == "second"
        assert procs[2].no_event()


def test_election_callbacks_resign_and_run(shared_daemon: Daemon) -> None:
    dd, name = shared_daemon.data_dir, unique("callbacks")
    seen: list[str] = []
    a = Election(name, dd, "a", on_won=lambda: seen.append("a won"),
                 on_lost=lambda: seen.append("a lost"))  # fmt: skip
    b = Election(name, dd, "b", on_won=lambda: seen.append("b won"),
                 on_lost=lambda: seen.append("b lost"))  # fmt: skip
    try:
        assert a.campaign(timeout=10)
        assert a.is_leader and a.leader() == "a"
        assert b.campaign(timeout=0.3) is False
        assert b.candidates() == ["a", "b"]
        a.resign()
        wait_for(lambda: b.is_leader, what="b to lead")
        assert seen == ["a won", "a lost", "b won"]
        # run() waited its turn: b leads, so a runs only after b resigns.
        result: list[Any] = []
        runner = threading.Thread(target=lambda: result.append(
            a.run(lambda x: (x, a.is_leader, a.leader()), 7)))  # fmt: skip
        runner.start()
        time.sleep(0.3)
        assert result == []
        b.resign()
        runner.join(10)
        assert result == [(7, True, "a")]
        assert not a.is_leader  # it resigned when func returned
    finally:
        a.close()
        b.close()


# -- ConfigStore ----------------------------------------------------------------------------


def test_config_values_keep_their_json_types_and_versions(shared_daemon: Daemon) -> None:
    with ConfigStore(unique("app") + "/prod", shared_daemon.data_dir) as store:
        assert store.get("limits") is None and store.get("limits", 5) == 5
        assert store.set("limits", {"rate": 100, "burst": 2.5, "on": True, "tags": ["a"]}) == 0
        assert store.set("name", "billing") == 0
        assert store.set("name", "invoices") == 1
        assert store.get("limits") == {"rate": 100, "burst": 2.5, "on": True, "tags": ["a"]}
        assert store.get_versioned("name") == ("invoices", 1)
        assert store.keys() == ["limits", "name"]
        assert store.items()["name"] == "invoices"
        with pytest.raises(NotJsonError):
            store.set("bad", object())
        with pytest.raises(NotJsonError):
            store.set("bad", float("nan"))
        with pytest.raises(InvalidNameError):
            store.set("a/b", 1)
        assert store.delete("name") and not store.delete("name")
        assert store.get_versioned("name") is None


def test_compare_and_set_lets_one_of_two_writers_of_a_version_win(shared_daemon: Daemon) -> None:
    path = unique("cas")
    with ConfigStore(path, shared_daemon.data_dir) as one, \
            ConfigStore(path, shared_daemon.data_dir) as two:  # fmt: skip
        assert one.compare_and_set("leader", "one", None) == 0  # create-only
        with pytest.raises(VersionConflictError) as conflict:
            two.compare_and_set("leader", "two", None)
        assert (conflict.value.expected, conflict.value.actual) == (None, 0)
        read_one, read_two = one.get_versioned("leader"), two.get_versioned("leader")
        assert read_one == read_two == ("one", 0)
        assert one.compare_and_set("leader", "one again", read_one.version) == 1
        with pytest.raises(VersionConflictError, match="expected=0 actual=1") as conflict:
            two.compare_and_set("leader", "two", read_two.version)
        assert (conflict.value.key, conflict.value.expected, conflict.value.actual) == (
            "leader", 0, 1)  # fmt: skip
        assert two.get("leader") == "one again"
        with pytest.raises(VersionConflictError, match="actual=absent"):
            two.compare_and_set("missing", 1, 0)
        with pytest.raises(VersionConflictError):
            two.delete("leader", version=0)
        assert two.delete("leader", version=1)


def test_a_config_watch_sees_the_value_now_and_after_each_change(shared_daemon: Daemon) -> None:
    path = unique("watched")
    seen: list[tuple[Any, int | None]] = []
    with ConfigStore(path, shared_daemon.data_dir) as store, \
            ConfigStore(path, shared_daemon.data_dir) as writer:  # fmt: skip
        handle = store.watch("level", lambda value, version: seen.append((value, version)))
        assert seen == [(None, None)]
        writer.set("level", "info")
        wait_for(lambda: seen[-1] == ("info", 0), what="the first value")
        writer.set("level", {"default": "debug"})
        wait_for(lambda: seen[-1] == ({"default": "debug"}, 1), what="the change")
        writer.delete("level")
        wait_for(lambda: seen[-1] == (None, None), what="the delete")
        handle.cancel()
        count = len(seen)
        writer.set("level", "warning")
        wait_for(lambda: writer.get("level") == "warning")
        time.sleep(0.3)
        assert len(seen) == count


# -- ServiceRegistry ------------------------------------------------------------------------


def test_a_killed_instance_leaves_the_registry_within_its_session_timeout(
    shared_daemon: Daemon,
) -> None:
    dd, service = str(shared_daemon.data_dir), unique("svc")
    bound = granted_session_timeout_s(shared_daemon) + 0.5
    changes: queue.Queue[tuple[float, ServiceChange]] = queue.Queue()
    with children() as procs, ServiceRegistry(service, dd) as registry:
        registry.watch(lambda change: changes.put((time.monotonic(), change)))
        assert changes.get(timeout=10)[1] == ServiceChange({}, [], [])
        procs.append(one := Child("register", dd, service, "one"))
        one.expect("registered")
        procs.append(two := Child("register", dd, service, "two"))
        two.expect("registered")
        joined: list[str] = []
        while joined != ["one", "two"]:
            joined += changes.get(timeout=10)[1].joined
        assert registry.instances() == {"one": {"pid": one.proc.pid},
                                        "two": {"pid": two.proc.pid}}  # fmt: skip
        with pytest.raises(InstanceExistsError):
            registry.register(instance_id="one")
        killed = one.kill()
        seen, change = changes.get(timeout=bound + 5)
        assert change.left == ["one"] and change.instances == {"two": {"pid": two.proc.pid}}
        assert seen - killed <= bound, f"it left {seen - killed:.2f} s after the kill"
        mine = registry.register({"port": 80})
        assert changes.get(timeout=10)[1].joined == [mine]
        registry.unregister(mine)
        assert changes.get(timeout=10)[1].left == [mine]


def test_an_object_that_holds_something_lives_as_long_as_it_does(shared_daemon: Daemon) -> None:
    dd, name, seen = shared_daemon.data_dir, unique("pinned"), []
    ConfigStore(name, dd).watch("k", lambda value, version: seen.append(value))
    assert Lock(name, dd, "nobody refers to me").acquire(timeout=5)
    gc.collect()
    with ConfigStore(name, dd) as writer, contextlib.closing(Lock(name, dd)) as other:
        writer.set("k", 1)
        wait_for(lambda: seen[-1:] == [1], what="the watch of a store nobody refers to")
        assert other.holder() == "nobody refers to me"
        for held in list(other._session.pinned):  # let them go: close() unpins
            if held is not writer:
                held.close()  # type: ignore[attr-defined]
        assert other.holder() is None
        writer.set("k", 2)
        time.sleep(0.3)
        assert seen[-1] == 1


# -- the tree, the ACL, the CLI -------------------------------------------------------------


def test_the_recipes_znodes_are_the_engine_users_alone(shared_daemon: Daemon) -> None:
    name = unique("private")
    hosts = shared_daemon.runtime()["coordinator"]
    with contextlib.closing(Lock(name, shared_daemon.data_dir, "mine")) as lock:
        assert lock.acquire(timeout=5)
        stranger = KazooClient(hosts=hosts)
        stranger.start(timeout=15)
        try:
            for path in (paths.LOCKS, paths.lock_path(name)):
                with pytest.raises(NoAuthError):
                    stranger.get_children(path)
                with pytest.raises(NoAuthError):
                    stranger.create(f"{path}/intruder", b"")
        finally:
            stranger.stop()
            stranger.close()
        zk = md.connect(DataDir.resolve(shared_daemon.data_dir))
        try:
            acl = md.engine_acl(DataDir.resolve(shared_daemon.data_dir).read_secret())
            (node,) = zk.get_children(paths.lock_path(name))
            for path in (paths.ROOT, paths.LOCKS, paths.lock_path(name),
                         f"{paths.lock_path(name)}/{node}"):  # fmt: skip
                assert list(zk.get_acls(path)[0]) == acl, path
        finally:
            zk.stop()
            zk.close()


def test_coordination_names_are_exported_from_engine() -> None:
    for name in ("LeaseLock", "Lock", "Election", "ConfigStore", "ServiceRegistry"):
        assert name in engine.__all__
        assert getattr(engine, name) is getattr(engine.coordination, name)
    for bad in ("", "..", "a/b", "x" * 201, "sp ace"):
        with pytest.raises(InvalidNameError):
            paths.lock_path(bad)


# -- a session that expires under a live process -------------------------------------------


def expire_session(daemon: Daemon, client: KazooClient) -> None:
    """End ``client``'s session as the coordinator ends a silent one: another connection
    takes the session over (its id and password) and closes it (ZooKeeper's own test
    trick). ``client`` then finds it expired and gets a new one."""
    other = KazooClient(hosts=daemon.runtime()["coordinator"], client_id=client.client_id)
    other.start(timeout=15)
    other.stop()
    other.close()


def test_after_its_session_expired_a_lock_is_lost_and_says_so(shared_daemon: Daemon) -> None:
    name = unique("lost")
    with contextlib.closing(Lock(name, shared_daemon.data_dir, "was-holder")) as lock, \
            contextlib.closing(Lock(name, shared_daemon.data_dir, "next")) as other:  # fmt: skip
        assert lock.acquire(timeout=5)
        session = lock._session.client.client_id[0]
        expire_session(shared_daemon, lock._session.client)
        assert other.acquire(timeout=10)  # the holder's node went with its session
        wait_for(lambda: not lock.is_held, what="the holder to see its session lost")
        assert lock._session.client.client_id[0] != session
        with pytest.raises(LockLostError, match="session expired"):
            lock.release()
        assert other.holder() == "next"


def test_after_its_session_expired_a_leader_loses_and_campaigns_again(
    shared_daemon: Daemon,
) -> None:
    seen: list[str] = []
    election = Election(unique("again"), shared_daemon.data_dir, "only",
                        on_won=lambda: seen.append("won"),
                        on_lost=lambda: seen.append("lost"))  # fmt: skip
    try:
        assert election.campaign(timeout=10)
        expire_session(shared_daemon, election._session.client)
        wait_for(lambda: seen == ["won", "lost", "won"], what="lost, then led again")
        assert election.is_leader and election.candidates() == ["only"]
    finally:
        election.close()
    assert seen == ["won", "lost", "won", "lost"]


def test_after_its_session_expired_a_registry_registers_its_instances_again(
    shared_daemon: Daemon,
) -> None:
    service = unique("again")
    with ServiceRegistry(service, shared_daemon.data_dir) as registry, \
            ServiceRegistry(service, shared_daemon.data_dir,
                            session_timeout_s=5.0) as watcher:  # fmt: skip
        changes: queue.Queue[ServiceChange] = queue.Queue()
        watcher.watch(changes.put)  # on a session of its own (another timeout asked)
        assert changes.get(timeout=10).instances == {}
        registry.register({"port": 1}, instance_id="i1")
        assert changes.get(timeout=10).joined == ["i1"]
        expire_session(shared_daemon, registry._session.client)
        assert changes.get(timeout=10).left == ["i1"]
        assert changes.get(timeout=10).joined == ["i1"]
        assert watcher.instances() == {"i1": {"port": 1}}


def test_a_leader_cut_off_from_the_coordinator_stops_leading_until_it_is_back(
    daemon: Daemon,
) -> None:
    """While the daemon is down the leader cannot know whether its session lives on, so it
    counts itself as no longer leading; with the daemon back it leads again."""
    seen: list[str] = []
    election = Election("cut-off", daemon.data_dir, "leader",
                        on_won=lambda: seen.append("won"),
                        on_lost=lambda: seen.append("lost"))  # fmt: skip
    try:
        assert election.campaign(timeout=10)
        daemon.stop()
        wait_for(lambda: seen == ["won", "lost"], what="the leader to stop leading")
        assert not election.is_leader
        daemon.start()
        wait_for(lambda: seen == ["won", "lost", "won"], timeout=30, what="it to lead again")
        assert election.leader() == "leader"
    finally:
        election.close()
