"""Background fsync of rolled segments and removal of retired ones, so that appending
never waits for the disk.

A log fsyncs a segment when it rolls it (engine/log.py). Done on the appending thread,
that fsync writes the whole segment's unflushed bytes (up to ``segment.bytes``) to the
disk while the broker's drain stands still: producers then find the ring full and wait
(a 1 GiB segment on a 300 MB/s disk: over 3 s). As Kafka does, the fsync happens on
another thread instead: one per process, taking rolled segments in the order they
were rolled, then writing the log's recovery point past them (the log keeps its
pending flushes); a log that must be durable now (``Log.flush``, ``Log.close``) waits
for its own.

Each flush holds duplicates of the segment's descriptors, so that the log may close or
delete the segment meanwhile; a flush of a segment deleted before its turn is cancelled.
Segments that retention deletes are renamed out of the log at once and removed here
(``Removal``): removing a file waits for the kernel to finish writing back its pages,
which under a sustained load takes as long as an fsync (Kafka likewise renames them
``.deleted`` and removes them later). A log that opens removes any left by a crash.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import threading
from collections.abc import Callable
from typing import TypeVar

from engine.datadir import fsync_directory

__all__ = ["LogFlushes", "PendingFlush", "Removal", "submit"]

log = logging.getLogger("engine.flusher")


class LogFlushes:
    """What the flushes of one log share: whether one failed (the later ones then do
    not move its recovery point), and how to write its recovery point."""

    def __init__(self, write_recovery_point: Callable[[int], None]) -> None:
        self.write_recovery_point = write_recovery_point
        self.failed = False


class PendingFlush:
    """The fsync of one rolled segment: ``fds`` (owned: closed when done or cancelled),
    then of ``directory``, which holds its entry (on ext4 a directory fsync commits the
    journal, which waits for the data of files just written: a second or more), then
    the log's recovery point, moved to ``next_base_offset`` (written with fsyncs too).

    The flusher runs flushes in order, so every earlier flush of the log is done by
    then; the log waits for its pending flushes before it writes a recovery point
    itself (flush, close, truncation), so theirs never lands after its own.
    """

    def __init__(
        self,
        fds: list[int],
        base_offset: int,
        next_base_offset: int,
        directory: str,
        shared: LogFlushes,
    ) -> None:
        self.fds = fds
        self.directory = directory
        self.base_offset = base_offset
        #: The base offset of the segment that replaced it: once every flush up to this
        #: one is done, everything below it is durable.
        self.next_base_offset = next_base_offset
        self.shared = shared
        self.done = threading.Event()
        self.error: OSError | None = None
        self._cancelled = False

    def cancel(self) -> None:
        """The segment was deleted: skip its fsync (if it has not started)."""
        self._cancelled = True

    def wait(self) -> None:
        """Until the fsync is done; raises its error if it failed."""
        self.done.wait()
        if self.error is not None:
            raise self.error

    def _run(self) -> None:
        try:
            if not self._cancelled:
                for fd in self.fds:
                    os.fsync(fd)
                fsync_directory(self.directory)
                if not self.shared.failed and not self._cancelled:
                    self.shared.write_recovery_point(self.next_base_offset)
        except OSError as error:
            if not self._cancelled:  # else its log is being deleted: nothing to report
                log.error("fsync of a rolled segment failed: base_offset=%d: %s",
                          self.base_offset, error)  # fmt: skip
                self.shared.failed = True
                self.error = error
        finally:
            for fd in self.fds:
                with contextlib.suppress(OSError):  # a failing close must not stop the thread
                    os.close(fd)
            self.fds = []
            self.done.set()


class Removal:
    """Remove the files at ``paths`` (a retired segment's), then fsync ``directory``."""

    def __init__(self, paths: list[str], directory: str) -> None:
        self.paths = paths
        self.directory = directory
        self.done = threading.Event()

    def _run(self) -> None:
        try:
            for path in self.paths:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
            fsync_directory(self.directory)
        except FileNotFoundError:
            pass  # the whole directory went (its topic was deleted)
        except OSError as error:
            log.error("removing a retired segment failed: %s: %s", self.paths, error)
        finally:
            self.done.set()


_queue: collections.deque[PendingFlush | Removal] = collections.deque()
_ready = threading.Condition()
_thread: threading.Thread | None = None
_pid = 0


_Job = TypeVar("_Job", PendingFlush, Removal)


def submit(job: _Job) -> _Job:
    """Queue ``job`` for the flusher thread (started on first use, again after fork)."""
    global _thread, _pid
    with _ready:
        if _thread is None or _pid != os.getpid():
            _queue.clear()  # a forked child does not inherit the parent's flushes' thread
            _thread = threading.Thread(target=_run, name="engine-segment-flusher", daemon=True)
            _pid = os.getpid()
            _thread.start()
        _queue.append(job)
        _ready.notify()
    return job


def _run() -> None:
    while True:
        with _ready:
            while not _queue:
                _ready.wait()
            job = _queue.popleft()
        job._run()
