"""The partition ring: a shared-memory log buffer that producers append to directly.

This module is the one boundary between Python and the ring's C hot path
(native/ring.h): every C return code becomes a Python outcome here, through
``_RAISE``. The ring's layout and publication protocol are drawn in ring.h.

A :class:`Ring` holds one mapping of one POSIX shared-memory object. It may be
used by one thread at a time per object (create one per thread if needed);
any number of processes may map the same ring at once. A ring object knows the
pid that opened it: in a forked child it refuses to be used and its finalizer
does nothing, so a child never unmaps its parent's view.

Crash behaviour: the ring lives in shared memory, so it survives the death of
any process that maps it but not a reboot; the broker drains it into segment
files, which are the durable copy.

Ownership: ring names are predictable, so another local user could make one
first. A ring is created exclusively (O_CREAT|O_EXCL) and set to mode 0600 whatever
the umask, and no process maps a ring that is not owned by its own uid with a mode
that grants group and others nothing: :class:`RingPermissionError` instead.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import posix_ipc

from engine._native import ffi, lib
from engine.errors import (
    BufferFullError,
    ClosedError,
    ConfigError,
    CorruptRecordError,
    EngineError,
    EngineTimeoutError,
    FencedError,
    NativeError,
    NotEnoughReplicasError,
    NotLeaderError,
    ProducerFencedError,
    RecordTooLargeError,
    RingPermissionError,
    TransactionError,
)

#: Where Linux keeps POSIX shared-memory objects: /dev/shm/<name without its slash>.
SHM_DIR = "/dev/shm"
HEADER_LENGTH: int = lib.ENGINE_RING_HEADER_LENGTH
FRAME_HEADER_LENGTH: int = lib.ENGINE_FRAME_HEADER_LENGTH
BATCH_HEADER_LENGTH: int = lib.ENGINE_BATCH_HEADER_LENGTH
MIN_CAPACITY: int = lib.ENGINE_RING_MIN_CAPACITY
MAX_CAPACITY: int = lib.ENGINE_RING_MAX_CAPACITY

# Map every page up front: no page fault on the hot path (the ring is touched anyway).
# Who only reads the header (an Admin, a leader watching its followers' rings) maps
# lazily: populating a 64 MiB ring's page tables costs 5-12 ms here, a lazy map 0.05.
_MAP_LAZY = mmap.MAP_SHARED
_MAP_FLAGS = _MAP_LAZY | getattr(mmap, "MAP_POPULATE", 0)

# Codes from enum engine_ring_code (ring.h).
OK, EMPTY, TIMEOUT, FULL, OVERWRITTEN, TOO_LARGE, FENCED, SEALED, REAPED, BELOW = range(10)
BAD_ARGUMENT, OUT_TOO_SMALL, CORRUPT, NOT_ENOUGH_REPLICAS = 10, 11, 12, 13
PRODUCER_FENCED, TABLE_FULL, VALUE_SIZE = 14, 15, 16
# Counts forks in this process's line: a mapping made before a fork belongs to the
# parent (its child must map the ring again). Cheaper than os.getpid() per call.
_fork_generation = [0]


def _forked() -> None:
    _fork_generation[0] += 1


os.register_at_fork(after_in_child=_forked)


def fork_generation() -> int:
    """Forks in this process's line so far: an object made at another value was made by
    another process (a parent). A cheap stand-in for comparing os.getpid()."""
    return _fork_generation[0]


class _OutParams(threading.local):
    """The C calls' out-parameters, one set per thread: threads may share a Ring."""

    def __init__(self) -> None:
        self.status = ffi.new("engine_ring_status_t *")
        self.count = ffi.new("int32_t *")
        self.length = ffi.new("uint64_t *")


_out = _OutParams()

#: The most followers engine_replica_track looks after (wait_any's limit, less the leader).
MAX_FOLLOWERS = 127
NO_LIMIT = (1 << 63) - 1  # read past the high watermark (followers copying a leader)

_RAISE: dict[int, type[Exception]] = {
    TIMEOUT: EngineTimeoutError,
    FULL: BufferFullError,
    TOO_LARGE: RecordTooLargeError,
    FENCED: FencedError,
    SEALED: NotLeaderError,
    CORRUPT: CorruptRecordError,
    NOT_ENOUGH_REPLICAS: NotEnoughReplicasError,
    BAD_ARGUMENT: NativeError,
    PRODUCER_FENCED: ProducerFencedError,
    TABLE_FULL: TransactionError,
}

_MESSAGES: dict[int, str] = {
    FULL: "partition ring stayed full for max_block_ms: the broker has not drained it",
    TOO_LARGE: "record batch exceeds the ring's max frame length",
    FENCED: "append carried a stale leader epoch",
    SEALED: "this replica is no longer the partition leader",
    CORRUPT: "ring frame failed its shape checks",
    TIMEOUT: "wait timed out",
    NOT_ENOUGH_REPLICAS: "fewer in-sync replicas than min.insync.replicas; nothing was written",
    BAD_ARGUMENT: "the ring refused the arguments",
    PRODUCER_FENCED: (
        "a newer producer initialised the same transactional id: this producer is fenced "
        "and nothing it sent now was written"
    ),
    TABLE_FULL: "the partition already fences 64 transactional producer ids",
}


def raise_for(code: int, what: str) -> None:
    """Turn a non-OK code into its exception, naming ``what`` was attempted."""
    cls = _RAISE.get(code)
    if cls is None:
        raise NativeError(f"unexpected ring code: code={code} during={what}")
    raise cls(f"{_MESSAGES[code]}: {what}")


@dataclass(frozen=True)
class RingStatus:
    """A snapshot of a ring's cursors (see engine_ring_status_t)."""

    capacity: int
    tail_position: int
    tail_offset: int
    drain_position: int
    drain_offset: int
    base_offset: int
    leader_epoch: int
    sealed: bool
    high_watermark: int
    isr_count: int
    reaped_frames: int
    full_waits: int
    #: Offsets and frame bytes consumers read from this ring (the metrics' "out";
    #: followers' copies and reads of the segment files are not counted).
    read_offsets: int = 0
    read_bytes: int = 0

    @property
    def readable_end(self) -> int:
        """Where consumers' reading ends: the high watermark, or the log end (the next
        offset to be claimed) when the partition is not replicated."""
        return self.tail_offset if self.high_watermark < 0 else self.high_watermark


class Cursor:
    """A reader's place in a ring: next frame position and next expected offset."""

    __slots__ = ("_c",)

    def __init__(self, position: int = 0, offset: int = 0) -> None:
        self._c = ffi.new("engine_cursor_t *")
        self._c.position = position
        self._c.offset = offset

    @property
    def position(self) -> int:
        return int(self._c.position)

    @property
    def offset(self) -> int:
        return int(self._c.offset)

    def __repr__(self) -> str:
        return f"Cursor(position={self.position}, offset={self.offset})"


def _np_int32(seq: Sequence[int]) -> Any:
    return np.ascontiguousarray(seq, dtype=np.int32)


class Ring:
    """One mapping of a partition ring.

    Holds the shared-memory object's mapping and a pointer the C calls use.
    Invariants: ``self._region`` is valid until :meth:`close`; after close every
    method raises :class:`ClosedError`. Appends are safe from any number of
    processes at once; reads never block writers.
    """

    def __init__(self, name: str, mapping: mmap.mmap, owner: bool) -> None:
        self.name = name
        self._map: mmap.mmap | None = mapping
        self._region: Any = ffi.from_buffer(mapping)
        self._generation = _fork_generation[0]
        self._owner = owner
        # read()'s last output buffer and its C view, as one tuple (threads may share
        # a Ring): readers pass the same buffer poll after poll, and making the view
        # costs a microsecond each time.
        self._read_cache: tuple[Any, Any] | None = None

    # -- lifecycle ---------------------------------------------------------

    @classmethod
    def create(
        cls,
        name: str,
        capacity: int,
        *,
        base_offset: int = 0,
        max_frame_length: int | None = None,
        leader_epoch: int = 0,
        stall_timeout_ns: int = 500_000_000,
        replace: bool = False,
        sealed: bool = False,
    ) -> Ring:
        """Create the shared-memory ring ``name``, mode 0600, exclusively: FileExistsError
        when it exists, RingPermissionError when another user made it. ``replace``
        removes an existing one first (RingPermissionError when that is another user's
        and this process may not remove it: it is neither root nor the owner)."""
        if capacity < MIN_CAPACITY or capacity > MAX_CAPACITY or capacity & (capacity - 1):
            raise ConfigError(
                f"ring capacity must be a power of two in [{MIN_CAPACITY}, {MAX_CAPACITY}]: "
                f"capacity={capacity}"
            )
        if max_frame_length is None:
            max_frame_length = min(capacity // 2, 8 * 1024 * 1024)
        smallest = FRAME_HEADER_LENGTH + BATCH_HEADER_LENGTH + 16  # engine_ring_init's bound
        if not smallest <= max_frame_length <= capacity // 2:
            raise ConfigError(
                f"ring max_frame_length must be in [{smallest}, capacity / 2]: "
                f"max_frame_length={max_frame_length} capacity={capacity}"
            )
        if replace:
            unlink(name)
        length = int(lib.engine_ring_region_length(capacity))
        try:
            shm = posix_ipc.SharedMemory(name, posix_ipc.O_CREX, mode=0o600, size=length)
        except posix_ipc.ExistentialError:
            _check_private(name)  # made by another user meanwhile: say so
            raise FileExistsError(f"partition ring exists already: name={name}") from None
        try:
            os.fchmod(shm.fd, 0o600)  # the umask may have taken the owner's bits too
            mapping = mmap.mmap(shm.fd, length, flags=_MAP_FLAGS)
        finally:
            shm.close_fd()
        ring = cls(name, mapping, owner=True)
        code = lib.engine_ring_init(
            ring._region,
            length,
            capacity,
            max_frame_length,
            base_offset,
            stall_timeout_ns,
            leader_epoch,
            1 if sealed else 0,
        )
        if code != OK:
            ring.close()
            unlink(name)
            raise ConfigError(
                f"ring parameters rejected: name={name} capacity={capacity} "
                f"max_frame_length={max_frame_length} base_offset={base_offset}"
            )
        return ring

    @classmethod
    def open(cls, name: str, *, populate: bool = True) -> Ring:
        """Map an existing ring; raises FileNotFoundError when there is none, and
        RingPermissionError when it is not this uid's own with mode 0600.

        ``populate=False`` maps it without faulting every page in: for who reads
        only the header (status, sealing, the high watermark)."""
        try:
            shm = posix_ipc.SharedMemory(name)
        except posix_ipc.ExistentialError as exc:
            raise FileNotFoundError(f"no partition ring: name={name}") from exc
        except posix_ipc.PermissionsError:  # another user's, mode 0600
            _check_private(name)
            raise RingPermissionError(f"partition ring cannot be opened: name={name}") from None
        try:
            _check_private(name, shm.fd)
            size = shm.size
            if size < HEADER_LENGTH:  # its creator has not sized it yet
                raise FileNotFoundError(f"partition ring not ready: name={name}")
            mapping = mmap.mmap(shm.fd, size, flags=_MAP_FLAGS if populate else _MAP_LAZY)
        finally:
            shm.close_fd()
        ring = cls(name, mapping, owner=False)
        # A check during the creator's formatting fails (the version word is stored
        # last); only a check that fails with the version word set means corruption.
        for _ in range(3):
            if lib.engine_ring_check(ring._region, size) == OK:
                return ring
            version = int.from_bytes(mapping[0:4], "little")
            if version == 0:
                ring.close()
                raise FileNotFoundError(f"partition ring not ready: name={name}")
        ring.close()
        raise CorruptRecordError(
            f"not an engine ring of version {lib.ENGINE_RING_VERSION}: name={name} "
            f"version={version} (one of another engine version is replaced by its broker "
            "when the daemon starts)"
        )

    def close(self) -> None:
        """Unmap; idempotent. In a forked child this does nothing to the parent's view."""
        if self._map is None:
            return
        if self._generation != _fork_generation[0]:
            self._map = None
            return
        self._read_cache = None
        ffi.release(self._region)
        self._map.close()
        self._map = None

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # never raise from a finalizer
            self.close()

    def __enter__(self) -> Ring:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        return self._map is None

    def _ptr(self) -> Any:
        if self._map is None:
            raise ClosedError(f"ring is closed: name={self.name}")
        if self._generation != _fork_generation[0]:
            raise ClosedError(f"ring was opened by another process: name={self.name}")
        return self._region

    # -- producers ---------------------------------------------------------

    def append(
        self,
        fields: Any,
        value: bytes | None,
        key: bytes | None = None,
        headers: bytes = b"",
        header_count: int = 0,
        timestamp_ms: int | None = None,
        timeout_ms: int = 60_000,
    ) -> int:
        """Append one record; return its offset. ``fields`` is an engine_producer_fields_t*."""
        region = self._ptr()
        ts = int(time.time() * 1000) if timestamp_ms is None else timestamp_ms
        while True:
            result = lib.engine_ring_append(
                region,
                fields,
                ts,
                ffi.NULL if key is None else key,
                -1 if key is None else len(key),
                ffi.NULL if value is None else value,
                -1 if value is None else len(value),
                headers,
                len(headers),
                header_count,
                timeout_ms * 1_000_000,
            )
            if result >= 0:
                return int(result)
            if result != -REAPED:
                raise_for(-result, f"append to ring {self.name}")

    def append_records(
        self,
        fields: Any,
        values: Any,
        value_lengths: Any = None,
        value_stride: int = 0,
        keys: Any = None,
        key_lengths: Any = None,
        key_stride: int = 0,
        headers: Any = None,
        header_lengths: Any = None,
        header_counts: Any = None,
        timestamps_ms: Any = None,
        timestamp_ms: int | None = None,
        timeout_ms: int = 60_000,
        offsets: Any = None,
    ) -> tuple[int, int]:
        """Append many records in as few batches as fit: ``(code, appended)``, the ring's
        code (OK, or what stopped it) and how many records are appended (those of an
        error part way stay appended). Never raises for a ring code.

        values: a bytes-like blob of values back to back, with value_lengths (int32
        array, -1 for a null value) or a fixed value_stride. keys likewise (None: null
        keys). headers (None: none): each record's encoded headers back to back, with
        header_lengths and header_counts (int32 arrays). timestamps_ms: an int64 array,
        or None for timestamp_ms (default: now) on every record. offsets: an optional
        int64 array that receives every appended record's offset.
        """
        region = self._ptr()
        count = (
            len(value_lengths)
            if value_lengths is not None
            else (len(values) // value_stride if value_stride else 0)
        )
        if timestamps_ms is not None:
            timestamps_ms = np.ascontiguousarray(timestamps_ms, dtype=np.int64)
        ts = int(time.time() * 1000) if timestamp_ms is None else timestamp_ms
        vl = _np_int32(value_lengths) if value_lengths is not None else None
        kl = _np_int32(key_lengths) if key_lengths is not None else None
        hl = _np_int32(header_lengths) if headers is not None else None
        hc = _np_int32(header_counts) if headers is not None else None
        code = lib.engine_ring_append_batch(
            region,
            fields,
            ts,
            ffi.NULL if timestamps_ms is None else ffi.from_buffer("int64_t[]", timestamps_ms),
            count,
            ffi.NULL if keys is None else ffi.from_buffer(keys),
            ffi.NULL if kl is None else ffi.from_buffer("int32_t[]", kl),
            key_stride,
            ffi.from_buffer(values),
            ffi.NULL if vl is None else ffi.from_buffer("int32_t[]", vl),
            value_stride,
            ffi.NULL if headers is None else ffi.from_buffer(headers),
            ffi.NULL if hl is None else ffi.from_buffer("int32_t[]", hl),
            ffi.NULL if hc is None else ffi.from_buffer("int32_t[]", hc),
            timeout_ms * 1_000_000,
            ffi.NULL if offsets is None else ffi.from_buffer("int64_t[]", offsets),
            _out.count,
        )
        return int(code), int(_out.count[0])

    def append_encoded(self, fields: Any, builder: Any, timeout_ms: int) -> int:
        """Append the records of a BatchBuilder (engine._send) as one batch behind a
        header written here: its base offset (the records' offsets follow), or minus a
        ring code."""
        if builder.count < 1:
            return -BAD_ARGUMENT
        return int(
            lib.engine_ring_append_encoded(
                self._ptr(), fields, ffi.from_buffer(builder), builder.size, builder.count,
                builder.base_timestamp, builder.max_timestamp, timeout_ms * 1_000_000,
            )
        )  # fmt: skip

    def append_client(self, fields: Any, batch: Any, timeout_ms: int) -> int:
        """Append a Kafka client's batch as it came (engine_ring_append_client): its
        base offset, or minus a ring code. ``batch`` is one whole magic-2 batch whose
        CRC the caller checked."""
        return int(
            lib.engine_ring_append_client(
                self._ptr(), fields, ffi.from_buffer(batch), len(batch), timeout_ms * 1_000_000
            )
        )

    def append_batch(
        self,
        fields: Any,
        values: Any,
        value_lengths: Any = None,
        value_stride: int = 0,
        keys: Any = None,
        key_lengths: Any = None,
        key_stride: int = 0,
        timestamps_ms: Any = None,
        timestamp_ms: int | None = None,
        timeout_ms: int = 60_000,
        offsets: Any = None,
    ) -> int:
        """:meth:`append_records` without headers that raises the ring's error (its
        ``appended`` says how many records landed first); returns how many were
        appended."""
        code, appended = self.append_records(
            fields, values, value_lengths, value_stride, keys, key_lengths, key_stride,
            timestamps_ms=timestamps_ms, timestamp_ms=timestamp_ms, timeout_ms=timeout_ms,
            offsets=offsets,
        )  # fmt: skip
        if code != OK:
            count = len(value_lengths) if value_lengths is not None else -1
            try:
                raise_for(code, f"append_batch to ring {self.name} after {appended} of {count}")
            except EngineError as exc:
                exc.appended = appended
                raise
        return appended

    # -- readers -----------------------------------------------------------

    def read(self, cursor: Cursor, out: Any, max_offset: int = -1) -> tuple[int, int]:
        """Copy whole published batches at the cursor into ``out`` (a writable buffer).

        The ring keeps a view of the last ``out`` until another is passed or it
        closes: meanwhile a bytearray passed here cannot change size. Threads may
        share a Ring, each with its own ``out``.

        Returns (code, length): code is OK, EMPTY, OVERWRITTEN or OUT_TOO_SMALL (then
        length is the size the next batch needs). Advances the cursor on OK.
        """
        region = self._ptr()
        cached = self._read_cache
        if cached is not None and cached[0] is out:
            buf = cached[1]
        else:  # the view of the older buffer goes when no thread uses it any more
            buf = ffi.from_buffer(out, require_writable=True)
            self._read_cache = (out, buf)
        code = lib.engine_ring_read(region, cursor._c, buf, len(buf), _out.length, max_offset)
        if code in (OK, EMPTY, OVERWRITTEN, OUT_TOO_SMALL):
            return code, int(_out.length[0]) if code in (OK, OUT_TOO_SMALL) else 0
        raise_for(code, f"read ring {self.name} at {cursor}")
        raise AssertionError("unreachable")

    def peek(self, cursor: Cursor, max_offset: int, max_bytes: int, infos: Any) -> int:
        """The drain's read, in place: describe the published batches at the cursor in
        ``infos`` (a numpy array of engine_batch_info_t rows; positions count from
        :attr:`data`), each checked (shape and CRC), up to ``max_offset`` (-1: the high
        watermark), ``max_bytes`` (at least one batch) and ``len(infos)`` batches, and
        move the cursor past them; returns how many (0: none yet). Raises
        CorruptRecordError when the next frame fails its checks. Only the owner of the
        drain cursor may peek: its batches stay until it moves the drain cursor."""
        code = lib.engine_ring_peek(
            self._ptr(), cursor._c, max_offset, max_bytes,
            ffi.from_buffer("engine_batch_info_t[]", infos), len(infos), _out.count,
        )  # fmt: skip
        if code == EMPTY:
            return 0
        if code != OK:
            raise_for(code, f"drain ring {self.name} at {cursor}")
        return int(_out.count[0])

    @property
    def data(self) -> Any:
        """A pointer (cffi) to the ring's data area, which :meth:`peek` positions index."""
        return ffi.cast("uint8_t *", self._ptr()) + HEADER_LENGTH

    def wait(
        self, cursor: Cursor, timeout_s: float, respect_hw: bool = True, spin_s: float = 0.0
    ) -> bool:
        """Block until the frame at the cursor is readable; False on timeout.

        respect_hw: records at or above the high watermark do not count (consumers);
        a follower copying its leader passes False. spin_s: look again and again for
        this long before sleeping (see engine_ring_wait).
        """
        code = lib.engine_ring_wait(
            self._ptr(), cursor._c, int(timeout_s * 1e9), respect_hw, int(spin_s * 1e9)
        )
        return bool(code == OK)

    # -- replication -------------------------------------------------------

    def append_raw(self, batches: Any, timeout_ms: int = 60_000) -> None:
        """Append a leader's batches as they are, offsets kept (a follower's fetcher)."""
        code = lib.engine_ring_append_raw(
            self._ptr(), ffi.from_buffer(batches), len(batches), timeout_ms * 1_000_000
        )
        if code != OK:
            raise_for(code, f"append_raw to ring {self.name}")

    def advance(self, cursor: Cursor) -> None:
        """Move the cursor over every published frame (cursor.offset: published log end)."""
        lib.engine_ring_advance(self._ptr(), cursor._c)

    def wait_high_watermark(self, offset: int, timeout_s: float) -> int:
        """Wait until the high watermark passes offset: OK, TIMEOUT or SEALED."""
        return int(lib.engine_ring_wait_high_watermark(self._ptr(), offset, int(timeout_s * 1e9)))

    def wake(self) -> None:
        """Wake every thread and process waiting on this ring (they look again)."""
        lib.engine_ring_wake(self._ptr())

    def wait_full(self, full_waits_seen: int, timeout_s: float) -> bool:
        """The drain's sleep between passes: up to ``timeout_s``, over as soon as a
        producer finds the ring full (``status().full_waits`` is no longer
        ``full_waits_seen``) or :meth:`wake` is called. True when woken so."""
        return bool(
            lib.engine_ring_wait_full(self._ptr(), full_waits_seen, int(timeout_s * 1e9)) == OK
        )

    def fence(self, producer_id: int, epoch: int) -> None:
        """Refuse, from now on, appends of producer_id with an epoch below ``epoch``."""
        code = lib.engine_ring_fence(self._ptr(), producer_id, epoch)
        if code != OK:
            raise_for(code, f"fence producer_id={producer_id} epoch={epoch} on ring {self.name}")

    def producer_epoch(self, producer_id: int) -> int:
        """The epoch the ring fences producer_id at; -1 when it does not know it."""
        return int(lib.engine_ring_producer_epoch(self._ptr(), producer_id))

    def set_isr_count(self, isr_count: int) -> None:
        lib.engine_ring_set_isr_count(self._ptr(), isr_count)

    def seek(self, offset: int) -> Cursor | None:
        """A cursor at ``offset`` if the ring still holds it undrained; None if older."""
        cursor = Cursor()
        code = lib.engine_ring_seek(self._ptr(), offset, cursor._c)
        if code == BELOW:
            return None
        if code != OK:
            raise_for(code, f"seek ring {self.name} to offset={offset}")
        return cursor

    # -- the broker --------------------------------------------------------

    def drain_cursor(self) -> Cursor:
        cursor = Cursor()
        lib.engine_ring_drain_cursor(self._ptr(), cursor._c)
        return cursor

    def drain_to(self, cursor: Cursor) -> None:
        code = lib.engine_ring_drain_to(self._ptr(), cursor.position, cursor.offset)
        if code != OK:
            raise NativeError(f"drain cursor may only move forward: ring={self.name} to={cursor}")

    def set_leader(self, leader_epoch: int, sealed: bool) -> None:
        lib.engine_ring_set_leader(self._ptr(), leader_epoch, 1 if sealed else 0)

    def set_high_watermark(self, high_watermark: int) -> None:
        lib.engine_ring_set_high_watermark(self._ptr(), high_watermark)

    @property
    def sealed(self) -> bool:
        """The ring's leader moved (or stopped): readers look up the new one."""
        return bool(lib.engine_ring_sealed(self._ptr()))

    def commit_state(self) -> tuple[int, bool, int]:
        """``(high_watermark, sealed, isr_count)``: what an acks="all" producer looks at,
        without building a whole :class:`RingStatus`."""
        s = _out.status
        lib.engine_ring_status(self._ptr(), s)
        return int(s.high_watermark), bool(s.sealed), int(s.isr_count)

    def count_read(self, offsets: int, nbytes: int) -> None:
        """Add a consumer's read of the partition's segment files to the ring's "out"
        counters (metrics: records and bytes out)."""
        lib.engine_ring_count_read(self._ptr(), offsets, nbytes)

    def status(self) -> RingStatus:
        s = _out.status
        lib.engine_ring_status(self._ptr(), s)
        return RingStatus(
            capacity=int(s.capacity),
            tail_position=int(s.tail_position),
            tail_offset=int(s.tail_offset),
            drain_position=int(s.drain_position),
            drain_offset=int(s.drain_offset),
            base_offset=int(s.base_offset),
            leader_epoch=int(s.leader_epoch),
            sealed=bool(s.sealed),
            high_watermark=int(s.high_watermark),
            isr_count=int(s.isr_count),
            reaped_frames=int(s.reaped_frames),
            full_waits=int(s.full_waits),
            read_offsets=int(s.read_offsets),
            read_bytes=int(s.read_bytes),
        )


def ready_many(reads: Sequence[tuple[Ring, Cursor]]) -> list[bool]:
    """For each (ring, cursor): whether a read there has anything to say (data, a seal, a
    lapped cursor, a claim that may be stuck), without reading or waiting."""
    n = len(reads)
    regions = ffi.new("void *[]", [ring._ptr() for ring, _ in reads])
    cursors = ffi.new("engine_cursor_t *[]", [cursor._c for _, cursor in reads])
    ready = ffi.new("uint8_t[]", n)
    if not lib.engine_ring_ready_many(regions, cursors, n, ready):
        return [False] * n
    return [bool(r) for r in ffi.unpack(ready, n)]


def wait_any(
    waits: Sequence[tuple[Ring, Cursor]],
    timeout_s: float,
    respect_hw: bool = True,
    spin_s: float = 0.0,
) -> int:
    """Block until one of the rings is readable at its cursor: its index, or -1 on timeout."""
    n = len(waits)
    if n > 128:
        for i, (ring, cursor) in enumerate(waits):
            if ring.wait(cursor, timeout_s / n, respect_hw, spin_s / n):
                return i
        return -1
    regions = ffi.new("void *[]", [ring._ptr() for ring, _ in waits])
    cursors = ffi.new("engine_cursor_t[]", n)
    for i, (_, cursor) in enumerate(waits):
        cursors[i] = cursor._c[0]
    result = lib.engine_ring_wait_any(
        regions, cursors, n, int(timeout_s * 1e9), respect_hw, int(spin_s * 1e9)
    )
    return int(result) if result >= 0 else -1


class ValuesReader:
    """engine_ring_poll_values over several rings in one C call (a consumer's poll).

    :meth:`bind` fills the C argument arrays for a list of (ring, cursor, next offset)
    sources and holds their Ring objects, so that the mappings stay; :meth:`read`
    reads the bound sources, as often as the caller likes without binding again: the
    C call advances each source's cursor and next offset in place. A read returns how
    many sources it touched (their code is not EMPTY), listed in ``touched[:count]`` in
    the order read; for each such i, ``codes[i]``, ``copied[i]`` and
    ``next_offsets[i]`` describe source i as read_values would, except that an EMPTY
    ring that is sealed says SEALED. One thread uses a reader.
    """

    def __init__(self) -> None:
        self._capacity = 0
        self._grow(8)
        self._out: tuple[Any, Any] | None = None  # (buffer, its C view)
        self.bound: Sequence[tuple[Ring, Cursor, int]] = ()
        # The spin of the next wait, adapted by the C call (see engine_ring_poll_values).
        self._spin_ns = ffi.new("int64_t *", 1 << 62)

    def _grow(self, capacity: int) -> None:
        self._capacity = capacity
        self._regions = ffi.new("void *[]", capacity)
        self._cursors = ffi.new("engine_cursor_t *[]", capacity)
        self.next_offsets = ffi.new("int64_t[]", capacity)
        self.codes = ffi.new("int32_t[]", capacity)
        self.copied = ffi.new("int32_t[]", capacity)
        self.touched = ffi.new("int32_t[]", capacity)

    def bind(self, sources: Sequence[tuple[Ring, Cursor, int]]) -> None:
        """Read these sources from now on (raises ClosedError for a closed ring)."""
        self.bound = ()
        n = len(sources)
        if n > self._capacity:
            self._grow(max(n, 2 * self._capacity))
        regions, cursors, offsets = self._regions, self._cursors, self.next_offsets
        for i, (ring, cursor, offset) in enumerate(sources):
            regions[i] = ring._ptr()
            cursors[i] = cursor._c
            offsets[i] = offset
        self.bound = sources

    def read(
        self,
        first: int,
        value_size: int,
        out: Any,
        max_records: int,
        timeout_s: float = 0.0,
        spin_s: float = 0.0,
        check_crcs: bool = True,
    ) -> int:
        """Read the bound sources from index ``first`` on around, each one's values after
        the previous ones' in ``out`` (a writable buffer of ``value_size`` slots), until
        max_records or ``out`` is full (the sources after are not read). When every
        source is EMPTY, wait up to ``timeout_s`` (spinning first, as :meth:`Ring.wait`,
        up to ``spin_s``: a spin that keeps missing shrinks until a wait ends within
        ``spin_s`` again) for any to become readable, then read them all again.
        ``check_crcs``: each batch's CRC32C is checked before its values are copied (a
        batch that fails, or whose offsets go back, makes its source CORRUPT).
        Returns how many sources it touched (0: every one is EMPTY)."""
        cached = self._out
        if cached is not None and cached[0] is out:
            buf = cached[1]
        else:
            buf = ffi.from_buffer(out, require_writable=True)
            self._out = (out, buf)
        max_records = min(max_records, len(buf) // value_size)
        return int(
            lib.engine_ring_poll_values(
                self._regions, self._cursors, self.next_offsets, self.codes, self.copied,
                self.touched, len(self.bound), first, value_size, buf, max_records,
                int(timeout_s * 1e9), int(spin_s * 1e9), self._spin_ns, 1 if check_crcs else 0,
            )
        )  # fmt: skip


class Interrupt:
    """A flag the replication loops in C look at (:func:`follow`, :func:`track_high_watermark`):
    set it, then wake the rings they wait on, and the loop returns within one wait."""

    __slots__ = ("_c",)

    def __init__(self) -> None:
        self._c = ffi.new("uint32_t *")

    def set(self) -> None:
        self._c[0] = 1

    def clear(self) -> None:
        self._c[0] = 0


def follow(
    leader: Ring,
    cursor: Cursor,
    follower: Ring,
    buf: bytearray,
    timeout_s: float,
    pause_s: float,
    append_timeout_s: float,
    interrupt: Interrupt,
) -> tuple[int, int]:
    """Copy the leader's frames at ``cursor`` into ``follower`` until Python has to act.

    Returns ``(code, needed)``: TIMEOUT (timeout_s passed, or interrupted), SEALED (the
    leader's ring was sealed), OVERWRITTEN (the cursor was lapped), OUT_TOO_SMALL
    (``needed``: the length ``buf`` must have), or FULL (the follower's ring stayed
    full for append_timeout_s; the cursor may be past what it holds: seek again).
    Raises for anything else (a corrupt frame). See native/replicate.c.
    """
    needed = ffi.new("uint64_t *")
    code = lib.engine_replica_follow(
        leader._ptr(), cursor._c, follower._ptr(), ffi.from_buffer(buf), len(buf),
        int(timeout_s * 1e9), int(pause_s * 1e9), int(append_timeout_s * 1e9), interrupt._c, needed,
    )  # fmt: skip
    if code not in (TIMEOUT, SEALED, OVERWRITTEN, OUT_TOO_SMALL, FULL):
        raise_for(code, f"follow ring {leader.name} into {follower.name}")
    return int(code), int(needed[0])


def track_high_watermark(
    leader: Ring,
    published: Cursor,
    followers: Sequence[Ring | None],
    in_isr: Sequence[int],
    leader_epoch: int,
    ends: list[int],
    caught_up_ns: list[int],
    timeout_s: float,
    pause_s: float,
    interrupt: Interrupt,
) -> bool:
    """Keep the leader's high watermark at the least log end of the ISR until Python has
    to act; True when a follower outside the ISR caught up (False: timeout or interrupted).

    ``in_isr[i]``: 1 in the ISR, 0 outside, 2 outside and not to be reported as caught
    up. ``ends[i]`` is follower i's log end (given for a follower whose ring is None, read
    otherwise; -1: its ring is not a follower ring of this leadership) and
    ``caught_up_ns[i]`` the last time.monotonic_ns() it held what the leader held a
    moment before; both lists are updated in place. See native/replicate.c.
    """
    n = len(followers)
    if n > MAX_FOLLOWERS:
        raise ConfigError(f"too many followers: count={n} max={MAX_FOLLOWERS}")
    regions = ffi.new("void *[]", [ffi.NULL if r is None else r._ptr() for r in followers] or 1)
    isr = ffi.new("uint8_t[]", list(in_isr) or 1)
    c_ends = ffi.new("int64_t[]", list(ends) or 1)
    c_caught = ffi.new("int64_t[]", list(caught_up_ns) or 1)
    code = lib.engine_replica_track(
        leader._ptr(), published._c, regions, n, isr, leader_epoch, c_ends, c_caught,
        int(timeout_s * 1e9), int(pause_s * 1e9), interrupt._c,
    )  # fmt: skip
    ends[:] = [int(c_ends[i]) for i in range(n)]
    caught_up_ns[:] = [int(c_caught[i]) for i in range(n)]
    if code not in (OK, TIMEOUT):
        raise_for(code, f"track the high watermark of ring {leader.name}")
    return bool(code == OK)


def producer_fields(
    producer_id: int = -1,
    producer_epoch: int = -1,
    base_sequence: int = -1,
    attributes: int = 0,
    leader_epoch: int = -1,
    timeout_ms: int = 60_000,
    min_insync: int = 0,
) -> Any:
    """An engine_producer_fields_t* for appends (leader_epoch -1: the ring's own)."""
    f = ffi.new("engine_producer_fields_t *")
    f.min_insync = min_insync
    f.timeout_ns = timeout_ms * 1_000_000
    f.producer_id = producer_id
    f.producer_epoch = producer_epoch
    f.base_sequence = base_sequence
    f.attributes = attributes
    f.leader_epoch = leader_epoch
    return f


def seal_ring(name: str) -> bool:
    """Seal the ring ``name`` where it stands (its leader epoch kept: a sealed ring of an
    old epoch is no follower of a new one), so that no producer appends to it again;
    False when there is no such ring."""
    try:
        ring = Ring.open(name, populate=False)  # only its header is written
    except (FileNotFoundError, EngineError):
        return False
    try:
        ring.set_leader(ring.status().leader_epoch, sealed=True)
    finally:
        ring.close()
    return True


def unlink(name: str) -> bool:
    """Remove the shared-memory object ``name``; False if it did not exist.
    RingPermissionError when it is another user's and this process may not remove it
    (/dev/shm is sticky: only its owner and root may)."""
    try:
        posix_ipc.unlink_shared_memory(name)
    except posix_ipc.ExistentialError:
        return False
    except posix_ipc.PermissionsError:
        _check_private(name)
        raise RingPermissionError(f"partition ring cannot be removed: name={name}") from None
    return True


def _check_private(name: str, fd: int | None = None) -> None:
    """Raise RingPermissionError unless the shared-memory object ``name`` (open as
    ``fd``, else looked up in /dev/shm) is owned by this process's effective uid and
    grants group and others nothing. An object that is gone passes (the caller says
    what that means)."""
    try:
        st = os.fstat(fd) if fd is not None else os.stat(f"{SHM_DIR}/{name.lstrip('/')}")
    except FileNotFoundError:
        return
    uid = os.geteuid()
    if st.st_uid != uid or st.st_mode & 0o077:
        raise RingPermissionError(
            f"refusing a partition ring not private to this user (wanted: owner uid {uid}, "
            f"mode 0600): name={name} owner_uid={st.st_uid} mode={st.st_mode & 0o7777:04o}"
        )


def crc32c(data: bytes | bytearray | memoryview, crc: int = 0) -> int:
    """CRC32C (Castagnoli) of ``data``, continuing from ``crc``."""
    return int(lib.engine_crc32c(crc, ffi.from_buffer(data), len(data)))


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 hash of ``data`` (a signed 32-bit int, as Java returns it)."""
    return int(lib.engine_murmur2(data, len(data)))
