"""ConfigStore: typed settings under a path, with versions, compare-and-set and watches.

    store = ConfigStore("billing")
    store.set("rate_limit", 100)                     # -> version 0 (created)
    current = store.get_versioned("rate_limit")      # Versioned(value=100, version=0)
    store.compare_and_set("rate_limit", 200, current.version)   # -> 1
    store.compare_and_set("rate_limit", 300, current.version)   # VersionConflictError
    store.watch("rate_limit", lambda value, version: ...)       # now, then at each change

Each key is a persistent znode ``/engine/coordination/config/<path>/<key>`` whose data
is the value as JSON (dict, list, str, int, float, bool, None: a tuple comes back as a
list). Its version is the znode's data version: 0 when the key is created, one more
at each set. compare_and_set writes only if the version is still the one given (None:
only if the key does not exist yet), atomically in the coordinator, so of two
concurrent writers that read the same version exactly one succeeds. A node without
data (a nested path's directory) is not a key.

Watch callbacks run on the session's callback thread (kazoo's DataWatch), with the
value and version now and after each change; with (None, None) while the key does not
exist. Changes made in quick succession may be seen as one: the callback always gets
the latest value, never a stale one.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable
from typing import Any, NamedTuple

from kazoo.exceptions import BadVersionError, NodeExistsError, NoNodeError
from kazoo.recipe.watchers import DataWatch

from engine.coordination import paths
from engine.coordination.session import SESSION_TIMEOUT_S, Recipe
from engine.errors import NotJsonError, VersionConflictError

log = logging.getLogger("engine.coordination")


class Versioned(NamedTuple):
    """A config value and the version it has (compare_and_set's ``version``)."""

    value: Any
    version: int


def encode_value(value: Any, what: str) -> bytes:
    """``value`` as compact JSON; NotJsonError naming ``what`` when JSON cannot hold it."""
    try:
        return json.dumps(value, allow_nan=False, separators=(",", ":")).encode()
    except (TypeError, ValueError) as exc:
        raise NotJsonError(f"{what} is not JSON: {exc}") from None


def decode_value(data: bytes, path: str) -> Any:
    try:
        return json.loads(data)
    except (UnicodeDecodeError, ValueError):
        raise NotJsonError(
            f"the value in the tree is not JSON (written by other means): path={path} "
            f"data={data[:60]!r}"
        ) from None


class ConfigWatch:
    """What ConfigStore.watch returns: cancel() stops the callbacks."""

    def __init__(self, key: str, on_cancel: Callable[[ConfigWatch], Any]) -> None:
        self.key = key
        self.cancelled = False
        self._on_cancel = on_cancel

    def cancel(self) -> None:
        if not self.cancelled:
            self.cancelled = True
            self._on_cancel(self)


class ConfigStore(Recipe):
    """The keys under one config path.

    Holds: the path and this object's watches. Invariant: a key's version only grows
    while the key exists (deleting and creating it again starts at 0).

    Nothing is held across a crash: values are persistent; watches end with the object.

    Threads: any thread may call it; callbacks run on the session's callback thread.
    """

    def __init__(
        self,
        path: str,
        data_dir: str | os.PathLike[str] | None = None,
        *,
        session_timeout_s: float = SESSION_TIMEOUT_S,
    ) -> None:
        self.name = path
        self.path = paths.config_path(path)
        super().__init__(data_dir, session_timeout_s)
        self._watches: list[ConfigWatch] = []
        self._watches_lock = threading.Lock()

    def _key_path(self, key: str) -> str:
        return f"{self.path}/{paths.validate_name(key, 'config key')}"

    def get_versioned(self, key: str) -> Versioned | None:
        """The key's value and version; None when it does not exist."""
        path = self._key_path(key)
        try:
            data, stat = self.zk.get(path)
        except NoNodeError:
            return None
        if not data:
            return None
        return Versioned(decode_value(data, path), stat.version)

    def get(self, key: str, default: Any = None) -> Any:
        """The key's value; ``default`` when it does not exist."""
        found = self.get_versioned(key)
        return default if found is None else found.value

    def set(self, key: str, value: Any) -> int:
        """Write the key, whatever its version; its new version."""
        path = self._key_path(key)
        data = encode_value(value, f"the value of config key {key!r}")
        zk = self.zk
        while True:
            try:
                return int(zk.set(path, data).version)
            except NoNodeError:
                pass
            try:
                zk.create(path, data, makepath=True)
                return 0
            except NodeExistsError:
                continue  # created meanwhile: set it

    def compare_and_set(self, key: str, value: Any, version: int | None) -> int:
        """Write the key only if its version is still ``version`` (None: only if it does
        not exist); its new version. VersionConflictError otherwise, with the version
        found (``actual``, None when absent)."""
        if version is not None and (not isinstance(version, int) or version < 0):
            raise VersionConflictError(
                f"a version is an int >= 0 (or None: the key must be absent): "
                f"key={key!r} version={version!r}",
                key=key, expected=version, actual=None,
            )  # fmt: skip
        path = self._key_path(key)
        data = encode_value(value, f"the value of config key {key!r}")
        zk = self.zk
        try:
            if version is None:
                zk.create(path, data, makepath=True)
                return 0
            return int(zk.set(path, data, version=version).version)
        except (NodeExistsError, BadVersionError, NoNodeError):
            pass
        found = self.get_versioned(key)
        actual = None if found is None else found.version
        raise VersionConflictError(
            f"config key {key!r} is at another version than expected: "
            f"expected={'absent' if version is None else version} "
            f"actual={'absent' if actual is None else actual}",
            key=key, expected=version, actual=actual,
        )  # fmt: skip

    def delete(self, key: str, version: int | None = None) -> bool:
        """Delete the key (only at ``version``, when given: VersionConflictError
        otherwise); False when it did not exist."""
        path = self._key_path(key)
        try:
            self.zk.delete(path, version=-1 if version is None else version)
            return True
        except NoNodeError:
            if version is None:
                return False
            actual = None
        except BadVersionError:
            found = self.get_versioned(key)
            actual = None if found is None else found.version
        raise VersionConflictError(
            f"config key {key!r} is at another version than expected: expected={version} "
            f"actual={'absent' if actual is None else actual}",
            key=key, expected=version, actual=actual,
        )  # fmt: skip

    def keys(self) -> list[str]:
        """The keys under the path, sorted."""
        return sorted(self.items())

    def items(self) -> dict[str, Any]:
        """Every key and its value."""
        zk = self.zk
        try:
            children = zk.get_children(self.path)
        except NoNodeError:
            return {}
        out = {}
        for child, result in [(c, zk.get_async(f"{self.path}/{c}")) for c in children]:
            try:
                data, _ = result.get()
            except NoNodeError:
                continue
            if data:
                out[child] = decode_value(data, f"{self.path}/{child}")
        return out

    def watch(self, key: str, callback: Callable[[Any, int | None], Any]) -> ConfigWatch:
        """Call ``callback(value, version)`` now and after each change of the key
        ((None, None) while it does not exist), until cancel() or close()."""
        path = self._key_path(key)
        handle = ConfigWatch(key, self._forget)

        def changed(data: bytes | None, stat: Any) -> bool | None:
            if handle.cancelled:
                return False  # kazoo then drops the watch
            try:
                if stat is None or not data:
                    callback(None, None)
                else:
                    callback(decode_value(data, path), stat.version)
            except Exception:
                log.exception("config watch callback failed: path=%s", path)
            return None

        with self._watches_lock:
            self._watches.append(handle)
            self._pin()
        DataWatch(self.zk, path, changed)
        return handle

    def _forget(self, handle: ConfigWatch) -> None:
        with self._watches_lock:
            if handle in self._watches:
                self._watches.remove(handle)
            if not self._watches:
                self._unpin()

    def _let_go(self) -> None:
        with self._watches_lock:
            watches = list(self._watches)
        for handle in watches:
            handle.cancel()

    def __enter__(self) -> ConfigStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
