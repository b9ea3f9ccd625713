"""Kafka's group coordinator (the classic group protocol), one in each broker.

A group's coordinator is the broker that FindCoordinator names for its id
(engine.kafka.handlers.Handlers.coordinator); every other broker answers its
requests with NOT_COORDINATOR. The coordinator keeps each group's membership in
memory, as Kafka's does, and serves JoinGroup, SyncGroup, Heartbeat and LeaveGroup
through the states of :class:`ClassicGroupState`::

    Empty --JoinGroup--> PreparingRebalance --every member joined, or the
      ^                     ^       |        rebalance timeout--> CompletingRebalance
      |                     |       +--no member left--> Empty         |
      |   a member joins, leaves,                                      | the leader's
      |   changes its protocols or expires                             | SyncGroup
      |                     |                                          v
      +---- DeleteGroups -- Dead        PreparingRebalance <------- Stable

- **Join.** A JoinGroup without a member id gets one (KIP-394, v4+: with
  MEMBER_ID_REQUIRED, and the client joins again with it). The member then waits
  (its connection's thread blocks) until the rebalance completes: every known member
  has joined again, or the group's rebalance timeout (the largest of its members')
  ran out, and the members that did not rejoin are removed. A group's first
  rebalance waits INITIAL_REBALANCE_DELAY_S for more members (Kafka's
  group.initial.rebalance.delay.ms). The generation then goes up by one, the
  protocol is chosen by the members' votes among those all of them support, and the
  leader (the earlier leader if still a member, else the first member) gets every
  member's metadata to compute the assignment with.
- **Sync.** The leader's SyncGroup carries the assignment; the others wait for it.
- **Liveness.** A member that sends neither Heartbeat nor OffsetCommit for its session
  timeout is removed (a sweeper thread looks every SWEEP_INTERVAL_S) and the group
  rebalances; one whose JoinGroup or SyncGroup is waiting is not (the rebalance
  timeout covers it). A pending member (KIP-394) that does not come back within its
  session timeout is forgotten.

**The coordinator's tree.** Committed offsets are the engine's own
(engine.offset_store: ``/consumers/<group>/offsets/<topic>/<partition>``): an
engine Consumer and a Kafka client of one group read and commit the same offsets.
Each member is published as an ephemeral znode of the broker's session under
``/consumers/<group>/ids`` (its member id is that znode's name, ``<client id>-<seq>``)
and each generation in ``/consumers/<group>/state``, so ``engine groups`` and the
Admin see Kafka members beside the engine's. A group has members of one kind only:
a Kafka member that registers after an engine member withdraws with
INCONSISTENT_GROUP_PROTOCOL, an engine member that registers after a Kafka member
with GroupProtocolError (engine.offset_store says why and how the race is settled).

**Failover.** Membership is not persisted. A broker that becomes a group's
coordinator (its coordinator died, or the live brokers changed) starts it Empty, at
the generation the tree records: members get UNKNOWN_MEMBER_ID and join again, and
committed offsets are where they were. The former coordinator, if alive, drops the
group (the sweeper checks every OWNERSHIP_CHECK_S) and deletes its members' znodes;
a dead one's vanish with its session. A broker whose coordinator session expires
(the znodes of its members went with it) forgets its groups likewise, and so does a
commit whose member's znode is gone: the members join again, registering anew.

Not served: static membership (group.instance.id is taken as a dynamic member's),
offset metadata (committed, not kept: OffsetFetch answers ""), offset retention.

Threads: each connection's thread calls the request methods; JoinGroup and SyncGroup
block it (a Kafka client sends them on the coordinator's connection and waits too).
One lock (a Condition) per group serializes its changes; the dict of groups has its
own lock, taken inside a group's, never around one. The sweeper thread starts with the
first group and stops with the listener; it also drops groups that stayed without
members for IDLE_EMPTY_GROUP_S.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from kazoo.client import KazooClient, KazooState
from kazoo.exceptions import KazooException, NodeExistsError, NoNodeError
from kazoo.handlers.threading import KazooTimeoutError

from engine import metadata as md
from engine import offset_store as store
from engine.config import validate_topic_name
from engine.errors import (
    ConfigError,
    GroupNotEmptyError,
    InvalidTopicError,
    KafkaProtocolError,
    UnknownGroupError,
    UnknownTopicError,
)
from engine.group import delete_group_in, read_members, read_state
from engine.kafka import schemas
from engine.kafka.codec import decode, encode
from engine.kafka.error_codes import ErrorCode
from engine.kafka.schemas import consumer_groups as schema
from engine.record import TopicPartition

__all__ = ["ClassicGroupState", "GroupCoordinator"]

log = logging.getLogger("engine.kafka.groups")

#: Kafka's group.min.session.timeout.ms and group.max.session.timeout.ms.
MIN_SESSION_TIMEOUT_MS = 6_000
MAX_SESSION_TIMEOUT_MS = 1_800_000
#: Kafka's group.initial.rebalance.delay.ms (3 s there): how long a group's first
#: rebalance waits for more members to join.
INITIAL_REBALANCE_DELAY_S = 0.5
#: How often the sweeper looks for expired members, pending members and deadlines.
SWEEP_INTERVAL_S = 0.25
#: How often the sweeper checks that this broker still coordinates its groups.
OWNERSHIP_CHECK_S = 1.0
#: How long a group without members stays in memory after its last request.
IDLE_EMPTY_GROUP_S = 30.0
#: How long a waiting JoinGroup or SyncGroup sleeps at a time (a stopping listener).
WAIT_SLICE_S = 0.5
#: Kafka's offset.metadata.max.bytes.
MAX_METADATA_BYTES = 4096
#: The protocol type of consumer groups (their protocols' metadata and assignments
#: are engine.kafka.schemas.consumer_groups' CONSUMER_SUBSCRIPTION and
#: CONSUMER_ASSIGNMENT).
CONSUMER = "consumer"
_VERSION = struct.Struct(">h")


class ClassicGroupState(enum.Enum):
    """A group's state, as Kafka names it (DescribeGroups and ListGroups say it)."""

    EMPTY = "Empty"
    """No members (maybe committed offsets): a JoinGroup starts a rebalance."""
    PREPARING_REBALANCE = "PreparingRebalance"
    """Members are joining (again): their JoinGroups wait; heartbeats answer
    REBALANCE_IN_PROGRESS, which tells the others to join again."""
    COMPLETING_REBALANCE = "CompletingRebalance"
    """A new generation is formed: the members wait in SyncGroup for the leader's
    assignment."""
    STABLE = "Stable"
    """Every member has its assignment; heartbeats keep it."""
    DEAD = "Dead"
    """Deleted or no longer coordinated here: requests get COORDINATOR_NOT_AVAILABLE,
    and the next one finds a new group."""


class _Reply:
    """The answer a waiting JoinGroup or SyncGroup gets, set by whoever completes it."""

    __slots__ = ("response",)

    def __init__(self) -> None:
        self.response: dict[str, Any] | None = None


@dataclass
class _Member:
    """One member of a group, as its JoinGroup described it."""

    member_id: str
    client_id: str
    client_host: str
    group_instance_id: str | None
    session_timeout_s: float
    rebalance_timeout_s: float
    protocol_type: str
    protocols: list[tuple[str, bytes]]
    topics: list[str] = field(default_factory=list)
    assignment: bytes = b""
    #: When the member expires unless it heartbeats (time.monotonic()).
    deadline: float = 0.0
    join: _Reply | None = None
    sync: _Reply | None = None

    def names(self) -> list[str]:
        return [name for name, _ in self.protocols]

    def metadata(self, protocol: str | None) -> bytes:
        for name, data in self.protocols:
            if name == protocol:
                return data
        return b""

    def alive(self, now: float) -> None:
        self.deadline = now + self.session_timeout_s


@dataclass
class _Group:
    """One group coordinated here: its state, generation and members (in join order)."""

    group_id: str
    generation: int
    state: ClassicGroupState = ClassicGroupState.EMPTY
    protocol_type: str | None = None
    protocol_name: str | None = None
    leader: str | None = None
    members: dict[str, _Member] = field(default_factory=dict)
    #: KIP-394: member ids handed out with MEMBER_ID_REQUIRED -> (expiry, the member).
    pending: dict[str, tuple[float, _Member]] = field(default_factory=dict)
    rebalance_deadline: float = 0.0
    not_before: float = 0.0
    known_offset_nodes: set[TopicPartition] = field(default_factory=set)
    cond: threading.Condition = field(default_factory=threading.Condition)
    #: When a request last looked the group up (time.monotonic()).
    used: float = field(default_factory=time.monotonic)
    #: Dropped from memory (Empty and idle): a JoinGroup that holds it looks again.
    evicted: bool = False

    def candidates(self) -> set[str] | None:
        """The protocols every member supports (None without members)."""
        out: set[str] | None = None
        for m in self.members.values():
            names = set(m.names())
            out = names if out is None else out & names
        return out

    def select_protocol(self) -> str:
        """Kafka's vote: each member names its most preferred of the candidates; the most
        named wins (a tie goes to the first member's preference)."""
        candidates = self.candidates() or set()
        votes: Counter[str] = Counter()
        for m in self.members.values():
            votes[next(n for n in m.names() if n in candidates)] += 1
        first = next(iter(self.members.values())).names()
        return max((n for n in first if n in candidates), key=lambda n: votes[n])


class GroupCoordinator:
    """The groups this broker coordinates (module docstring)."""

    def __init__(
        self,
        zk: KazooClient,
        broker_id: int,
        is_coordinator: Callable[[str], bool],
        stopping: Callable[[], bool],
    ) -> None:
        self.zk = zk
        self.broker_id = broker_id
        self._is_coordinator = is_coordinator
        self._stopping = stopping
        self._groups: dict[str, _Group] = {}
        self._lock = threading.Lock()
        self._sweeper: threading.Thread | None = None
        self._session_lost = threading.Event()
        zk.add_listener(self._on_session)

    def _on_session(self, state: str) -> None:
        """kazoo's thread: the broker's coordinator session expired, and with it the
        members' znodes; the sweeper forgets the groups (their members join again and
        register anew, checked again against the engine's members)."""
        if state == KazooState.LOST:
            self._session_lost.set()

    def handle(
        self, api_key: int, version: int, req: dict[str, Any], client_id: str | None, peer: str
    ) -> dict[str, Any]:
        """The answer to one of engine.kafka.schemas.GROUP_APIS."""
        if api_key == schemas.JOIN_GROUP:
            return self.join_group(version, req, client_id, peer)
        methods: dict[int, Callable[[int, dict[str, Any]], dict[str, Any]]] = {
            schemas.SYNC_GROUP: self.sync_group,
            schemas.HEARTBEAT: self.heartbeat,
            schemas.LEAVE_GROUP: self.leave_group,
            schemas.OFFSET_COMMIT: self.offset_commit,
            schemas.OFFSET_FETCH: self.offset_fetch,
            schemas.DESCRIBE_GROUPS: self.describe_groups,
            schemas.LIST_GROUPS: self.list_groups,
            schemas.DELETE_GROUPS: self.delete_groups,
        }
        return methods[api_key](version, req)

    # -- the groups ----------------------------------------------------------------

    def _group_error(self, group_id: str) -> ErrorCode | None:
        """INVALID_GROUP_ID for an id the tree cannot name, NOT_COORDINATOR for a group
        another broker coordinates."""
        try:
            store.validate_group_id(group_id)
        except ConfigError:
            return ErrorCode.INVALID_GROUP_ID
        try:
            if not self._is_coordinator(group_id):
                return ErrorCode.NOT_COORDINATOR
        except (KazooException, KazooTimeoutError):
            return ErrorCode.COORDINATOR_NOT_AVAILABLE
        return None

    def txn_commit_error(
        self, group_id: str, member_id: str, generation: int
    ) -> ErrorCode | None:
        """Why a TxnOffsetCommit of this member may not commit the group's offsets (its
        fencing of zombies, KIP-447): NOT_COORDINATOR as for every group API; a member
        named (v3+: member id or generation) must be one of the current generation's,
        else UNKNOWN_MEMBER_ID or ILLEGAL_GENERATION, so a member that a rebalance
        dropped cannot commit offsets of partitions another member now reads. Without a
        member (older clients, assign()-only consumers) there is nothing to check."""
        error = self._group_error(group_id)
        if error is not None or (generation < 0 and not member_id):
            return error
        group = self._group(group_id, create=False)
        if group is None:
            return ErrorCode.UNKNOWN_MEMBER_ID
        with group.cond:
            return self._member_error(group, member_id, generation)

    def _group(self, group_id: str, create: bool) -> _Group | None:
        with self._lock:
            group = self._groups.get(group_id)
            if group is not None or not create:
                if group is not None:
                    group.used = time.monotonic()
                return group
        # Load: the generation goes on from the one the tree records.
        try:
            previous, _ = read_state(self.zk, group_id)
        except (ValueError, KeyError, TypeError, KazooException, KazooTimeoutError):
            previous = None  # a state it cannot read: generations start again at 1
        with self._lock:
            group = self._groups.get(group_id)
            if group is None:
                group = _Group(group_id, previous.generation if previous else 0)
                self._groups[group_id] = group
            if self._sweeper is None:
                self._sweeper = threading.Thread(
                    target=self._sweep, name="kafka-group-sweeper", daemon=True
                )
                self._sweeper.start()
            return group

    # -- JoinGroup -----------------------------------------------------------------

    def join_group(
        self, version: int, req: dict[str, Any], client_id: str | None, peer: str
    ) -> dict[str, Any]:
        group_id, member_id = req["group_id"], req["member_id"]
        error = self._group_error(group_id)
        if error is None and not (
            MIN_SESSION_TIMEOUT_MS <= req["session_timeout_ms"] <= MAX_SESSION_TIMEOUT_MS
        ):
            error = ErrorCode.INVALID_SESSION_TIMEOUT
        protocols = [(p["name"], bytes(p["metadata"])) for p in req["protocols"]]
        if error is None and (not req["protocol_type"] or not protocols):
            error = ErrorCode.INCONSISTENT_GROUP_PROTOCOL
        if error is not None:
            return _join_error(error, member_id)
        session_s = req["session_timeout_ms"] / 1000
        rebalance_ms = req["rebalance_timeout_ms"]
        candidate = _Member(
            member_id,
            client_id or "",
            peer.rpartition(":")[0] or peer,
            req["group_instance_id"],
            session_s,
            rebalance_ms / 1000 if rebalance_ms > 0 else session_s,
            req["protocol_type"],
            protocols,
        )
        candidate.topics = _subscribed_topics(candidate)
        while True:
            group = self._group(group_id, create=True)
            assert group is not None
            with group.cond:
                if not group.evicted:
                    return self._join(version, group, candidate, session_s)

    def _join(
        self, version: int, group: _Group, candidate: _Member, session_s: float
    ) -> dict[str, Any]:
        """JoinGroup, the group's lock held."""
        member_id = candidate.member_id
        if group.state is ClassicGroupState.DEAD:
            return _join_error(ErrorCode.COORDINATOR_NOT_AVAILABLE, member_id)
        if not self._supports(group, candidate):
            return _join_error(ErrorCode.INCONSISTENT_GROUP_PROTOCOL, member_id)
        now = time.monotonic()
        if not member_id:
            error = self._register(group, candidate)
            if error is not None:
                return _join_error(error, "")
            if version >= 4:
                group.pending[candidate.member_id] = (now + session_s, candidate)
                return _join_error(ErrorCode.MEMBER_ID_REQUIRED, candidate.member_id)
            member, changed = self._add(group, candidate), True
        elif member_id in group.pending:
            group.pending.pop(member_id)
            self._update_registration(group, candidate)
            member, changed = self._add(group, candidate), True
        elif member_id in group.members:
            member = group.members[member_id]
            changed = member.protocols != candidate.protocols
            if changed:
                member.protocols, member.topics = candidate.protocols, candidate.topics
                self._update_registration(group, member)
            member.session_timeout_s = candidate.session_timeout_s
            member.rebalance_timeout_s = candidate.rebalance_timeout_s
            member.client_id, member.client_host = candidate.client_id, candidate.client_host
        else:
            return _join_error(ErrorCode.UNKNOWN_MEMBER_ID, member_id)
        reply = _Reply()
        if member.join is not None:  # a join of this member still waits: superseded
            member.join.response = _join_error(ErrorCode.REBALANCE_IN_PROGRESS, member_id)
        member.join = reply
        member.alive(now)
        state = group.state
        if state is ClassicGroupState.PREPARING_REBALANCE:
            pass
        elif (
            state in (ClassicGroupState.COMPLETING_REBALANCE, ClassicGroupState.STABLE)
            and not changed
            and (state is ClassicGroupState.COMPLETING_REBALANCE or member_id != group.leader)
        ):
            # Nothing changed: the current generation, as it was given.
            member.join = None
            return self._join_response(group, member)
        else:
            self._prepare_rebalance(group, f"member {member.member_id} joined")
        self._maybe_complete_join(group)
        group.cond.notify_all()
        return self._await(group, reply)

    def _supports(self, group: _Group, member: _Member) -> bool:
        """Kafka's check: the same protocol type, and a protocol in common with every
        member already in the group."""
        if not group.members:
            return True
        candidates = group.candidates() or set()
        return member.protocol_type == group.protocol_type and bool(
            candidates & set(member.names())
        )

    def _register(self, group: _Group, member: _Member) -> ErrorCode | None:
        """Publish a new member's znode; its name becomes the member id. Withdraws with
        INCONSISTENT_GROUP_PROTOCOL when engine Consumers registered before it."""
        gid = group.group_id
        try:
            self.zk.ensure_path(store.ids_path(gid))
            self.zk.ensure_path(f"{store.group_path(gid)}/owners")
            self.zk.ensure_path(f"{store.group_path(gid)}/offsets")
            path = self.zk.create(
                f"{store.ids_path(gid)}/{_znode_name(member.client_id)}-",
                self._registration(member),
                ephemeral=True,
                sequence=True,
            )
            member.member_id = path.rsplit("/", 1)[1]
            engine_members = store.earlier_members_of_other_kind(
                self.zk, gid, member.member_id, store.KIND_KAFKA
            )
            if engine_members:
                with contextlib.suppress(NoNodeError):
                    self.zk.delete(path)
                log.warning(
                    "group %s has engine Consumers as members; a Kafka client cannot join it "
                    "until they leave (INCONSISTENT_GROUP_PROTOCOL): group=%s client_id=%s "
                    "engine_members=%s",
                    gid, gid, member.client_id, engine_members,
                )  # fmt: skip
                return ErrorCode.INCONSISTENT_GROUP_PROTOCOL
        except (KazooException, KazooTimeoutError) as exc:
            log.info("group %s: cannot register a member: %s", gid, exc)
            return ErrorCode.COORDINATOR_NOT_AVAILABLE
        return None

    def _registration(self, member: _Member) -> bytes:
        return md.encode(
            {
                "version": 1,
                "kind": store.KIND_KAFKA,
                "subscription": member.topics,
                "client_id": member.client_id,
                "host": member.client_host,
                "pid": None,
                "strategy": ",".join(member.names()),
                "protocol_type": member.protocol_type,
                "broker": self.broker_id,
            }
        )

    def _update_registration(self, group: _Group, member: _Member) -> None:
        with contextlib.suppress(KazooException, KazooTimeoutError):
            self.zk.set(store.member_path(group.group_id, member.member_id),
                        self._registration(member))  # fmt: skip

    def _add(self, group: _Group, member: _Member) -> _Member:
        if not group.members:
            group.protocol_type = member.protocol_type
        group.members[member.member_id] = member
        return member

    def _join_response(self, group: _Group, member: _Member) -> dict[str, Any]:
        leader = member.member_id == group.leader
        return {
            "generation_id": group.generation,
            "protocol_type": group.protocol_type,
            "protocol_name": group.protocol_name,
            "leader": group.leader or "",
            "member_id": member.member_id,
            "members": [
                {
                    "member_id": m.member_id,
                    "group_instance_id": m.group_instance_id,
                    "metadata": m.metadata(group.protocol_name),
                }
                for m in group.members.values()
            ]
            if leader
            else [],
        }

    # -- rebalancing (the group's lock held) -------------------------------------

    def _prepare_rebalance(self, group: _Group, reason: str) -> None:
        if group.state is ClassicGroupState.COMPLETING_REBALANCE:
            for m in group.members.values():
                m.assignment = b""
                if m.sync is not None:
                    m.sync.response = {"error_code": ErrorCode.REBALANCE_IN_PROGRESS}
                    m.sync = None
        now = time.monotonic()
        was_empty = group.state is ClassicGroupState.EMPTY
        group.state = ClassicGroupState.PREPARING_REBALANCE
        group.rebalance_deadline = now + max(
            (m.rebalance_timeout_s for m in group.members.values()), default=0.0
        )
        group.not_before = now + INITIAL_REBALANCE_DELAY_S if was_empty else 0.0
        log.info("group %s: rebalancing (%s)", group.group_id, reason)
        self._publish(group)
        group.cond.notify_all()

    def _maybe_complete_join(self, group: _Group) -> None:
        if group.state is not ClassicGroupState.PREPARING_REBALANCE:
            return
        now = time.monotonic()
        joined = all(m.join is not None for m in group.members.values()) and not group.pending
        if not ((joined and now >= group.not_before) or now >= group.rebalance_deadline):
            return
        for m in [m for m in group.members.values() if m.join is None]:
            log.info(
                "group %s: member %s did not rejoin within the rebalance timeout: removed",
                group.group_id, m.member_id,
            )  # fmt: skip
            self._remove(group, m)
        group.generation += 1
        if not group.members:
            group.state = ClassicGroupState.EMPTY
            group.protocol_name = group.leader = None
            log.info("group %s: generation %d is empty", group.group_id, group.generation)
        else:
            group.protocol_name = group.select_protocol()
            if group.leader not in group.members:
                group.leader = next(iter(group.members))
            group.state = ClassicGroupState.COMPLETING_REBALANCE
            for m in group.members.values():
                m.alive(now)
                m.assignment = b""
                if m.join is not None:
                    m.join.response = self._join_response(group, m)
                    m.join = None
            log.info(
                "group %s: generation %d, %d members, protocol %s, leader %s",
                group.group_id, group.generation, len(group.members), group.protocol_name,
                group.leader,
            )  # fmt: skip
        self._publish(group)
        group.cond.notify_all()

    def _remove(self, group: _Group, member: _Member) -> None:
        """Forget a member and delete its znode; a waiting request of it gets
        UNKNOWN_MEMBER_ID. The caller moves the group on (:meth:`_member_gone`)."""
        group.members.pop(member.member_id, None)
        for waiting in (member.join, member.sync):
            if waiting is not None:
                waiting.response = _join_error(ErrorCode.UNKNOWN_MEMBER_ID, member.member_id)
        member.join = member.sync = None
        if group.leader == member.member_id:
            group.leader = None
        self._unregister(group.group_id, member.member_id)

    def _unregister(self, group_id: str, member_id: str) -> None:
        with contextlib.suppress(NoNodeError, KazooException, KazooTimeoutError):
            self.zk.delete(store.member_path(group_id, member_id))

    def _member_gone(self, group: _Group, reason: str) -> None:
        if group.state in (ClassicGroupState.STABLE, ClassicGroupState.COMPLETING_REBALANCE):
            self._prepare_rebalance(group, reason)
        self._maybe_complete_join(group)
        group.cond.notify_all()

    def _await(self, group: _Group, reply: _Reply) -> dict[str, Any]:
        """Wait (the group's lock held, released while waiting) for ``reply``; the waiter
        itself moves the group on at its deadlines."""
        while reply.response is None:
            if self._stopping():
                return {"error_code": ErrorCode.NOT_COORDINATOR}
            wait = WAIT_SLICE_S
            if group.state is ClassicGroupState.PREPARING_REBALANCE:
                # Joins and leaves notify; the deadlines are the waiter's to keep.
                now = time.monotonic()
                due = group.rebalance_deadline
                if group.not_before > now:
                    due = min(due, group.not_before)
                wait = min(wait, max(due - now, 0.0) + 0.005)
            group.cond.wait(wait)
            self._maybe_complete_join(group)
        return reply.response

    def _publish(self, group: _Group) -> None:
        """Write the group's generation where `engine groups describe` reads it."""
        assignment: dict[str, list[list[Any]]] = {}
        for m in group.members.values():
            assignment[m.member_id] = [[t, p] for t, p in _assigned(group, m)]
        payload = md.encode(
            {
                "version": 1,
                "kind": store.KIND_KAFKA,
                "state": group.state.value,
                "generation": group.generation,
                "leader": group.leader or "",
                "protocol": group.protocol_name or "",
                "protocol_type": group.protocol_type or "",
                "members": {m.member_id: m.topics for m in group.members.values()},
                "partition_counts": {},
                "assignment": assignment,
            }
        )
        path = store.state_path(group.group_id)
        try:
            try:
                self.zk.set(path, payload)
            except NoNodeError:
                with contextlib.suppress(NodeExistsError):
                    self.zk.create(path, payload, makepath=True)
        except (KazooException, KazooTimeoutError) as exc:
            log.info("group %s: cannot publish its state: %s", group.group_id, exc)

    # -- SyncGroup -----------------------------------------------------------------

    def sync_group(self, version: int, req: dict[str, Any]) -> dict[str, Any]:
        group_id, member_id = req["group_id"], req["member_id"]
        error = self._group_error(group_id)
        group = self._group(group_id, create=False) if error is None else None
        if error is not None or group is None:
            return {"error_code": error or ErrorCode.UNKNOWN_MEMBER_ID}
        with group.cond:
            error = self._member_error(group, member_id, req["generation_id"])
            named = (req["protocol_type"], req["protocol_name"])  # v5+; null: not said
            ours = (group.protocol_type, group.protocol_name)
            if (
                error is None
                and version >= 5
                and any(n is not None and n != o for n, o in zip(named, ours, strict=True))
            ):
                error = ErrorCode.INCONSISTENT_GROUP_PROTOCOL
            if error is None and group.state is ClassicGroupState.PREPARING_REBALANCE:
                error = ErrorCode.REBALANCE_IN_PROGRESS
            if error is not None:
                return {"error_code": error}
            member = group.members[member_id]
            member.alive(time.monotonic())
            if group.state is ClassicGroupState.STABLE:
                return self._sync_response(group, member)
            reply = _Reply()
            member.sync = reply
            if member_id == group.leader:
                given = {a["member_id"]: bytes(a["assignment"]) for a in req["assignments"]}
                for m in group.members.values():
                    m.assignment = given.get(m.member_id, b"")
                group.state = ClassicGroupState.STABLE
                for m in group.members.values():
                    if m.sync is not None:
                        m.sync.response = self._sync_response(group, m)
                        m.sync = None
                log.info("group %s: generation %d is stable", group_id, group.generation)
                self._publish(group)
                group.cond.notify_all()
            return self._await(group, reply)

    def _sync_response(self, group: _Group, member: _Member) -> dict[str, Any]:
        return {
            "protocol_type": group.protocol_type,
            "protocol_name": group.protocol_name,
            "assignment": member.assignment,
        }

    def _member_error(self, group: _Group, member_id: str, generation: int) -> ErrorCode | None:
        """Kafka's order: a dead group, an unknown member, another generation."""
        if group.state is ClassicGroupState.DEAD:
            return ErrorCode.COORDINATOR_NOT_AVAILABLE
        if group.state is ClassicGroupState.EMPTY or member_id not in group.members:
            return ErrorCode.UNKNOWN_MEMBER_ID
        if generation != group.generation:
            return ErrorCode.ILLEGAL_GENERATION
        return None

    # -- Heartbeat and LeaveGroup ------------------------------------------------

    def heartbeat(self, version: int, req: dict[str, Any]) -> dict[str, Any]:
        group_id = req["group_id"]
        error = self._group_error(group_id)
        group = self._group(group_id, create=False) if error is None else None
        if error is not None or group is None:
            return {"error_code": error or ErrorCode.UNKNOWN_MEMBER_ID}
        with group.cond:
            error = self._member_error(group, req["member_id"], req["generation_id"])
            if error is not None:
                return {"error_code": error}
            group.members[req["member_id"]].alive(time.monotonic())
            if group.state is ClassicGroupState.PREPARING_REBALANCE:
                return {"error_code": ErrorCode.REBALANCE_IN_PROGRESS}
            return {"error_code": ErrorCode.NONE}

    def leave_group(self, version: int, req: dict[str, Any]) -> dict[str, Any]:
        group_id = req["group_id"]
        leaving = req["members"] if version >= 3 else [{"member_id": req["member_id"]}]
        error = self._group_error(group_id)
        group = self._group(group_id, create=False) if error is None else None
        if error is not None:
            return {"error_code": error}
        answers: list[dict[str, Any]] = []
        if group is None:
            answers = [_left(m, ErrorCode.UNKNOWN_MEMBER_ID) for m in leaving]
        else:
            with group.cond:
                if group.state is ClassicGroupState.DEAD:
                    return {"error_code": ErrorCode.COORDINATOR_NOT_AVAILABLE}
                gone = []
                for m in leaving:
                    mid = m["member_id"]
                    member = group.members.get(mid)
                    if member is not None:
                        self._remove(group, member)
                        gone.append(mid)
                        answers.append(_left(m, ErrorCode.NONE))
                    elif mid in group.pending:
                        group.pending.pop(mid)
                        self._unregister(group_id, mid)
                        answers.append(_left(m, ErrorCode.NONE))
                    else:
                        answers.append(_left(m, ErrorCode.UNKNOWN_MEMBER_ID))
                if gone:
                    self._member_gone(group, f"member(s) {', '.join(gone)} left")
                else:
                    self._maybe_complete_join(group)
        if version >= 3:
            return {"members": answers}
        return {"error_code": answers[0]["error_code"]}

    # -- the sweeper -----------------------------------------------------------------

    def _sweep(self) -> None:
        last_ownership = time.monotonic()
        while not self._stopping():
            time.sleep(SWEEP_INTERVAL_S)
            check = time.monotonic() - last_ownership >= OWNERSHIP_CHECK_S
            if check:
                last_ownership = time.monotonic()
            with self._lock:
                groups = list(self._groups.values())
            lost = self._session_lost.is_set()
            if lost:
                self._session_lost.clear()
                log.warning("the coordinator session was lost: forgetting %d groups", len(groups))
            for group in groups:
                try:
                    if lost:
                        self._unload(group)
                        continue
                    if self._evict_if_idle(group):
                        continue
                    if check and not self._is_coordinator(group.group_id):
                        self._unload(group)
                        continue
                    with group.cond:
                        self._expire(group)
                except (KazooException, KazooTimeoutError) as exc:
                    log.info("group sweeper: the coordinator is unavailable: %s", exc)
                except Exception:
                    log.exception("group sweeper: group %s", group.group_id)

    def _evict_if_idle(self, group: _Group) -> bool:
        """Drop a group without members that no request used for IDLE_EMPTY_GROUP_S (its
        generation is in the tree; the next request loads it again)."""
        with group.cond:
            if (
                group.state is not ClassicGroupState.EMPTY
                or group.members
                or group.pending
                or time.monotonic() - group.used < IDLE_EMPTY_GROUP_S
            ):
                return False
            group.evicted = True
            with self._lock:
                if self._groups.get(group.group_id) is group:
                    del self._groups[group.group_id]
        return True

    def _expire(self, group: _Group) -> None:
        now = time.monotonic()
        for mid, (expiry, _) in list(group.pending.items()):
            if now > expiry:
                del group.pending[mid]
                self._unregister(group.group_id, mid)
        expired = [
            m
            for m in group.members.values()
            if m.join is None and m.sync is None and now > m.deadline
        ]
        for m in expired:
            log.info(
                "group %s: member %s sent no heartbeat within its session timeout (%d ms): "
                "removed",
                group.group_id, m.member_id, m.session_timeout_s * 1000,
            )  # fmt: skip
            self._remove(group, m)
        if expired:
            self._member_gone(group, f"member(s) {', '.join(m.member_id for m in expired)} expired")
        else:
            self._maybe_complete_join(group)

    def _unload(self, group: _Group) -> None:
        """Drop the group: this broker no longer coordinates it (its members find the new
        coordinator through NOT_COORDINATOR and join there), or lost the session that
        held its members' znodes (they join here again)."""
        with group.cond:
            for m in list(group.members.values()):
                for waiting in (m.join, m.sync):
                    if waiting is not None:
                        waiting.response = _join_error(ErrorCode.NOT_COORDINATOR, m.member_id)
                self._unregister(group.group_id, m.member_id)
            for mid in group.pending:
                self._unregister(group.group_id, mid)
            group.members.clear()
            group.pending.clear()
            group.state = ClassicGroupState.DEAD
            group.cond.notify_all()
        with self._lock:
            if self._groups.get(group.group_id) is group:
                del self._groups[group.group_id]
        log.info("group %s: unloaded", group.group_id)

    # -- OffsetCommit and OffsetFetch ----------------------------------------------

    def offset_commit(self, version: int, req: dict[str, Any]) -> dict[str, Any]:
        group_id = req["group_id"]
        generation, member_id = req["generation_id_or_member_epoch"], req["member_id"]

        def every(error: ErrorCode) -> dict[str, Any]:
            return {
                "topics": [
                    {
                        "name": t["name"],
                        "partitions": [
                            {"partition_index": p["partition_index"], "error_code": error}
                            for p in t["partitions"]
                        ],
                    }
                    for t in req["topics"]
                ]
            }

        error = self._group_error(group_id)
        if error is not None:
            return every(error)
        group = self._group(group_id, create=True)
        assert group is not None
        with group.cond:
            check: str | None = None
            if group.state is ClassicGroupState.DEAD:
                return every(ErrorCode.COORDINATOR_NOT_AVAILABLE)
            if generation >= 0 or member_id or req["group_instance_id"] is not None:
                member = group.members.get(member_id)
                if member is None:
                    return every(ErrorCode.UNKNOWN_MEMBER_ID)
                if generation != group.generation:
                    return every(ErrorCode.ILLEGAL_GENERATION)
                if group.state is ClassicGroupState.COMPLETING_REBALANCE:
                    return every(ErrorCode.REBALANCE_IN_PROGRESS)
                member.alive(time.monotonic())
                check = store.member_path(group_id, member_id)
            elif group.members:
                # A "simple" commit (an assign()-only consumer) into a group whose Kafka
                # members own its partitions, as Kafka refuses it.
                return every(ErrorCode.UNKNOWN_MEMBER_ID)
            try:
                answers, offsets = self._offsets_to_commit(req["topics"])
            except (KazooException, KazooTimeoutError):
                return every(ErrorCode.COORDINATOR_NOT_AVAILABLE)
            if offsets:
                error = self._write_offsets(group, offsets, check)
                if error is not None:
                    for tp in offsets:
                        answers[tp.topic][tp.partition] = error
                if error is ErrorCode.UNKNOWN_MEMBER_ID and member_id in group.members:
                    # Its znode is gone (this broker's session was lost): it joins again.
                    self._remove(group, group.members[member_id])
                    self._member_gone(group, f"member {member_id} lost its registration")
        return {
            "topics": [
                {
                    "name": name,
                    "partitions": [
                        {"partition_index": p, "error_code": e} for p, e in parts.items()
                    ],
                }
                for name, parts in answers.items()
            ]
        }

    def _offsets_to_commit(
        self, topics: list[dict[str, Any]]
    ) -> tuple[dict[str, dict[int, ErrorCode]], dict[TopicPartition, int]]:
        """Each partition's answer so far, and the offsets that may be written."""
        answers: dict[str, dict[int, ErrorCode]] = {}
        offsets: dict[TopicPartition, int] = {}
        counts: dict[str, int | None] = {}
        for t in topics:
            name = t["name"]
            if name not in counts:
                try:
                    validate_topic_name(name)
                    counts[name] = md.read_topic(self.zk, name).partition_count
                except (UnknownTopicError, InvalidTopicError):
                    counts[name] = None
            count = counts[name]
            parts = answers.setdefault(name, {})
            for p in t["partitions"]:
                index, offset = p["partition_index"], p["committed_offset"]
                metadata = p["committed_metadata"] or ""
                if count is None or not 0 <= index < count:
                    parts[index] = ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
                elif len(metadata.encode()) > MAX_METADATA_BYTES:
                    parts[index] = ErrorCode.OFFSET_METADATA_TOO_LARGE
                elif offset < 0:
                    parts[index] = ErrorCode.INVALID_COMMIT_OFFSET_SIZE
                else:
                    parts[index] = ErrorCode.NONE
                    offsets[TopicPartition(name, index)] = offset
        return answers, offsets

    def _write_offsets(
        self, group: _Group, offsets: dict[TopicPartition, int], check: str | None
    ) -> ErrorCode | None:
        """One transaction: the committing member's znode still exists (this broker's
        session still holds it), and the offsets. An offset znode deleted meanwhile (its
        topic or the group was deleted) is made again once."""
        for attempt in (1, 2):
            try:
                store.ensure_offset_nodes(self.zk, group.group_id, offsets,
                                          group.known_offset_nodes)  # fmt: skip
                tx = self.zk.transaction()
                if check is not None:
                    tx.check(check, -1)
                for tp, offset in sorted(offsets.items()):
                    tx.set_data(store.offset_path(group.group_id, tp), str(offset).encode())
                results = tx.commit()
            except (KazooException, KazooTimeoutError) as exc:
                log.info("group %s: commit failed: %s", group.group_id, exc)
                return ErrorCode.COORDINATOR_NOT_AVAILABLE
            failed = [r for r in results if isinstance(r, Exception)]
            if not failed:
                return None
            if check is not None and isinstance(results[0], NoNodeError):
                return ErrorCode.UNKNOWN_MEMBER_ID
            group.known_offset_nodes.clear()
            if attempt == 2 or not any(isinstance(r, NoNodeError) for r in failed):
                log.warning("group %s: commit failed: %s", group.group_id, failed)
                return ErrorCode.UNKNOWN_SERVER_ERROR
        return ErrorCode.UNKNOWN_SERVER_ERROR

    def offset_fetch(self, version: int, req: dict[str, Any]) -> dict[str, Any]:
        if version >= 8:
            return {
                "groups": [self._fetch_group(g["group_id"], g["topics"]) for g in req["groups"]]
            }
        answer = self._fetch_group(req["group_id"], req["topics"])
        if version < 2 and answer["error_code"] != ErrorCode.NONE:
            # v0-1 have no group-level error: each partition asked carries it.
            for t in answer["topics"]:
                for p in t["partitions"]:
                    p["error_code"] = answer["error_code"]
        return {"topics": answer["topics"], "error_code": answer["error_code"]}

    def _fetch_group(self, group_id: str, topics: list[dict[str, Any]] | None) -> dict[str, Any]:
        error = self._group_error(group_id)
        out: dict[str, Any] = {"group_id": group_id, "topics": [],
                               "error_code": error or ErrorCode.NONE}  # fmt: skip
        if error is not None:
            out["topics"] = [
                {
                    "name": t["name"],
                    "partitions": [
                        {"partition_index": p, "committed_offset": -1, "metadata": ""}
                        for p in t["partition_indexes"]
                    ],
                }
                for t in topics or ()
            ]
            return out
        try:
            if topics is None:
                found: dict[str, dict[int, int]] = {}
                for tp, offset in sorted(store.read_all_committed(self.zk, group_id).items()):
                    found.setdefault(tp.topic, {})[tp.partition] = offset
            else:
                found = {
                    t["name"]: {
                        p: _or_none(
                            store.read_committed(self.zk, group_id, TopicPartition(t["name"], p))
                        )
                        for p in t["partition_indexes"]
                    }
                    for t in topics
                }
        except (KazooException, KazooTimeoutError):
            out["error_code"] = ErrorCode.COORDINATOR_NOT_AVAILABLE
            return out
        out["topics"] = [
            {
                "name": name,
                "partitions": [
                    {"partition_index": p, "committed_offset": offset, "metadata": ""}
                    for p, offset in parts.items()
                ],
            }
            for name, parts in found.items()
        ]
        return out

    # -- DescribeGroups, ListGroups, DeleteGroups -----------------------------------

    def describe_groups(self, version: int, req: dict[str, Any]) -> dict[str, Any]:
        out = []
        for gid in req["groups"]:
            try:
                out.append(self._describe(version, gid))
            except (KazooException, KazooTimeoutError):
                out.append({"group_id": gid, "error_code": ErrorCode.COORDINATOR_NOT_AVAILABLE})
        return {"groups": out}

    def _describe(self, version: int, group_id: str) -> dict[str, Any]:
        out: dict[str, Any] = {"group_id": group_id}
        error = self._group_error(group_id)
        if error is not None:
            return out | {"error_code": error, "group_state": "", "protocol_type": ""}
        group = self._group(group_id, create=False)
        if group is not None:
            with group.cond:
                if group.members or group.state is not ClassicGroupState.EMPTY:
                    stable = group.state is ClassicGroupState.STABLE
                    return out | {
                        "group_state": group.state.value,
                        "protocol_type": group.protocol_type or "",
                        "protocol_data": (group.protocol_name or "") if stable else "",
                        "members": [
                            {
                                "member_id": m.member_id,
                                "group_instance_id": m.group_instance_id,
                                "client_id": m.client_id,
                                "client_host": f"/{m.client_host}",
                                "member_metadata": (
                                    m.metadata(group.protocol_name) if stable else b""
                                ),
                                "member_assignment": m.assignment if stable else b"",
                            }
                            for m in group.members.values()
                        ],
                    }
        return out | self._describe_from_tree(version, group_id, group is not None)

    def _describe_from_tree(self, version: int, group_id: str, known: bool) -> dict[str, Any]:
        """A group without Kafka members here: its engine Consumers (their assignment
        in the consumer protocol's form), or Empty with only committed offsets."""
        if not self.zk.exists(store.group_path(group_id)) and not known:
            if version >= 6:
                return {
                    "error_code": ErrorCode.GROUP_ID_NOT_FOUND,
                    "error_message": f"group {group_id} not found",
                    "group_state": ClassicGroupState.DEAD.value,
                }
            return {"group_state": ClassicGroupState.DEAD.value}
        members = {
            m: info
            for m, info in read_members(self.zk, group_id).items()
            if store.member_kind(info) == store.KIND_ENGINE
        }
        if not members:
            return {"group_state": ClassicGroupState.EMPTY.value, "protocol_type": CONSUMER}
        state, _ = read_state(self.zk, group_id)
        assignment = state.assignment if state else {}
        return {
            "group_state": ClassicGroupState.STABLE.value,
            "protocol_type": CONSUMER,
            "protocol_data": state.protocol if state else "",
            "members": [
                {
                    "member_id": m,
                    "client_id": str(info.get("client_id", "")),
                    "client_host": f"/{info.get('host', '')}",
                    "member_metadata": encode_subscription(info.get("subscription", [])),
                    "member_assignment": encode_assignment(assignment.get(m, [])),
                }
                for m, info in members.items()
            ],
        }

    def list_groups(self, version: int, req: dict[str, Any]) -> dict[str, Any]:
        """The groups this broker coordinates: those in the tree (the engine's too) and
        those only in memory."""
        states = {s.lower() for s in req["states_filter"]}
        types = {t.lower() for t in req["types_filter"]}
        if types and "classic" not in types:
            return {"groups": []}
        try:
            names = set(store.list_groups(self.zk))
            with self._lock:
                names |= set(self._groups)
            out = []
            for gid in sorted(names):
                if not self._is_coordinator(gid):
                    continue
                state = self._state_of(gid)
                if states and state.value.lower() not in states:
                    continue
                out.append({"group_id": gid, "protocol_type": CONSUMER,
                            "group_state": state.value, "group_type": "classic"})  # fmt: skip
        except (KazooException, KazooTimeoutError):
            return {"error_code": ErrorCode.COORDINATOR_NOT_AVAILABLE}
        return {"groups": out}

    def _state_of(self, group_id: str) -> ClassicGroupState:
        group = self._group(group_id, create=False)
        if group is not None and (group.members or group.state is not ClassicGroupState.EMPTY):
            return group.state
        engine = [
            m
            for m, info in read_members(self.zk, group_id).items()
            if store.member_kind(info) == store.KIND_ENGINE
        ]
        return ClassicGroupState.STABLE if engine else ClassicGroupState.EMPTY

    def delete_groups(self, version: int, req: dict[str, Any]) -> dict[str, Any]:
        return {
            "results": [
                {"group_id": gid, "error_code": self._delete(gid)} for gid in req["groups_names"]
            ]
        }

    def _delete(self, group_id: str) -> ErrorCode:
        error = self._group_error(group_id)
        if error is not None:
            return error
        group = self._group(group_id, create=False)
        lock: contextlib.AbstractContextManager[Any] = (
            group.cond if group is not None else contextlib.nullcontext()
        )
        with lock:
            if group is not None and (group.members or group.pending):
                return ErrorCode.NON_EMPTY_GROUP
            try:
                delete_group_in(self.zk, group_id)
            except UnknownGroupError:
                if group is None:
                    return ErrorCode.GROUP_ID_NOT_FOUND
            except GroupNotEmptyError:
                return ErrorCode.NON_EMPTY_GROUP
            except (KazooException, KazooTimeoutError):
                return ErrorCode.COORDINATOR_NOT_AVAILABLE
            if group is not None:
                group.state = ClassicGroupState.DEAD
                group.cond.notify_all()
        with self._lock:
            if self._groups.get(group_id) is group:
                self._groups.pop(group_id, None)
        log.info("group %s: deleted (DeleteGroups)", group_id)
        return ErrorCode.NONE


# -- helpers ---------------------------------------------------------------------------


def _join_error(error: ErrorCode, member_id: str) -> dict[str, Any]:
    return {"error_code": error, "generation_id": -1, "member_id": member_id}


def _left(identity: dict[str, Any], error: ErrorCode) -> dict[str, Any]:
    return {
        "member_id": identity["member_id"],
        "group_instance_id": identity.get("group_instance_id"),
        "error_code": error,
    }


def _or_none(offset: int | None) -> int:
    return -1 if offset is None else offset


def _znode_name(client_id: str) -> str:
    """A client id as the start of a member znode's name: the characters a group
    member's client id may have (engine.offset_store), others as '_'."""
    name = "".join(c if c in store.GROUP_CHARS else "_" for c in client_id)[:200]
    return name if name.strip(".") else "kafka"


def _subscribed_topics(member: _Member) -> list[str]:
    """The topics of a consumer's subscription (its first protocol's metadata)."""
    if member.protocol_type != CONSUMER or not member.protocols:
        return []
    found = _decode_versioned(schema.CONSUMER_SUBSCRIPTION, member.protocols[0][1])
    return sorted(set(found["topics"])) if found else []


def _assigned(group: _Group, member: _Member) -> list[tuple[str, int]]:
    """The partitions a consumer's assignment gives it."""
    if group.protocol_type != CONSUMER or not member.assignment:
        return []
    found = _decode_versioned(schema.CONSUMER_ASSIGNMENT, member.assignment)
    if not found:
        return []
    return sorted((t["topic"], p) for t in found["assigned_partitions"] for p in t["partitions"])


def _decode_versioned(msg: Any, data: bytes) -> dict[str, Any] | None:
    """A consumer-protocol payload (its int16 version first); None when it does not
    decode (a client's own protocol)."""
    if len(data) < _VERSION.size:
        return None
    (version,) = _VERSION.unpack_from(data)
    try:
        return decode(msg, min(max(version, 0), msg.versions.high), data, _VERSION.size)
    except (KafkaProtocolError, struct.error, UnicodeDecodeError):
        return None


def encode_subscription(topics: Iterable[str]) -> bytes:
    """A consumer-protocol subscription (v0) of ``topics``."""
    return _VERSION.pack(0) + bytes(
        encode(schema.CONSUMER_SUBSCRIPTION, 0, {"topics": sorted(topics), "user_data": None})
    )


def encode_assignment(tps: Iterable[tuple[str, int]]) -> bytes:
    """A consumer-protocol assignment (v0) of ``tps``."""
    by_topic: dict[str, list[int]] = {}
    for topic, partition in tps:
        by_topic.setdefault(topic, []).append(partition)
    body = {
        "assigned_partitions": [
            {"topic": t, "partitions": sorted(ps)} for t, ps in sorted(by_topic.items())
        ],
        "user_data": None,
    }
    return _VERSION.pack(0) + bytes(encode(schema.CONSUMER_ASSIGNMENT, 0, body))
