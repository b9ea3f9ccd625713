"""The consumer: reads partitions straight from the leaders' rings, and from segments.

For each assigned partition the consumer keeps the next offset to deliver and,
while it reads from shared memory, a ring cursor. Records still in the ring
(not yet drained by the broker, or drained but not yet overwritten) are copied
out of it; older records are read from the leader's segment files by mmap,
through the same ``poll()``. A consumer that has caught up sleeps on the ring's
futex and wakes within microseconds of an append.

A Consumer is used by one thread. After ``close()`` every method raises
ClosedError.

Without a ``group_id``, ``subscribe`` assigns every partition of the topics and
``assign`` takes exactly the partitions given. With a ``group_id``, ``subscribe``
joins the consumer group (engine.group): the group's leader spreads the
partitions over the members, and this consumer fetches a partition only while it
owns it; rebalances happen inside ``poll()``, where ``on_revoke`` and
``on_assign`` run. Committed offsets (``commit``, auto-commit) live in the
coordinator's tree (engine.offset_store) and survive a daemon restart. A group
consumer with ``assign`` (no subscription) commits without membership checks, as
Kafka's standalone consumers do. ``unsubscribe`` gives up every partition (a member
leaves its group); ``subscribe`` or ``assign`` may follow.

With ``isolation_level="read_committed"`` every partition's batches pass through a
filter (engine.txn_filter) that holds transactional batches until their marker and
drops aborted ones and markers; nothing past the first undecided batch is delivered
(Kafka's last stable offset). Fetching then runs ahead of delivery: reads start at the
filter's ``next_offset``, while the position (``position()``, ``commit()``) stays the
first offset neither delivered nor dropped, so a consumer restarted from its committed
offset reads an undecided transaction again. A partition whose undecided batches hold
more than 64 MiB is no longer fetched (a warning says so) until a seek. ``end_offsets``,
``seek_to_end`` and ``auto_offset_reset="latest"`` use the high watermark, not the last
stable offset. With ``read_uncommitted`` (the default) there is no filter and markers
are skipped.

Integrity (``check_crcs``, Kafka's option, on by default): every batch a poll delivers
records from, out of a ring or a segment, has its CRC32C checked in C before it is
decoded, and its offsets checked to be in sequence (the CRC does not cover the base
offset): the first batch of a chunk holds the offset asked for and each later one starts
right after the one before it (in a ring, where a reaped frame's offsets are skipped,
anywhere after it). A batch that fails raises CorruptRecordError naming the topic, the
partition and the offset; nothing of it is delivered. Records before it are delivered
first; the error comes at the next poll, and again at each poll until a seek moves the
position past it. ``engine verify`` finds such batches in the logs and repairs them from
an intact replica. A batch whose copy in the ring fails but which the broker has written
to its log already (the drain checks every CRC) is read from the log instead, with a
warning on the ``engine.consumer`` logger.

Compression: a Kafka client's batch may be compressed (gzip, snappy, lz4, zstd), and is
stored as it came. Each chunk read is checked as stored (the CRC covers the compressed
bytes), then its compressed batches are made plain (engine.compression) before the
read_committed filter and the decoder see them; poll_values reads such a partition
through the chunk path. A batch that does not decompress is treated as one that fails
its checks: the records before it are delivered, then CorruptRecordError names the
topic, partition, offset and codec at every poll until a seek moves past it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from kazoo.exceptions import KazooException
from kazoo.handlers.threading import KazooTimeoutError

from engine import metadata as md
from engine import offset_store as store
from engine._native import lib
from engine.assignor import strategy as find_strategy
from engine.cluster import ClusterView
from engine.compression import plain_chunk
from engine.errors import (
    ClosedError,
    CommitFailedError,
    ConfigError,
    CorruptRecordError,
    EngineError,
    NotLeaderError,
    OffsetOutOfRangeError,
    PartitionOutOfRangeError,
)
from engine.group import GroupMember
from engine.log import LogReader
from engine.record import OffsetAndTimestamp, Record, RecordDecoder, TopicPartition, as_offset
from engine.record_batch import BatchCheck, check_chunk, decode_record_infos, scan_batches
from engine.ring import (
    EMPTY,
    OK,
    OUT_TOO_SMALL,
    OVERWRITTEN,
    SEALED,
    Cursor,
    Ring,
    ValuesReader,
    fork_generation,
    ready_many,
    wait_any,
)
from engine.txn_filter import ReadCommitted

log = logging.getLogger("engine.consumer")

#: The position of a chunk's first compressed batch (C; its length when none is): a
#: read's one cost for compression when there is none, a call without a Python frame.
_first_compressed = lib.engine_batch_first_compressed


_RESETS = ("earliest", "latest", "none")
_ISOLATION = ("read_uncommitted", "read_committed")
#: read_committed: a partition whose undecided transactions hold more is not fetched.
MAX_UNDECIDED_BYTES = 64 << 20
#: poll(): from this many partitions read in their rings on, one C call first looks at
#: which have anything (Consumer._worth_reading).
READY_CHECK_MIN = 8

#: How often poll() looks whether records before a partition's position were deleted
#: (Admin.delete_records) while it reads them out of the leader's ring.
LOG_START_CHECK_S = 1.0

#: on_assign / on_revoke: called with the partitions this consumer takes or gives up.
RebalanceCallback = Callable[[set[TopicPartition]], None]
#: commit_async's callback: (the offsets, None) or (the offsets, the error).
CommitCallback = Callable[[dict[TopicPartition, int], "Exception | None"], None]


@dataclass
class _Fetch:
    """Fetch state of one assigned partition.

    ``offset`` is the position: the next offset to deliver. Reads start there, or at
    ``txn.next_offset`` with read_committed, or continue at ``cursor`` in the ring.
    ``pending[pending_at:]`` holds fetched whole batches not yet delivered (kept in
    place, not copied, between polls). ``_restart`` drops the cursor, ``pending`` and
    the filter's state whenever the position is set.
    """

    tp: TopicPartition
    ring: Ring
    reader: LogReader
    offset: int = -1  # next offset to deliver; -1 = reset by policy on first poll
    cursor: Cursor | None = None
    pending: bytes = b""
    pending_at: int = 0
    out_of_range: bool = field(default=False)
    txn: ReadCommitted | None = None  # read_committed only: the partition's filter
    pending_end: int = 0  # read_committed: the position once ``pending`` is delivered
    stalled: bool = False  # read_committed: too many undecided bytes; not fetched


class Consumer:
    """Reads records from assigned partitions (kafka-python's names and habits)."""

    def __init__(
        self,
        *topics: str,
        data_dir: str | os.PathLike[str] | None = None,
        group_id: str | None = None,
        auto_offset_reset: str = "latest",
        enable_auto_commit: bool = True,
        auto_commit_interval_ms: int = 5000,
        partition_assignment_strategy: str = "range",
        session_timeout_ms: int = 10_000,
        heartbeat_interval_ms: int = 3000,
        max_poll_interval_ms: int = 300_000,
        on_assign: RebalanceCallback | None = None,
        on_revoke: RebalanceCallback | None = None,
        isolation_level: str = "read_uncommitted",
        max_poll_records: int = 500,
        fetch_max_bytes: int = 1 << 20,
        consumer_timeout_ms: float = float("inf"),
        client_id: str | None = None,
        poll_spin_us: int = 100,
        check_crcs: bool = True,
        **unknown: Any,
    ) -> None:
        """Options are kafka-python's. Group options (used only with ``group_id``):

        ``session_timeout_ms``: a member whose process dies is dropped after this long
        (its coordinator session's timeout; the coordinator clamps it to 0.4-4 s).
        ``heartbeat_interval_ms``: must be below the session timeout; the session's
        pings, a third of the session timeout apart, are the heartbeats.
        ``max_poll_interval_ms``: a member that does not call poll() for this long
        leaves the group and its partitions move. ``on_assign`` / ``on_revoke``: see
        engine.group. ``isolation_level``: ``"read_uncommitted"`` (every record) or
        ``"read_committed"`` (only committed transactions; see the module docstring).
        ``poll_spin_us`` (the engine's own): when every partition is caught up, poll()
        looks again and again for this long before it sleeps; a busy stream then costs
        no wake-up on either side and arrives within microseconds (0: sleep at once).
        poll_values() spins adaptively within that bound: a spin that keeps missing
        (records further apart than it) halves at each wait until a wait ends within
        ``poll_spin_us`` again, so that a consumer of a moderate stream does not keep a
        core busy (one at 5,000 records/s used 77% of a core before, 28% after).
        ``check_crcs``: check every batch's CRC32C before its records are delivered
        (offsets are checked in any case; see the module docstring).
        """
        if unknown:
            raise ConfigError(f"unknown consumer option: {sorted(unknown)[0]!r}")
        if group_id is not None:
            store.validate_group_id(group_id)
            if client_id is not None:
                store.validate_client_id(client_id)
        find_strategy(partition_assignment_strategy)
        for name, value in (
            ("auto_commit_interval_ms", auto_commit_interval_ms),
            ("session_timeout_ms", session_timeout_ms),
            ("heartbeat_interval_ms", heartbeat_interval_ms),
            ("max_poll_interval_ms", max_poll_interval_ms),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be an int >= 1: {name}={value!r}")
        if heartbeat_interval_ms >= session_timeout_ms:
            raise ConfigError(
                "heartbeat_interval_ms must be below session_timeout_ms: "
                f"heartbeat_interval_ms={heartbeat_interval_ms} "
                f"session_timeout_ms={session_timeout_ms}"
            )
        if not isinstance(enable_auto_commit, bool):
            raise ConfigError(
                f"enable_auto_commit must be a bool: enable_auto_commit={enable_auto_commit!r}"
            )
        for name, cb in (("on_assign", on_assign), ("on_revoke", on_revoke)):
            if cb is not None and not callable(cb):
                raise ConfigError(f"{name} must be callable: {name}={cb!r}")
        if isolation_level not in _ISOLATION:
            raise ConfigError(
                f"isolation_level must be one of {_ISOLATION}: isolation_level={isolation_level!r}"
            )
        if auto_offset_reset not in _RESETS:
            raise ConfigError(
                f"auto_offset_reset must be one of {_RESETS}: "
                f"auto_offset_reset={auto_offset_reset!r}"
            )
        if isinstance(poll_spin_us, bool) or not isinstance(poll_spin_us, int) or poll_spin_us < 0:
            raise ConfigError(f"poll_spin_us must be an int >= 0: poll_spin_us={poll_spin_us!r}")
        self.poll_spin_s = poll_spin_us / 1e6
        if not isinstance(check_crcs, bool):
            raise ConfigError(f"check_crcs must be a bool: check_crcs={check_crcs!r}")
        self.check_crcs = check_crcs
        if not isinstance(max_poll_records, int) or max_poll_records < 1:
            raise ConfigError(
                f"max_poll_records must be >= 1: max_poll_records={max_poll_records!r}"
            )
        self.auto_offset_reset = auto_offset_reset
        self.isolation_level = isolation_level
        self.max_poll_records = max_poll_records
        self.fetch_max_bytes = fetch_max_bytes
        self.consumer_timeout_ms = consumer_timeout_ms
        self.client_id = client_id or f"consumer-{os.getpid()}"
        self._cluster = ClusterView(data_dir)
        self._fetches: dict[TopicPartition, _Fetch] = {}
        self._order: list[TopicPartition] = []  # the assigned partitions not paused
        self._paused: set[TopicPartition] = set()
        self._next = 0
        self._buf = bytearray(max(fetch_max_bytes, 1 << 16))
        # poll_values' output: rows of value_size bytes, handed out or copied from.
        self._values_scratch: np.ndarray[Any, Any] | None = None
        self._values_reader = ValuesReader()
        # poll_values' plan while every partition is read in its ring poll after poll:
        # the fetches (in assignment order; valid while _order is the same list) and the
        # list the reader is bound to. _restart, _reopen and the chunk path drop it.
        self._direct: list[_Fetch] | None = None
        self._direct_order: list[TopicPartition] | None = None
        self._bound: list[_Fetch] | None = None
        self._decoder = RecordDecoder(max(max_poll_records, 16384))
        self._closed = False
        self._pid = os.getpid()
        self._forks = fork_generation()
        self.group_id = group_id
        self.enable_auto_commit = enable_auto_commit
        self.auto_commit_interval_s = auto_commit_interval_ms / 1000
        self.partition_assignment_strategy = partition_assignment_strategy
        self.session_timeout_ms = session_timeout_ms
        self.max_poll_interval_ms = max_poll_interval_ms
        self.on_assign = on_assign
        self.on_revoke = on_revoke
        self._group: GroupMember | None = None
        self._committed: dict[TopicPartition, int] = {}  # what this consumer last committed
        self._next_auto_commit = time.monotonic() + self.auto_commit_interval_s
        self._next_start_check = time.monotonic() + LOG_START_CHECK_S
        if topics:
            self.subscribe(list(topics))

    # -- assignment --------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError("consumer is closed")
        if fork_generation() != self._forks:  # os.getpid() is a syscall per poll
            raise ClosedError("consumer was created in another process: create one per process")

    def subscribe(self, topics: Iterable[str]) -> None:
        """Without a group: assign every partition of the topics. With a ``group_id``:
        join the group; partitions arrive through poll() (see ``on_assign``)."""
        self._check_open()
        topics = list(topics)
        if isinstance(topics, str) or not topics:
            raise ConfigError(f"subscribe takes a non-empty list of topics: topics={topics!r}")
        tps = []
        for topic in topics:
            view = self._cluster.topic(topic)
            tps += [TopicPartition(topic, p) for p in range(view.partition_count)]
        if self.group_id is None:
            self.assign(tps)
            return
        if self._group is not None:
            raise ConfigError(
                f"already subscribed to {self._group.topics} in group {self.group_id!r}: "
                "create another Consumer for other topics"
            )
        if self._fetches:
            raise ConfigError("subscribe() after assign(): a consumer uses one or the other")
        self._group = GroupMember(
            self._cluster.data_dir,
            self.group_id,
            self.client_id,
            self.partition_assignment_strategy,
            self.session_timeout_ms,
            self.max_poll_interval_ms,
        )
        self._group.join(topics)

    def assign(self, partitions: Iterable[TopicPartition]) -> None:
        self._check_open()
        if self._group is not None:
            raise ConfigError(
                f"assign() while subscribed to group {self.group_id!r}: the group assigns "
                "partitions; use a Consumer without subscribe() for manual assignment"
            )
        self._set_fetches(partitions)

    def _set_fetches(self, partitions: Iterable[TopicPartition]) -> None:
        new: dict[TopicPartition, _Fetch] = {}
        current = {f.tp.topic for f in self._fetches.values()}
        for tp in partitions:
            tp = TopicPartition(*tp)
            if tp in self._fetches:
                new[tp] = self._fetches[tp]
                continue
            new[tp] = self._open(tp, current)
        self._fetches = new
        self._reorder()

    def _open(self, tp: TopicPartition, current: set[str]) -> _Fetch:
        """A fetch for ``tp``. ``current``: the topics whose cached view is current (some
        partition of it is being read, or it was looked up for this assignment); any
        other is looked up afresh and added, since the view cached from an earlier
        assignment may be of a topic deleted since, or deleted and created again."""
        for attempt in range(2):
            if attempt or tp.topic not in current:
                view = self._cluster.refresh(tp.topic)
                current.add(tp.topic)
            else:
                view = self._cluster.topic(tp.topic)
            if not (isinstance(tp.partition, int) and 0 <= tp.partition < view.partition_count):
                if not attempt:
                    continue  # the cached view may predate partitions added since: look up
                raise PartitionOutOfRangeError(
                    f"partition out of range: topic={tp.topic!r} partition={tp.partition!r} "
                    f"partitions={view.partition_count}"
                )
            leader = view.leader(tp.partition)
            assert leader is not None
            directory = self._cluster.data_dir.partition_dir(leader, tp.topic, tp.partition)
            try:
                reader = LogReader(directory)
                break
            except FileNotFoundError:
                continue  # the leader moved, or the topic went, since the view was read
        else:
            raise NotLeaderError(
                f"{tp.topic}-{tp.partition} has no log at its leader (broker {leader}): "
                "the leader moved or the topic is being deleted; try again"
            )
        f = _Fetch(tp, view.rings[tp.partition], reader)
        if self.isolation_level == "read_committed":
            f.txn = ReadCommitted(0)  # made again at the position before the first read
        return f

    def unsubscribe(self) -> None:
        """Give up every partition. A group member first commits (with auto-commit) and
        runs ``on_revoke``, as on a rebalance, then leaves the group: the others
        rebalance at once. ``assignment()`` is then empty; ``subscribe()`` or
        ``assign()`` may follow."""
        self._check_open()
        self._leave_group()
        self._fetches.clear()
        self._reorder()
        self._next = 0
        self._committed.clear()

    def assignment(self) -> set[TopicPartition]:
        """The partitions this consumer fetches now (in a group: those it owns)."""
        return set(self._fetches)

    def pause(self, *partitions: TopicPartition) -> None:
        """Stop returning records of these assigned partitions from poll() until
        :meth:`resume`; positions stay, and a group member stays in its group (it keeps
        polling). A partition that leaves the assignment (a rebalance) is no longer
        paused when it comes back. ConfigError for a partition not assigned."""
        self._check_open()
        for tp in partitions:
            self._paused.add(self._fetch(tp).tp)
        self._reorder()

    def resume(self, *partitions: TopicPartition) -> None:
        """Return records of these partitions from poll() again."""
        self._check_open()
        for tp in partitions:
            self._paused.discard(self._fetch(tp).tp)
        self._reorder()

    def paused(self) -> set[TopicPartition]:
        """The partitions paused with :meth:`pause` (and still assigned)."""
        return set(self._paused)

    def _reorder(self) -> None:
        """The partitions poll() reads, in assignment order: those assigned, not paused."""
        self._paused &= set(self._fetches)
        self._order = [tp for tp in self._fetches if tp not in self._paused]
        self._direct = None

    # -- the group -----------------------------------------------------------

    def _group_sync(self) -> None:
        """Apply the group's current generation: revoke, commit, release, then acquire."""
        g = self._group
        assert g is not None
        g.touch()
        try:
            self._group_apply(g)
        except (KazooException, KazooTimeoutError) as exc:
            # The coordinator is briefly unreachable: keep fetching what we own, retry.
            log.info("group %s: coordinator unavailable during a rebalance: %s", g.group, exc)
            g.retry_soon()

    def _group_apply(self, g: GroupMember) -> None:
        if g.lost:
            lost = g.drop_all()
            for tp in lost:
                self._fetches.pop(tp, None)
            self._reorder()
            self._callback(self.on_revoke, lost)
            g.join(g.topics)
        if not g.needs_sync():
            return
        target = g.target()
        revoke = g.owned - target
        if revoke:
            self._callback(self.on_revoke, revoke)
            if self.enable_auto_commit:
                self._auto_commit(revoke)
            for tp in revoke:
                self._fetches.pop(tp, None)
            g.release(revoke)
        acquired = g.acquire(target - g.owned)
        current = {f.tp.topic for f in self._fetches.values()}
        for tp in sorted(acquired):
            f = self._open(tp, current)
            committed = store.read_committed(g.zk, g.group, tp)
            self._fetches[tp] = f
            self._committed.pop(tp, None)
            if committed is not None:
                self._committed[tp] = committed
                self._seek(f, committed)
        self._reorder()
        if acquired:
            self._callback(self.on_assign, acquired)

    def _callback(self, cb: RebalanceCallback | None, tps: set[TopicPartition]) -> None:
        if cb is not None and tps:
            cb(set(tps))

    # -- committed offsets ----------------------------------------------------

    def _need_group(self, what: str) -> str:
        if self.group_id is None:
            raise ConfigError(f"{what} needs a group_id: Consumer(..., group_id='name')")
        return self.group_id

    def _positions(self, only: Iterable[TopicPartition] | None = None) -> dict[TopicPartition, int]:
        tps = self._fetches if only is None else [tp for tp in only if tp in self._fetches]
        return {tp: self._fetches[tp].offset for tp in tps if self._fetches[tp].offset >= 0}

    def _checked_offsets(self, offsets: Mapping[Any, Any]) -> dict[TopicPartition, int]:
        out = store.validate_offsets(offsets)
        if self._group is not None:
            foreign = sorted(tp for tp in out if tp not in self._group.owned)
            if foreign:
                raise CommitFailedError(
                    f"partitions not assigned to this member of group {self.group_id!r}: "
                    f"{foreign}; offsets not committed"
                )
        return out

    def commit(self, offsets: Mapping[TopicPartition, int] | None = None) -> None:
        """Commit ``offsets`` (tp -> the next offset to read), by default the positions
        of every assigned partition. Synchronous: durable when it returns.
        CommitFailedError when this member was dropped from its group."""
        self._check_open()
        group = self._need_group("commit()")
        todo = self._positions() if offsets is None else self._checked_offsets(offsets)
        if not todo:
            return
        if self._group is not None:
            self._group.commit(todo)
        else:
            store.write_offsets(self._cluster.zk, group, todo)
        self._committed.update(todo)

    def commit_async(
        self,
        offsets: Mapping[TopicPartition, int] | None = None,
        callback: CommitCallback | None = None,
    ) -> None:
        """As commit(), without waiting; ``callback(offsets, error_or_None)`` runs on the
        coordinator client's thread once the commit is durable (or failed)."""
        self._check_open()
        group = self._need_group("commit_async()")
        todo = self._positions() if offsets is None else self._checked_offsets(offsets)
        if self._group is None:
            store.write_offsets(self._cluster.zk, group, todo)
            if callback is not None:
                callback(todo, None)
            return
        self._group.commit_async(todo, callback)
        self._committed.update(todo)

    def _auto_commit(self, only: Iterable[TopicPartition] | None = None) -> None:
        todo = {
            tp: off for tp, off in self._positions(only).items() if self._committed.get(tp) != off
        }
        if not todo or self.group_id is None:
            return
        # Dropped from the group: the next poll rejoins; the partitions' new owners re-read.
        with contextlib.suppress(CommitFailedError):
            self.commit(todo)

    def committed(self, partition: TopicPartition) -> int | None:
        """The group's committed offset of ``partition`` (None when none was committed)."""
        self._check_open()
        group = self._need_group("committed()")
        zk = self._group.zk if self._group is not None else self._cluster.zk
        return store.read_committed(zk, group, TopicPartition(*partition))

    def _fetch(self, tp: TopicPartition) -> _Fetch:
        try:
            return self._fetches[TopicPartition(*tp)]
        except KeyError:
            raise ConfigError(f"partition is not assigned to this consumer: {tp}") from None

    # -- positions ---------------------------------------------------------

    def beginning_offsets(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: self._fetch(tp).reader.log_start_offset for tp in partitions}

    def end_offsets(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: self._fetch(tp).ring.status().readable_end for tp in partitions}

    def seek(self, partition: TopicPartition, offset: int) -> None:
        self._check_open()
        self._seek(self._fetch(partition), as_offset(offset, f"{TopicPartition(*partition)} "))

    def _seek(self, f: _Fetch, offset: int) -> None:
        f.offset = offset
        self._restart(f)
        start, end = f.reader.log_start_offset, f.ring.status().readable_end
        f.out_of_range = not start <= offset <= end

    def _restart(self, f: _Fetch) -> None:
        """Fetch again from the position: forget the cursor, what was fetched and not
        delivered, and (read_committed) the undecided batches."""
        f.cursor, f.pending = None, b""
        self._direct = None
        if f.txn is not None:
            f.txn, f.stalled = ReadCommitted(f.offset), False

    def seek_to_beginning(self, *partitions: TopicPartition) -> None:
        for tp in partitions or tuple(self._fetches):
            f = self._fetch(tp)
            self.seek(tp, f.reader.log_start_offset)

    def seek_to_end(self, *partitions: TopicPartition) -> None:
        for tp in partitions or tuple(self._fetches):
            self.seek(tp, self._fetch(tp).ring.status().readable_end)

    def offsets_for_times(
        self, timestamps: Mapping[TopicPartition, int]
    ) -> dict[TopicPartition, OffsetAndTimestamp | None]:
        """For each partition, the offset and timestamp (an OffsetAndTimestamp, as in
        kafka-python) of its first record whose timestamp is >= the given one (ms), or
        None when there is none. Partitions need not be assigned to this consumer. Does
        not move positions."""
        self._check_open()
        out: dict[TopicPartition, OffsetAndTimestamp | None] = {}
        for tp, ts in timestamps.items():
            tp = TopicPartition(*tp)
            if isinstance(ts, bool) or not isinstance(ts, int) or ts < 0:
                raise ConfigError(f"timestamp must be a non-negative int (ms): {tp} ts={ts!r}")
            f = self._fetches.get(tp)
            if f is not None:
                found = self._offset_for_time(f, ts)
            else:
                f = self._open(tp, set())  # looked up afresh, read once, let go
                try:
                    found = self._offset_for_time(f, ts)
                finally:
                    f.reader.close()
            out[tp] = None if found is None else OffsetAndTimestamp(*found)
        return out

    def _offset_for_time(self, f: _Fetch, ts: int) -> tuple[int, int] | None:
        """Scan batch headers from the log start (whole batches skipped by max timestamp)."""
        scan = _Fetch(f.tp, f.ring, f.reader, offset=max(f.reader.log_start_offset, 0))
        while True:
            try:
                data, _ = self._next_chunk(scan)  # scan.pending stays empty: at is 0
            except OffsetOutOfRangeError:
                scan.offset = max(f.reader.log_start_offset, 0)
                continue
            if not data:
                return None
            infos, _, _ = scan_batches(data, False)
            if not len(infos):
                return None
            for info in infos:
                if int(info["last_offset"]) < scan.offset or int(info["max_timestamp"]) < ts:
                    continue
                start, end = int(info["position"]), int(info["position"]) + int(info["length"])
                records = decode_record_infos(data[start:end], scan.offset)
                for off, rts in zip(
                    records["offset"].tolist(), records["timestamp"].tolist(), strict=True
                ):
                    if rts >= ts:
                        return int(off), int(rts)
            scan.offset = int(infos["last_offset"][-1]) + 1

    def position(self, partition: TopicPartition) -> int:
        f = self._fetch(partition)
        if f.offset < 0:
            self._reset(f)
        return f.offset

    def _check_log_starts(self) -> None:
        """A position below its partition's log start (records deleted before it while
        it reads them out of the leader's ring) is out of range, as Kafka's next fetch
        would find it: the next read resets it by auto_offset_reset."""
        for tp in self._order:
            f = self._fetches[tp]
            if f.offset < 0 or f.out_of_range:
                continue
            try:
                start = f.reader.log_start_offset
            except (OSError, EngineError):
                continue  # the leader moved: the next read looks it up again
            if f.offset < start:
                f.out_of_range = True
                self._direct = None

    def _reset(self, f: _Fetch) -> None:
        if self.auto_offset_reset == "none":
            raise OffsetOutOfRangeError(
                f"no valid position for {f.tp} (offset {f.offset}) and auto_offset_reset='none'"
            )
        if self.auto_offset_reset == "earliest":
            f.offset = f.reader.log_start_offset
        else:
            f.offset = f.ring.status().readable_end
        f.out_of_range = False
        self._restart(f)

    # -- fetching ----------------------------------------------------------

    def poll(self, timeout: float = 0.0, max_records: int | None = None) -> list[Record]:
        """Records from the assigned partitions, waiting up to ``timeout`` seconds for any."""
        return self._poll(timeout, max_records, None)

    def poll_values(
        self, value_size: int, timeout: float = 0.0, max_records: int | None = None
    ) -> list[np.ndarray[Any, Any]]:
        """The fast path for fixed-size records: values only, as numpy arrays.

        Returns a list of ``(n, value_size)`` uint8 arrays (view them as your record
        dtype); the arrays are yours, no later poll reuses them. Records still in
        their partitions' rings are decoded straight into one array, all partitions
        in one C call (each partition's values in order, partitions one after the
        other); records read from segment files come one array per chunk. Positions
        advance exactly as with poll(). Every value must be
        exactly ``value_size`` bytes: the values before one of another size are
        returned, then the next call raises CorruptRecordError naming its offset
        (and again, until poll() or seek() moves the position past it).
        """
        if value_size < 1:
            raise ConfigError(f"value_size must be >= 1: value_size={value_size!r}")
        return self._poll(timeout, max_records, value_size)

    def _poll(self, timeout: float, max_records: int | None, value_size: int | None) -> list[Any]:
        self._check_open()
        # The coordinator requests a poll makes (a new leader's lookup, the group's
        # rebalances) end with it, whatever state the daemon is in.
        with md.deadline(timeout, "poll"):
            return self._poll_within(timeout, max_records, value_size)

    def _poll_within(
        self, timeout: float, max_records: int | None, value_size: int | None
    ) -> list[Any]:
        limit = max_records or self.max_poll_records
        start_s = time.monotonic()
        deadline = start_s + timeout
        if start_s >= self._next_start_check:
            self._next_start_check = start_s + LOG_START_CHECK_S
            self._check_log_starts()
        if self.enable_auto_commit and self._group is not None:
            # Kafka's at-least-once default: what the previous poll returned is processed.
            now = time.monotonic()
            if now >= self._next_auto_commit:
                self._next_auto_commit = now + self.auto_commit_interval_s
                self._auto_commit()
        ready: TopicPartition | None = None  # the partition a wait found readable
        while True:
            if self._group is not None:
                self._group_sync()
            out: list[Any] = []
            got = 0
            n = len(self._order)
            start = self._next
            if n and (value_size is not None or ready is None or ready not in self._fetches):
                self._next = (start + 1) % n  # each pass starts at the next partition
            if value_size is None:
                if ready is not None and ready in self._fetches:
                    # Just woken by one partition: read it alone (the others were empty
                    # a moment ago; the next poll visits them), a full pass if it had
                    # nothing.
                    fetches = [self._fetches[ready]]
                else:
                    fetches = [self._fetches[self._order[(start + i) % n]] for i in range(n)]
                    fetches = self._worth_reading(fetches)
                # Partitions holding a chunk first: one of them may have raised last
                # time, and raises again before anything else of this poll is taken.
                held = [f for f in fetches if f.pending]
                if held:
                    fetches = held + [f for f in fetches if not f.pending]
                got = self._poll_chunks(fetches, limit, None, out)
            else:
                # All partitions, in assignment order (the C call goes round from the
                # rotating start); those read from segments or holding a chunk first,
                # for the same reason (the ring path never raises). While every one
                # stays in its ring, the split of the last poll holds.
                direct = self._direct
                chunked: list[_Fetch] = []
                if direct is None or self._direct_order is not self._order:
                    fetches = [self._fetches[tp] for tp in self._order]
                    chunked, direct = self._split_direct(fetches)
                    got = self._poll_chunks(chunked, limit, value_size, out)
                    if not chunked:
                        self._direct, self._direct_order = direct, self._order
                if direct and got < limit:
                    # Every partition is read in its ring: the same C call waits for
                    # any of them when all are caught up (no wait in Python).
                    wait_s = 0.0
                    if not chunked and n <= 128:
                        wait_s = min(deadline - time.monotonic(), 0.5)
                        if self._group is not None:
                            wait_s = min(wait_s, 0.05)  # rebalances are applied between waits
                    first = start % len(direct)
                    failed, n_values = self._ring_values(
                        direct, first, limit - got, value_size, out, wait_s
                    )
                    got += n_values
                    if failed:
                        got += self._poll_chunks(failed, limit - got, value_size, out)
            if got or (not self._fetches and self._group is None):
                return out
            if ready is not None:
                ready = None  # the woken partition had nothing after all: a full pass
                continue
            left = deadline - time.monotonic()
            if left <= 0:
                return out
            ready = self._wait(left)

    def _poll_chunks(
        self, fetches: list[_Fetch], limit: int, value_size: int | None, out: list[Any]
    ) -> int:
        """Deliver from each fetch's next chunk (decoded in Python) into out, up to limit;
        returns how many records or values it appended."""
        if fetches:
            self._direct = None  # these may move between the chunk path and their rings
        got = 0
        for f in fetches:
            if got >= limit:
                break
            try:
                data, at = self._next_chunk(f)
            except CorruptRecordError:
                if out:  # this poll already took records: deliver them, raise next time
                    return got
                raise
            if not data:
                continue
            try:
                if value_size is None:
                    records = self._take_records(f, data, at, limit - got)
                    out += records
                    got += len(records)
                else:
                    values = self._take_values(f, data, at, limit - got, value_size)
                    if len(values):
                        out.append(values)
                        got += len(values)
            except EngineError:
                # Nothing of the chunk was delivered: keep it, or the records after the
                # bad one would be skipped by the next poll.
                f.pending, f.pending_at = data, at
                if out:  # this poll already took records: deliver them, raise next time
                    return got
                raise
        return got

    def _wait(self, left: float) -> TopicPartition | None:
        """Wait until a partition is readable; it, or None (timed out, or look at all)."""
        active = [f for f in map(self._fetches.__getitem__, self._order) if not f.stalled]
        if not active:
            # An idle group member (look at the group again soon), or only stalled fetches.
            time.sleep(min(left, 0.05))
            return None
        waiting = [f for f in active if f.cursor is not None and not f.pending]
        if len(waiting) != len(active):
            return None  # something is read from segments: no waiting needed
        if self._group is not None:
            left = min(left, 0.05)  # rebalances are applied between waits
        if len(waiting) == 1:
            f = waiting[0]
            assert f.cursor is not None
            return f.tp if f.ring.wait(f.cursor, min(left, 0.5), spin_s=self.poll_spin_s) else None
        index = wait_any(
            [(f.ring, f.cursor) for f in waiting if f.cursor is not None],
            min(left, 0.5),
            spin_s=self.poll_spin_s,
        )
        return waiting[index].tp if index >= 0 else None

    def _next_chunk(self, f: _Fetch) -> tuple[bytes, int]:
        """The next whole batches to deliver from f, as (data, position in data): left
        over from the previous poll, or newly read."""
        if f.offset < 0 or f.out_of_range:
            self._reset(f)
        if f.pending:
            data, f.pending = f.pending, b""
            return data, f.pending_at
        if f.txn is not None:
            return self._next_committed(f), 0
        return self._read(f, f.offset), 0

    @staticmethod
    def _worth_reading(fetches: list[_Fetch]) -> list[_Fetch]:
        """The fetches a read may give something: one read from its ring only when the
        ring has anything at its cursor (one C call looks at them all: a poll of many
        partitions, most of them caught up, reads only the others); the rest always.
        Below READY_CHECK_MIN ring reads, reading them all costs less than the look
        (reference machine, poll() with nothing there: 16 partitions 34-56 -> 15-30 µs;
        4 partitions, one record: 13-20 µs either way without it, 16-32 with it)."""
        if len(fetches) < READY_CHECK_MIN:
            return fetches
        direct = [
            f for f in fetches
            if f.cursor is not None and f.txn is None and not f.pending
            and f.offset >= 0 and not f.out_of_range
        ]  # fmt: skip
        if len(direct) < READY_CHECK_MIN:
            return fetches
        ready = ready_many([(f.ring, f.cursor) for f in direct if f.cursor is not None])
        idle = {id(f) for f, r in zip(direct, ready, strict=True) if not r}
        return [f for f in fetches if id(f) not in idle] if idle else fetches

    @staticmethod
    def _split_direct(fetches: list[_Fetch]) -> tuple[list[_Fetch], list[_Fetch]]:
        """(fetches the chunk path serves, fetches read straight from their ring): the
        chunk path reads segments, holds pending or uncommitted data, resets."""
        chunked: list[_Fetch] = []
        direct: list[_Fetch] = []
        for f in fetches:
            if f.cursor is None or f.txn is not None or f.pending or f.offset < 0 or f.out_of_range:
                chunked.append(f)
            else:
                direct.append(f)
        return chunked, direct

    def _ring_values(
        self,
        fetches: list[_Fetch],
        first: int,
        limit: int,
        value_size: int,
        out: list[Any],
        wait_s: float = 0.0,
    ) -> tuple[list[_Fetch], int]:
        """poll_values' one-copy path: the values of every fetch read from its ring in
        one C call (from fetches[first] on around), decoded straight into one result
        array (appended to out). Returns the fetches the chunk path must serve after
        all (lapped, corrupt, a value of another size: it reads the segments or raises
        the error), and how many values were delivered. ``wait_s`` > 0: when every
        ring is caught up, wait that long for any of them in the same call."""
        chunked: list[_Fetch] = []
        room = max(1, min(limit, len(self._buf) // value_size))
        scratch = self._values_scratch
        if scratch is None or scratch.shape[1] != value_size or len(scratch) < room:
            rows = max(len(self._buf) // value_size, room)  # a value may exceed the buffer
            scratch = self._values_scratch = np.empty((rows, value_size), dtype=np.uint8)
        reader = self._values_reader
        if self._bound is not fetches:  # else bound by an earlier poll, offsets kept in C
            sources = []
            for f in fetches:
                assert f.cursor is not None  # as _split_direct found
                sources.append((f.ring, f.cursor, f.offset))
            reader.bind(sources)
            self._bound = fetches
        touched = reader.read(
            first, value_size, scratch, room, wait_s, self.poll_spin_s, self.check_crcs
        )
        if not touched:
            return chunked, 0
        codes, copied, offsets = reader.codes, reader.copied, reader.next_offsets
        n = 0
        for i in reader.touched[0:touched]:
            code = codes[i]
            if code == OK:
                fetches[i].offset = offsets[i]
                n += copied[i]
            elif code == SEALED:  # the leader's ring was replaced
                self._reopen(fetches[i])
            elif code != EMPTY:  # lapped, corrupt, a value of another size
                chunked.append(fetches[i])
        if n:
            if 4 * n < room:  # a few records: copied out, the scratch buffer stays
                out.append(scratch[:n].copy())
            else:  # many: the caller gets the buffer itself
                out.append(scratch[:n])
                self._values_scratch = None
        return chunked, n

    def _read(self, f: _Fetch, start: int) -> bytes:
        """Whole plain batches from the ring (at f.cursor, else from ``start``) or
        segments, up to the first that fails the checks or, compressed, does not
        decompress (module docstring). CorruptRecordError when that is the first one
        (and, failing the checks, no other copy exists)."""
        data = self._read_batches(f, start)
        if _first_compressed(data, len(data)) == len(data):  # the usual case: none is
            return data
        plain, failure = plain_chunk(data)
        if failure is None:
            return plain
        f.cursor = None  # the next read seeks to the batch that failed, by its offset
        if plain:
            return plain  # deliver these first
        raise self._corrupt(f, max(start, failure.base_offset), failure.describe())

    def _read_batches(self, f: _Fetch, start: int) -> bytes:
        """Whole batches, as stored, from the ring (at f.cursor, else from ``start``) or
        segments, up to the first that fails the checks (module docstring; C).
        CorruptRecordError when that is the first one and no other copy exists."""
        if f.cursor is None:
            f.cursor = f.ring.seek(start)
            if f.cursor is None:
                return self._chunk_from_log(f, start)
        while True:
            expected = f.cursor.offset
            try:
                code, n = f.ring.read(f.cursor, self._buf)
            except CorruptRecordError as exc:  # a frame failed the ring's own checks
                f.cursor = None  # the next read seeks to it again
                raise self._corrupt(f, expected, f"ring frame: {exc}") from exc
            if code == OK:
                data = bytes(memoryview(self._buf)[:n])
                bad = check_chunk(data, expected, crc=self.check_crcs, dense=False)
                if bad is None:
                    return data
                f.cursor = None  # the next read seeks to the bad batch, by its offset
                drained = bad.expected_offset < f.ring.status().drain_offset
                if drained:
                    # The log's copy passed its CRC check when the drain wrote it: the
                    # ring's was damaged in memory since. The next reads take the log's
                    # (a seek below the drain point goes there), checked too.
                    log.warning(
                        "a batch's copy in the ring fails its checks, reading the log's: "
                        "topic=%s partition=%d offset=%d problem=%s",
                        f.tp.topic, f.tp.partition, bad.expected_offset, bad.problem.what,
                    )  # fmt: skip
                if bad.position:
                    return data[: bad.position]  # deliver these first
                if drained:
                    return self._chunk_from_log(f, start)
                raise self._bad_batch(f, bad)  # the only copy (the drain fails on it too)
            if code == OUT_TOO_SMALL:
                self._buf = bytearray(max(n, 2 * len(self._buf)))
                continue
            if code == OVERWRITTEN:
                f.cursor = None
                return self._chunk_from_log(f, start)
            # EMPTY: caught up. A sealed ring means the leader's ring was replaced.
            if f.ring.sealed:
                self._reopen(f)
            return b""

    def _next_committed(self, f: _Fetch) -> bytes:
        """read_committed: feed f's filter until it releases batches or nothing more is
        readable; the position moves over what the filter dropped."""
        while True:
            txn = f.txn
            assert txn is not None
            if txn.buffered_bytes > MAX_UNDECIDED_BYTES:
                if not f.stalled:
                    f.stalled = True
                    log.warning(
                        "%s: read_committed stops fetching: undecided transactions hold "
                        "%d bytes from offset %d (limit %d); seek to fetch again",
                        f.tp, txn.buffered_bytes, f.offset, MAX_UNDECIDED_BYTES,
                    )  # fmt: skip
                return b""
            raw = self._read(f, txn.next_offset)
            txn = f.txn  # a new filter if _read reset f (and then raw is empty)
            assert txn is not None
            if raw:
                txn.feed(raw)
            data, end = txn.take()
            if data:
                f.pending_end = end
                return data
            f.offset = max(f.offset, end)
            if not raw:
                return b""

    def _chunk_from_log(self, f: _Fetch, start: int) -> bytes:
        status = f.ring.status()
        # Up to what the broker has drained, and never past the high watermark: a
        # leader just promoted drained, as a follower, records not yet committed.
        upper = min(status.drain_offset, status.readable_end)
        if start >= upper:
            return b""
        try:
            data = f.reader.read(start, self.fetch_max_bytes, upper)
        except OffsetOutOfRangeError:
            if self.auto_offset_reset == "none":
                raise
            self._reset(f)
            return b""
        except CorruptRecordError as exc:  # a segment's batch that does not even walk
            raise self._corrupt(f, start, f"segment: {exc}") from exc
        if not data:
            if f.reader.dense:  # every offset below the drain point is in a batch
                raise self._corrupt(f, start, f"no batch holds it, below offset {upper}")
            # Offsets below the drain point that no segment holds: a gap (a format-1 log).
            if f.txn is None:
                f.offset = upper
            else:
                f.txn.skip_to(upper)
            return self._checked(f, data, start, dense=f.reader.dense)
        checked = self._checked(f, data, start, dense=f.reader.dense)
        if checked:  # records and bytes out (metrics), as a read of the ring counts them
            infos, _, _ = scan_batches(checked, verify_crc=False)
            if len(infos):
                f.ring.count_read(int(infos["last_offset"][-1]) + 1 - start, len(checked))
        return checked

    def _checked(self, f: _Fetch, data: bytes, expected: int, dense: bool) -> bytes:
        """``data``, whole batches read at offset ``expected``, up to its first batch that
        fails the checks (module docstring; C); CorruptRecordError when that is the first.
        ``dense``: read from a log that fills skipped offsets (format 2)."""
        bad = check_chunk(data, expected, crc=self.check_crcs, dense=dense)
        if bad is None:
            return data
        if bad.position:
            return data[: bad.position]  # deliver these; the next read starts at the bad one
        raise self._bad_batch(f, bad)

    def _bad_batch(self, f: _Fetch, bad: BatchCheck) -> CorruptRecordError:
        stored = f"base_offset={bad.base_offset} last_offset={bad.last_offset}"
        return self._corrupt(f, bad.expected_offset, f"{bad.problem.what} ({stored})")

    @staticmethod
    def _corrupt(f: _Fetch, offset: int, what: str) -> CorruptRecordError:
        return CorruptRecordError(
            f"corrupt record batch, not delivered: topic={f.tp.topic} partition={f.tp.partition} "
            f"offset={offset}: {what}; every poll raises this until a seek moves past it "
            "(`engine verify` finds it in the logs and repairs it from an intact replica)",
            topic=f.tp.topic,
            partition=f.tp.partition,
            offset=offset,
        )

    def _take_records(self, f: _Fetch, data: bytes, at: int, limit: int) -> list[Record]:
        records, used = self._decoder.decode(
            data, f.tp.topic, f.tp.partition, f.offset, limit, at
        )
        if records:
            f.offset = records[-1].offset + 1
        if not records or (used >= len(data) and f.txn is None):
            self._skip_chunk(f, data, at, used)  # past trailing markers too
        self._keep(f, data, used if records else len(data))
        return records

    def _take_values(
        self, f: _Fetch, data: bytes, at: int, limit: int, value_size: int
    ) -> np.ndarray[Any, Any]:
        values, last, used = self._decoder.decode_values(
            data, f.tp.topic, f.tp.partition, f.offset, limit, value_size, at
        )
        if len(values):
            f.offset = last + 1
        if not len(values) or (used >= len(data) and f.txn is None):
            self._skip_chunk(f, data, at, used)  # past trailing markers too
        self._keep(f, data, used if len(values) else len(data))
        return values

    def _keep(self, f: _Fetch, data: bytes, used: int) -> None:
        """What a poll did not deliver stays for the next one (the position in data)."""
        if used < len(data):
            f.pending, f.pending_at = data, used
        elif f.txn is not None:
            f.offset = max(f.offset, f.pending_end)

    def _skip_chunk(self, f: _Fetch, data: bytes, at: int, used: int) -> None:
        """The position moves past the chunk: one without a record to deliver (markers
        only, or only records below the position) would be read again; one whose last
        batches are markers would leave the position before them while the ring
        cursor is past them. When the decode just made walked the whole chunk
        (``used``), its end offset says where the chunk ends; else a scan does."""
        end = self._decoder.end_offset if used >= len(data) else -1
        if end < 0:
            infos, _, _ = scan_batches(memoryview(data)[at:], False)
            if len(infos):
                end = int(infos["last_offset"][-1]) + 1
        f.offset = max(f.offset, end)

    def _reopen(self, f: _Fetch) -> None:
        try:
            view = self._cluster.refresh(f.tp.topic)
        except EngineError:
            return
        if view.leader(f.tp.partition) is None:
            return
        fresh = self._open(f.tp, {f.tp.topic})  # just looked up
        fresh.offset = f.offset
        self._restart(fresh)  # (which drops poll_values' plan)
        self._fetches[f.tp] = fresh

    # -- iteration and lifecycle -------------------------------------------

    def __iter__(self) -> Iterator[Record]:
        idle_since = time.monotonic()
        while True:
            records = self.poll(timeout=0.5)
            if records:
                idle_since = time.monotonic()
                yield from records
            elif (time.monotonic() - idle_since) * 1000 >= self.consumer_timeout_ms:
                return

    def _leave_group(self) -> None:
        """Commit (with auto-commit), run on_revoke, leave the group (if in one)."""
        g = self._group
        if g is None:
            return
        try:
            if os.getpid() == self._pid:
                if self.enable_auto_commit and not g.lost:
                    self._auto_commit()
                self._callback(self.on_revoke, set(g.owned))
        finally:
            self._group = None
            if os.getpid() == self._pid:
                g.close()

    def close(self) -> None:
        """Commit (with auto-commit), leave the group (the others rebalance at once), stop."""
        if self._closed:
            return
        try:
            self._leave_group()
        finally:
            self._closed = True
            for f in self._fetches.values():
                f.reader.close()  # its segment files
            self._fetches.clear()
            self._cluster.close()

    def __enter__(self) -> Consumer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
