"""Partition assignment strategies of a consumer group: pure functions, no I/O.

Each strategy takes the members' subscriptions (member id -> topics), the
partition count of every subscribed topic and, for the sticky strategy, what each
member owned in the previous generation; it returns member id -> sorted list of
TopicPartition. Every partition of a subscribed topic goes to exactly one member
subscribed to that topic; members are ordered by id, so every member computing the
same inputs gets the same answer.

    range               per topic, consecutive partitions in blocks (Kafka's RangeAssignor)
    roundrobin          all partitions, dealt to the members in turn (RoundRobinAssignor)
    cooperative-sticky  keep what each live member owned, up to its fair share; hand out
                        only the partitions whose owner left or that a member must give up
                        for balance (CooperativeStickyAssignor's outcome, in one step)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from engine.errors import ConfigError
from engine.record import TopicPartition

Subscriptions = Mapping[str, Sequence[str]]
PartitionCounts = Mapping[str, int]
Assignment = dict[str, list[TopicPartition]]


def _empty(subscriptions: Subscriptions) -> Assignment:
    return {member: [] for member in sorted(subscriptions)}


def _all_partitions(subscriptions: Subscriptions, counts: PartitionCounts) -> list[TopicPartition]:
    topics = sorted({t for topics in subscriptions.values() for t in topics if t in counts})
    return [TopicPartition(t, p) for t in topics for p in range(counts[t])]


def range_assign(
    subscriptions: Subscriptions,
    counts: PartitionCounts,
    previous: Mapping[str, Sequence[TopicPartition]] | None = None,
) -> Assignment:
    """Per topic: the first ``count % n`` members get one partition more, in blocks."""
    out = _empty(subscriptions)
    topics = sorted({t for topics in subscriptions.values() for t in topics if t in counts})
    for topic in topics:
        members = sorted(m for m, ts in subscriptions.items() if topic in ts)
        per, extra = divmod(counts[topic], len(members))
        start = 0
        for i, member in enumerate(members):
            n = per + (1 if i < extra else 0)
            out[member] += [TopicPartition(topic, p) for p in range(start, start + n)]
            start += n
    return {m: sorted(tps) for m, tps in out.items()}


def roundrobin_assign(
    subscriptions: Subscriptions,
    counts: PartitionCounts,
    previous: Mapping[str, Sequence[TopicPartition]] | None = None,
) -> Assignment:
    """All partitions sorted by (topic, partition), dealt to the members in turn."""
    out = _empty(subscriptions)
    members = sorted(subscriptions)
    if not members:
        return out
    i = 0
    for tp in _all_partitions(subscriptions, counts):
        for _ in range(len(members)):  # skip members not subscribed to the topic
            member = members[i % len(members)]
            i += 1
            if tp.topic in subscriptions[member]:
                out[member].append(tp)
                break
    return out


def cooperative_sticky_assign(
    subscriptions: Subscriptions,
    counts: PartitionCounts,
    previous: Mapping[str, Sequence[TopicPartition]] | None = None,
) -> Assignment:
    """Balanced, moving only what must move.

    Each member's fair share is ``total // n`` partitions, ``total % n`` members get one
    more. A live member keeps what it owned (partitions that still exist, of topics it
    still subscribes to, owned by no one else) up to its share; the partitions left
    over (their owner left, or a member gave up its excess) go to the members with the
    fewest, ties to the lowest member id.
    """
    out = _empty(subscriptions)
    members = sorted(subscriptions)
    if not members:
        return out
    every = _all_partitions(subscriptions, counts)
    valid = set(every)
    per, extra = divmod(len(every), len(members))
    taken: set[TopicPartition] = set()
    # Members that owned more keep the extra slot first, so fewer partitions move.
    owned = {
        m: [
            tp
            for tp in sorted(set((previous or {}).get(m, ())))
            if tp in valid and tp.topic in subscriptions[m]
        ]
        for m in members
    }
    order = sorted(members, key=lambda m: (-len(owned[m]), m))
    quota = {m: per + (1 if i < extra else 0) for i, m in enumerate(order)}
    for m in order:
        for tp in owned[m]:
            if len(out[m]) >= quota[m] or tp in taken:
                continue
            out[m].append(tp)
            taken.add(tp)
    for tp in every:
        if tp in taken:
            continue
        eligible = [m for m in members if tp.topic in subscriptions[m]]
        under = [m for m in eligible if len(out[m]) < quota[m]] or eligible
        chosen = min(under, key=lambda m: (len(out[m]), m))
        out[chosen].append(tp)
        taken.add(tp)
    return {m: sorted(tps) for m, tps in out.items()}


Assignor = Callable[
    [Subscriptions, PartitionCounts, "Mapping[str, Sequence[TopicPartition]] | None"], Assignment
]

STRATEGIES: dict[str, Assignor] = {
    "range": range_assign,
    "roundrobin": roundrobin_assign,
    "cooperative-sticky": cooperative_sticky_assign,
}

#: Strategies whose callbacks report only the partitions that moved (Kafka's
#: COOPERATIVE protocol); the others revoke everything and assign everything anew.
COOPERATIVE = frozenset({"cooperative-sticky"})


def strategy(name: str) -> Assignor:
    """The assignor called ``name``; ConfigError naming the choices otherwise."""
    try:
        return STRATEGIES[name]
    except (KeyError, TypeError):
        raise ConfigError(
            f"partition_assignment_strategy must be one of {sorted(STRATEGIES)}: "
            f"partition_assignment_strategy={name!r}"
        ) from None
