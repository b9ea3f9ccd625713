"""Container and TTL nodes, getEphemerals/getAllChildrenNumber, ACLs (and the watch events
they hide), four-letter words."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from kazoo.client import KazooClient
from kazoo.exceptions import (
    EXCEPTIONS,
    AuthFailedError,
    BadArgumentsError,
    BadVersionError,
    InvalidACLError,
    NoAuthError,
)
from kazoo.security import make_acl, make_digest_acl
from zkharness import RawClient, ServerProcess, four_letter_word, wait_until

from engine.coordinator.jute import (
    OPEN_ACL_UNSAFE,
    AddWatchMode,
    AddWatchRequest,
    CreateFlag,
    CreateRequest,
    OpCode,
    PathRequest,
    Reader,
    Record,
    encode_record,
)


class RawRequest:
    """Wraps one of our jute records so kazoo can send it (for ops kazoo has no API for)."""

    def __init__(self, op: int, record: Record) -> None:
        self.type = op
        self._record = record

    def serialize(self) -> bytes:
        return encode_record(self.type, self._record)

    def deserialize(self, buffer: bytes, offset: int) -> Reader:
        return Reader(buffer, offset)


def call(zk: KazooClient, op: int, record: Record) -> Reader:
    result = zk.handler.async_result()
    zk._call(RawRequest(op, record), result)
    reader: Reader = result.get(timeout=10)
    return reader


def create_kind(zk: KazooClient, path: str, op: int, flags: int, ttl: int = -1) -> str:
    reader = call(zk, op, CreateRequest(zk.chroot + path, b"", OPEN_ACL_UNSAFE, flags, ttl))
    return reader.read_path()[len(zk.chroot):]


def test_container_goes_once_its_last_child_goes(zk: KazooClient) -> None:
    create_kind(zk, "/box", OpCode.CREATE_CONTAINER, CreateFlag.CONTAINER)
    create_kind(zk, "/never-used", OpCode.CREATE_CONTAINER, CreateFlag.CONTAINER)
    assert zk.exists("/box").ephemeralOwner == 0  # the kind is not shown to clients
    zk.create("/box/item", b"")
    zk.delete("/box/item")
    wait_until(lambda: zk.exists("/box") is None, 10, "the empty container to go")
    assert zk.exists("/never-used") is not None


def test_ttl_node_expires_when_idle_and_childless(zk: KazooClient) -> None:
    create_kind(zk, "/ttl", OpCode.CREATE_TTL, CreateFlag.PERSISTENT_WITH_TTL, ttl=300)
    create_kind(zk, "/ttl-parent", OpCode.CREATE_TTL, CreateFlag.PERSISTENT_WITH_TTL, ttl=300)
    zk.create("/ttl-parent/child", b"")
    assert zk.exists("/ttl").ephemeralOwner == 0
    wait_until(lambda: zk.exists("/ttl") is None, 10, "the TTL node to expire")
    assert zk.exists("/ttl-parent") is not None  # it has a child
    seq = create_kind(zk, "/ttl-seq-", OpCode.CREATE_TTL,
                      CreateFlag.PERSISTENT_SEQUENTIAL_WITH_TTL, ttl=60_000)
    assert seq.startswith("/ttl-seq-00000")


def test_bad_ttl_requests_are_bad_arguments(zk: KazooClient) -> None:
    with pytest.raises(BadArgumentsError):
        create_kind(zk, "/t0", OpCode.CREATE_TTL, CreateFlag.PERSISTENT_WITH_TTL, ttl=0)
    with pytest.raises(BadArgumentsError):
        create_kind(zk, "/t1", OpCode.CREATE_TTL, CreateFlag.EPHEMERAL, ttl=100)
    with pytest.raises(BadArgumentsError):
        create_kind(zk, "/t2", OpCode.CREATE2, CreateFlag.PERSISTENT_WITH_TTL)


def test_get_ephemerals_and_all_children_number(zk: KazooClient) -> None:
    zk.create("/e/a", b"", ephemeral=True, makepath=True)
    zk.create("/e/b", b"", ephemeral=True)
    zk.create("/e/p/q/r", b"", makepath=True)
    reader = call(zk, OpCode.GET_EPHEMERALS, PathRequest(zk.chroot + "/e"))
    assert sorted(reader.read_strings()) == [zk.chroot + "/e/a", zk.chroot + "/e/b"]
    reader = call(zk, OpCode.GET_ALL_CHILDREN_NUMBER, PathRequest(zk.chroot + "/e"))
    assert reader.read_int() == 5


# -- ACLs ------------------------------------------------------------------------------


def test_digest_acl_locks_out_other_tenants(make_client: Callable[..., Any]) -> None:
    alice = make_client()
    alice.add_auth("digest", "alice:secret")
    acl = [make_digest_acl("alice", "secret", all=True)]
    alice.create("/tenant-a", b"private", acl=acl)
    assert alice.get("/tenant-a")[0] == b"private"
    stranger = make_client()
    with pytest.raises(NoAuthError):
        stranger.get("/tenant-a")
    with pytest.raises(NoAuthError):
        stranger.set("/tenant-a", b"mine now")
    with pytest.raises(NoAuthError):
        stranger.create("/tenant-a/child", b"")
    with pytest.raises(NoAuthError):
        stranger.get_children("/tenant-a")
    assert stranger.exists("/tenant-a") is not None  # exists is not ACL-checked
    mallory = make_client()
    mallory.add_auth("digest", "alice:wrong")
    with pytest.raises(NoAuthError):
        mallory.get("/tenant-a")
    friend = make_client()
    friend.add_auth("digest", "alice:secret")
    assert friend.get("/tenant-a")[0] == b"private"


def test_auth_scheme_means_the_creators_ids(make_client: Callable[..., Any]) -> None:
    bob = make_client()
    bob.add_auth("digest", "bob:pw")
    bob.create("/bobs", b"", acl=[make_acl("auth", "", all=True)])
    acls, _stat = bob.get_acls("/bobs")
    assert [(a.id.scheme, a.id.id.split(":")[0], a.perms) for a in acls] == [
        ("digest", "bob", 31)]
    with pytest.raises(NoAuthError):
        make_client().get("/bobs")


def test_world_read_only_acl(make_client: Callable[..., Any]) -> None:
    owner = make_client()
    owner.create("/ro", b"look", acl=[make_acl("world", "anyone", read=True)])
    other = make_client()
    assert other.get("/ro")[0] == b"look"
    with pytest.raises(NoAuthError):
        other.set("/ro", b"touch")
    with pytest.raises(NoAuthError):
        other.create("/ro/x", b"")


def test_set_acls_checks_aversion_and_admin(zk: KazooClient,
                                            make_client: Callable[..., Any]) -> None:
    zk.create("/acl", b"")
    open_acl = [make_acl("world", "anyone", all=True)]
    stat = zk.set_acls("/acl", open_acl, version=0)
    assert stat.aversion == 1
    with pytest.raises(BadVersionError):
        zk.set_acls("/acl", open_acl, version=0)
    zk.set_acls("/acl", [make_acl("world", "anyone", read=True)])
    with pytest.raises(NoAuthError):
        make_client().set_acls("/acl", open_acl)
    acls, stat = zk.get_acls("/acl")
    assert stat.aversion == 2
    assert [(a.id.scheme, a.id.id, a.perms) for a in acls] == [("world", "anyone", 1)]


def test_get_acls_without_admin_hides_the_digest_hashes(make_client: Callable[..., Any]) -> None:
    """getACL needs READ or ADMIN; without ADMIN a digest entry reads "user:x", so the
    hash cannot be attacked offline (ZooKeeper's getACL)."""
    owner = make_client()
    owner.add_auth("digest", "alice:secret")
    alice = make_digest_acl("alice", "secret", all=True)
    owner.create("/shown", b"", acl=[make_acl("world", "anyone", read=True), alice])
    acls, _stat = make_client().get_acls("/shown")
    assert [(a.id.scheme, a.id.id, a.perms) for a in acls] == [
        ("world", "anyone", 1), ("digest", "alice:x", 31)]
    acls, _stat = owner.get_acls("/shown")
    assert [a.id.id for a in acls] == ["anyone", alice.id.id]


def test_watch_events_reach_only_sessions_that_may_read_the_node(
        server: ServerProcess, chroot: str, make_client: Callable[..., Any]) -> None:
    """A recursive watch on an open parent, or a watch set by exists() on a node the
    session may not read, tells it nothing about that node: not even its path (as
    ZooKeeper does since 3.8.4/3.9.2, CVE-2024-23944). Events are delivered in order, so
    once the open node's event is in, any event of the private ones would be too."""
    from kazoo.protocol.states import WatchedEvent

    owner = make_client()
    owner.add_auth("digest", "alice:secret")
    private = [make_digest_acl("alice", "secret", all=True)]
    owner.create("/private", b"", acl=private)
    owner.create("/open", b"")
    stranger = make_client()
    seen: list[tuple[str, str]] = []

    def note(event: WatchedEvent) -> None:
        seen.append((event.type, event.path))  # kazoo takes the chroot off

    assert stranger.exists("/private", watch=note) is not None  # exists is not ACL-checked
    raw = RawClient(server.port)
    try:
        err, _zxid, _reader = raw.call(OpCode.ADD_WATCH, AddWatchRequest(
            chroot, AddWatchMode.PERSISTENT_RECURSIVE))
        assert err == 0
        owner.create("/private/secret-name", b"", acl=private)
        owner.set("/private/secret-name", b"changed")
        owner.delete("/private/secret-name")
        owner.set("/private", b"changed")
        owner.create("/open/public-name", b"")
        events = raw.wait_events(1, timeout=10)
        assert [path[len(chroot):] for _type, _state, path in events] == ["/open/public-name"]
    finally:
        raw.close()
    assert stranger.exists("/open", watch=note) is not None
    owner.set("/open", b"changed")
    wait_until(lambda: seen, 10, "the open node's data event")
    assert seen == [("CHANGED", "/open")]


def test_invalid_acls_are_refused(zk: KazooClient) -> None:
    with pytest.raises(InvalidACLError):
        zk.create("/bad", b"", acl=[make_acl("world", "someone", all=True)])
    with pytest.raises(InvalidACLError):
        zk.create("/bad", b"", acl=[make_acl("auth", "", all=True)])  # no auth added
    with pytest.raises(InvalidACLError):
        zk.create("/bad", b"", acl=[make_acl("nosuchscheme", "x", all=True)])


def test_unknown_auth_scheme_fails(make_client: Callable[..., Any]) -> None:
    client = make_client()
    with pytest.raises(AuthFailedError):
        client.add_auth("nosuchscheme", "whatever")


def test_kazoo_knows_every_error_code_we_send() -> None:
    from engine.coordinator.jute import Err

    for code in Err:
        assert code == 0 or code in EXCEPTIONS, code


# -- four-letter words -------------------------------------------------------------------


def test_four_letter_words(server: ServerProcess) -> None:
    assert four_letter_word(server.port, b"ruok") == "imok"
    srvr = four_letter_word(server.port, b"srvr")
    assert "Mode: standalone" in srvr
    assert "Zxid: 0x" in srvr
    mntr = dict(line.split("\t", 1) for line in
                four_letter_word(server.port, b"mntr").splitlines() if "\t" in line)
    assert int(mntr["zk_znode_count"]) >= 4
    assert mntr["zk_server_state"] == "standalone"


def test_kazoo_command_and_server_version(zk: KazooClient) -> None:
    assert zk.command(b"ruok") == "imok"
    assert zk.server_version()[:2] == (3, 8)


def test_multi_read_answers_each_op_on_its_own(zk: KazooClient) -> None:
    from engine.coordinator.jute import MultiRequest, WatchRequest

    zk.create("/mr/a", b"data", makepath=True)
    reader = call(zk, OpCode.MULTI_READ, MultiRequest((
        (OpCode.GET_DATA, WatchRequest(zk.chroot + "/mr/a", False)),
        (OpCode.GET_CHILDREN, WatchRequest(zk.chroot + "/missing", False)),
        (OpCode.GET_CHILDREN, WatchRequest(zk.chroot + "/mr", False)),
    )))
    assert (reader.read_int(), reader.read_bool(), reader.read_int()) == (OpCode.GET_DATA,
                                                                          False, 0)
    assert reader.read_buffer() == b"data"
    reader.skip(68)  # the stat
    assert (reader.read_int(), reader.read_bool(), reader.read_int()) == (-1, False, -101)
    assert reader.read_int() == -101
    assert (reader.read_int(), reader.read_bool(), reader.read_int()) == (
        OpCode.GET_CHILDREN, False, 0)
    assert reader.read_strings() == ["a"]
    assert (reader.read_int(), reader.read_bool(), reader.read_int()) == (-1, True, -1)


def test_reconfig_is_disabled_on_a_standalone_server(zk: KazooClient) -> None:
    from kazoo.exceptions import ReconfigDisabledError

    with pytest.raises(ReconfigDisabledError):
        zk.reconfig(joining="server.2=127.0.0.1:2888:3888", leaving=None, new_members=None)
    assert zk.exists("/") is not None  # and the session goes on
