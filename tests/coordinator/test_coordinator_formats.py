"""Pure tests of the formats: jute records round-trip, the on-disk layout matches the
diagram in txnlog.py, and replaying the log or loading a snapshot rebuilds the very same
tree (stats and child order included)."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.coordinator import jute
from engine.coordinator.errors import KeeperError
from engine.coordinator.jute import OPEN_ACL_UNSAFE, Acl, OpCode
from engine.coordinator.tree import (
    CloseSessionTxn,
    CreateSessionTxn,
    CreateTxn,
    DataTree,
    DeleteTxn,
    MultiTxn,
    Txn,
)
from engine.coordinator.txnlog import (
    decode_snapshot,
    encode_record,
    encode_snapshot,
    read_records,
    recover,
    replay,
)

_names = st.sampled_from(["a", "b", "c", "dd"])
_paths = st.lists(_names, min_size=1, max_size=3).map(lambda parts: "/" + "/".join(parts))
_data = st.none() | st.binary(max_size=20)  # None: null data


def _records_equal(op: int, record: jute.Record) -> None:
    frame = jute.encode_request(7, op, record)
    assert struct.unpack("!i", frame[:4])[0] == len(frame) - 4
    xid, decoded_op, decoded = jute.decode_request(frame[4:])
    assert (xid, decoded_op, decoded) == (7, op, record)


@given(_paths, _data, st.integers(-1, 10), st.booleans())
def test_request_records_round_trip(path: str, data: bytes | None, version: int,
                                    watch: bool) -> None:
    acl = (Acl(31, "world", "anyone"), Acl(1, "digest", "u:h"))
    _records_equal(OpCode.CREATE, jute.CreateRequest(path, data, acl, 3))
    _records_equal(OpCode.CREATE_TTL, jute.CreateRequest(path, data, acl, 5, 1000))
    _records_equal(OpCode.DELETE, jute.DeleteRequest(path, version))
    _records_equal(OpCode.GET_DATA, jute.WatchRequest(path, watch))
    _records_equal(OpCode.SET_DATA, jute.SetDataRequest(path, data, version))
    _records_equal(OpCode.SET_ACL, jute.SetACLRequest(path, acl, version))
    _records_equal(OpCode.SET_WATCHES2, jute.SetWatchesRequest(
        5, (path,), (), (path, path), (path,), ()))
    _records_equal(OpCode.MULTI, jute.MultiRequest((
        (OpCode.CREATE, jute.CreateRequest(path, data, acl, 0)),
        (OpCode.CHECK, jute.CheckRequest(path, version)),
        (OpCode.DELETE, jute.DeleteRequest(path, version)))))


def test_reply_header_and_stat_layout() -> None:
    assert jute.encode_reply_header(-1, 2, -101) == struct.pack("!iqi", -1, 2, -101)
    stat = jute.Stat(1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11)
    assert jute.encode_stat(stat) == struct.pack("!qqqqiiiqiiq", *stat)
    assert jute.STAT_LENGTH == 68


def test_log_file_header_and_record_layout(tmp_path: Path) -> None:
    record = encode_record(5, 1234, CloseSessionTxn(99))
    length, crc = struct.unpack_from("!II", record)
    payload = record[8:]
    assert length == len(payload) and crc == zlib.crc32(payload)
    assert payload[:16] == struct.pack("!qq", 5, 1234)
    assert payload[16:] == b"\x07" + struct.pack("!q", 99)
    header = b"EZKL" + struct.pack("!Iq", 3, 5)
    records, valid = read_records(header + record + bytes(64))
    assert [r.txn for r in records] == [CloseSessionTxn(99)]
    assert valid == len(header) + len(record)


def test_null_data_is_a_buffer_of_length_minus_one_in_log_and_snapshot() -> None:
    null = CreateTxn("/n", None, OPEN_ACL_UNSAFE, 0)
    empty = CreateTxn("/n", b"", OPEN_ACL_UNSAFE, 0)
    path = b"\x00\x00\x00\x02/n"
    assert encode_record(1, 0, null)[8 + 16 :].startswith(b"\x01" + path + struct.pack("!i", -1))
    assert encode_record(1, 0, empty)[8 + 16 :].startswith(b"\x01" + path + struct.pack("!i", 0))
    tree = DataTree()
    tree.apply(null, 1, 0)
    snapshot = encode_snapshot(tree, {})
    assert snapshot[:8] == b"EZKS" + struct.pack("!I", 3)
    assert path + struct.pack("!i", -1) in snapshot
    assert decode_snapshot(snapshot)[0].nodes["/n"].data is None


def _marked(snapshot: bytes, version: int) -> bytes:
    """The same snapshot with another version in its header, and its CRC made anew."""
    body = snapshot[:4] + struct.pack("!I", version) + snapshot[8:-4]
    return body + struct.pack("!I", zlib.crc32(body))


def _tree_with_a_deleted_child() -> DataTree:
    """/a: a sequential child, a plain one deleted, another sequential child."""
    tree = DataTree()
    ids = [("world", "anyone")]
    steps = [("create", "/a", False), ("create", "/a/b-", True), ("create", "/a/plain", False),
             ("delete", "/a/plain", False), ("create", "/a/b-", True)]
    for zxid, (op, path, sequential) in enumerate(steps, 1):
        txn: Txn = (tree.prepare_create(path, b"", OPEN_ACL_UNSAFE, 0, sequential, ids)
                    if op == "create" else tree.prepare_delete(path, -1, ids))
        tree.apply(txn, zxid, 1000 + zxid)
    return tree


def test_a_snapshot_keeps_child_creations_as_cversion() -> None:
    tree = _tree_with_a_deleted_child()
    assert sorted(tree.nodes["/a"].children) == ["b-0000000000", "b-0000000002"]
    assert (tree.nodes["/a"].cversion, tree.nodes["/a"].stat().cversion) == (3, 4)
    snapshot = encode_snapshot(tree, {})
    assert snapshot[:8] == b"EZKS" + struct.pack("!I", 3)
    loaded, _ = decode_snapshot(snapshot)
    assert _snapshot_of(loaded) == _snapshot_of(tree)
    assert loaded.nodes["/a"].cversion == 3


#: What a server of format 1 or 2 did (a delete advanced its parent's cversion too): its
#: transactions (the sequential names they chose among them), and the cversions it kept.
_OLD_TXNS: list[Txn] = [
    CreateTxn("/a", b"", OPEN_ACL_UNSAFE, 0),
    CreateTxn("/a/b-0000000000", b"", OPEN_ACL_UNSAFE, 0),
    CreateTxn("/a/plain", b"", OPEN_ACL_UNSAFE, 0),
    DeleteTxn("/a/plain"),
    MultiTxn((CreateTxn("/a/x", b"", OPEN_ACL_UNSAFE, 0), DeleteTxn("/a/x"))),
    CreateTxn("/a/b-0000000005", b"", OPEN_ACL_UNSAFE, 0),
]
_OLD_CVERSIONS = {"/": 0, "/a": 6}  # "/" began at -1; the others at 0


@pytest.mark.parametrize("version", [1, 2])
def test_files_of_versions_1_and_2_are_still_read(version: int) -> None:
    """Their log replayed and their snapshot loaded give the same tree, whose nodes'
    counts go on from where that server left them: the next sequential child of /a is
    numbered past every number handed out, and its cversion does not fall back."""
    log = b"".join(encode_record(zxid, 1000 + zxid, txn)
                   for zxid, txn in enumerate(_OLD_TXNS, 1))
    header = b"EZKL" + struct.pack("!Iq", version, 1)
    replayed = DataTree()
    records, _ = read_records(header + log)
    assert [r.version for r in records] == [version] * len(_OLD_TXNS)
    for record in records:
        replay(replayed, record)
    old = DataTree()
    for zxid, txn in enumerate(_OLD_TXNS, 1):
        old.apply(txn, zxid, 1000 + zxid)
    for path, cversion in _OLD_CVERSIONS.items():
        old.nodes[path].cversion = cversion
    snapshot = _marked(encode_snapshot(old, {7: (b"p", 4000)}), version)
    loaded, sessions = decode_snapshot(snapshot)
    assert sessions == {7: (b"p", 4000)}
    assert _snapshot_of(loaded) == _snapshot_of(replayed)
    counts = {p: n.cversion for p, n in loaded.nodes.items()}
    assert counts == {p: n.cversion for p, n in replayed.nodes.items()}
    assert (counts["/"], counts["/a"]) == (1, 6)
    assert loaded.nodes["/a"].stat().cversion >= _OLD_CVERSIONS["/a"]
    ids = [("world", "anyone")]
    assert loaded.prepare_create("/a/b-", b"", OPEN_ACL_UNSAFE, 0, True, ids).path == (
        "/a/b-0000000006")


def _snapshot_of(tree: DataTree) -> dict[str, tuple[object, ...]]:
    return {path: (node.data, node.acl, node.stat(), node.ephemeral_owner,
                   list(node.children)) for path, node in tree.nodes.items()}


_ops = st.lists(st.tuples(st.sampled_from(["create", "eph", "seq", "set", "delete",
                                           "close", "multi"]), _paths, _data),
                max_size=40)


@settings(max_examples=150, deadline=None)
@given(_ops)
def test_replaying_the_log_and_loading_a_snapshot_rebuild_the_same_tree(
        ops: list[tuple[str, str, bytes | None]]) -> None:
    tree = DataTree()
    log: list[bytes] = []
    sessions: dict[int, tuple[bytes, int]] = {}
    zxid = 0

    def commit(txn: Txn) -> None:
        nonlocal zxid
        zxid += 1
        tree.apply(txn, zxid, 1000 + zxid)
        log.append(encode_record(zxid, 1000 + zxid, txn))
        if isinstance(txn, CreateSessionTxn):
            sessions[txn.session_id] = (txn.passwd, txn.timeout_ms)
        elif isinstance(txn, CloseSessionTxn):
            sessions.pop(txn.session_id, None)

    commit(CreateSessionTxn(42, 4000, b"p" * 16))
    ids = [("world", "anyone")]
    for kind, path, data in ops:
        try:
            if kind in ("create", "eph", "seq"):
                owner = 42 if kind == "eph" and 42 in sessions else 0
                commit(tree.prepare_create(path, data, OPEN_ACL_UNSAFE, owner, kind == "seq", ids))
            elif kind == "set":
                commit(tree.prepare_set_data(path, data, -1, ids))
            elif kind == "delete":
                commit(tree.prepare_delete(path, -1, ids))
            elif kind == "close" and 42 in sessions:
                commit(CloseSessionTxn(42))
            elif kind == "multi":
                undo: list[tuple[str, object]] = []
                first = tree.prepare_create(path, data, OPEN_ACL_UNSAFE, 0, True, ids)
                tree.apply(first, zxid + 1, 0, undo)  # type: ignore[arg-type]
                second = tree.prepare_set_data(first.path, b"m", -1, ids)
                tree.rollback(undo)  # type: ignore[arg-type]
                tree.zxid = zxid
                commit(MultiTxn((first, second)))
        except KeeperError:
            pass
    header = b"EZKL" + struct.pack("!Iq", 3, 1)
    records, _ = read_records(header + b"".join(log))
    replayed = DataTree()
    for record in records:
        replayed.apply(record.txn, record.zxid, record.time_ms)
    assert _snapshot_of(replayed) == _snapshot_of(tree)
    assert replayed.ephemerals == tree.ephemerals
    loaded, loaded_sessions = decode_snapshot(encode_snapshot(tree, sessions))
    assert _snapshot_of(loaded) == _snapshot_of(tree)
    assert loaded.zxid == tree.zxid
    assert loaded_sessions == sessions
    assert loaded.ephemerals == tree.ephemerals


def test_recover_from_an_empty_dir_gives_the_initial_tree(tmp_path: Path) -> None:
    state = recover(str(tmp_path))
    assert state.tree.zxid == 0
    assert sorted(state.tree.nodes) == ["/", "/zookeeper", "/zookeeper/config",
                                        "/zookeeper/quota"]
