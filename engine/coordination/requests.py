"""ZooKeeper's TTL and container creates, as kazoo request types.

kazoo 2.11 sends create (op 1) and create2 (op 15) only. ZooKeeper 3.5 added two more
that share their record (zookeeper.jute's CreateRequest, CreateTTLRequest)::

    op                  record                                        reply
    createContainer(19) path data acl flags(=CONTAINER 4)             path stat
    createTTL(21)       path data acl flags(=5 or 6) ttl(long, ms)    path stat

    flags: PERSISTENT_WITH_TTL 5, PERSISTENT_SEQUENTIAL_WITH_TTL 6, CONTAINER 4

The request types below compose kazoo's ``Create2`` (same fields, same encoding, same
reply) and go through the client's own request queue (``KazooClient._call``), so they
share its connection, its session, its authentication and its retries.

A TTL node is deleted by the server once it has had no children and no change (a
create or a setData) for longer than its TTL; a container once it had a child and has
none. Both sweeps run on a timer: every tick (200 ms) on the built-in coordinator,
every ``znode.container.checkIntervalMs`` (60 s by default) on a real ZooKeeper.
A real ZooKeeper accepts TTL nodes only when started with
``-Dzookeeper.extendedTypesEnabled=true``; without it it answers UNIMPLEMENTED, which
:func:`create_ttl` turns into TtlNodesDisabledError.
"""

from __future__ import annotations

from collections import namedtuple
from typing import Any

from kazoo.client import KazooClient, _prefix_root
from kazoo.exceptions import UnimplementedError
from kazoo.protocol.serialization import Create2, long_struct
from kazoo.security import OPEN_ACL_UNSAFE

from engine.errors import ConfigError, TtlNodesDisabledError

CONTAINER = 4
PERSISTENT_WITH_TTL = 5
PERSISTENT_SEQUENTIAL_WITH_TTL = 6

#: The largest TTL ZooKeeper takes: 40 bits of milliseconds (EphemeralType.TTL).
MAX_TTL_MS = (1 << 40) - 1


class CreateContainer(Create2):  # type: ignore[misc]  # kazoo is untyped
    """createContainer (op 19): create2's record with the CONTAINER flag."""

    type = 19


class CreateTTL(namedtuple("CreateTTL", "path data acl flags ttl")):
    """createTTL (op 21): create2's record followed by the TTL in milliseconds."""

    type = 21

    def serialize(self) -> bytearray:
        body: bytearray = Create2(self.path, self.data, self.acl, self.flags).serialize()
        body.extend(long_struct.pack(self.ttl))
        return body

    @classmethod
    def deserialize(cls, buffer: bytes, offset: int) -> Any:
        return Create2.deserialize(buffer, offset)


def _acl(client: KazooClient) -> Any:
    """The ACL kazoo's own create gives a node: the client's default, else open."""
    return client.default_acl or OPEN_ACL_UNSAFE


def _send(client: KazooClient, request: Any) -> tuple[str, Any]:
    """Queue ``request`` on the client's connection; its (path, stat) once answered."""
    result = client.handler.async_result()
    client._call(request, result)  # on a closed or expired client it sets the error
    path, stat = result.get()
    return str(client.unchroot(path)), stat


def create_container(client: KazooClient, path: str, data: bytes = b"") -> str:
    """Create ``path`` as a container node with the client's default ACL (the engine's, for
    an engine client); its path.
    NodeExistsError when it exists, NoNodeError when its parent does not."""
    request = CreateContainer(_prefix_root(client.chroot, path), data, _acl(client), CONTAINER)
    return _send(client, request)[0]


def create_ttl(
    client: KazooClient, path: str, data: bytes, ttl_ms: int, sequence: bool = False
) -> str:
    """Create ``path`` as a TTL node (``sequence``: with the sequential suffix) with
    the client's default ACL; the path created. TtlNodesDisabledError when the server
    does not take TTL nodes; NodeExistsError, NoNodeError as create."""
    if not isinstance(ttl_ms, int) or not 0 < ttl_ms <= MAX_TTL_MS:
        raise ConfigError(f"a TTL must be 1 ms to {MAX_TTL_MS} ms: ttl_ms={ttl_ms!r}")
    flags = PERSISTENT_SEQUENTIAL_WITH_TTL if sequence else PERSISTENT_WITH_TTL
    request = CreateTTL(
        _prefix_root(client.chroot, path, trailing=sequence),
        data,
        _acl(client),
        flags,
        ttl_ms,
    )
    try:
        return _send(client, request)[0]
    except UnimplementedError:
        raise TtlNodesDisabledError(
            f"the coordinator refused a TTL znode (UNIMPLEMENTED): path={path}: a real "
            "ZooKeeper needs zookeeper.extendedTypesEnabled=true (as a system property, "
            "e.g. SERVER_JVMFLAGS=-Dzookeeper.extendedTypesEnabled=true) for LeaseLock"
        ) from None
