"""Watches: one-shot data/exists/child watches, ordering, persistent and recursive
watches (addWatch) and setWatches after a reconnect."""

from __future__ import annotations

import threading
from collections.abc import Callable

from kazoo.client import KazooClient
from kazoo.protocol.states import WatchedEvent
from zkharness import RawClient, ServerProcess, wait_until

from engine.coordinator.jute import (
    OPEN_ACL_UNSAFE,
    AddWatchMode,
    AddWatchRequest,
    CreateRequest,
    DeleteRequest,
    EventType,
    OpCode,
    SetDataRequest,
    SetWatchesRequest,
    WatchRequest,
)


class Recorder:
    """Collects kazoo watch events; ``settle`` proves no later event is still in flight."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []
        self._lock = threading.Lock()

    def __call__(self, event: WatchedEvent) -> None:
        with self._lock:
            self.events.append((event.type, event.path))

    def wait(self, count: int, timeout: float = 5.0) -> list[tuple[str, str]]:
        wait_until(lambda: len(self.events) >= count, timeout, f"{count} watch events")
        return list(self.events)

    def settle(self, client: KazooClient, scratch: str) -> list[tuple[str, str]]:
        """Fire a sentinel watch on the same connection and wait for it: kazoo delivers
        events in order, so every event sent before it has been recorded too."""
        seen = threading.Event()
        client.ensure_path(scratch)
        client.get(scratch, watch=lambda event: seen.set())
        client.set(scratch, b"sentinel")
        assert seen.wait(5), "sentinel watch did not fire"
        return list(self.events)


def test_data_watch_fires_once(zk: KazooClient) -> None:
    zk.create("/w", b"0")
    recorder = Recorder()
    zk.get("/w", watch=recorder)
    zk.set("/w", b"1")
    zk.set("/w", b"2")
    assert recorder.wait(1) == [("CHANGED", "/w")]
    assert recorder.settle(zk, "/sentinel") == [("CHANGED", "/w")]


def test_exists_watch_on_missing_node_fires_on_create(
        zk: KazooClient, make_client: Callable[..., KazooClient]) -> None:
    recorder = Recorder()
    assert zk.exists("/later", watch=recorder) is None
    make_client().create("/later", b"")
    assert recorder.wait(1) == [("CREATED", "/later")]


def test_child_watch_fires_on_create_and_delete_once_each(zk: KazooClient) -> None:
    zk.create("/kids", b"")
    recorder = Recorder()
    zk.get_children("/kids", watch=recorder)
    zk.create("/kids/a", b"")
    zk.create("/kids/b", b"")
    assert recorder.wait(1) == [("CHILD", "/kids")]
    zk.get_children("/kids", watch=recorder)
    zk.delete("/kids/a")
    assert recorder.wait(2) == [("CHILD", "/kids"), ("CHILD", "/kids")]
    assert len(recorder.settle(zk, "/sentinel")) == 2


def test_delete_fires_data_and_child_watches(zk: KazooClient) -> None:
    zk.create("/gone", b"")
    data, children = Recorder(), Recorder()
    zk.get("/gone", watch=data)
    zk.get_children("/gone", watch=children)
    zk.delete("/gone")
    assert data.wait(1) == [("DELETED", "/gone")]
    assert children.wait(1) == [("DELETED", "/gone")]


def test_set_data_does_not_fire_child_watch(zk: KazooClient) -> None:
    zk.create("/quiet", b"")
    recorder = Recorder()
    zk.get_children("/quiet", watch=recorder)
    zk.set("/quiet", b"changed")
    assert recorder.settle(zk, "/sentinel") == []


def test_watch_event_arrives_before_the_reply_revealing_the_change(
        server: ServerProcess, chroot: str, zk: KazooClient) -> None:
    path = f"{chroot}/ordered"
    zk.create("/ordered", b"old")
    reader = RawClient(server.port)
    try:
        err, _, _ = reader.call(OpCode.GET_DATA, WatchRequest(path, True))
        assert err == 0
        for round_ in range(20):
            zk.set("/ordered", f"new{round_}".encode())
            while True:
                err, _, body = reader.call(OpCode.GET_DATA, WatchRequest(path, False))
                if body.read_buffer() == f"new{round_}".encode():
                    break
            # the change is visible in the reply, so its event came before that reply
            assert reader.events == [(EventType.NODE_DATA_CHANGED, 3, path)]
            reader.events.clear()
            reader.call(OpCode.GET_DATA, WatchRequest(path, True))
    finally:
        reader.close()


def test_ephemeral_owner_close_fires_watch_on_other_client(
        zk: KazooClient, make_client: Callable[..., KazooClient]) -> None:
    owner = make_client()
    owner.create("/controller", b'{"brokerid": 1}', ephemeral=True)
    recorder = Recorder()
    assert zk.exists("/controller", watch=recorder) is not None
    owner.stop()
    assert recorder.wait(1) == [("DELETED", "/controller")]


def test_persistent_watch_keeps_firing(server: ServerProcess, chroot: str,
                                       zk: KazooClient) -> None:
    watcher = RawClient(server.port)
    try:
        path = f"{chroot}/pw"
        request = AddWatchRequest(path, AddWatchMode.PERSISTENT)
        assert watcher.call(OpCode.ADD_WATCH, request)[0] == 0
        zk.create("/pw", b"")
        zk.set("/pw", b"1")
        zk.set("/pw", b"2")
        zk.create("/pw/child", b"")
        zk.create("/pw/child/grandchild", b"")  # not the watched path: no event
        zk.delete("/pw/child/grandchild")
        zk.delete("/pw/child")
        zk.delete("/pw")
        events = watcher.wait_events(6)
        assert [(t, p) for t, _, p in events] == [
            (EventType.NODE_CREATED, path),
            (EventType.NODE_DATA_CHANGED, path),
            (EventType.NODE_DATA_CHANGED, path),
            (EventType.NODE_CHILDREN_CHANGED, path),
            (EventType.NODE_CHILDREN_CHANGED, path),
            (EventType.NODE_DELETED, path),
        ]
    finally:
        watcher.close()


def test_recursive_watch_sees_the_whole_subtree(server: ServerProcess, chroot: str,
                                                zk: KazooClient) -> None:
    watcher = RawClient(server.port)
    try:
        base = f"{chroot}/rw"
        zk.create("/rw", b"")
        mode = AddWatchMode.PERSISTENT_RECURSIVE
        assert watcher.call(OpCode.ADD_WATCH, AddWatchRequest(base, mode))[0] == 0
        zk.create("/rw/a", b"")
        zk.create("/rw/a/b", b"")
        zk.set("/rw/a/b", b"x")
        zk.delete("/rw/a/b")
        events = watcher.wait_events(4)
        assert [(t, p) for t, _, p in events] == [
            (EventType.NODE_CREATED, f"{base}/a"),
            (EventType.NODE_CREATED, f"{base}/a/b"),
            (EventType.NODE_DATA_CHANGED, f"{base}/a/b"),
            (EventType.NODE_DELETED, f"{base}/a/b"),
        ]
    finally:
        watcher.close()


def test_set_watches_after_reconnect_reports_missed_changes(
        server: ServerProcess, chroot: str, zk: KazooClient) -> None:
    zk.create("/sw-data", b"")
    zk.create("/sw-kids", b"")
    first = RawClient(server.port)
    seen_zxid = first.call(OpCode.GET_DATA, WatchRequest(f"{chroot}/sw-data", True))[1]
    first.close(end_session=False)
    # while no connection holds the watches, things change
    zk.set("/sw-data", b"changed")
    zk.create("/sw-new", b"")
    second = RawClient(server.port, session_id=first.session_id, passwd=first.passwd,
                       last_zxid=seen_zxid)
    try:
        assert second.session_id == first.session_id
        request = SetWatchesRequest(
            seen_zxid,
            data=(f"{chroot}/sw-data",),
            exist=(f"{chroot}/sw-new", f"{chroot}/sw-none"),
            child=(f"{chroot}/sw-kids",))
        err, _, _ = second.call(OpCode.SET_WATCHES, request, xid=-8)
        assert err == 0
        events = second.wait_events(2)
        assert sorted((t, p) for t, _, p in events) == [
            (EventType.NODE_CREATED, f"{chroot}/sw-new"),
            (EventType.NODE_DATA_CHANGED, f"{chroot}/sw-data"),
        ]
        # the unchanged ones were registered and fire later
        second.events.clear()
        zk.create("/sw-kids/x", b"")
        zk.create("/sw-none", b"")
        events = second.wait_events(2)
        assert sorted((t, p) for t, _, p in events) == [
            (EventType.NODE_CREATED, f"{chroot}/sw-none"),
            (EventType.NODE_CHILDREN_CHANGED, f"{chroot}/sw-kids"),
        ]
    finally:
        second.close()


def test_raw_writes_fire_kazoo_watches(server: ServerProcess, chroot: str,
                                       zk: KazooClient) -> None:
    zk.create("/mixed", b"")
    recorder = Recorder()
    zk.get("/mixed", watch=recorder)
    raw = RawClient(server.port)
    try:
        assert raw.call(OpCode.SET_DATA, SetDataRequest(f"{chroot}/mixed", b"r", -1))[0] == 0
        assert raw.call(OpCode.CREATE, CreateRequest(
            f"{chroot}/mixed2", b"", OPEN_ACL_UNSAFE, 0))[0] == 0
        assert raw.call(OpCode.DELETE, DeleteRequest(f"{chroot}/mixed2", -1))[0] == 0
    finally:
        raw.close()
    assert recorder.wait(1) == [("CHANGED", "/mixed")]


def test_remove_watches_and_check_watches(server: ServerProcess, chroot: str,
                                          zk: KazooClient) -> None:
    from engine.coordinator.jute import RemoveWatchesRequest, WatcherType

    zk.create("/rm", b"")
    client = RawClient(server.port)
    try:
        path = f"{chroot}/rm"
        assert client.call(OpCode.GET_DATA, WatchRequest(path, True))[0] == 0
        check = RemoveWatchesRequest(path, WatcherType.DATA)
        assert client.call(OpCode.CHECK_WATCHES, check)[0] == 0
        assert client.call(OpCode.CHECK_WATCHES,
                           RemoveWatchesRequest(path, WatcherType.CHILDREN))[0] == -121
        assert client.call(OpCode.REMOVE_WATCHES, check)[0] == 0
        assert client.call(OpCode.CHECK_WATCHES, check)[0] == -121  # NoWatcher
        zk.set("/rm", b"x")
        client.poll_events(0.3)
        assert [e for e in client.events if e[0] != EventType.DATA_WATCH_REMOVED] == []
    finally:
        client.close()
