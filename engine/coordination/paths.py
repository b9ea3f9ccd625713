"""Where the coordination recipes keep their znodes, and the names they accept.

    /engine                                        persistent, guarded (engine/acl.py)
    /engine/coordination                           persistent
      locks/<name>                                 container: one Lock's queue
      locks/<name>/<uuid>__lock__<seq>             ephemeral sequential: holder identifier
      leases/<name>                                container: one LeaseLock's contenders
      leases/<name>/<uuid>__lease__<seq>           TTL sequential: holder identifier
      elections/<name>                             container: one Election's candidates
      elections/<name>/<uuid>__lock__<seq>         ephemeral sequential: candidate identifier
      config/<path>/<key>                          persistent: the key's value as JSON
      services/<service>                           persistent
      services/<service>/<instance>                ephemeral: the instance's data as JSON

Every node carries the engine's ACL (metadata.connect gives it to all the engine's
clients create), so only the data dir's owner can read or change them. The persistent
nodes down to each recipe's directory are made by the daemon at every start
(engine/acl.py PATHS); a recipe makes them too, should they be missing.

A contender's node is named as kazoo's Lock names its own, ``<uuid hex>__lock__`` and
the 10-digit sequence the coordinator appends: the uuid lets a contender whose create
was answered by a lost connection find its node again, and a kazoo ``Lock`` (or
``Election``) on the same path, with the engine's credentials, queues with the engine's.
The per-name parents are containers: the coordinator deletes each once its last child
is gone, so names used once leave nothing behind.
"""

from __future__ import annotations

import re

from engine.errors import InvalidNameError

ROOT = "/engine"
BASE = "/engine/coordination"
LOCKS = f"{BASE}/locks"
LEASES = f"{BASE}/leases"
ELECTIONS = f"{BASE}/elections"
CONFIG = f"{BASE}/config"
SERVICES = f"{BASE}/services"

#: The persistent coordination nodes, parents first (made by the daemon at start).
PATHS = (ROOT, BASE, LOCKS, LEASES, ELECTIONS, CONFIG, SERVICES)

#: The marker between a contender's uuid and its sequence: kazoo's Lock's, and the lease's.
LOCK_MARKER = "__lock__"
LEASE_MARKER = "__lease__"

MAX_NAME_LENGTH = 200
_NAME = re.compile(r"[A-Za-z0-9._-]+")


def validate_name(name: object, what: str = "name") -> str:
    """A lock, election, service or instance name, or a config key: 1 to 200 ASCII
    letters, digits, '.', '_' and '-', not '.' or '..'. Returns it or raises
    InvalidNameError naming ``what``."""
    if not isinstance(name, str):
        raise InvalidNameError(f"{what} must be a str, not {type(name).__name__}")
    if not name or name in (".", ".."):
        raise InvalidNameError(f"{what} is empty or '.' or '..': {what}={name!r}")
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidNameError(
            f"{what} longer than {MAX_NAME_LENGTH} characters: length={len(name)}"
        )
    if not _NAME.fullmatch(name):
        raise InvalidNameError(
            f"{what} may only use ASCII letters, digits, '.', '_' and '-': {what}={name!r}"
        )
    return name


def validate_config_path(path: object) -> str:
    """A ConfigStore path: names (as :func:`validate_name`) joined by '/', without a
    leading or trailing '/'. Returns it or raises InvalidNameError."""
    if not isinstance(path, str):
        raise InvalidNameError(f"config path must be a str, not {type(path).__name__}")
    if not path:
        raise InvalidNameError("config path is empty: path=''")
    for part in path.split("/"):
        if not part:
            raise InvalidNameError(
                f"config path has an empty part (a leading, trailing or double '/'): "
                f"path={path!r}"
            )
        validate_name(part, "config path part")
    return path


def lock_path(name: str) -> str:
    return f"{LOCKS}/{validate_name(name, 'lock name')}"


def lease_path(name: str) -> str:
    return f"{LEASES}/{validate_name(name, 'lease lock name')}"


def election_path(name: str) -> str:
    return f"{ELECTIONS}/{validate_name(name, 'election name')}"


def config_path(path: str) -> str:
    return f"{CONFIG}/{validate_config_path(path)}"


def service_path(service: str) -> str:
    return f"{SERVICES}/{validate_name(service, 'service name')}"
