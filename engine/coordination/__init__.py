"""Coordination on the engine's coordinator: locks, elections, config, service registry.

The jobs ZooKeeper does for a data centre, as objects, for the processes of one
machine (or of any ZooKeeper's clients, with ``engine start --coordinator``):

    LeaseLock(name, ttl_s)      a lock that expires ttl_s after its last renew, even
                                while its holder lives (a TTL znode)       lease_lock.py
    Lock(name)                  a lock held for its holder's session, fair lock.py
    Election(name)              one leader, a new one when it dies       election.py
    ConfigStore(path)           JSON values, versions, compare-and-set,
                                watches                                   config_store.py
    ServiceRegistry(service)    live instances, joins and leaves          registry.py

Every object takes ``data_dir`` (None: the default daemon, as Producer and Consumer do)
and opens, with the objects of its process, one coordinator session authenticated as
the data dir's owner (session.py); their znodes lie under ``/engine/coordination``
(paths.py) with the engine's ACL. TTL and container creates are kazoo request types
(requests.py). ``engine coord`` shows the tree from the command line (shell.py).
"""

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from engine.coordination.config_store import ConfigStore, ConfigWatch, Versioned
    from engine.coordination.election import Election
    from engine.coordination.lease_lock import LeaseLock
    from engine.coordination.lock import Lock
    from engine.coordination.registry import ServiceChange, ServiceRegistry, ServiceWatch

_EXPORTS: dict[str, str] = {
    "ConfigStore": "engine.coordination.config_store",
    "ConfigWatch": "engine.coordination.config_store",
    "Election": "engine.coordination.election",
    "LeaseLock": "engine.coordination.lease_lock",
    "Lock": "engine.coordination.lock",
    "ServiceChange": "engine.coordination.registry",
    "ServiceRegistry": "engine.coordination.registry",
    "ServiceWatch": "engine.coordination.registry",
    "Versioned": "engine.coordination.config_store",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'engine.coordination' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [
    "ConfigStore",
    "ConfigWatch",
    "Election",
    "LeaseLock",
    "Lock",
    "ServiceChange",
    "ServiceRegistry",
    "ServiceWatch",
    "Versioned",
]
