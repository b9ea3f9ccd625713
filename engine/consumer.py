"""The consumer: reads partitions straight from the leaders' rings, and from segments.

For each assigned partition the consumer keeps the next offset to deliver and,
while it reads from shared memory, a ring cursor. Records still in the ring
(not yet drained by the broker, or drained but not yet overwritten) are copied
out of it; older records are read from the leader's segment files by mmap,
through the same ``poll()``. A consumer that has caught up sleeps on the ring's
futex and wakes within microseconds of an append.

A Consumer is used by one thread. After ``close()`` every method raises
ClosedError. Consumer groups (``group_id``, committed offsets) arrive with their
own issue; until then ``subscribe`` assigns every partition of the topics.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from engine.cluster import ClusterView
from engine.errors import (
    ClosedError,
    ConfigError,
    EngineError,
    OffsetOutOfRangeError,
    PartitionOutOfRangeError,
)
from engine.log import LogReader
from engine.record import Record, RecordDecoder, TopicPartition
from engine.ring import OK, OUT_TOO_SMALL, OVERWRITTEN, Cursor, Ring, wait_any

_RESETS = ("earliest", "latest", "none")


@dataclass
class _Fetch:
    """Fetch state of one assigned partition."""

    tp: TopicPartition
    ring: Ring
    reader: LogReader
    offset: int = -1  # next offset to deliver; -1 = reset by policy on first poll
    cursor: Cursor | None = None
    pending: bytes = b""
    out_of_range: bool = field(default=False)


class Consumer:
    """Reads records from assigned partitions (kafka-python's names and habits)."""

    def __init__(
        self,
        *topics: str,
        data_dir: str | os.PathLike[str] | None = None,
        group_id: str | None = None,
        auto_offset_reset: str = "latest",
        max_poll_records: int = 500,
        fetch_max_bytes: int = 1 << 20,
        consumer_timeout_ms: float = float("inf"),
        client_id: str | None = None,
        **unknown: Any,
    ) -> None:
        if unknown:
            raise ConfigError(f"unknown consumer option: {sorted(unknown)[0]!r}")
        if group_id is not None:
            raise ConfigError(
                "consumer groups are not available yet (they come with the consumer-group "
                "issue): use assign() or subscribe() without group_id"
            )
        if auto_offset_reset not in _RESETS:
            raise ConfigError(
                f"auto_offset_reset must be one of {_RESETS}: "
                f"auto_offset_reset={auto_offset_reset!r}"
            )
        if not isinstance(max_poll_records, int) or max_poll_records < 1:
            raise ConfigError(
                f"max_poll_records must be >= 1: max_poll_records={max_poll_records!r}"
            )
        self.auto_offset_reset = auto_offset_reset
        self.max_poll_records = max_poll_records
        self.fetch_max_bytes = fetch_max_bytes
        self.consumer_timeout_ms = consumer_timeout_ms
        self.client_id = client_id or f"consumer-{os.getpid()}"
        self._cluster = ClusterView(data_dir)
        self._fetches: dict[TopicPartition, _Fetch] = {}
        self._order: list[TopicPartition] = []
        self._next = 0
        self._buf = bytearray(max(fetch_max_bytes, 1 << 16))
        self._decoder = RecordDecoder(max(max_poll_records, 16384))
        self._closed = False
        self._pid = os.getpid()
        if topics:
            self.subscribe(list(topics))

    # -- assignment --------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError("consumer is closed")
        if os.getpid() != self._pid:
            raise ClosedError("consumer was created in another process: create one per process")

    def subscribe(self, topics: Iterable[str]) -> None:
        """Without a group: assign every partition of the topics."""
        self._check_open()
        tps = []
        for topic in topics:
            view = self._cluster.topic(topic)
            tps += [TopicPartition(topic, p) for p in range(view.partition_count)]
        self.assign(tps)

    def assign(self, partitions: Iterable[TopicPartition]) -> None:
        self._check_open()
        new: dict[TopicPartition, _Fetch] = {}
        for tp in partitions:
            tp = TopicPartition(*tp)
            if tp in self._fetches:
                new[tp] = self._fetches[tp]
                continue
            new[tp] = self._open(tp)
        self._fetches = new
        self._order = list(new)

    def _open(self, tp: TopicPartition) -> _Fetch:
        view = self._cluster.topic(tp.topic)
        if not (isinstance(tp.partition, int) and 0 <= tp.partition < view.partition_count):
            raise PartitionOutOfRangeError(
                f"partition out of range: topic={tp.topic!r} partition={tp.partition!r} "
                f"partitions={view.partition_count}"
            )
        leader = view.leader(tp.partition)
        assert leader is not None
        directory = self._cluster.data_dir.partition_dir(leader, tp.topic, tp.partition)
        return _Fetch(tp, view.rings[tp.partition], LogReader(directory))

    def assignment(self) -> set[TopicPartition]:
        return set(self._fetches)

    def _fetch(self, tp: TopicPartition) -> _Fetch:
        try:
            return self._fetches[TopicPartition(*tp)]
        except KeyError:
            raise ConfigError(f"partition is not assigned to this consumer: {tp}") from None

    # -- positions ---------------------------------------------------------

    def beginning_offsets(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: self._fetch(tp).reader.log_start_offset for tp in partitions}

    def end_offsets(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: self._fetch(tp).ring.status().tail_offset for tp in partitions}

    def seek(self, partition: TopicPartition, offset: int) -> None:
        self._check_open()
        if not isinstance(offset, int) or offset < 0:
            raise ConfigError(f"offset must be a non-negative int: offset={offset!r}")
        f = self._fetch(partition)
        f.offset, f.cursor, f.pending = offset, None, b""
        start, end = f.reader.log_start_offset, f.ring.status().tail_offset
        f.out_of_range = not start <= offset <= end

    def seek_to_beginning(self, *partitions: TopicPartition) -> None:
        for tp in partitions or tuple(self._fetches):
            f = self._fetch(tp)
            self.seek(tp, f.reader.log_start_offset)

    def seek_to_end(self, *partitions: TopicPartition) -> None:
        for tp in partitions or tuple(self._fetches):
            self.seek(tp, self._fetch(tp).ring.status().tail_offset)

    def position(self, partition: TopicPartition) -> int:
        f = self._fetch(partition)
        if f.offset < 0:
            self._reset(f)
        return f.offset

    def _reset(self, f: _Fetch) -> None:
        if self.auto_offset_reset == "none":
            raise OffsetOutOfRangeError(
                f"no valid position for {f.tp} (offset {f.offset}) and auto_offset_reset='none'"
            )
        if self.auto_offset_reset == "earliest":
            f.offset = f.reader.log_start_offset
        else:
            f.offset = f.ring.status().tail_offset
        f.cursor, f.pending, f.out_of_range = None, b"", False

    # -- fetching ----------------------------------------------------------

    def poll(self, timeout: float = 0.0, max_records: int | None = None) -> list[Record]:
        """Records from the assigned partitions, waiting up to ``timeout`` seconds for any."""
        return self._poll(timeout, max_records, None)

    def poll_values(
        self, value_size: int, timeout: float = 0.0, max_records: int | None = None
    ) -> list[np.ndarray[Any, Any]]:
        """The fast path for fixed-size records: values only, as numpy arrays.

        Returns a list of ``(n, value_size)`` uint8 arrays (one per fetched chunk; view
        them as your record dtype). Every value must be exactly ``value_size`` bytes
        (CorruptRecordError otherwise). Positions advance exactly as with poll().
        """
        if value_size < 1:
            raise ConfigError(f"value_size must be >= 1: value_size={value_size!r}")
        return self._poll(timeout, max_records, value_size)

    def _poll(self, timeout: float, max_records: int | None, value_size: int | None) -> list[Any]:
        self._check_open()
        limit = max_records or self.max_poll_records
        deadline = time.monotonic() + timeout
        while True:
            out: list[Any] = []
            got = 0
            n = len(self._order)
            for i in range(n):
                if got >= limit:
                    break
                f = self._fetches[self._order[(self._next + i) % n]]
                data = self._next_chunk(f)
                if not data:
                    continue
                if value_size is None:
                    records = self._take_records(f, data, limit - got)
                    out += records
                    got += len(records)
                else:
                    values = self._take_values(f, data, limit - got, value_size)
                    if len(values):
                        out.append(values)
                        got += len(values)
            if n:
                self._next = (self._next + 1) % n
            if got or n == 0:
                return out
            left = deadline - time.monotonic()
            if left <= 0:
                return out
            self._wait(left)

    def _wait(self, left: float) -> None:
        waiting = [f for f in self._fetches.values() if f.cursor is not None and not f.pending]
        if len(waiting) != len(self._fetches) or not waiting:
            return  # something is read from segments: no waiting needed
        if len(waiting) == 1:
            f = waiting[0]
            assert f.cursor is not None
            f.ring.wait(f.cursor, min(left, 0.5))
            return
        wait_any([(f.ring, f.cursor) for f in waiting if f.cursor is not None], min(left, 0.5))

    def _next_chunk(self, f: _Fetch) -> bytes:
        """The next bytes of whole batches for f: left over, from the ring, or from segments."""
        if f.offset < 0 or f.out_of_range:
            self._reset(f)
        if f.pending:
            data, f.pending = f.pending, b""
            return data
        if f.cursor is None:
            f.cursor = f.ring.seek(f.offset)
            if f.cursor is None:
                return self._chunk_from_log(f)
        while True:
            code, n = f.ring.read(f.cursor, self._buf)
            if code == OK:
                return bytes(memoryview(self._buf)[:n])
            if code == OUT_TOO_SMALL:
                self._buf = bytearray(max(n, 2 * len(self._buf)))
                continue
            if code == OVERWRITTEN:
                f.cursor = None
                return self._chunk_from_log(f)
            # EMPTY: caught up. A sealed ring means the leader's ring was replaced.
            if f.ring.status().sealed:
                self._reopen(f)
            return b""

    def _chunk_from_log(self, f: _Fetch) -> bytes:
        upper = f.ring.status().drain_offset
        if f.offset >= upper:
            return b""
        try:
            data = f.reader.read(f.offset, self.fetch_max_bytes, upper)
        except OffsetOutOfRangeError:
            if self.auto_offset_reset == "none":
                raise
            self._reset(f)
            return b""
        if not data:
            f.offset = upper  # offsets below the drain point that no segment holds: a gap
        return data

    def _take_records(self, f: _Fetch, data: bytes, limit: int) -> list[Record]:
        records, consumed = self._decoder.decode(data, f.tp.topic, f.tp.partition, f.offset, limit)
        if records:
            f.offset = records[-1].offset + 1
        f.pending = data[consumed:] if records and consumed < len(data) else b""
        return records

    def _take_values(
        self, f: _Fetch, data: bytes, limit: int, value_size: int
    ) -> np.ndarray[Any, Any]:
        values, last, consumed = self._decoder.decode_values(
            data, f.tp.topic, f.tp.partition, f.offset, limit, value_size
        )
        if len(values):
            f.offset = last + 1
        f.pending = data[consumed:] if len(values) and consumed < len(data) else b""
        return values

    def _reopen(self, f: _Fetch) -> None:
        try:
            view = self._cluster.refresh(f.tp.topic)
        except EngineError:
            return
        if view.leader(f.tp.partition) is None:
            return
        fresh = self._open(f.tp)
        fresh.offset = f.offset
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

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._fetches.clear()
        self._cluster.close()

    def __enter__(self) -> Consumer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
