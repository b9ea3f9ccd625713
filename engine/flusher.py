"""Background fsync of rolled segments, so that appending never waits for the disk.

A log fsyncs a segment when it rolls it (engine/log.py). Done on the appending thread,
that fsync writes the whole segment's unflushed bytes (up to ``segment.bytes``) to the
disk while the broker's drain stands still: producers then find the ring full and wait
(a 1 GiB segment on a 300 MB/s disk: over 3 s). As Kafka does, the fsync happens on
another thread instead: one per process, taking rolled segments in the order they
were rolled. The log advances its recovery point once they are done (Log keeps the
pending flushes); a log that must be durable now (``Log.flush``, ``Log.close``) waits
for its own.

Each flush holds duplicates of the segment's descriptors, so that the log may close or
delete the segment meanwhile; a flush of a segment deleted before its turn is cancelled.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import threading

__all__ = ["PendingFlush", "submit"]

log = logging.getLogger("engine.flusher")


class PendingFlush:
    """The fsync of one rolled segment: ``fds`` (owned: closed when done or cancelled),
    then of ``directory``, which holds its entry (on ext4 a directory fsync commits the
    journal, which waits for the data of files just written: a second or more)."""

    def __init__(
        self, fds: list[int], base_offset: int, next_base_offset: int, directory: str
    ) -> None:
        self.fds = fds
        self.directory = directory
        self.base_offset = base_offset
        #: The base offset of the segment that replaced it: once every flush up to this
        #: one is done, everything below it is durable.
        self.next_base_offset = next_base_offset
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
                fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        except OSError as error:
            log.error("fsync of a rolled segment failed: base_offset=%d: %s", self.base_offset,
                      error)  # fmt: skip
            self.error = error
        finally:
            for fd in self.fds:
                with contextlib.suppress(OSError):  # a failing close must not stop the thread
                    os.close(fd)
            self.fds = []
            self.done.set()


_queue: collections.deque[PendingFlush] = collections.deque()
_ready = threading.Condition()
_thread: threading.Thread | None = None
_pid = 0


def submit(flush: PendingFlush) -> PendingFlush:
    """Queue ``flush`` for the flusher thread (started on first use, again after fork)."""
    global _thread, _pid
    with _ready:
        if _thread is None or _pid != os.getpid():
            _queue.clear()  # a forked child does not inherit the parent's flushes' thread
            _thread = threading.Thread(target=_run, name="engine-segment-flusher", daemon=True)
            _pid = os.getpid()
            _thread.start()
        _queue.append(flush)
        _ready.notify()
    return flush


def _run() -> None:
    while True:
        with _ready:
            while not _queue:
                _ready.wait()
            flush = _queue.popleft()
        flush._run()
