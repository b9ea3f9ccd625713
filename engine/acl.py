"""The engine's ACL on the coordinator's tree: who may touch the engine's znodes, and the
daemon's pass that puts the ACL on all of them.

The coordinator listens on 127.0.0.1, so every local user can open a session with it.
The data dir is its owner's alone (0700), and so is the engine's part of the tree:

- Every engine znode carries one ACL, all rights to the digest identity
  ``engine:<secret>`` (ZooKeeper's digest scheme: the ACL names
  ``engine:base64(sha1("engine:<secret>"))``), and nothing for anyone else. The secret
  lives in the data dir (``engine.secret``, 0600, DataDir.ensure_secret); every engine
  process and client authenticates with it and creates its znodes with the ACL
  (metadata.connect). A session without it gets NoAuth on getData, getChildren,
  setData, create and delete below an engine node, getACL and setACL. A real ZooKeeper
  (``engine start --coordinator``) does the same.
- What ZooKeeper leaves visible, and so does the built-in coordinator: ``exists`` and
  its stat are not ACL-checked (whether a guessed path exists, its size and times);
  the names of the nodes directly under the root, which stays open to all so that
  plain ZooKeeper users keep their own paths.
- The built-in coordinator's four-letter words (ruok, srvr, stat, mntr, envi, conf,
  isro) tell counts and settings, no path and no data. A real ZooKeeper's dump, wchp
  and wchc list paths: keep its ``4lw.commands.whitelist`` narrow (its default: srvr).
- The open root has one more consequence: ZooKeeper lets whoever may delete in a
  parent delete a childless child, so anyone could delete a childless engine node
  directly under the root (and make it again, open). Each of them therefore keeps a
  child ``#guard`` (metadata.GUARD), which only the engine may delete. ``/controller``
  is ephemeral and cannot have a child: anyone may delete it (the brokers then elect
  again) or make one, which the brokers remove (Controller.elect).

:func:`secure_tree` runs in the daemon once the coordinator serves and before any
broker starts: it gives the engine's ACL to every engine znode that lacks it (a data
dir from before ACLs), then makes the persistent engine paths and their guards, so
that brokers and clients only ever create below nodes that are already the engine's.
A crash half-way is harmless: it runs again at the next start, and a subtree counts as
done only once its top node has the ACL, which is set last.
"""

from __future__ import annotations

import contextlib
import logging

from kazoo.client import KazooClient
from kazoo.exceptions import NoAuthError, NodeExistsError, NoNodeError
from kazoo.security import ACL

from engine import metadata as md
from engine.coordination import paths as coordination
from engine.datadir import DataDir
from engine.errors import AuthorizationError
from engine.offset_store import CONSUMERS
from engine.transaction import PRODUCER_ID_BLOCK, TRANSACTIONS

log = logging.getLogger("engine.acl")

#: The engine's persistent znodes, parents first; the daemon makes them at start.
PATHS = (
    "/brokers",
    md.BROKER_IDS,
    md.BROKER_TOPICS,
    "/config",
    md.CONFIG_TOPICS,
    "/config/brokers",
    "/admin",
    md.DELETE_TOPICS,
    md.CONTROLLER_EPOCH,
    CONSUMERS,
    TRANSACTIONS,
    PRODUCER_ID_BLOCK,
    *coordination.PATHS,  # /engine/coordination/...: the recipes' (engine.coordination)
)

#: The persistent engine nodes directly under the root: each keeps a guard child.
TOP_LEVEL = tuple(path for path in PATHS if path.count("/") == 1)

_BATCH = 1000  # requests in flight at once while walking the tree


def secure_tree(zk: KazooClient, data_dir: DataDir) -> int:
    """Put the engine's ACL on every engine znode and make the engine's paths; returns
    how many znodes had to get the ACL (0 unless the data dir predates ACLs).
    ``zk`` must be authenticated with the data dir's secret (metadata.connect).
    AuthorizationError when a top-level engine node does not let the engine in."""
    acl = md.engine_acl(data_dir.read_secret())
    opened = 0
    for top in TOP_LEVEL:
        try:
            current, _ = zk.get_acls(top)
        except NoNodeError:
            continue
        except NoAuthError:
            raise AuthorizationError(
                f"the engine's znode does not let the engine in: path={top}: the tree is "
                f"locked with another secret than {data_dir.secret_file} (put back the file "
                f"that was there), or another user made {top}"
            ) from None
        if list(current) != acl:
            opened += _secure_subtree(zk, top, acl)
    if opened:
        log.warning(
            "%d engine znodes were open to every local user (a data dir from before ACLs): "
            "each now has the engine's ACL", opened,
        )  # fmt: skip
    for path in PATHS:
        if path in TOP_LEVEL:
            _make_guarded(zk, path)
        else:
            zk.ensure_path(path)
    return opened


def _secure_subtree(zk: KazooClient, top: str, acl: list[ACL]) -> int:
    """Set ``acl`` on every node of the subtree that lacks it, the deepest first and
    ``top`` last. A node the engine cannot read (another user's, made while the tree was
    open) is left as it is, with a warning."""
    lacking: list[str] = []
    level = [top]
    while level:
        below: list[str] = []
        for start in range(0, len(level), _BATCH):
            paths = level[start : start + _BATCH]
            asked = [(p, zk.get_acls_async(p)) for p in paths]
            parents = []
            for path, acls in asked:
                try:
                    current, stat = acls.get()
                except NoNodeError:
                    continue
                except NoAuthError:
                    log.warning("an engine znode is another user's and was left as it is: "
                                "path=%s", path)
                    continue
                if list(current) != acl:
                    lacking.append(path)
                if stat.numChildren:
                    parents.append((path, zk.get_children_async(path)))
            for path, children in parents:
                with contextlib.suppress(NoNodeError, NoAuthError):
                    below += [f"{path}/{name}" for name in children.get()]
        level = below
    for start in range(0, len(lacking), _BATCH):
        paths = lacking[::-1][start : start + _BATCH]
        for result in [zk.set_acls_async(p, acl) for p in paths]:
            with contextlib.suppress(NoNodeError):
                result.get()
    return len(lacking)


def _make_guarded(zk: KazooClient, path: str) -> None:
    """Make ``path`` with its guard child; the two together when neither exists, so that
    ``path`` is never childless (and deletable by anyone) for a moment."""
    guard = f"{path}/{md.GUARD}"
    if zk.exists(guard):
        return
    if not zk.exists(path):
        tx = zk.transaction()
        tx.create(path)
        tx.create(guard)
        results = tx.commit()
        if not any(isinstance(r, NodeExistsError) for r in results):
            for r in results:
                if isinstance(r, Exception):
                    raise r
            return
    with contextlib.suppress(NodeExistsError):
        zk.create(guard)
