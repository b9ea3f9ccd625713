"""What ``engine coord`` shows and does: a zkCli-like look at the coordinator's tree.

    engine coord ls [PATH] [-R]              children (-R: the whole subtree)
    engine coord get PATH [--stat]           data (UTF-8, else escaped), and the stat
    engine coord set PATH DATA [--version N] set data (create, parents too, if missing)
    engine coord rm PATH [-r] [--version N]  delete (-r: with everything below)
    engine coord watch PATH [--children] [--count N]   data (or children) now, then
                                                       a line per change
    engine coord locks                       each Lock and LeaseLock: holder, waiters
    engine coord leader [NAME]               each election (or NAME's): leader, candidates

The session is authenticated as the data dir's owner (metadata.connect), so the
engine's own znodes can be read and changed; nodes it creates get the engine's ACL.
Functions here return text and values; engine/cli.py prints them.
"""

from __future__ import annotations

import datetime
import queue
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from kazoo.client import KazooClient
from kazoo.exceptions import (
    BadVersionError,
    NoAuthError,
    NodeExistsError,
    NoNodeError,
    NotEmptyError,
)
from kazoo.recipe.watchers import ChildrenWatch, DataWatch

from engine.coordination import paths
from engine.coordination.contenders import Contenders
from engine.errors import (
    AuthorizationError,
    CoordinationError,
    InvalidNameError,
    VersionConflictError,
    ZnodeNotFoundError,
)


def check_path(path: str) -> str:
    """An absolute znode path, without a trailing '/' (but the root)."""
    if not path.startswith("/") or (path != "/" and path.endswith("/")) or "//" in path:
        raise InvalidNameError(
            f"a znode path starts with '/' and has no empty part or trailing '/': "
            f"path={path!r}"
        )
    return path


def _errors(path: str, exc: Exception) -> Exception:
    """A kazoo error of a call on ``path`` as the engine's error, one line."""
    if isinstance(exc, NoNodeError):
        return ZnodeNotFoundError(f"no such znode: path={path}")
    if isinstance(exc, NoAuthError):
        return AuthorizationError(
            f"the znode's ACL does not let the engine's owner in: path={path}"
        )
    if isinstance(exc, NotEmptyError):
        return CoordinationError(f"the znode has children (rm -r deletes them too): path={path}")
    if isinstance(exc, NodeExistsError):
        return CoordinationError(f"the znode exists already: path={path}")
    return exc


def show_data(data: bytes | None) -> str:
    """Data as a line: UTF-8 text as it is, other bytes escaped; null as 'null'."""
    if data is None:
        return "null"
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return repr(data)[2:-1]


def show_stat(stat: Any) -> list[str]:
    """zkCli's stat lines."""

    def when(ms: int) -> str:
        return datetime.datetime.fromtimestamp(ms / 1000).strftime("%a %b %d %H:%M:%S %Y")

    return [
        f"cZxid = {stat.czxid:#x}",
        f"ctime = {when(stat.ctime)}",
        f"mZxid = {stat.mzxid:#x}",
        f"mtime = {when(stat.mtime)}",
        f"pZxid = {stat.pzxid:#x}",
        f"cversion = {stat.cversion}",
        f"dataVersion = {stat.version}",
        f"aclVersion = {stat.aversion}",
        f"ephemeralOwner = {stat.ephemeralOwner:#x}",
        f"dataLength = {stat.dataLength}",
        f"numChildren = {stat.numChildren}",
    ]


def ls(zk: KazooClient, path: str, recursive: bool = False) -> list[str]:
    """The children's names (sorted); with ``recursive``, every path below ``path``."""
    check_path(path)
    try:
        children = sorted(zk.get_children(path))
    except (NoNodeError, NoAuthError) as exc:
        raise _errors(path, exc) from None
    if not recursive:
        return children
    out: list[str] = []
    base = "" if path == "/" else path
    for child in children:
        below = f"{base}/{child}"
        out.append(below)
        try:
            out += ls(zk, below, True)
        except ZnodeNotFoundError:
            continue  # deleted meanwhile
        except AuthorizationError:
            continue  # another user's: its name is all that shows
    return out


def get(zk: KazooClient, path: str) -> tuple[bytes | None, Any]:
    try:
        data, stat = zk.get(check_path(path))
    except (NoNodeError, NoAuthError) as exc:
        raise _errors(path, exc) from None
    return data, stat


def set_data(zk: KazooClient, path: str, data: bytes, version: int | None = None) -> Any:
    """Set the node's data (only at ``version``, when given); a missing node is
    created, with its parents, unless a version is given. Its new stat."""
    check_path(path)
    try:
        try:
            return zk.set(path, data, version=-1 if version is None else version)
        except NoNodeError:
            if version is not None:
                raise
        _, stat = zk.create(path, data, makepath=True, include_data=True)
        return stat
    except BadVersionError:
        stat = zk.exists(path)
        raise VersionConflictError(
            f"the znode is at another version: path={path} expected={version} "
            f"actual={stat.version if stat else 'absent'}",
            key=path, expected=version, actual=stat.version if stat else None,
        ) from None  # fmt: skip
    except (NoNodeError, NoAuthError, NodeExistsError) as exc:
        raise _errors(path, exc) from None


def rm(zk: KazooClient, path: str, recursive: bool = False, version: int | None = None) -> None:
    """Delete the node (only at ``version``, when given); with ``recursive``, with all
    its descendants."""
    if check_path(path) == "/":
        raise InvalidNameError("the root znode cannot be deleted: path='/'")
    try:
        zk.delete(path, version=-1 if version is None else version, recursive=recursive)
    except BadVersionError:
        stat = zk.exists(path)
        raise VersionConflictError(
            f"the znode is at another version: path={path} expected={version} "
            f"actual={stat.version if stat else 'absent'}",
            key=path, expected=version, actual=stat.version if stat else None,
        ) from None  # fmt: skip
    except (NoNodeError, NoAuthError, NotEmptyError) as exc:
        raise _errors(path, exc) from None


def watch(zk: KazooClient, path: str, children: bool = False) -> Iterator[str]:
    """Lines: the node's data (or children) now, then one per change, as they come;
    endless (the caller stops iterating). A deleted node's line is ``<path> deleted``."""
    check_path(path)
    lines: queue.Queue[str] = queue.Queue()
    if children:

        def children_changed(names: list[str]) -> None:
            lines.put(f"{path} children [{', '.join(sorted(names))}]")

        try:
            ChildrenWatch(zk, path, children_changed)
        except (NoNodeError, NoAuthError) as exc:
            raise _errors(path, exc) from None
    else:
        seen: list[bool] = []

        def data_changed(data: bytes | None, stat: Any) -> None:
            if stat is None:
                lines.put(f"{path} deleted" if seen else f"{path} does not exist")
            else:
                lines.put(f"{path} version {stat.version}: {show_data(data)}")
            seen.append(True)

        DataWatch(zk, path, data_changed)
    while True:
        yield lines.get()


@dataclass(frozen=True)
class LockView:
    """A Lock's or LeaseLock's state as ``engine coord locks`` shows it."""

    kind: str  # "lock" or "lease"
    name: str
    holder: str | None
    waiting: list[str]
    renewed_s_ago: float | None = None  # a lease: since its last renew


def locks(zk: KazooClient) -> list[LockView]:
    """Every Lock and LeaseLock that has a contender, by kind and name."""
    out = []
    for kind, base, marker in (
        ("lock", paths.LOCKS, paths.LOCK_MARKER),
        ("lease", paths.LEASES, paths.LEASE_MARKER),
    ):
        for name in _names(zk, base):
            contenders = Contenders(zk, f"{base}/{name}", marker)
            nodes = contenders.ordered()
            data = {n: contenders.data(n) for n in nodes}
            live = [(n, d.decode("utf-8", "replace")) for n, d in data.items() if d is not None]
            if not live:
                continue
            renewed = None
            if kind == "lease":
                stat = zk.exists(f"{base}/{name}/{live[0][0]}")
                if stat is not None:
                    renewed = max(0.0, time.time() - stat.mtime / 1000)
            out.append(LockView(kind, name, live[0][1], [i for _, i in live[1:]], renewed))
    return out


@dataclass(frozen=True)
class ElectionView:
    """An election's state as ``engine coord leader`` shows it."""

    name: str
    leader: str | None
    candidates: list[str]


def elections(zk: KazooClient, name: str | None = None) -> list[ElectionView]:
    """Every election with a candidate (or only ``name``'s, even without one)."""
    names = [paths.validate_name(name, "election name")] if name else _names(zk, paths.ELECTIONS)
    out = []
    for each in names:
        ids = Contenders(zk, f"{paths.ELECTIONS}/{each}", paths.LOCK_MARKER).identifiers()
        if ids or name:
            out.append(ElectionView(each, ids[0] if ids else None, ids))
    return out


def _names(zk: KazooClient, base: str) -> list[str]:
    try:
        return sorted(zk.get_children(base))
    except NoNodeError:
        return []
