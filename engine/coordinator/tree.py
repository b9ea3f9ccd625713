"""The znode tree: nodes, their stat, node kinds, ACL checks, and the transactions that
change it.

A write is handled in two steps. ``prepare_*`` checks a request against the current tree
(and the caller's identities) and either raises :class:`KeeperError` with ZooKeeper's code
or returns a transaction: a small record that says exactly what changes (the sequential
name already chosen, the ephemeral owner already decided). :meth:`DataTree.apply` then
applies a transaction deterministically: replaying the same transactions with the same
zxids and times from an empty tree always yields the same tree, stats included. That is
what makes the transaction log (txnlog.py) a complete description of the state.

Node kinds live in ``ephemeral_owner``, as in ZooKeeper: 0 for a persistent node, the
session id for an ephemeral one, ``CONTAINER_OWNER`` for a container and
``TTL_OWNER_BASE | ttl_ms`` for a TTL node.

As in ZooKeeper, a node's data may be null (a create or setData whose buffer had length
-1), which reads back as null, apart from empty data; and a node keeps in ``cversion`` the
count of its children's creations, which is the sequential suffix of its next child, while
its Stat reports ``2 * cversion - children``: the count of creations and deletions
(ZooKeeper's DataNode.copyStat). So after creating a sequential child, creating another
child and deleting that one, the next sequential child is numbered 2 and the Stat says 3.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from engine.coordinator.errors import KeeperError
from engine.coordinator.jute import Acl, EventType, Perm, Stat
from engine.coordinator.jute import Err as E

CONTAINER_OWNER = -(1 << 63)
TTL_OWNER_BASE = -(1 << 56)  # 0xff00000000000000 as a signed long
MAX_TTL_MS = (1 << 40) - 1
RESERVED_PATHS = frozenset({"/", "/zookeeper", "/zookeeper/quota", "/zookeeper/config"})

Identity = tuple[str, str]  # (scheme, id), e.g. ("digest", "alice:base64sha1")


def is_container(owner: int) -> bool:
    return owner == CONTAINER_OWNER


def ttl_of(owner: int) -> int:
    """The TTL (ms) encoded in an ephemeral owner, or 0 when the node is not a TTL node."""
    if owner < 0 and owner != CONTAINER_OWNER and (owner >> 56) == -1:
        return owner & MAX_TTL_MS
    return 0


def is_ephemeral(owner: int) -> bool:
    return owner > 0


@dataclass(slots=True)
class Node:
    """One znode: its data, ACL, stat fields and the names of its children.

    ``data`` is None for null data (length 0 in the Stat). ``cversion`` counts the
    creations of children only: deletes leave it alone (the Stat derives the reported
    cversion from it; a tree read from files of format 1 or 2 counts the deletes made
    then as well, see txnlog.py). ``children`` is a dict used as an insertion-ordered set
    (values are None).
    """

    data: bytes | None
    acl: tuple[Acl, ...]
    czxid: int
    mzxid: int
    ctime: int
    mtime: int
    version: int = 0
    cversion: int = 0
    aversion: int = 0
    ephemeral_owner: int = 0
    pzxid: int = 0
    children: dict[str, None] = field(default_factory=dict)

    def stat(self) -> Stat:
        return Stat(
            self.czxid,
            self.mzxid,
            self.ctime,
            self.mtime,
            self.version,
            2 * self.cversion - len(self.children),
            self.aversion,
            # clients see the owner of ephemerals only: 0 for containers and TTL nodes
            self.ephemeral_owner if self.ephemeral_owner > 0 else 0,
            len(self.data) if self.data is not None else 0,
            len(self.children),
            self.pzxid,
        )

    def copy(self) -> Node:
        return Node(
            self.data,
            self.acl,
            self.czxid,
            self.mzxid,
            self.ctime,
            self.mtime,
            self.version,
            self.cversion,
            self.aversion,
            self.ephemeral_owner,
            self.pzxid,
            dict(self.children),
        )


# ---------------------------------------------------------------------------- transactions


@dataclass(frozen=True, slots=True)
class CreateTxn:
    path: str
    data: bytes | None
    acl: tuple[Acl, ...]
    ephemeral_owner: int


@dataclass(frozen=True, slots=True)
class DeleteTxn:
    path: str


@dataclass(frozen=True, slots=True)
class SetDataTxn:
    path: str
    data: bytes | None
    version: int


@dataclass(frozen=True, slots=True)
class SetACLTxn:
    path: str
    acl: tuple[Acl, ...]
    version: int


@dataclass(frozen=True, slots=True)
class CheckTxn:
    """A multi's version check: changes nothing, kept so results line up with ops."""

    path: str


@dataclass(frozen=True, slots=True)
class CreateSessionTxn:
    session_id: int
    timeout_ms: int
    passwd: bytes


@dataclass(frozen=True, slots=True)
class CloseSessionTxn:
    session_id: int


@dataclass(frozen=True, slots=True)
class MultiTxn:
    txns: tuple[Txn, ...]


Txn = (
    CreateTxn | DeleteTxn | SetDataTxn | SetACLTxn | CheckTxn | CreateSessionTxn
    | CloseSessionTxn | MultiTxn
)

#: A watch event: its type, its path, and the ACL of the node it is about (the node
#: itself, or for NODE_CHILDREN_CHANGED its parent), so that only watchers that may
#: read that node are told (as ZooKeeper does since 3.8.4/3.9.2, CVE-2024-23944: a
#: recursive watch on an open parent must not reveal the paths below it).
Event = tuple[EventType, str, tuple[Acl, ...]]
UndoLog = list[tuple[str, Node | None]]


# ---------------------------------------------------------------------------- paths


def parent_of(path: str) -> str:
    cut = path.rfind("/")
    return "/" if cut == 0 else path[:cut]


def name_of(path: str) -> str:
    return path[path.rfind("/") + 1 :]


def ancestors(path: str) -> Iterator[str]:
    """The path itself, then each parent up to and including "/"."""
    yield path
    while path != "/":
        path = parent_of(path)
        yield path


def _bad_char(ch: str) -> bool:
    code = ord(ch)
    return (
        code == 0
        or 0x01 <= code <= 0x1F
        or 0x7F <= code <= 0x9F
        or 0xD800 <= code <= 0xF8FF
        or 0xFFF0 <= code <= 0xFFFF
    )


def validate_path(path: str) -> None:
    """ZooKeeper's PathUtils.validatePath; raises BAD_ARGUMENTS."""
    if not path or path[0] != "/":
        raise KeeperError(E.BAD_ARGUMENTS, f"path must start with /: path={path!r}")
    if len(path) == 1:
        return
    if path[-1] == "/":
        raise KeeperError(E.BAD_ARGUMENTS, f"path must not end with /: path={path!r}")
    for part in path[1:].split("/"):
        if part in ("", ".", ".."):
            raise KeeperError(E.BAD_ARGUMENTS, f"invalid path component: path={path!r}")
    if any(_bad_char(ch) for ch in path):
        raise KeeperError(E.BAD_ARGUMENTS, f"invalid character in path: path={path!r}")


# ---------------------------------------------------------------------------- ACLs


def digest_id(user_password: str) -> str:
    """The digest scheme's id for "user:password": "user:" + base64(sha1("user:password"))."""
    user = user_password.split(":", 1)[0]
    digest = hashlib.sha1(user_password.encode("utf-8")).digest()
    return user + ":" + base64.b64encode(digest).decode("ascii")


def _ip_matches(pattern: str, address: str) -> bool:
    try:
        network = ipaddress.ip_network(pattern, strict=False)
        return ipaddress.ip_address(address) in network
    except ValueError:
        return False


def check_acl(acl: Iterable[Acl], perm: int, identities: Iterable[Identity]) -> None:
    """Raise NO_AUTH unless some entry grants ``perm`` to one of ``identities``."""
    ids = list(identities)
    for entry in acl:
        if not entry.perms & perm:
            continue
        if entry.scheme == "world" and entry.id == "anyone":
            return
        for scheme, ident in ids:
            if scheme != entry.scheme:
                continue
            if scheme == "ip" and _ip_matches(entry.id, ident):
                return
            if ident == entry.id:
                return
    raise KeeperError(E.NO_AUTH)


def fix_acl(acl: Iterable[Acl], identities: Iterable[Identity]) -> tuple[Acl, ...]:
    """Validate an ACL from a client and expand "auth" entries (PrepRequestProcessor.fixupACL)."""
    result: list[Acl] = []
    authenticated = [(s, i) for s, i in identities if s not in ("ip", "world")]
    entries = list(acl)
    if not entries:
        raise KeeperError(E.INVALID_ACL, "empty ACL")
    for entry in entries:
        if entry.scheme == "world":
            if entry.id != "anyone":
                raise KeeperError(E.INVALID_ACL, f"world id must be anyone: id={entry.id!r}")
            expanded = [entry]
        elif entry.scheme == "auth":
            if not authenticated:
                raise KeeperError(E.INVALID_ACL, "auth scheme without authenticated ids")
            expanded = [Acl(entry.perms, s, i) for s, i in authenticated]
        elif entry.scheme == "digest":
            if entry.id.count(":") != 1:
                raise KeeperError(E.INVALID_ACL, f"digest id must be user:hash: id={entry.id!r}")
            expanded = [entry]
        elif entry.scheme == "ip":
            try:
                ipaddress.ip_network(entry.id, strict=False)
            except ValueError:
                raise KeeperError(E.INVALID_ACL, f"bad ip: id={entry.id!r}") from None
            expanded = [entry]
        else:
            raise KeeperError(E.INVALID_ACL, f"unknown scheme: scheme={entry.scheme!r}")
        for item in expanded:
            if item not in result:
                result.append(item)
    return tuple(result)


# ---------------------------------------------------------------------------- the tree


class DataTree:
    """All znodes, keyed by absolute path, plus indexes by session and by kind.

    Invariants: every node but "/" has its parent in ``nodes`` and is listed in the
    parent's ``children``; ``ephemerals`` maps each session to exactly the paths it owns;
    ``timed`` holds exactly the container and TTL nodes; ``zxid`` is the last zxid
    applied. Owned by the server's event loop thread; not thread-safe. On a crash it is
    lost and rebuilt from the snapshot and the transaction log.
    """

    def __init__(self) -> None:
        self.nodes: dict[str, Node] = {}
        self.ephemerals: dict[int, set[str]] = {}
        self.timed: set[str] = set()
        self.zxid = 0
        open_acl = (Acl(int(Perm.ALL), "world", "anyone"),)
        # as ZooKeeper's: no creation counted, so "/" reports cversion -1, "/zookeeper" -2
        self._put("/", Node(b"", open_acl, 0, 0, 0, 0))
        for path in ("/zookeeper", "/zookeeper/quota", "/zookeeper/config"):
            self._put(path, Node(b"", open_acl, 0, 0, 0, 0))
            self.nodes[parent_of(path)].children[name_of(path)] = None

    # -- index upkeep ------------------------------------------------------------------

    def _put(self, path: str, node: Node) -> None:
        self.nodes[path] = node
        owner = node.ephemeral_owner
        if is_ephemeral(owner):
            self.ephemerals.setdefault(owner, set()).add(path)
        elif owner != 0:
            self.timed.add(path)

    def _remove(self, path: str) -> Node:
        node = self.nodes.pop(path)
        owner = node.ephemeral_owner
        if is_ephemeral(owner):
            owned = self.ephemerals.get(owner)
            if owned is not None:
                owned.discard(path)
                if not owned:
                    del self.ephemerals[owner]
        elif owner != 0:
            self.timed.discard(path)
        return node

    def _save(self, undo: UndoLog | None, path: str) -> None:
        if undo is not None:
            node = self.nodes.get(path)
            undo.append((path, node.copy() if node is not None else None))

    def rollback(self, undo: UndoLog) -> None:
        """Undo the changes recorded in ``undo`` (newest first)."""
        for path, saved in reversed(undo):
            if path in self.nodes:
                self._remove(path)
            if saved is not None:
                self._put(path, saved)

    # -- reads -------------------------------------------------------------------------

    def get(self, path: str) -> Node:
        node = self.nodes.get(path)
        if node is None:
            raise KeeperError(E.NO_NODE)
        return node

    def count_descendants(self, path: str) -> int:
        total = 0
        stack = [path]
        while stack:
            current = stack.pop()
            node = self.nodes[current]
            prefix = "/" if current == "/" else current + "/"
            total += len(node.children)
            stack.extend(prefix + name for name in node.children)
        return total

    def ephemerals_of(self, session_id: int, prefix: str) -> list[str]:
        owned = self.ephemerals.get(session_id, set())
        if prefix == "/":
            return sorted(owned)
        return sorted(p for p in owned if p.startswith(prefix))

    # -- prepare: validate a request, return a transaction ------------------------------

    def prepare_create(
        self,
        path: str,
        data: bytes | None,
        acl: Iterable[Acl],
        ephemeral_owner: int,
        sequential: bool,
        identities: Iterable[Identity],
    ) -> CreateTxn:
        identities = list(identities)
        # ZooKeeper's order: the parent first, then the full path (so "/a//b" is NONODE)
        if not path.startswith("/") or "\0" in path:
            raise KeeperError(E.BAD_ARGUMENTS, f"invalid path: path={path!r}")
        if path == "/":
            raise KeeperError(E.NODE_EXISTS)
        fixed = fix_acl(acl, identities)
        parent = self.nodes.get(parent_of(path))
        if parent is None:
            raise KeeperError(E.NO_NODE)
        check_acl(parent.acl, Perm.CREATE, identities)
        if sequential:
            path = f"{path}{parent.cversion:010d}"
        validate_path(path)
        if path in self.nodes:
            raise KeeperError(E.NODE_EXISTS)
        if is_ephemeral(parent.ephemeral_owner):
            raise KeeperError(E.NO_CHILDREN_FOR_EPHEMERALS)
        return CreateTxn(path, data, fixed, ephemeral_owner)

    def prepare_delete(self, path: str, version: int, identities: Iterable[Identity]) -> DeleteTxn:
        if not path.startswith("/") or "\0" in path or path in RESERVED_PATHS:
            raise KeeperError(E.BAD_ARGUMENTS, f"cannot delete: path={path!r}")
        parent = self.get(parent_of(path))
        check_acl(parent.acl, Perm.DELETE, identities)
        node = self.get(path)
        if version != -1 and node.version != version:
            raise KeeperError(E.BAD_VERSION)
        if node.children:
            raise KeeperError(E.NOT_EMPTY)
        return DeleteTxn(path)

    def prepare_set_data(
        self, path: str, data: bytes | None, version: int, identities: Iterable[Identity]
    ) -> SetDataTxn:
        validate_path(path)
        node = self.get(path)
        check_acl(node.acl, Perm.WRITE, identities)
        if version != -1 and node.version != version:
            raise KeeperError(E.BAD_VERSION)
        return SetDataTxn(path, data, _next_version(node.version))

    def prepare_set_acl(
        self, path: str, acl: Iterable[Acl], version: int, identities: Iterable[Identity]
    ) -> SetACLTxn:
        identities = list(identities)
        validate_path(path)
        node = self.get(path)
        check_acl(node.acl, Perm.ADMIN, identities)
        fixed = fix_acl(acl, identities)
        if version != -1 and node.aversion != version:
            raise KeeperError(E.BAD_VERSION)
        return SetACLTxn(path, fixed, _next_version(node.aversion))

    def prepare_check(self, path: str, version: int, identities: Iterable[Identity]) -> CheckTxn:
        validate_path(path)
        node = self.get(path)
        check_acl(node.acl, Perm.READ, identities)
        if version != -1 and node.version != version:
            raise KeeperError(E.BAD_VERSION)
        return CheckTxn(path)

    # -- apply -------------------------------------------------------------------------

    def apply(
        self, txn: Txn, zxid: int, time_ms: int, undo: UndoLog | None = None
    ) -> list[Event]:
        """Apply one transaction; return the watch events it causes, in order.

        Raises KeyError only if the transaction does not fit the tree, which a
        transaction produced by ``prepare_*`` on this tree never does.
        """
        events: list[Event] = []
        self._apply(txn, zxid, time_ms, undo, events)
        self.zxid = zxid
        return events

    def _apply(
        self, txn: Txn, zxid: int, time_ms: int, undo: UndoLog | None, events: list[Event]
    ) -> None:
        if isinstance(txn, SetDataTxn):
            self._save(undo, txn.path)
            node = self.nodes[txn.path]
            node.data = txn.data
            node.version = txn.version
            node.mzxid = zxid
            node.mtime = time_ms
            events.append((EventType.NODE_DATA_CHANGED, txn.path, node.acl))
        elif isinstance(txn, CreateTxn):
            parent_path = parent_of(txn.path)
            self._save(undo, parent_path)
            self._save(undo, txn.path)
            parent = self.nodes[parent_path]
            parent.children[name_of(txn.path)] = None
            parent.cversion += 1
            parent.pzxid = zxid
            node = Node(txn.data, txn.acl, zxid, zxid, time_ms, time_ms,
                        ephemeral_owner=txn.ephemeral_owner, pzxid=zxid)
            self._put(txn.path, node)
            events.append((EventType.NODE_CREATED, txn.path, node.acl))
            events.append((EventType.NODE_CHILDREN_CHANGED, parent_path, parent.acl))
        elif isinstance(txn, DeleteTxn):
            self._delete(txn.path, zxid, undo, events)
        elif isinstance(txn, SetACLTxn):
            self._save(undo, txn.path)
            node = self.nodes[txn.path]
            node.acl = txn.acl
            node.aversion = txn.version
        elif isinstance(txn, CloseSessionTxn):
            for path in sorted(self.ephemerals.get(txn.session_id, ())):
                self._delete(path, zxid, undo, events)
        elif isinstance(txn, MultiTxn):
            for sub in txn.txns:
                self._apply(sub, zxid, time_ms, undo, events)
        # CheckTxn and CreateSessionTxn change no node.

    def _delete(self, path: str, zxid: int, undo: UndoLog | None, events: list[Event]) -> None:
        parent_path = parent_of(path)
        self._save(undo, parent_path)
        self._save(undo, path)
        node = self._remove(path)
        parent = self.nodes[parent_path]
        del parent.children[name_of(path)]
        parent.pzxid = zxid
        events.append((EventType.NODE_DELETED, path, node.acl))
        events.append((EventType.NODE_CHILDREN_CHANGED, parent_path, parent.acl))

    # -- containers and TTL nodes --------------------------------------------------------

    def expired_timed_nodes(self, now_ms: int) -> list[str]:
        """Containers that had children and have none now; TTL nodes with no children
        and no change for longer than their TTL (ZooKeeper's ContainerManager)."""
        doomed = []
        for path in self.timed:
            node = self.nodes[path]
            if node.children:
                continue
            owner = node.ephemeral_owner
            if is_container(owner):
                if node.cversion > 0:
                    doomed.append(path)
            elif now_ms - node.mtime > ttl_of(owner):
                doomed.append(path)
        return sorted(doomed)


def _next_version(version: int) -> int:
    return -(1 << 31) if version == (1 << 31) - 1 else version + 1
