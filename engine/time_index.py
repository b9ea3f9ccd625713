"""The time index of a log segment (``<base offset>.timeindex``).

On-disk format, version 1 (the version lives in the partition's ``log.meta``)::

    +--------------------------------------------------------------+
    | timestamp (int64, BE, ms)                                    |
    +------------------------------+-------------------------------+
    | relative_offset (uint32, BE) |   ... next entry              |
    +------------------------------+

Each 12-byte entry ``(T, r)`` says: every record up to the end of the batch whose base
offset is ``segment.base_offset + r`` has a timestamp of at most ``T`` (T is the running
maximum of the segment's batch ``max_timestamp``). Timestamps strictly increase from
entry to entry. The segment adds an entry beside each offset-index entry whose running
maximum grew, and one last entry when it stops being the active segment, so the last
entry's ``T`` is the segment's largest timestamp (used by ``retention.ms``). Like the
offset index, the file holds exactly the entries (no header, no preallocation).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from engine.offset_index import IndexFile

__all__ = ["TIME_INDEX_DTYPE", "TimeIndex"]

#: One entry of the time index, as stored (big-endian).
TIME_INDEX_DTYPE = np.dtype([("timestamp", ">i8"), ("relative_offset", ">u4")])


class TimeIndex(IndexFile):
    """The sparse timestamp -> offset index of one segment (format at the top of this module).

    Holds ``(timestamp, relative_offset)`` entries; both columns strictly increase.
    Crash, threads and processes: as :class:`engine.offset_index.IndexFile` (it is
    rebuilt from the log whenever the log is recovered).
    """

    def __init__(self, path: str, base_offset: int, *, writable: bool, max_entries: int):
        self.base_offset = base_offset
        super().__init__(path, TIME_INDEX_DTYPE, writable=writable, max_entries=max_entries)

    @property
    def last_timestamp(self) -> int:
        """The last entry's timestamp, -1 when empty."""
        return int(self.entries["timestamp"][-1]) if len(self) else -1

    def lookup_below(self, timestamp_ms: int) -> int | None:
        """Offset of the last entry whose timestamp is strictly below ``timestamp_ms``.

        Every record up to the end of that entry's batch is older than ``timestamp_ms``,
        so a search for the first record at or after ``timestamp_ms`` can start at that
        batch. None when no entry is that old (search from the segment start).
        """
        entries = self.entries
        i = int(np.searchsorted(entries["timestamp"], timestamp_ms, "left"))
        if i == 0:
            return None
        return self.base_offset + int(entries["relative_offset"][i - 1])

    def append_entries(
        self, timestamps: npt.NDArray[np.int64], base_offsets: npt.NDArray[np.int64]
    ) -> None:
        """Add entries whose timestamps strictly exceed the last entry's (others are skipped)."""
        if not len(timestamps):
            return
        keep = timestamps > np.concatenate(([self.last_timestamp], timestamps[:-1]))
        keep &= timestamps > self.last_timestamp
        new = np.empty(int(keep.sum()), dtype=TIME_INDEX_DTYPE)
        new["timestamp"] = timestamps[keep]
        new["relative_offset"] = base_offsets[keep] - self.base_offset
        self.append(new)

    def truncate_to_offset(self, offset: int) -> None:
        """Drop every entry naming a batch at or after ``offset``."""
        relative = max(0, offset - self.base_offset)
        keep = int(np.searchsorted(self.entries["relative_offset"], relative, "left"))
        self.truncate_entries(keep)
