"""kazoo's recipes against the server: Lock, NonBlockingLease, Election, Party, Counter,
DataWatch, ChildrenWatch, TreeCache."""

from __future__ import annotations

import datetime
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from kazoo.client import KazooClient
from kazoo.recipe.cache import TreeCache, TreeEvent
from kazoo.recipe.lease import NonBlockingLease
from zkharness import ROOT, ServerProcess, wait_until

_HOLDER = """
import sys, time
from kazoo.client import KazooClient
zk = KazooClient(hosts=sys.argv[1], timeout=float(sys.argv[3]))
zk.start()
zk.Lock(sys.argv[2], "doomed-holder").acquire()
print("locked", flush=True)
time.sleep(600)
"""


def test_lock_is_exclusive_and_handed_over(make_client: Callable[..., KazooClient]) -> None:
    first, second = make_client(), make_client()
    lock_a = first.Lock("/lock", "a")
    lock_b = second.Lock("/lock", "b")
    assert lock_a.acquire(timeout=5)
    assert not lock_b.acquire(blocking=False)
    assert lock_b.contenders() == ["a"]
    got = threading.Event()

    def wait_for_it() -> None:
        if lock_b.acquire(timeout=15):
            got.set()

    thread = threading.Thread(target=wait_for_it)
    thread.start()
    wait_until(lambda: len(lock_a.contenders()) == 2, 5, "b to queue")
    assert not got.is_set()
    lock_a.release()
    thread.join(15)
    assert got.is_set()
    lock_b.release()


def test_lock_is_released_when_its_holder_is_sigkilled(
        server: ServerProcess, chroot: str, make_client: Callable[..., KazooClient]) -> None:
    timeout = 2.0
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, server.hosts + chroot, "/perpetual", str(timeout)],
        stdout=subprocess.PIPE, env=env)
    try:
        assert holder.stdout is not None
        ready, _, _ = select.select([holder.stdout], [], [], 30)
        assert ready and holder.stdout.readline().strip() == b"locked"
        waiter = make_client().Lock("/perpetual", "survivor")
        assert not waiter.acquire(blocking=False)
        killed_at = time.monotonic()
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
        assert waiter.acquire(timeout=timeout + 10)
        # the lock came free once the dead holder's session expired
        assert time.monotonic() - killed_at < timeout + 5
        waiter.release()
    finally:
        if holder.poll() is None:
            holder.kill()
        holder.wait(10)
        if holder.stdout is not None:
            holder.stdout.close()


def test_non_blocking_lease_lapses_after_its_duration(
        make_client: Callable[..., KazooClient]) -> None:
    first, second = make_client(), make_client()
    # Long enough that a slow machine (a JVM ZooKeeper on 2 busy cores) still makes
    # the next three calls within it: the lease is held by its wall-clock end time.
    duration = datetime.timedelta(seconds=3)
    assert NonBlockingLease(first, "/lease", duration, identifier="first")
    assert not NonBlockingLease(second, "/lease", duration, identifier="second")
    assert NonBlockingLease(first, "/lease", duration, identifier="first")  # renewal
    wait_until(lambda: NonBlockingLease(second, "/lease", duration, identifier="second"),
               10, "the lease to lapse", interval=0.2)


def test_election_picks_one_leader_and_fails_over(
        make_client: Callable[..., KazooClient]) -> None:
    leaders: list[str] = []
    release = {"a": threading.Event(), "b": threading.Event()}
    clients = {"a": make_client(), "b": make_client()}
    elections = {name: client.Election("/election", name) for name, client in clients.items()}

    def lead(name: str) -> None:
        leaders.append(name)
        release[name].wait(30)

    thread_a = threading.Thread(target=elections["a"].run, args=(lead, "a"))
    thread_a.start()
    wait_until(lambda: leaders == ["a"], 10, "a to lead")
    thread_b = threading.Thread(target=elections["b"].run, args=(lead, "b"))
    thread_b.start()
    wait_until(lambda: len(elections["a"].contenders()) == 2, 10, "b to contend")
    assert leaders == ["a"]
    release["a"].set()
    thread_a.join(10)
    wait_until(lambda: leaders == ["a", "b"], 10, "b to take over")
    release["b"].set()
    thread_b.join(10)


def test_party_membership(make_client: Callable[..., KazooClient]) -> None:
    first, second = make_client(), make_client()
    party_a = first.Party("/party", "alpha")
    party_b = second.Party("/party", "beta")
    party_a.join()
    party_b.join()
    assert sorted(party_a) == ["alpha", "beta"]
    assert len(party_b) == 2
    second.stop()  # the session goes, and the member with it
    assert list(party_a) == ["alpha"]
    party_a.leave()
    assert len(party_a) == 0


def test_counter_under_concurrent_increments(
        make_client: Callable[..., KazooClient]) -> None:
    clients = [make_client() for _ in range(3)]

    def bump(client: KazooClient) -> None:
        counter = client.Counter("/counter")
        for _ in range(20):
            counter += 1

    threads = [threading.Thread(target=bump, args=(c,)) for c in clients]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert clients[0].Counter("/counter").value == 60
    floats = clients[0].Counter("/float-counter", default=0.5)
    floats += 1.25
    assert floats.value == 1.75


def test_data_watch_follows_changes(zk: KazooClient) -> None:
    seen: list[Any] = []
    zk.create("/dw", b"v0")

    @zk.DataWatch("/dw")
    def on_change(data: bytes | None, stat: Any) -> None:
        seen.append(data)

    wait_until(lambda: seen == [b"v0"], 5, "the initial call")
    zk.set("/dw", b"v1")
    wait_until(lambda: seen[-1:] == [b"v1"], 5, "the change")
    zk.delete("/dw")
    wait_until(lambda: seen[-1:] == [None], 5, "the deletion")


def test_children_watch_follows_membership(zk: KazooClient) -> None:
    snapshots: list[list[str]] = []
    zk.ensure_path("/brokers/ids")

    @zk.ChildrenWatch("/brokers/ids")
    def on_children(children: list[str]) -> None:
        snapshots.append(sorted(children))

    wait_until(lambda: snapshots == [[]], 5, "the initial call")
    zk.create("/brokers/ids/1", b"", ephemeral=True)
    zk.create("/brokers/ids/2", b"", ephemeral=True)
    wait_until(lambda: snapshots[-1:] == [["1", "2"]], 5, "both brokers")
    zk.delete("/brokers/ids/1")
    wait_until(lambda: snapshots[-1:] == [["2"]], 5, "broker 1 to go")


def test_tree_cache_mirrors_the_subtree(zk: KazooClient) -> None:
    zk.create("/tc/a", b"1", makepath=True)
    events: list[tuple[int, str | None]] = []
    cache = TreeCache(zk, "/tc")
    cache.listen(lambda event: events.append(
        (event.event_type, event.event_data.path if event.event_data else None)))
    cache.start()
    try:
        wait_until(lambda: (TreeEvent.INITIALIZED, None) in events, 10, "initialization")
        zk.create("/tc/b/c", b"deep", makepath=True)
        zk.set("/tc/a", b"2")
        wait_until(lambda: cache.get_data("/tc/b/c") is not None, 5, "the new node")
        wait_until(lambda: cache.get_data("/tc/a").data == b"2", 5, "the update")
        assert sorted(cache.get_children("/tc")) == ["a", "b"]
        zk.delete("/tc/b", recursive=True)
        wait_until(lambda: cache.get_data("/tc/b") is None, 5, "the removal")
    finally:
        cache.close()
