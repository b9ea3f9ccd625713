"""Consumer groups in the coordinator's tree: Kafka's old ZooKeeper layout, and committed offsets.

    /consumers/<group>/ids/<client id>-<seq>          ephemeral: a live member
                                                      {"version":1,"subscription":[topics],
                                                       "client_id","pid","host","strategy"}
                                                      a Kafka client's (engine.kafka.
                                                      group_coordinator) also has
                                                      "kind":"kafka", "protocol_type",
                                                      "broker"; its pid is null
    /consumers/<group>/state                          the current generation (written by the
                                                      leader, the member with the lowest seq,
                                                      or the Kafka group's coordinator)
                                                      {"version":1,"generation","leader",
                                                       "protocol","members":{id:[topics]},
                                                       "partition_counts":{t:n},
                                                       "assignment":{id:[[t,p],...]}}
                                                      a Kafka group's also has "kind":"kafka"
                                                      and "state" (its ClassicGroupState)
    /consumers/<group>/owners/<topic>/<partition>     ephemeral: the member fetching it
    /consumers/<group>/offsets/<topic>/<partition>    the committed offset, decimal ("42");
                                                      empty until the first commit

Why the coordinator's tree and not a compacted internal topic: the tree is already
durable (its transaction log is fsynced before a write is acknowledged, and it
survives `engine stop`/`engine start`), a commit can be made conditional on the
committing member still being in the group in the same multi-op transaction, and
Kafka itself kept offsets exactly here before 0.9. The price is one coordinator
write per commit, which is why auto-commit runs on an interval.

One group, one kind of member. The engine's Consumers (engine.group) and Kafka's
clients (engine.kafka.group_coordinator) both register under ``ids``, but their
protocols cannot share a group's partitions: the engine's members take partitions
through owner znodes, Kafka's through their leader's assignment. So a member checks,
after registering, whether a member of the other kind registered before it (a lower
sequence number: the parent's counter orders both kinds' joins) and then withdraws
(:func:`earlier_members_of_other_kind`). Of two joining at once, the later withdraws:
its listing, made after its own registration, shows every registration before it.
What remains: a member that is itself withdrawing can make a later one of the other
kind withdraw too (both refused, never both members), and a member whose process (or,
for a Kafka client, whose coordinator broker) died keeps the group to its kind until
its session expires.

Pure layout and small kazoo helpers; the protocols live in engine.group and
engine.kafka.group_coordinator.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

from kazoo.client import KazooClient
from kazoo.exceptions import NodeExistsError, NoNodeError

from engine.errors import ConfigError
from engine.metadata import GUARD
from engine.record import TopicPartition, as_offset

CONSUMERS = "/consumers"
#: A member znode's "kind": the engine's own Consumer (the default: absent), or a
#: Kafka client that joined through a broker's Kafka listener.
KIND_ENGINE = "engine"
KIND_KAFKA = "kafka"
#: The characters of a group id and of a member's client id (they name znodes).
GROUP_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


def validate_group_id(group_id: object) -> str:
    """A group id is a non-empty str of [a-zA-Z0-9._-] (it names a znode)."""
    if (
        not isinstance(group_id, str)
        or not group_id
        or group_id in (".", "..")
        or not set(group_id) <= GROUP_CHARS
        or len(group_id) > 249
    ):
        raise ConfigError(
            f"group_id must be 1-249 characters of ASCII letters, digits, '.', '_' and '-': "
            f"group_id={group_id!r}"
        )
    return group_id


def validate_client_id(client_id: object) -> str:
    """A group member's client id names its member znode: the same characters as a group id."""
    if (
        not isinstance(client_id, str)
        or not client_id
        or not set(client_id) <= GROUP_CHARS
        or len(client_id) > 200
    ):
        raise ConfigError(
            "client_id of a group member must be 1-200 characters of ASCII letters, digits, "
            f"'.', '_' and '-': client_id={client_id!r}"
        )
    return client_id


def group_path(group: str) -> str:
    return f"{CONSUMERS}/{group}"


def ids_path(group: str) -> str:
    return f"{CONSUMERS}/{group}/ids"


def member_path(group: str, member_id: str) -> str:
    return f"{CONSUMERS}/{group}/ids/{member_id}"


def state_path(group: str) -> str:
    return f"{CONSUMERS}/{group}/state"


def owner_path(group: str, tp: TopicPartition) -> str:
    return f"{CONSUMERS}/{group}/owners/{tp.topic}/{tp.partition}"


def offset_path(group: str, tp: TopicPartition) -> str:
    return f"{CONSUMERS}/{group}/offsets/{tp.topic}/{tp.partition}"


def member_seq(member_id: str) -> int:
    """The sequence number ZooKeeper appended to a member id (orders members by join time)."""
    try:
        return int(member_id.rsplit("-", 1)[1])
    except (IndexError, ValueError):
        return 1 << 62


def member_kind(info: Mapping[str, Any]) -> str:
    """The kind of a member by what it registered (KIND_ENGINE or KIND_KAFKA)."""
    return str(info.get("kind") or KIND_ENGINE)


def earlier_members_of_other_kind(
    client: KazooClient, group: str, member_id: str, kind: str
) -> list[str]:
    """The members of ``group`` that registered before ``member_id`` (a lower sequence
    number) and are not of ``kind``: when there are any, ``member_id`` must withdraw.
    Call after registering ``member_id``: every member registered before it is seen."""
    mine = member_seq(member_id)
    out = []
    for other in sorted(children(client, ids_path(group)), key=member_seq):
        if member_seq(other) >= mine:
            break
        try:
            data, _ = client.get(member_path(group, other))
        except NoNodeError:
            continue
        if member_kind(json.loads(data) if data else {}) != kind:
            out.append(other)
    return out


def validate_offsets(offsets: Mapping[Any, Any]) -> dict[TopicPartition, int]:
    out: dict[TopicPartition, int] = {}
    for tp, offset in offsets.items():
        tp = TopicPartition(*tp)
        out[tp] = as_offset(offset, f"{tp} ")
    return out


def read_committed(client: KazooClient, group: str, tp: TopicPartition) -> int | None:
    """The committed offset of (group, tp); None when nothing was committed."""
    try:
        data, _ = client.get(offset_path(group, tp))
    except NoNodeError:
        return None
    return int(data) if data else None


def read_all_committed(client: KazooClient, group: str) -> dict[TopicPartition, int]:
    out: dict[TopicPartition, int] = {}
    for topic in children(client, f"{CONSUMERS}/{group}/offsets"):
        for p in children(client, f"{CONSUMERS}/{group}/offsets/{topic}"):
            offset = read_committed(client, group, TopicPartition(topic, int(p)))
            if offset is not None:
                out[TopicPartition(topic, int(p))] = offset
    return out


def ensure_offset_nodes(
    client: KazooClient, group: str, tps: Iterable[TopicPartition], known: set[TopicPartition]
) -> None:
    """Create the (empty) offset znodes not yet known to exist, so commits can be set_data."""
    for tp in tps:
        if tp in known:
            continue
        with contextlib.suppress(NodeExistsError):  # it exists: that is all we need
            client.create(offset_path(group, tp), b"", makepath=True)
        known.add(tp)


def write_offsets(client: KazooClient, group: str, offsets: Mapping[TopicPartition, int]) -> None:
    """Unconditional write (the admin's reset-offsets); members commit through engine.group."""
    ensure_offset_nodes(client, group, offsets, set())
    tx = client.transaction()
    for tp, offset in offsets.items():
        tx.set_data(offset_path(group, tp), str(offset).encode())
    for result in tx.commit():
        if isinstance(result, Exception):
            raise result


def list_groups(client: KazooClient) -> list[str]:
    """The groups' ids: the children of /consumers but its guard (engine/acl.py), which
    is no valid group id."""
    return sorted(g for g in children(client, CONSUMERS) if g != GUARD)


def children(client: KazooClient, path: str) -> list[str]:
    try:
        return list(client.get_children(path))
    except NoNodeError:
        return []
