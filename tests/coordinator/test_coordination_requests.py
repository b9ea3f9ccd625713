"""The kazoo request types for TTL and container creates (engine/coordination/requests.py),
against our coordinator and Debian's ZooKeeper, through a chrooted kazoo client."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from kazoo.client import KazooClient
from kazoo.exceptions import NodeExistsError, NoNodeError
from kazoo.security import make_digest_acl
from zkharness import RealZooKeeper, require_zookeeper, wait_until

from conftest import new_client, stop_client
from engine import ConfigError, TtlNodesDisabledError
from engine.coordination.requests import create_container, create_ttl


def test_a_ttl_node_ends_its_ttl_after_its_last_change(zk: KazooClient) -> None:
    ttl_ms = 800
    assert create_ttl(zk, "/lease", b"mine", ttl_ms) == "/lease"
    assert zk.get("/lease")[0] == b"mine"
    with pytest.raises(NodeExistsError):
        create_ttl(zk, "/lease", b"again", ttl_ms)
    time.sleep(ttl_ms / 2000)
    changed = time.monotonic()
    zk.set("/lease", b"renewed")  # a change starts the TTL again
    time.sleep(ttl_ms / 2000)
    assert zk.exists("/lease") is not None  # longer than the TTL since the create
    wait_until(lambda: zk.exists("/lease") is None, 10, "the TTL node to end")
    ended = time.monotonic() - changed
    # No sooner than the TTL; then within a sweep (a tick here, checkIntervalMs=100 there).
    assert ttl_ms / 1000 <= ended <= ttl_ms / 1000 + 0.5, ended


def test_a_sequential_ttl_node_gets_its_sequence_and_the_path_without_the_chroot(
    zk: KazooClient,
) -> None:
    zk.create("/q")
    first = create_ttl(zk, "/q/lease-", b"", 60_000, sequence=True)
    second = create_ttl(zk, "/q/lease-", b"", 60_000, sequence=True)
    assert first == "/q/lease-0000000000" and second == "/q/lease-0000000001"
    assert sorted(zk.get_children("/q")) == ["lease-0000000000", "lease-0000000001"]
    with pytest.raises(NoNodeError):
        create_ttl(zk, "/missing/lease", b"", 60_000)
    for bad in (0, -1, 1 << 40, 1.5):
        with pytest.raises(ConfigError, match="a TTL must be"):
            create_ttl(zk, "/bad", b"", bad)  # type: ignore[arg-type]


def test_a_container_goes_once_its_last_child_is_gone(zk: KazooClient) -> None:
    assert create_container(zk, "/box") == "/box"
    with pytest.raises(NodeExistsError):
        create_container(zk, "/box")
    zk.create("/box/child")
    time.sleep(0.5)
    assert zk.exists("/box") is not None  # a container with a child stays
    zk.delete("/box/child")
    wait_until(lambda: zk.exists("/box") is None, 10, "the empty container to go")
    create_container(zk, "/never-had-a-child")
    time.sleep(0.5)
    assert zk.exists("/never-had-a-child") is not None


def test_ttl_and_container_nodes_get_the_clients_default_acl(
    make_client: Callable[..., KazooClient],
) -> None:
    acl = [make_digest_acl("engine", "s3cret", all=True)]
    owner = make_client(auth_data=[("digest", "engine:s3cret")], default_acl=acl)
    create_container(owner, "/private-box")
    create_ttl(owner, "/private-box/lease", b"", 60_000)
    for path in ("/private-box", "/private-box/lease"):
        assert list(owner.get_acls(path)[0]) == acl


@pytest.mark.zookeeper
def test_a_zookeeper_without_extended_types_refuses_ttl_nodes_with_the_setting_named(
    tmp_path: Path,
) -> None:
    require_zookeeper()  # skipped with the reason; in CI (CI=true) a failure
    server = RealZooKeeper(tmp_path / "zk", extended_types=False)
    try:
        server.start()
        zk = new_client(server.hosts)
        try:
            with pytest.raises(TtlNodesDisabledError, match="extendedTypesEnabled=true"):
                create_ttl(zk, "/lease", b"", 1000)
            assert zk.exists("/lease") is None
            assert create_container(zk, "/box") == "/box"  # containers need no setting
            zk.create("/after", b"")  # the session goes on
        finally:
            stop_client(zk)
    finally:
        server.stop()
