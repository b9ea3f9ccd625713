"""The consumer-group protocol: membership, generations, one leader, partition ownership.

A member is one Consumer with a ``group_id``. Its state lives in the coordinator's
tree (layout in engine.offset_store):

1. **Join.** The member creates an ephemeral sequential znode under
   ``/consumers/<group>/ids``; it lives as long as the member's own coordinator
   session (``session_timeout_ms``; the kazoo client's pings are the heartbeats).
   A SIGKILLed member's znodes vanish when its session expires. A group whose
   members are Kafka clients (engine.kafka.group_coordinator) is refused with
   GroupProtocolError: of members of both kinds, the one that registered later
   withdraws (engine.offset_store).
2. **Assign.** The member with the lowest sequence number is the leader. Whenever
   the members, their subscriptions or the topics' partition counts differ from
   what ``/consumers/<group>/state`` records, the leader computes a new assignment
   with the group's strategy (engine.assignor) and writes it with generation + 1,
   as a compare-and-set on the znode's version (two would-be leaders cannot both win).
3. **Revoke, then take over.** Each member reads the state in its own ``poll()``.
   It first gives up what the new generation no longer gives it (``on_revoke``,
   an auto-commit, then deletes its ephemeral owner znode
   ``/consumers/<group>/owners/<topic>/<partition>``), then creates the owner znodes
   of its new partitions. It fetches a partition only while it holds its owner
   znode, and creating it fails while the previous owner still holds it: so no two
   members ever fetch the same partition, whatever the generation each has seen.
   A new owner starts from the committed offset, read after the old owner released.
4. **Liveness.** A background thread (the "heartbeat thread") runs the leader's
   duty and watches ``max_poll_interval_ms``: a member whose application has not
   called ``poll()`` for that long leaves the group (its member and owner znodes
   are deleted in one transaction); its next ``poll()`` reports its partitions as
   revoked and joins again with a new member id, and its commits fail meanwhile.
5. **Commits** are one multi-op transaction: a check that the member's znode still
   exists, and the offsets. A member that was dropped cannot commit.

Who calls what: the Consumer's thread calls everything but ``_run`` (the
background thread) and the watch callbacks (kazoo's thread), which only set events.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from kazoo.client import KazooClient, KazooState
from kazoo.exceptions import (
    BadVersionError,
    KazooException,
    NodeExistsError,
    NoNodeError,
    NotEmptyError,
)
from kazoo.handlers.threading import KazooTimeoutError
from kazoo.recipe.watchers import ChildrenWatch, DataWatch

from engine import metadata as md
from engine import offset_store as store
from engine.assignor import strategy as find_strategy
from engine.datadir import DataDir
from engine.errors import (
    CommitFailedError,
    ConfigError,
    CoordinatorUnavailableError,
    GroupNotEmptyError,
    GroupProtocolError,
    UnknownGroupError,
    UnknownTopicError,
)
from engine.record import TopicPartition, as_offset

if TYPE_CHECKING:
    from engine.admin import Admin

log = logging.getLogger("engine.group")


@dataclass(frozen=True)
class GroupState:
    """One generation of a group, as the leader wrote it."""

    generation: int
    leader: str
    protocol: str
    members: dict[str, list[str]]
    partition_counts: dict[str, int]
    assignment: dict[str, list[TopicPartition]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "version": 1,
            "generation": self.generation,
            "leader": self.leader,
            "protocol": self.protocol,
            "members": self.members,
            "partition_counts": self.partition_counts,
            "assignment": {m: [[t, p] for t, p in tps] for m, tps in self.assignment.items()},
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> GroupState:
        return cls(
            generation=int(obj["generation"]),
            leader=str(obj["leader"]),
            protocol=str(obj["protocol"]),
            members={m: list(ts) for m, ts in obj["members"].items()},
            partition_counts={t: int(n) for t, n in obj["partition_counts"].items()},
            assignment={
                m: [TopicPartition(str(t), int(p)) for t, p in tps]
                for m, tps in obj["assignment"].items()
            },
        )


def read_state(client: KazooClient, group: str) -> tuple[GroupState | None, int]:
    """The group's current generation and its znode version (-1 when there is none)."""
    try:
        data, stat = client.get(store.state_path(group))
    except NoNodeError:
        return None, -1
    return (GroupState.from_json(json.loads(data)) if data else None), stat.version


def read_members(client: KazooClient, group: str) -> dict[str, dict[str, Any]]:
    """Live members: member id -> what it registered (subscription, client_id, pid, host)."""
    out: dict[str, dict[str, Any]] = {}
    for member in sorted(store.children(client, store.ids_path(group)), key=store.member_seq):
        try:
            data, _ = client.get(store.member_path(group, member))
        except NoNodeError:
            continue
        out[member] = json.loads(data) if data else {}
    return out


class GroupMember:
    """This process's membership of one group; owned by one Consumer.

    Holds its own kazoo session (timeout = the group's session timeout), its member
    id, the partitions whose owner znodes it holds, and a background thread. After
    ``close()`` its znodes are gone and nothing runs.
    """

    def __init__(
        self,
        data_dir: DataDir,
        group_id: str,
        client_id: str,
        strategy: str,
        session_timeout_ms: int,
        max_poll_interval_ms: int,
    ) -> None:
        self.group = group_id
        self.client_id = client_id
        self.strategy = strategy
        self._assignor = find_strategy(strategy)
        self.max_poll_interval_s = max_poll_interval_ms / 1000
        self.zk = md.connect(
            data_dir, session_timeout_s=session_timeout_ms / 1000, max_retry_delay_s=0.5
        )
        self.zk.add_listener(self._on_state)
        self.member_id: str | None = None
        self.topics: list[str] = []
        self.owned: set[TopicPartition] = set()
        self.generation = -1
        self._pending: set[TopicPartition] = set()
        self._known_offset_nodes: set[TopicPartition] = set()
        self._changed = threading.Event()  # the poll thread has something to look at
        self._wake = threading.Event()  # the background thread has something to look at
        self._lost = threading.Event()  # our membership is gone; rejoin on the next poll
        self._lock = threading.Lock()  # membership changes vs. the max.poll check
        self._last_poll = time.monotonic()
        self._closing = False
        self._watches_started = False
        self._thread = threading.Thread(
            target=self._run, name=f"engine-group-{group_id}", daemon=True
        )

    # -- kazoo callbacks (kazoo's threads): only set events ------------------

    def _on_state(self, state: str) -> None:
        if state == KazooState.LOST and not self._closing:
            self._lost.set()
            self._changed.set()
        self._wake.set()

    def _on_members(self, children: list[str]) -> bool:
        self._wake.set()
        return not self._closing

    def _on_state_znode(self, data: bytes | None, stat: Any, event: Any = None) -> bool:
        self._changed.set()
        self._wake.set()
        return not self._closing

    def _on_owner(self, event: Any) -> None:
        self._changed.set()

    # -- membership (the Consumer's thread) ---------------------------------

    def join(self, topics: list[str]) -> None:
        """Register as a member subscribed to ``topics``; the leader then rebalances.
        GroupProtocolError when Kafka clients are the group's members (engine.offset_store:
        one group, one kind of member)."""
        with self._lock:
            self.topics = sorted(set(topics))
            self.zk.ensure_path(store.ids_path(self.group))
            self.zk.ensure_path(f"{store.group_path(self.group)}/owners")
            self.zk.ensure_path(f"{store.group_path(self.group)}/offsets")
            payload = md.encode(
                {
                    "version": 1,
                    "subscription": self.topics,
                    "client_id": self.client_id,
                    "pid": os.getpid(),
                    "host": socket.gethostname(),
                    "strategy": self.strategy,
                }
            )
            path = self.zk.create(
                f"{store.ids_path(self.group)}/{self.client_id}-",
                payload,
                ephemeral=True,
                sequence=True,
            )
            member_id = path.rsplit("/", 1)[1]
            kafka_members = store.earlier_members_of_other_kind(
                self.zk, self.group, member_id, store.KIND_ENGINE
            )
            if kafka_members:
                with contextlib.suppress(NoNodeError):
                    self.zk.delete(path)
                raise GroupProtocolError(
                    f"group {self.group!r} has Kafka-protocol members (Kafka clients that "
                    "joined through a broker's Kafka listener); an engine Consumer cannot "
                    f"join it until they leave: group={self.group!r} "
                    f"kafka_members={kafka_members}"
                )
            self.member_id = member_id
            self._lost.clear()
            self._last_poll = time.monotonic()
        if not self._watches_started:
            self._watches_started = True
            ChildrenWatch(self.zk, store.ids_path(self.group), self._on_members)
            DataWatch(self.zk, store.state_path(self.group), self._on_state_znode)
            self._thread.start()
        self._changed.set()
        self._wake.set()

    def touch(self) -> None:
        """The application polled: it is alive as far as max_poll_interval_ms goes."""
        self._last_poll = time.monotonic()

    def retry_soon(self) -> None:
        self._changed.set()

    @property
    def lost(self) -> bool:
        return self._lost.is_set()

    def needs_sync(self) -> bool:
        return self._changed.is_set() or bool(self._pending) or self._lost.is_set()

    def target(self) -> set[TopicPartition]:
        """What the current generation gives this member (empty before its first one)."""
        self._changed.clear()
        state, _ = read_state(self.zk, self.group)
        if state is None or self.member_id not in state.assignment:
            return set(self.owned) if state is None else set()
        self.generation = state.generation
        return set(state.assignment[self.member_id])

    def release(self, tps: set[TopicPartition]) -> None:
        """Delete our owner znodes of ``tps`` (after on_revoke and the auto-commit)."""
        with self._lock:
            for tp in sorted(tps):
                with contextlib.suppress(NoNodeError):
                    self.zk.delete(store.owner_path(self.group, tp))
                self.owned.discard(tp)
                self._pending.discard(tp)

    def acquire(self, tps: set[TopicPartition]) -> set[TopicPartition]:
        """Create the owner znodes of ``tps``; returns those we now own. Ones still held
        by their previous owner stay pending, watched, and are tried on the next poll."""
        got: set[TopicPartition] = set()
        with self._lock:
            if self._lost.is_set() or self.member_id is None:
                return got
            self._pending = set(tps)
            for tp in sorted(tps):
                path = store.owner_path(self.group, tp)
                try:
                    self.zk.create(path, self.member_id.encode(), ephemeral=True, makepath=True)
                except NodeExistsError:
                    try:
                        data, _ = self.zk.get(path, watch=self._on_owner)
                    except NoNodeError:
                        self._changed.set()  # released meanwhile: try again at once
                        continue
                    if data.decode() != self.member_id:
                        continue
                self.owned.add(tp)
                self._pending.discard(tp)
                got.add(tp)
        return got

    def drop_all(self) -> set[TopicPartition]:
        """After the membership was lost: forget what we owned (its znodes are gone)."""
        with self._lock:
            lost = set(self.owned)
            self.owned.clear()
            self._pending.clear()
            self.member_id = None
        return lost

    # -- commits ------------------------------------------------------------

    def _commit_tx(self, offsets: Mapping[TopicPartition, int]) -> Any:
        member = self.member_id
        if member is None or self._lost.is_set():
            raise CommitFailedError(
                f"this member is no longer in group {self.group!r} (its session expired or it "
                "did not poll within max_poll_interval_ms): offsets not committed; the next "
                "poll() rejoins the group"
            )
        store.ensure_offset_nodes(self.zk, self.group, offsets, self._known_offset_nodes)
        tx = self.zk.transaction()
        tx.check(store.member_path(self.group, member), 0)
        for tp, offset in sorted(offsets.items()):
            tx.set_data(store.offset_path(self.group, tp), str(offset).encode())
        return tx

    def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Commit, again after a lost connection (setting the same offsets twice is
        harmless) until the request's deadline (metadata.deadline, 30 s by default); a
        member dropped meanwhile gets CommitFailedError."""
        while True:
            try:
                _raise_for_results(self.group, self._commit_tx(offsets).commit())
                return
            except CoordinatorUnavailableError:
                if not md.wait_connected(self.zk):
                    raise

    def commit_async(
        self,
        offsets: Mapping[TopicPartition, int],
        callback: Callable[[dict[TopicPartition, int], Exception | None], None] | None,
    ) -> None:
        result = self._commit_tx(offsets).commit_async()
        done = dict(offsets)

        def finished(async_result: Any) -> None:
            error: Exception | None = None
            try:
                _raise_for_results(self.group, async_result.get())
            except Exception as exc:  # noqa: BLE001 - handed to the caller's callback
                error = exc
            if callback is not None:
                callback(done, error)
            elif error is not None:
                log.warning("commit_async failed: %s", error)

        result.rawlink(finished)

    # -- the background thread ----------------------------------------------

    def _run(self) -> None:
        while not self._closing:
            self._wake.wait(1.0)
            self._wake.clear()
            if self._closing:
                return
            try:
                self._check_poll_interval()
                self._lead()
            except (KazooException, KazooTimeoutError) as exc:
                log.info("group %s: coordinator unavailable, retrying: %s", self.group, exc)
                time.sleep(0.1)
                self._wake.set()
            except Exception:
                log.exception("group %s: background thread error", self.group)
                time.sleep(0.5)

    def _check_poll_interval(self) -> None:
        with self._lock:
            if self.member_id is None or self._lost.is_set():
                return
            idle = time.monotonic() - self._last_poll
            if idle <= self.max_poll_interval_s:
                return
            log.warning(
                "group %s: member %s did not poll for %.1f s (max_poll_interval_ms=%d): "
                "leaving the group",
                self.group, self.member_id, idle, self.max_poll_interval_s * 1000,
            )
            self._leave_locked()
            self._lost.set()
            self._changed.set()

    def _leave_locked(self) -> None:
        """Delete our owner znodes and member znode in one transaction."""
        if self.member_id is None:
            return
        tx = self.zk.transaction()
        for tp in sorted(self.owned):
            tx.delete(store.owner_path(self.group, tp))
        tx.delete(store.member_path(self.group, self.member_id))
        results = tx.commit()
        if any(isinstance(r, Exception) for r in results):
            # Something was already gone (session expiry): delete what is left one by one.
            for tp in self.owned:
                with contextlib.suppress(NoNodeError):
                    self.zk.delete(store.owner_path(self.group, tp))
            with contextlib.suppress(NoNodeError):
                self.zk.delete(store.member_path(self.group, self.member_id))

    def _lead(self) -> None:
        """If this member leads: write a new generation when the group changed."""
        if self.member_id is None or self._lost.is_set():
            return
        members = {
            m: d
            for m, d in read_members(self.zk, self.group).items()
            if store.member_kind(d) == store.KIND_ENGINE  # a Kafka one withdraws (offset_store)
        }
        if not members or next(iter(members)) != self.member_id:
            return
        subscriptions = {m: sorted(d.get("subscription", [])) for m, d in members.items()}
        counts: dict[str, int] = {}
        for topic in sorted({t for ts in subscriptions.values() for t in ts}):
            with contextlib.suppress(UnknownTopicError):
                counts[topic] = md.read_topic(self.zk, topic).partition_count
        state, version = read_state(self.zk, self.group)
        if (
            state is not None
            and state.members == subscriptions
            and state.partition_counts == counts
            and state.protocol == self.strategy
        ):
            return
        previous = {m: tps for m, tps in (state.assignment if state else {}).items()}
        assignment = self._assignor(subscriptions, counts, previous)
        new = GroupState(
            generation=(state.generation if state else 0) + 1,
            leader=self.member_id,
            protocol=self.strategy,
            members=subscriptions,
            partition_counts=counts,
            assignment=assignment,
        )
        payload = md.encode(new.to_json())
        try:
            if version < 0:
                self.zk.create(store.state_path(self.group), payload, makepath=True)
            else:
                self.zk.set(store.state_path(self.group), payload, version=version)
        except (BadVersionError, NodeExistsError):
            self._wake.set()  # someone else wrote meanwhile: look again
            return
        log.info(
            "group %s: generation %d, %d members", self.group, new.generation, len(members)
        )

    # -- lifecycle ------------------------------------------------------------

    def close(self) -> None:
        """Leave the group (the others rebalance at once) and stop."""
        if self._closing:
            return
        with self._lock:
            self._closing = True
            with contextlib.suppress(KazooException, KazooTimeoutError):
                if not self._lost.is_set():
                    self._leave_locked()
            self.member_id = None
            self.owned.clear()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(5)
        self.zk.stop()
        self.zk.close()


def _raise_for_results(group: str, results: list[Any]) -> None:
    for r in results:
        if isinstance(r, NoNodeError | BadVersionError):
            raise CommitFailedError(
                f"this member is no longer in group {group!r} (its session expired or it did "
                "not poll within max_poll_interval_ms): offsets not committed"
            )
    for r in results:
        if isinstance(r, Exception) and type(r).__name__ != "RolledBackError":
            raise r


# -- administration (engine groups ...) ------------------------------------------


@dataclass(frozen=True)
class PartitionLag:
    """One partition of a group as `engine groups describe` shows it."""

    topic: str
    partition: int
    owner: str | None  # the member fetching it now
    committed: int | None
    log_end_offset: int  # the high watermark: the end of what consumers may read
    lag: int | None  # log_end_offset - committed; None before the first commit


@dataclass(frozen=True)
class GroupDescription:
    group: str
    generation: int
    protocol: str | None
    leader: str | None
    members: dict[str, dict[str, Any]]  # member id -> registration + "assignment"
    partitions: list[PartitionLag]
    #: Kafka's name of the group's state: "Empty" without members, "Stable" with the
    #: engine's; a Kafka group's as its coordinator last wrote it (PreparingRebalance,
    #: CompletingRebalance, Stable).
    state: str = "Empty"


def describe_group(admin: Admin, group: str) -> GroupDescription:
    """Members, assignment and, per partition, committed offset, log end offset and lag."""
    store.validate_group_id(group)
    zk = admin._cluster.zk
    if not zk.exists(store.group_path(group)):
        raise UnknownGroupError(f"unknown consumer group: group={group!r}")
    members = read_members(zk, group)
    state, _ = read_state(zk, group)
    try:
        raw = md.decode(zk.get(store.state_path(group))[0]) or {}
    except NoNodeError:
        raw = {}
    kafka = {m for m, info in members.items() if store.member_kind(info) == store.KIND_KAFKA}
    phase = "Empty" if not members else "Stable"
    if kafka and raw.get("kind") == store.KIND_KAFKA:
        phase = str(raw.get("state") or phase)
    # A Kafka group's members hold no owner znodes: its assignment names the owners.
    assigned: dict[TopicPartition, str] = {}
    for member, info in members.items():
        tps = state.assignment.get(member, []) if state else []
        info["assignment"] = [[t, p] for t, p in tps]
        if member in kafka:
            assigned |= {TopicPartition(t, p): member for t, p in tps}
    committed = store.read_all_committed(zk, group)
    topics = {t for d in members.values() for t in d.get("subscription", [])}
    topics |= {tp.topic for tp in committed}
    rows: list[PartitionLag] = []
    for topic in sorted(topics):
        try:
            desc = admin.describe_topic(topic)
        except UnknownTopicError:
            continue
        for p in desc.partitions:
            tp = TopicPartition(topic, p.partition)
            owner: str | None = None
            with contextlib.suppress(NoNodeError):
                owner = zk.get(store.owner_path(group, tp))[0].decode() or None
            owner = owner or assigned.get(tp)
            done = committed.get(tp)
            end = p.high_watermark  # what consumers can read (Kafka's LOG-END-OFFSET column)
            rows.append(
                PartitionLag(
                    topic, p.partition, owner, done, end, None if done is None else end - done
                )
            )
    return GroupDescription(
        group,
        state.generation if state else 0,
        state.protocol if state else None,
        state.leader if state else None,
        members,
        rows,
        phase,
    )


@dataclass(frozen=True)
class OffsetReset:
    """One partition of a reset-offsets plan: where the group is, where it would be set."""

    topic: str
    partition: int
    committed: int | None  # None before the group's first commit on the partition
    new_offset: int
    log_start_offset: int
    log_end_offset: int  # the high watermark, as in describe
    requested: int | None  # the offset asked for (to="offset"); new_offset clamps it

    @property
    def clamped(self) -> bool:
        return self.requested is not None and self.requested != self.new_offset


def plan_reset_offsets(
    admin: Admin, group: str, topic: str, to: str, offset: int | None = None
) -> list[OffsetReset]:
    """What reset_offsets would set, per partition of ``topic``; changes nothing.

    ``to``: "earliest" (the log start), "latest" (the log end: the high watermark) or
    "offset" (``offset``, clamped into [log start, log end], as Kafka's tool does).
    UnknownGroupError for a group that never existed: resetting does not create one.
    GroupNotEmptyError while the group has live members."""
    store.validate_group_id(group)
    members = admin._group_members(group)
    if members is None:
        raise UnknownGroupError(
            f"unknown consumer group: group={group!r} (reset-offsets changes an existing "
            f"group; a group comes into being when a consumer of it joins or commits, "
            f"e.g. `engine consume {topic} --group {group}`)"
        )
    if members:
        raise GroupNotEmptyError(
            f"group {group!r} has {len(members)} live member(s) {sorted(members)}: stop them "
            "before resetting its offsets"
        )
    if to not in ("earliest", "latest", "offset"):
        raise ConfigError(f"reset target must be earliest, latest or offset: to={to!r}")
    requested = as_offset(offset) if to == "offset" else None
    desc = admin.describe_topic(topic)
    committed_now = admin._committed_offsets(
        group, [TopicPartition(topic, p.partition) for p in desc.partitions]
    )
    plan: list[OffsetReset] = []
    for p in desc.partitions:
        tp = TopicPartition(topic, p.partition)
        start, end = max(p.log_start_offset, 0), max(p.high_watermark, 0)
        if to == "earliest":
            value = start
        elif to == "latest":
            value = end
        else:
            assert requested is not None
            value = min(max(requested, start), end)
        committed = committed_now.get(tp)
        plan.append(OffsetReset(topic, p.partition, committed, value, start, end, requested))
    return plan


def clamp_message(row: OffsetReset) -> str:
    """Why a row's new offset is not the one asked for, in one line."""
    assert row.requested is not None
    if row.requested > row.log_end_offset:
        where = f"past the log end offset {row.log_end_offset}"
    else:
        where = f"before the log start offset {row.log_start_offset}"
    return (
        f"offset {row.requested} is {where} of {row.topic}-{row.partition}: "
        f"set to {row.new_offset} instead"
    )


def write_reset(admin: Admin, group: str, plan: list[OffsetReset]) -> None:
    """Set the group's committed offsets as ``plan`` says (from plan_reset_offsets)."""
    admin._write_offsets(
        group, {TopicPartition(r.topic, r.partition): r.new_offset for r in plan}
    )


def reset_offsets(
    admin: Admin, group: str, topic: str, to: str, offset: int | None = None
) -> dict[TopicPartition, int]:
    """Set the group's committed offsets of every partition of ``topic`` as
    plan_reset_offsets plans them; a clamped offset is logged as a warning.
    Returns the offsets set."""
    plan = plan_reset_offsets(admin, group, topic, to, offset)
    for row in plan:
        if row.clamped:
            log.warning("group %s: %s", group, clamp_message(row))
    write_reset(admin, group, plan)
    return {TopicPartition(r.topic, r.partition): r.new_offset for r in plan}


def delete_group(admin: Admin, group: str) -> None:
    """Delete a group without members and its committed offsets (Admin.delete_consumer_groups).

    The member check and the deletion are two steps: a consumer that joins in between
    makes the deletion fail with GroupNotEmptyError (its member node keeps the group
    node), or, joining just after, starts without committed offsets."""
    store.validate_group_id(group)
    delete_group_in(admin._cluster.zk, group)


def delete_group_in(zk: KazooClient, group: str) -> None:
    """:func:`delete_group` through a coordinator session (the Kafka listener's
    DeleteGroups uses the broker's)."""
    if not zk.exists(store.group_path(group)):
        raise UnknownGroupError(f"unknown consumer group: group={group!r}")
    members = read_members(zk, group)
    if members:
        raise GroupNotEmptyError(
            f"group {group!r} has {len(members)} live member(s) {sorted(members)}: a group "
            "is deleted only without members (stop them first)"
        )
    try:
        zk.delete(store.group_path(group), recursive=True)
    except NotEmptyError:
        raise GroupNotEmptyError(
            f"a member joined group {group!r} while it was being deleted: it was not deleted "
            "(its committed offsets may be gone)"
        ) from None
