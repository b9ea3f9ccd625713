"""Core operations through kazoo: node kinds, errors, stat fields, multi, limits."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from kazoo.client import KazooClient
from kazoo.exceptions import (
    BadArgumentsError,
    BadVersionError,
    ConnectionLoss,
    NoChildrenForEphemeralsError,
    NodeExistsError,
    NoNodeError,
    NotEmptyError,
    RolledBackError,
    RuntimeInconsistency,
)
from zkharness import RawClient, ServerProcess, make_server, require_zookeeper, wait_until

from conftest import new_client, stop_client
from engine.coordinator.jute import (
    OPEN_ACL_UNSAFE,
    CreateFlag,
    CreateRequest,
    MultiRequest,
    OpCode,
    SetDataRequest,
)


def test_create_get_set_delete_round_trip(zk: KazooClient) -> None:
    assert zk.create("/a", b"one") == "/a"
    data, stat = zk.get("/a")
    assert data == b"one"
    assert (stat.version, stat.dataLength, stat.numChildren) == (0, 3, 0)
    new_stat = zk.set("/a", b"three")
    assert new_stat.version == 1
    assert new_stat.mzxid > stat.mzxid
    assert new_stat.czxid == stat.czxid
    assert zk.get("/a")[0] == b"three"
    zk.delete("/a")
    assert zk.exists("/a") is None


def test_create_with_makepath_and_ensure_path(zk: KazooClient) -> None:
    zk.create("/x/y/z", b"deep", makepath=True)
    assert zk.get("/x/y/z")[0] == b"deep"
    zk.ensure_path("/x/y/z")
    zk.ensure_path("/brokers/topics/t/partitions/0")
    assert zk.get_children("/brokers/topics/t/partitions") == ["0"]


def test_errors_map_to_kazoo_exceptions(zk: KazooClient) -> None:
    zk.create("/p", b"")
    zk.create("/p/c", b"")
    with pytest.raises(NodeExistsError):
        zk.create("/p", b"")
    with pytest.raises(NoNodeError):
        zk.create("/missing/child", b"")
    with pytest.raises(NoNodeError):
        zk.get("/missing")
    with pytest.raises(NoNodeError):
        zk.set("/missing", b"")
    with pytest.raises(NoNodeError):
        zk.delete("/missing")
    with pytest.raises(NotEmptyError):
        zk.delete("/p")
    with pytest.raises(BadVersionError):
        zk.set("/p", b"x", version=5)
    with pytest.raises(BadVersionError):
        zk.delete("/p/c", version=3)
    zk.create("/eph", b"", ephemeral=True)
    with pytest.raises(NoChildrenForEphemeralsError):
        zk.create("/eph/child", b"")


def test_null_data_reads_back_as_null_apart_from_empty_data(
        server: ServerProcess, chroot: str, zk: KazooClient) -> None:
    """kazoo's value=None sends a buffer of length -1: ZooKeeper keeps it null, which
    kazoo reads as None, while b"" stays b"" (kazoo's test_create_null_data and
    test_set_null_data). In a multi too (kazoo's transactions refuse None: raw jute)."""
    zk.create("/null", None)
    zk.create("/empty", b"")
    data, stat = zk.get("/null")
    assert data is None and stat.dataLength == 0
    assert zk.get("/empty") == (b"", zk.exists("/empty"))
    zk.set("/empty", None)
    zk.set("/null", b"")
    assert zk.get("/empty")[0] is None
    assert zk.get("/null")[0] == b""
    raw = RawClient(server.port)
    try:
        err, _, _ = raw.call(OpCode.MULTI, MultiRequest((
            (OpCode.CREATE, CreateRequest(f"{chroot}/multi-null", None, OPEN_ACL_UNSAFE, 0)),
            (OpCode.CREATE, CreateRequest(f"{chroot}/multi-empty", b"", OPEN_ACL_UNSAFE, 0)),
            (OpCode.SET_DATA, SetDataRequest(f"{chroot}/null", None, -1)))))
        assert err == 0
    finally:
        raw.close()
    assert [zk.get(p)[0] for p in ("/multi-null", "/multi-empty", "/null")] == [None, b"", None]


def test_versions_guard_set_and_delete(zk: KazooClient) -> None:
    zk.create("/v", b"0")
    stat = zk.set("/v", b"1", version=0)
    assert stat.version == 1
    with pytest.raises(BadVersionError):
        zk.set("/v", b"2", version=0)
    zk.delete("/v", version=1)
    assert zk.exists("/v") is None


def test_stat_fields_track_children_and_owner(zk: KazooClient) -> None:
    zk.create("/s", b"abc")
    before = zk.exists("/s")
    assert before.ephemeralOwner == 0
    assert before.czxid == before.mzxid == before.pzxid
    zk.create("/s/a", b"")
    zk.create("/s/b", b"")
    zk.delete("/s/a")
    after = zk.exists("/s")
    assert after.cversion == 3
    assert after.numChildren == 1
    assert after.pzxid > before.pzxid
    assert after.mzxid == before.mzxid
    assert after.version == 0
    assert after.ctime == before.ctime
    eph = zk.create("/s/e", b"", ephemeral=True)
    assert zk.exists(eph).ephemeralOwner == zk.client_id[0]


def test_sequential_nodes_count_per_parent(zk: KazooClient) -> None:
    zk.create("/q", b"")
    first = zk.create("/q/item-", b"", sequence=True)
    second = zk.create("/q/item-", b"", sequence=True, ephemeral=True)
    assert first == "/q/item-0000000000"
    assert second == "/q/item-0000000001"
    zk.create("/q/other", b"")
    assert zk.create("/q/item-", b"", sequence=True) == "/q/item-0000000003"
    assert zk.exists(second).ephemeralOwner == zk.client_id[0]


def test_sequence_suffix_counts_creations_not_deletions(zk: KazooClient) -> None:
    """The suffix is the parent's count of child creations; the Stat's cversion counts
    deletions too (ZooKeeper reports 2 x creations - children)."""
    zk.create("/p")
    assert zk.create("/p/a-", sequence=True) == "/p/a-0000000000"
    zk.create("/p/plain")
    zk.delete("/p/plain")
    assert zk.exists("/p").cversion == 3
    assert zk.create("/p/b-", sequence=True) == "/p/b-0000000002"
    assert zk.exists("/p").cversion == 4


def _sequence_story(hosts: str) -> list[object]:
    """What a client sees of sequential names and cversions along creates and deletes: at
    the root, in a multi, and when a closed session's ephemerals go."""
    client, other = new_client(hosts), new_client(hosts)
    try:
        seen: list[object] = [client.exists(p).cversion for p in ("/", "/zookeeper")]
        seen.append(client.create("/top-", sequence=True))
        client.create("/p")
        seen.append(client.create("/p/a-", sequence=True))
        client.create("/p/plain")
        client.delete("/p/plain")
        seen.append(client.create("/p/b-", sequence=True))
        tx = client.transaction()
        tx.create("/p/m-", sequence=True)
        tx.delete("/p/a-0000000000")
        tx.create("/p/m-", sequence=True)
        seen.append(tx.commit())
        seen.append(other.create("/p/e-", ephemeral=True, sequence=True))
        other.stop()
        seen.append(client.create("/p/c-", sequence=True))
        seen += [(s.cversion, s.numChildren) for s in map(client.exists, ("/", "/p"))]
        seen.append(sorted(client.get_children("/p")))
    finally:
        stop_client(other)
        stop_client(client)
    return seen


@pytest.mark.zookeeper
def test_sequence_numbers_and_cversions_are_zookeepers(tmp_path: Path) -> None:
    """The same operations on a fresh built-in coordinator and a fresh Debian ZooKeeper
    give the same sequential names and cversions."""
    require_zookeeper()
    seen = {}
    for kind in ("engine", "zookeeper"):
        server = make_server(kind, tmp_path / kind)
        try:
            server.start()
            seen[kind] = _sequence_story(server.hosts)
        finally:
            server.stop()
    assert seen["engine"] == seen["zookeeper"]
    assert seen["engine"][:4] == [-1, -2, "/top-0000000000", "/p/a-0000000000"]


def test_ephemeral_node_vanishes_when_session_closes(
        make_client: Callable[..., KazooClient], zk: KazooClient) -> None:
    owner = make_client()
    owner.create("/brokers/ids/1", b'{"port": 9092}', ephemeral=True, makepath=True)
    assert zk.get_children("/brokers/ids") == ["1"]
    owner.stop()
    assert zk.exists("/brokers/ids/1") is None


def test_get_children_and_children_stat(zk: KazooClient) -> None:
    zk.create("/c", b"")
    for name in ("b", "a", "c"):
        zk.create(f"/c/{name}", b"")
    assert sorted(zk.get_children("/c")) == ["a", "b", "c"]
    children, stat = zk.get_children("/c", include_data=True)
    assert sorted(children) == ["a", "b", "c"]
    assert stat.numChildren == 3


def test_multi_commits_all_or_nothing(zk: KazooClient) -> None:
    zk.create("/m", b"v0")
    tx = zk.transaction()
    tx.create("/m/a", b"")
    tx.check("/m", 7)
    tx.create("/m/b", b"")
    results = tx.commit()
    assert isinstance(results[0], RolledBackError)
    assert results[1].__class__.__name__ == "BadVersionError"
    assert isinstance(results[2], RuntimeInconsistency)
    assert zk.get_children("/m") == []

    tx = zk.transaction()
    tx.create("/m/a", b"")
    tx.check("/m", 0)
    tx.set_data("/m", b"v1")
    tx.create("/m/a/seq-", b"", sequence=True)
    tx.delete("/m/a/seq-0000000000")
    results = tx.commit()
    assert results[0] == "/m/a"
    assert results[1] is True
    assert results[2].version == 1
    assert results[3] == "/m/a/seq-0000000000"
    assert results[4] is True
    assert zk.get("/m")[0] == b"v1"
    assert zk.get_children("/m/a") == []
    # one transaction, one zxid
    assert zk.exists("/m/a").czxid == zk.exists("/m").mzxid


def test_multi_sees_its_own_earlier_ops(zk: KazooClient) -> None:
    tx = zk.transaction()
    tx.create("/n", b"")
    tx.create("/n/child", b"")
    tx.set_data("/n/child", b"x")
    tx.delete("/n/child")
    tx.create("/n/child", b"again")
    results = tx.commit()
    assert not [r for r in results if isinstance(r, Exception)]
    assert zk.get("/n/child")[0] == b"again"


def test_data_near_one_mib_is_accepted_and_over_is_refused(
        zk: KazooClient, make_client: Callable[..., KazooClient]) -> None:
    big = b"x" * (1024 * 1024 - 1024)
    zk.create("/big", big)
    assert zk.get("/big")[0] == big
    other = make_client()
    with pytest.raises((ConnectionLoss, Exception)):
        other.create("/too-big", b"y" * (1024 * 1024 + 1))
    assert zk.exists("/too-big") is None
    assert zk.get("/big")[1].dataLength == len(big)


def test_invalid_paths_are_refused_like_zookeeper(zk: KazooClient) -> None:
    from kazoo.protocol.serialization import Create
    from kazoo.security import OPEN_ACL_UNSAFE

    zk.create("/a", b"")

    def raw_create(path: str) -> None:
        result = zk.handler.async_result()
        zk._call(Create(zk.chroot + path, b"", OPEN_ACL_UNSAFE, 0), result)
        result.get(timeout=10)

    with pytest.raises(BadArgumentsError):
        raw_create("/a/")
    for path in ("/a//b", "/a/./b", "/a/../b"):  # the parent is looked up first
        with pytest.raises(NoNodeError):
            raw_create(path)


def test_reads_see_own_writes_under_concurrency(
        make_client: Callable[..., KazooClient]) -> None:
    clients = [make_client() for _ in range(4)]
    clients[0].create("/counter-base", b"")
    errors: list[BaseException] = []

    def worker(client: KazooClient, index: int) -> None:
        try:
            for i in range(30):
                path = f"/counter-base/w{index}-{i}"
                client.create(path, str(i).encode())
                assert client.get(path)[0] == str(i).encode()
                client.set(path, b"done")
                assert client.get(path)[0] == b"done"
        except Exception as exc:  # noqa: BLE001 - collected, asserted on in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(c, i)) for i, c in enumerate(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    assert len(clients[0].get_children("/counter-base")) == 120


def test_async_requests_complete_in_order(zk: KazooClient) -> None:
    zk.create("/order", b"")
    results = [zk.set_async("/order", str(i).encode()) for i in range(200)]
    versions = [r.get(timeout=30).version for r in results]
    assert versions == list(range(1, 201))


def test_sync_and_exists_on_missing(zk: KazooClient) -> None:
    assert zk.exists("/nothing") is None
    zk.create("/synced", b"")
    zk.sync("/synced")
    assert zk.exists("/synced") is not None


def test_server_keeps_serving_after_a_client_vanishes(
        server: ServerProcess, chroot: str, zk: KazooClient) -> None:
    rude = RawClient(server.port)
    err, _, _ = rude.call(OpCode.CREATE, CreateRequest(
        f"{chroot}/vanish", b"", OPEN_ACL_UNSAFE, CreateFlag.EPHEMERAL))
    assert err == 0
    rude.close(end_session=False)  # the socket goes, the session stays until it times out
    assert zk.exists("/vanish") is not None
    zk.create("/still-here", b"")
    assert zk.exists("/still-here") is not None
    wait_until(lambda: zk.exists("/vanish") is None, 15, "the orphaned session to expire")
