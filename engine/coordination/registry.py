"""ServiceRegistry: the live instances of a service, and who joins and leaves.

    registry = ServiceRegistry("pricing")
    me = registry.register({"host": "127.0.0.1", "port": 8080})
    registry.instances()             # {instance id: its data} of every live instance
    registry.watch(lambda change: print(change.joined, change.left))

An instance is an ephemeral znode ``/engine/coordination/services/<service>/<id>``
whose data is the instance's data as JSON. It lives as long as the registering
session: an instance whose process dies leaves once the coordinator ends that session
(its timeout, 4 s on the built-in coordinator today), and watchers hear of it then.
Should a live process's session expire (the daemon away longer than the timeout), its
registry registers its instances again as soon as it has a new session.

Watch callbacks run on the session's callback thread (kazoo's ChildrenWatch), first
with every live instance as joined, then at each change; joins and leaves in quick
succession may come as one change.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kazoo.client import KazooClient, KazooState
from kazoo.exceptions import NodeExistsError, NoNodeError
from kazoo.recipe.watchers import ChildrenWatch

from engine.coordination import paths
from engine.coordination.config_store import decode_value, encode_value
from engine.coordination.session import SESSION_TIMEOUT_S, Recipe
from engine.errors import InstanceExistsError, NotJsonError

log = logging.getLogger("engine.coordination")


@dataclass(frozen=True)
class ServiceChange:
    """What a registry watch is told: the live instances now (id -> data), and the
    ids that joined and left since the call before (all live ones, the first time)."""

    instances: dict[str, Any]
    joined: list[str] = field(default_factory=list)
    left: list[str] = field(default_factory=list)


class ServiceWatch:
    """What ServiceRegistry.watch returns: cancel() stops the callbacks."""

    def __init__(self, on_cancel: Callable[[ServiceWatch], Any]) -> None:
        self.cancelled = False
        self._on_cancel = on_cancel

    def cancel(self) -> None:
        if not self.cancelled:
            self.cancelled = True
            self._on_cancel(self)


def _data_of(zk: KazooClient, path: str, ids: list[str]) -> dict[str, Any]:
    """The data of each instance of ``ids`` under ``path`` that is still there."""
    out = {}
    for child, result in [(c, zk.get_async(f"{path}/{c}")) for c in ids]:
        try:
            data, _ = result.get()
        except NoNodeError:
            continue  # left meanwhile
        try:
            out[child] = decode_value(data or b"null", f"{path}/{child}")
        except NotJsonError:
            out[child] = None
    return out


class ServiceRegistry(Recipe):
    """The instances of one service.

    Holds: the service name, the instances this object registered (id -> data) and its
    watches. Invariant: each registered instance has its node while the session lives,
    and again soon after a new session starts.

    On a crash the process's instances leave after its session timeout.

    Threads: any thread may call it; callbacks run on the session's callback thread.
    """

    def __init__(
        self,
        service: str,
        data_dir: str | os.PathLike[str] | None = None,
        *,
        session_timeout_s: float = SESSION_TIMEOUT_S,
    ) -> None:
        self.service = service
        self.path = paths.service_path(service)
        super().__init__(data_dir, session_timeout_s)
        self._mine: dict[str, bytes] = {}
        self._mine_lock = threading.Lock()
        self._watches: list[ServiceWatch] = []
        self._session_lost = False
        self._session.add_listener(self._on_state)

    def register(self, data: Any = None, instance_id: str | None = None) -> str:
        """Add a live instance with ``data`` (JSON); its id (by default a new uuid).
        InstanceExistsError when that id is live already."""
        instance_id = paths.validate_name(
            uuid.uuid4().hex if instance_id is None else instance_id, "instance id"
        )
        payload = encode_value(data, f"the data of instance {instance_id!r}")
        try:
            self.zk.create(f"{self.path}/{instance_id}", payload, ephemeral=True,
                           makepath=True)  # fmt: skip
        except NodeExistsError:
            raise InstanceExistsError(
                f"an instance of that id is live already: service={self.service!r} "
                f"instance={instance_id!r}"
            ) from None
        with self._mine_lock:
            self._mine[instance_id] = payload
            self._pin()
        return instance_id

    def unregister(self, instance_id: str) -> None:
        """Remove an instance this object registered (nothing when it is gone)."""
        with self._mine_lock:
            self._mine.pop(instance_id, None)
            self._unpin_if_idle()
        with contextlib.suppress(NoNodeError):
            self.zk.delete(f"{self.path}/{paths.validate_name(instance_id, 'instance id')}")

    def instances(self) -> dict[str, Any]:
        """Every live instance: id -> data."""
        zk = self.zk
        try:
            children = zk.get_children(self.path)
        except NoNodeError:
            return {}
        return _data_of(zk, self.path, children)

    def watch(self, callback: Callable[[ServiceChange], Any]) -> ServiceWatch:
        """Call ``callback(change)`` now, with every live instance as joined, and at
        each join and leave after, until cancel() or close()."""
        handle = ServiceWatch(self._forget)
        live: dict[str, Any] = {}
        first = [True]
        path = self.path
        zk = self.zk

        def changed(children: list[str]) -> bool | None:
            if handle.cancelled:
                return False  # kazoo then drops the watch
            now = set(children)
            joined = sorted(now - live.keys())
            left = sorted(live.keys() - now)
            for instance in left:
                del live[instance]
            live.update(_data_of(zk, path, joined))
            joined = [i for i in joined if i in live]
            if not joined and not left and not first[0]:
                return None
            first[0] = False
            try:
                callback(ServiceChange(dict(live), joined, left))
            except Exception:
                log.exception("service watch callback failed: path=%s", path)
            return None

        zk.ensure_path(path)
        with self._mine_lock:
            self._watches.append(handle)
            self._pin()
        ChildrenWatch(zk, path, changed)
        return handle

    def _forget(self, handle: ServiceWatch) -> None:
        with self._mine_lock:
            if handle in self._watches:
                self._watches.remove(handle)
            self._unpin_if_idle()

    def _unpin_if_idle(self) -> None:
        """(with _mine_lock) Unpinned once it has no instance and no watch left."""
        if not self._mine and not self._watches:
            self._unpin()

    def _on_state(self, state: str) -> None:
        if state == KazooState.LOST:
            self._session_lost = True
        elif state == KazooState.CONNECTED and self._session_lost:
            self._session_lost = False
            threading.Thread(
                target=self._register_again, name="engine-registry", daemon=True
            ).start()

    def _register_again(self) -> None:
        """After a new session: the instances this object registered, back."""
        with self._mine_lock:
            mine = dict(self._mine)
        for instance_id, payload in mine.items():
            try:
                self._session.client.create(
                    f"{self.path}/{instance_id}", payload, ephemeral=True, makepath=True
                )
                log.info("registered again after a new session: service=%s instance=%s",
                         self.service, instance_id)  # fmt: skip
            except NodeExistsError:
                pass
            except Exception:
                log.warning("could not register again: service=%s instance=%s",
                            self.service, instance_id, exc_info=True)  # fmt: skip

    def _let_go(self) -> None:
        with self._mine_lock:
            watches = list(self._watches)
        for handle in watches:
            handle.cancel()
        with self._mine_lock:
            mine = list(self._mine)
        for instance_id in mine:
            try:
                self.unregister(instance_id)
            except Exception:  # closing: the node goes with the session anyway
                log.warning("unregistering %s at close failed", instance_id, exc_info=True)

    def __enter__(self) -> ServiceRegistry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
