"""The sparse offset index of a log segment (``<base offset>.index``), and index-file mechanics.

On-disk format, version 1 (the version lives in the partition's ``log.meta``)::

    +------------------------------+------------------------------+
    | relative_offset (uint32, BE) | position (uint32, BE)        |   entry 0
    +------------------------------+------------------------------+
    | ...                                                         |   entry 1, 2, ...

Each 8-byte entry says: the batch whose **base offset** is
``segment.base_offset + relative_offset`` starts at byte ``position`` of the segment's
``.log`` file. Entries are strictly increasing in both fields and sparse: the segment
adds one about every ``index.interval.bytes`` of log (see segment.py). The file holds
exactly the entries, no header and no preallocation (unlike Kafka's, which is
preallocated and trimmed at roll): its length divided by 8 is the entry count, so a
reader in another process sees a consistent prefix at any moment, and a torn last
entry (length not a multiple of 8) is ignored and cut off at recovery.

(Kafka's offset index maps the *last* offset of a batch; ours maps the base offset, so
that a lookup lands on the batch holding the offset more often. Both are floors.)

:class:`IndexFile` holds the mechanics shared with the time index (time_index.py).
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["OFFSET_INDEX_DTYPE", "IndexFile", "OffsetIndex"]

#: One entry of the offset index, as stored (big-endian).
OFFSET_INDEX_DTYPE = np.dtype([("relative_offset", ">u4"), ("position", ">u4")])
FILE_MODE = 0o600


class IndexFile:
    """An append-only file of fixed-size numpy records, mirrored in memory.

    Holds the entries of one index file. A writer (``writable=True``) keeps every entry
    in memory and appends with ``pwrite`` at the end of the valid entries; a reader
    (``writable=False``) reads the file again when asked to :meth:`refresh`.

    Invariants: ``entries`` is the valid prefix of the file; the file never holds a
    torn entry after a writer opened it (it truncates one away).

    Crash: an entry is written after the log bytes it points to, so a crash leaves at
    worst entries that point past the recovered log end; the segment's recovery
    rebuilds the index from the log whenever the log was recovered.

    Threads and processes: one writer process (the broker owning the partition), one
    thread at a time; any number of reader processes, each object used by one thread.
    """

    def __init__(self, path: str, dtype: np.dtype[Any], *, writable: bool, max_entries: int):
        self.path = path
        self.dtype = dtype
        self.writable = writable
        self.max_entries = max_entries
        flags = os.O_RDWR | os.O_CREAT if writable else os.O_RDONLY
        self._fd: int | None = os.open(path, flags | os.O_CLOEXEC, FILE_MODE)
        self._array: npt.NDArray[Any] = np.empty(0, dtype=dtype)
        self._count = 0
        #: A writer found a torn last entry (the file's length not a multiple of an
        #: entry's) and cut it: expected after a crash, a damaged file after a clean stop.
        self.cut_torn_entry = False
        try:
            self.refresh()
            if writable and os.fstat(self._fd).st_size != self._count * dtype.itemsize:
                os.ftruncate(self._fd, self._count * dtype.itemsize)  # cut a torn last entry
                self.cut_torn_entry = True
        except BaseException:
            self.close()
            raise

    @property
    def fd(self) -> int:
        if self._fd is None:
            raise ValueError(f"index file is closed: path={self.path}")
        return self._fd

    @property
    def entries(self) -> npt.NDArray[Any]:
        """The valid entries (a view; do not keep it across appends)."""
        return self._array[: self._count]

    def __len__(self) -> int:
        return self._count

    @property
    def is_full(self) -> bool:
        return self._count >= self.max_entries

    def refresh(self) -> bool:
        """Read entries a writer appended since the last look; True when there were any."""
        itemsize = self.dtype.itemsize
        size = os.fstat(self.fd).st_size
        if size < self._count * itemsize:  # the writer cut the index: read it all again
            self._count = 0
        want = size // itemsize - self._count
        if want <= 0:
            return False
        data = os.pread(self.fd, want * itemsize, self._count * itemsize)
        new = np.frombuffer(data, dtype=self.dtype, count=len(data) // itemsize)
        self._extend(new)
        return True

    def append(self, new: npt.NDArray[Any]) -> None:
        """Append entries (already in the file's dtype) to the file and the mirror."""
        self.append_raw(new.tobytes(), len(new))

    def append_raw(self, data: bytes | bytearray, count: int) -> None:
        """Append the first ``count`` entries of ``data``, encoded as stored."""
        if not count:
            return
        view = memoryview(data)[: count * self.dtype.itemsize]
        position = self._count * self.dtype.itemsize
        while view:
            written = os.pwrite(self.fd, view, position)
            view, position = view[written:], position + written
        self._extend(np.frombuffer(data, dtype=self.dtype, count=count))

    def _extend(self, new: npt.NDArray[Any]) -> None:
        if self._count + len(new) > len(self._array):
            grown = np.empty(max(2 * len(self._array), self._count + len(new), 64), self.dtype)
            grown[: self._count] = self._array[: self._count]
            self._array = grown
        self._array[self._count : self._count + len(new)] = new
        self._count += len(new)

    def truncate_entries(self, count: int) -> None:
        """Keep only the first ``count`` entries."""
        count = min(count, self._count)
        os.ftruncate(self.fd, count * self.dtype.itemsize)
        self._count = count

    def flush(self) -> None:
        os.fsync(self.fd)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __del__(self) -> None:
        # An index dropped unclosed (a reader nobody closed) gives its descriptor back.
        if getattr(self, "_fd", None) is not None:
            with contextlib.suppress(Exception):  # never raise from a finalizer
                self.close()


class OffsetIndex(IndexFile):
    """The sparse offset -> position index of one segment (format at the top of this module).

    Holds ``(relative_offset, position)`` entries for some batches of the segment.
    Invariants: both columns strictly increase; every entry names the start of a batch
    of the segment's log whose base offset is the entry's offset; ``lookup`` is a floor.
    Crash, threads and processes: as :class:`IndexFile`.
    """

    def __init__(self, path: str, base_offset: int, *, writable: bool, max_entries: int):
        self.base_offset = base_offset
        super().__init__(path, OFFSET_INDEX_DTYPE, writable=writable, max_entries=max_entries)

    def lookup(self, offset: int) -> tuple[int, int]:
        """``(offset, position)`` of the last entry at or below ``offset``; else the start."""
        entries = self.entries
        relative = offset - self.base_offset
        if relative < 0 or not len(entries):
            return self.base_offset, 0
        i = int(np.searchsorted(entries["relative_offset"], min(relative, 2**32 - 1), "right"))
        if i == 0:
            return self.base_offset, 0
        entry = entries[i - 1]
        return self.base_offset + int(entry["relative_offset"]), int(entry["position"])

    def truncate_to_position(self, position: int) -> None:
        """Drop every entry pointing at or past ``position`` (the log was cut there)."""
        keep = int(np.searchsorted(self.entries["position"], position, "left"))
        self.truncate_entries(keep)

    def is_consistent(self, log_length: int) -> bool:
        """Cheap sanity check on open: increasing columns and positions inside the log."""
        entries = self.entries
        if not len(entries):
            return True
        rel = entries["relative_offset"].astype(np.int64)
        pos = entries["position"].astype(np.int64)
        return bool((np.diff(rel) > 0).all() and (np.diff(pos) > 0).all() and pos[-1] < log_length)
